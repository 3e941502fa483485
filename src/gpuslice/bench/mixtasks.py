"""The benchmark workloads as named functions, one per (workload, size), so each can be profiled.

A profile belongs to one function (its name and code). The harness runs every workload through
one function, :func:`gpuslice.bench.task.run_task`, so right-sizing needs a function per task
kind. Each function here runs exactly what the harness runs for its workload and size: on the
emulated GPU (``GPUSLICE_EMULATED=1``, set by gpuslice's emulated pools) an emulated kernel of
the workload's cost estimate, on a real GPU the torch workload itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from gpuslice.bench.task import run_task
from gpuslice.bench.workloads import WORKLOADS
from gpuslice.errors import UsageError

__all__ = [
    "FUNCTIONS",
    "function_for",
    "llm_medium",
    "science_large",
    "stencil_large",
    "stencil_medium",
    "surrogate_infer_large",
    "surrogate_train_medium",
]


def _run(workload: str, size: str) -> dict[str, Any]:
    emulated = os.environ.get("GPUSLICE_EMULATED") == "1"
    return run_task(workload, WORKLOADS[workload].params(size), emulated)


def llm_medium() -> dict[str, Any]:
    """One LLM decoding request (GPT-2-medium shape, 64 new tokens)."""
    return _run("llm", "medium")


def surrogate_infer_large() -> dict[str, Any]:
    """MPNN surrogate inference on a large batch of molecules."""
    return _run("surrogate_infer", "large")


def surrogate_train_medium() -> dict[str, Any]:
    """Surrogate retraining, medium."""
    return _run("surrogate_train", "medium")


def science_large() -> dict[str, Any]:
    """A dense matmul chain, large."""
    return _run("science", "large")


def stencil_medium() -> dict[str, Any]:
    """A 2-D Jacobi stencil, medium."""
    return _run("stencil", "medium")


def stencil_large() -> dict[str, Any]:
    """A 2-D Jacobi stencil, large."""
    return _run("stencil", "large")


#: (workload, size) -> its function.
FUNCTIONS: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
    ("llm", "medium"): llm_medium,
    ("surrogate_infer", "large"): surrogate_infer_large,
    ("surrogate_train", "medium"): surrogate_train_medium,
    ("science", "large"): science_large,
    ("stencil", "medium"): stencil_medium,
    ("stencil", "large"): stencil_large,
}


def function_for(workload: str, size: str) -> Callable[[], dict[str, Any]]:
    """The named function of a workload at a size preset.

    Raises:
        UsageError: no function for that pair.
    """
    try:
        return FUNCTIONS[(workload, size)]
    except KeyError:
        known = ", ".join(f"{w}/{s}" for w, s in FUNCTIONS)
        raise UsageError(
            f"no profiled-task function for workload {workload!r} at size {size!r}; known: {known}"
        ) from None
