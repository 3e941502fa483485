"""What the phased benchmark's tasks run in the workers (:mod:`gpuslice.bench.phased`).

Parsl sends a function by reference to its module, which each worker imports before its first
task. These two live apart from :mod:`gpuslice.bench.phased` (the harness, plans, report and
plotting imports: about half a second) so that a worker, and every slice an elastic run starts
later, imports only what a task needs; ``gpuslice.bench.phased`` re-exports them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

__all__ = ["check_in", "phased_task"]


def phased_task(workload: str, params: dict[str, Any], emulated: bool) -> dict[str, Any]:
    """One task, and the slice it ran in as its own worker sees it (for the capacity check)."""
    from gpuslice.bench.sampler import limits_of
    from gpuslice.bench.task import run_task
    from gpuslice.parsl.elastic_node import SLICE_ENV

    out = run_task(workload, params, emulated)
    size = limits_of(os.environ)
    # An elastic slice's id; in a fixed plan's worker pool, each worker is one slice.
    out["slice"] = os.environ.get(SLICE_ENV) or f"{out['pool']}.worker-{os.getpid()}"
    out["compute"] = size.compute if size else None
    out["memory_mib"] = size.memory_mib if size else None
    out["pid"] = os.getpid()
    return out


def check_in(barrier: str, expected: int, timeout_s: float) -> dict[str, Any]:
    """Warm-up: check in at a barrier and wait until ``expected`` workers have.

    Each worker takes exactly one check-in, since it blocks until all have arrived; the
    result names the worker, so the harness can see every one was reached.

    Raises:
        TimeoutError: not every worker arrived within ``timeout_s``.
    """
    here = Path(barrier)
    (here / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout_s
    while sum(1 for _ in here.iterdir()) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {sum(1 for _ in here.iterdir())} of {expected} workers")
        time.sleep(0.05)
    return {"pid": os.getpid(), "pool": os.environ.get("GPUSLICE_POOL")}
