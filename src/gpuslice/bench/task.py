"""What a benchmark task does inside its Parsl worker, on a real GPU or the emulated one.

The function is importable by name (Parsl ships it by reference), takes only plain values,
and returns a small dict with the task's own start and end times and device, from which the
harness derives GPU busy time per device.
"""

from __future__ import annotations

import os
import time
from typing import Any

from gpuslice.bench.workloads import WORKLOADS, emulated_cost

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
            cost.work_ms, duty=cost.duty, occupancy=cost.occupancy, memory=cost.memory_mib
        )
        detail: dict[str, Any] = {"mode": result.mode, "share": result.share}
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
        **detail,
    }


def warm_up(workload: str, params: dict[str, Any], emulated: bool) -> str:
    """Start a worker: its slice check runs, and on a GPU the model is built and cached."""
    if not emulated:
        WORKLOADS[workload].function(**{**params, "device": "cuda"})
    return os.environ.get("CUDA_VISIBLE_DEVICES", "")
