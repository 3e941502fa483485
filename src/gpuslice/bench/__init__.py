"""Benchmark workloads (LLM inference, a molecular surrogate, a science kernel) and their costs."""
