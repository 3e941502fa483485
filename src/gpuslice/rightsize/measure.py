"""One measured slice size: the task that times a call inside a worker, and its statistics.

:func:`timed_call` runs in the Parsl worker, inside the slice. It times the user's function
with a monotonic clock, synchronising the device before and after on a real GPU so the time
covers the function's kernels (``torch.cuda.synchronize``), and reads the peak device memory
the call reached:

- real GPU: ``torch.cuda.max_memory_reserved()`` after ``torch.cuda.reset_peak_memory_stats()``:
  what PyTorch's caching allocator took from the device, i.e. what an MPS pinned memory limit
  caps (https://pytorch.org/docs/stable/generated/torch.cuda.max_memory_reserved.html ,
  https://pytorch.org/docs/stable/notes/cuda.html#memory-management). The CUDA context
  itself is not in it; the memory cap's headroom (:mod:`gpuslice.rightsize.choice`) covers it.
  Read only when the function already uses torch with CUDA: a function that does not is
  never made to import torch.
- emulated GPU: :func:`gpuslice.emulate.kernel.peak_memory_mib`, the memory its emulated
  kernels held.

:func:`summarize` turns the calls of one size into a :class:`Point`: latency median and p95
with their spread, the throughput of a GPU filled with slices of that size, and peak memory.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["Point", "Sample", "held_call", "summarize", "timed_call"]

#: Bootstrap resamples for the p95 interval (a fixed seed: the same samples give the same range).
_BOOTSTRAP = 200


def _torch_with_cuda() -> Any | None:
    """torch, when the function already imported it and created a CUDA context; else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch
    except Exception:  # an unusual torch build: no GPU timing through it
        return None
    return None


def timed_call(
    func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Call ``func(*args, **kwargs)`` in this worker and time it (runs inside the slice).

    Returns:
        ``start``/``end`` (epoch seconds, for the throughput window), ``ms`` (the call's time),
        ``peak_mib`` (peak device memory of the call, or None when it cannot be read) and
        ``pid`` (the worker, so the profiler can tell workers apart).
    """
    emulated = os.environ.get("GPUSLICE_EMULATED") == "1"
    torch = _torch_with_cuda()
    if emulated:
        from gpuslice.emulate.kernel import reset_peak_memory

        reset_peak_memory()
    if torch is not None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start_epoch = time.time()
    start = time.perf_counter()
    func(*args, **kwargs)
    torch = _torch_with_cuda()  # the call may have created the context
    if torch is not None:
        torch.cuda.synchronize()
    elapsed_ms = (time.perf_counter() - start) * 1000.0
    peak: int | None = None
    if emulated:
        from gpuslice.emulate.kernel import peak_memory_mib

        peak = peak_memory_mib()
    elif torch is not None:
        peak = math.ceil(torch.cuda.max_memory_reserved() / 2**20)
    return {
        "start": start_epoch,
        "end": start_epoch + elapsed_ms / 1000.0,
        "ms": elapsed_ms,
        "peak_mib": peak,
        "pid": os.getpid(),
    }


def held_call(
    func: Callable[..., Any],
    args: Sequence[Any],
    kwargs: dict[str, Any],
    gate: str,
    timeout_s: float,
) -> int:
    """Warm-up call: run ``func`` once, leave ``ready-<pid>`` in ``gate``, then hold the worker.

    The worker stays busy until the file ``open`` appears in ``gate`` (or ``timeout_s``
    passes), so the next warm-up call goes to a worker that has not run yet. The profiler
    starts workers' first calls a few at a time this way: each first call checks the slice
    (the MPS daemon must answer), and many checks at once overload a small host.

    Returns:
        This worker's PID.
    """
    func(*args, **kwargs)
    pid = os.getpid()
    gate_dir = Path(gate)
    (gate_dir / f"ready-{pid}").touch()
    deadline = time.monotonic() + timeout_s
    while not (gate_dir / "open").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return pid


@dataclass(frozen=True)
class Sample:
    """One timed call, as :func:`timed_call` reported it."""

    start: float
    end: float
    ms: float
    peak_mib: int | None
    pid: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        """From :func:`timed_call`'s dictionary."""
        return cls(
            float(data["start"]),
            float(data["end"]),
            float(data["ms"]),
            None if data.get("peak_mib") is None else int(data["peak_mib"]),
            int(data["pid"]),
        )


@dataclass(frozen=True)
class Point:
    """One slice size, measured with the GPU filled with slices of that size.

    Attributes:
        per_gpu: slices on the GPU (all busy while measured).
        compute: each slice's ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``.
        sms: SMs each slice sees (the percentage rounded down to what the hardware grants).
        memory_mib: each slice's memory cap while measured, or None.
        p50_ms, p95_ms: task latency inside the slice (the call, not queueing), GPU filled.
        p25_ms, p75_ms: the latency's interquartile range (its spread).
        p95_low_ms, p95_high_ms: 90% bootstrap interval of the p95.
        mean_ms: mean latency.
        alone_ms: median latency of the slice with the rest of the GPU idle.
        tasks_per_s_per_gpu: throughput of the filled GPU: ``per_gpu`` slices each finishing
            a call every ``mean_ms`` (latencies measured while every slice was busy). What the
            slice size decides; the choice uses it.
        tasks_per_s_spread: half-width of its 95% interval (from the latency samples).
        tasks_per_s_observed: tasks per second seen through Parsl in the window in which every
            slice was busy: the same, less the time between a call's end and the next call's
            start in each worker (Parsl's dispatch, heavier on a loaded host).
        peak_memory_mib: most device memory one call held, or None when unknown.
        samples: timed calls with the GPU filled (warm-up calls excluded).
        seconds: wall time this point took, worker start-up included.
        startup_s: of which starting the workers and warming them up.
        failed: calls that raised; error: the first error's text.
    """

    per_gpu: int
    compute: int
    sms: int
    memory_mib: int | None
    p50_ms: float
    p95_ms: float
    p25_ms: float
    p75_ms: float
    p95_low_ms: float
    p95_high_ms: float
    mean_ms: float
    alone_ms: float | None
    tasks_per_s_per_gpu: float
    tasks_per_s_spread: float
    tasks_per_s_observed: float
    peak_memory_mib: int | None
    samples: int
    seconds: float
    startup_s: float = 0.0
    failed: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Point:
        """From :meth:`to_dict`."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def failure(
        cls,
        per_gpu: int,
        compute: int,
        sms: int,
        memory_mib: int | None,
        error: str,
        failed: int,
        seconds: float,
    ) -> Point:
        """A size at which the function failed (out of memory at that cap, a crash)."""
        nan = float("nan")
        return cls(
            per_gpu, compute, sms, memory_mib, nan, nan, nan, nan, nan, nan, nan, None,
            0.0, 0.0, 0.0, None, 0, seconds, seconds, failed, error,
        )  # fmt: skip


def _quantile(values: Sequence[float], q: int, of: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=of, method="inclusive")[q - 1]


def _p95(values: Sequence[float]) -> float:
    return _quantile(values, 19, 20)


def _window_throughput(packed: Sequence[Sample]) -> float:
    """Tasks per second while every worker was busy.

    The window runs from the moment the last worker started its first call to the moment the
    first worker ended its last one; a call counts for the fraction of it inside the window.
    Outside it some slices idle (the start and the tail of the batch), which a filled GPU in
    steady use does not do.
    """
    by_worker: dict[int, list[Sample]] = {}
    for s in packed:
        by_worker.setdefault(s.pid, []).append(s)
    lo = max(min(s.start for s in mine) for mine in by_worker.values())
    hi = min(max(s.end for s in mine) for mine in by_worker.values())
    mean_s = statistics.fmean(s.ms for s in packed) / 1000.0
    if hi - lo < mean_s:  # too short a window: whole batch, first start to last end
        span = max(s.end for s in packed) - min(s.start for s in packed)
        return len(packed) / span if span > 0 else 0.0
    done = 0.0
    for s in packed:
        length = s.end - s.start
        inside = max(0.0, min(s.end, hi) - max(s.start, lo))
        done += inside / length if length > 0 else 0.0
    return done / (hi - lo)


def summarize(
    *,
    per_gpu: int,
    compute: int,
    sms: int,
    memory_mib: int | None,
    alone: Sequence[Sample],
    packed: Sequence[Sample],
    seconds: float,
    startup_s: float = 0.0,
) -> Point:
    """The statistics of one size from its timed calls (warm-up calls already left out).

    Raises:
        ValueError: no packed samples.
    """
    if not packed:
        raise ValueError("a point needs at least one timed call with the GPU filled")
    latencies = sorted(s.ms for s in packed)
    n = len(latencies)
    mean = statistics.fmean(latencies)
    throughput = per_gpu * 1000.0 / mean if mean > 0 else 0.0
    sd = statistics.stdev(latencies) if n > 1 else 0.0
    spread = throughput * 1.96 * sd / mean / math.sqrt(n) if mean > 0 else 0.0
    rng = random.Random(0)
    boot = sorted(_p95(rng.choices(latencies, k=n)) for _ in range(_BOOTSTRAP)) if n > 1 else []
    peaks = [s.peak_mib for s in [*alone, *packed] if s.peak_mib is not None]
    return Point(
        per_gpu=per_gpu,
        compute=compute,
        sms=sms,
        memory_mib=memory_mib,
        p50_ms=statistics.median(latencies),
        p95_ms=_p95(latencies),
        p25_ms=_quantile(latencies, 1, 4),
        p75_ms=_quantile(latencies, 3, 4),
        p95_low_ms=boot[int(0.05 * len(boot))] if boot else latencies[0],
        p95_high_ms=boot[int(0.95 * len(boot)) - 1] if boot else latencies[0],
        mean_ms=mean,
        alone_ms=statistics.median(s.ms for s in alone) if alone else None,
        tasks_per_s_per_gpu=throughput,
        tasks_per_s_spread=spread,
        tasks_per_s_observed=_window_throughput(packed),
        peak_memory_mib=max(peaks) if peaks else None,
        samples=n,
        seconds=seconds,
        startup_s=startup_s,
    )
