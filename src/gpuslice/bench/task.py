"""What a benchmark task does inside its Parsl worker, on a real GPU or the emulated one.

The functions are importable by name (Parsl ships them by reference), take only plain values,
and return small dicts: a task's own start and end times, device and worker process, from
which the harness derives GPU busy time per device and checks that every worker was warm.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpuslice.bench.workloads import WORKLOADS, emulated_cost
from gpuslice.errors import GpusliceError


class WarmUpError(GpusliceError):
    """Not every worker of an arrangement was started and warmed before timing began."""


#: How each workload grows when several tasks are batched into one call (the ceiling (e)).
_BATCH_KNOB = {
    "llm": "batch",
    "surrogate_infer": "batch_size",
    "surrogate_train": "n_molecules",
    "science": "iterations",
    "stencil": "iterations",
}


def batched_params(workload: str, params: dict[str, Any], batch: int) -> dict[str, Any]:
    """The parameters of one call that does the work of ``batch`` tasks at once.

    LLM requests are decoded together (one batch of prompts), surrogate inference scores all
    molecules in one batch, training sees all molecules, science kernels run all iterations
    in one process (no true batching exists for them: the ceiling is then sequential).
    """
    if batch == 1:
        return dict(params)
    knob = _BATCH_KNOB[workload]
    merged = WORKLOADS[workload].params(**params)
    return {**params, knob: merged[knob] * batch}


def run_task(
    workload: str, params: dict[str, Any], emulated: bool, batch: int = 1
) -> dict[str, Any]:
    """Run one benchmark task (or ``batch`` tasks batched) in this worker.

    On the emulated GPU the task is an emulated kernel whose cost is the workload's H100
    estimate; on a GPU it is the workload itself, with ``device="cuda"``.
    """
    call = batched_params(workload, params, batch)
    start = time.time()
    if emulated:
        from gpuslice.emulate.kernel import kernel

        cost = emulated_cost(workload, **call)
        result = kernel(
            cost.work_ms,
            duty=cost.duty,
            occupancy=cost.occupancy,
            bandwidth=cost.bandwidth,
            memory=cost.memory_mib,
        )
        detail: dict[str, Any] = {
            "mode": result.mode,
            "share": result.share,
            "lag_ms": result.lag_ms,
        }
    else:
        output = WORKLOADS[workload].function(**{**call, "device": "cuda"})
        detail = {"seconds_in_task": output.get("seconds")}
    end = time.time()
    return {
        "workload": workload,
        "batch": batch,
        "start": start,
        "end": end,
        "device": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "pool": os.environ.get("GPUSLICE_POOL", ""),
        "worker": worker_id(),
        **detail,
    }


def worker_id() -> str:
    """This worker process, as ``<host>:<pid>`` (unique across the nodes of a run)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def check_in(barrier_dir: str | Path, workers: int, timeout_s: float) -> int:
    """Wait until ``workers`` distinct worker processes have called this with the same folder.

    Each caller leaves a file named by :func:`worker_id` in ``barrier_dir`` and polls the folder.
    A worker blocked here holds its Parsl worker slot, so the other warm-up tasks can only go
    to workers that have not checked in yet: with one warm-up task per worker, every worker
    is reached. The folder must be visible to every worker (the harness uses Parsl's run
    directory, which is on a shared file system when blocks run on other nodes).

    Returns:
        How many workers had checked in when this one was released (at least ``workers``).

    Raises:
        WarmUpError: fewer than ``workers`` checked in within ``timeout_s`` seconds.
    """
    folder = Path(barrier_dir)
    folder.mkdir(parents=True, exist_ok=True)
    mine = folder / worker_id()
    mine.touch()
    deadline = time.monotonic() + timeout_s
    while True:
        arrived = sum(1 for entry in folder.iterdir() if not entry.name.startswith("."))
        if arrived >= workers:
            return arrived
        if time.monotonic() > deadline:
            raise WarmUpError(
                f"warm-up: only {arrived} of {workers} workers checked in at {folder} within "
                f"{timeout_s:.0f} s; a worker did not start (see Parsl's worker logs) or the "
                "folder is not shared between the nodes"
            )
        time.sleep(0.05)


def warm_up(
    calls: Sequence[tuple[str, dict[str, Any]]],
    emulated: bool,
    barrier_dir: str,
    workers: int,
    timeout_s: float = 300.0,
) -> dict[str, str]:
    """Warm this worker, then wait at the barrier until every worker of the run is warm.

    The slice check (``prepare_worker``) has run before this, as before any task. On a GPU each
    of ``calls`` (a workload and its parameters) runs once, so models are built and cached and
    the CUDA context exists; on the emulated GPU the MPS context is created
    (:func:`gpuslice.emulate.kernel.mps_connection`), as a first CUDA call would.

    Returns:
        ``worker`` (:func:`worker_id`), ``device`` and ``pool`` of this worker.

    Raises:
        WarmUpError: not every worker reached the barrier in time.
    """
    if emulated:
        from gpuslice.emulate.kernel import mps_connection

        mps_connection()
    else:
        for workload, params in calls:
            WORKLOADS[workload].function(**{**params, "device": "cuda"})
    check_in(barrier_dir, workers, timeout_s)
    return {
        "worker": worker_id(),
        "device": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        "pool": os.environ.get("GPUSLICE_POOL", ""),
    }
