"""An emulated GPU for machines without one: device facts, a sharing model and timed kernels."""
