"""``profile(func)``: measure a function in slices of a few sizes and recommend one.

::

    from gpuslice.rightsize import profile

    result = profile(infer, args=(batch,), fleet="fleet.yaml", p95_ms=200)
    result.recommended        # kind, compute, memory_mib, per_gpu, ...
    result.points             # every measured size, with its spread

The run: the whole GPU first (one slice, no memory cap: the reference latency and the
function's peak memory), which fixes the memory cap (peak plus headroom) and with it how many
slices fit; then the sizes :func:`gpuslice.rightsize.search.next_count` asks for, until no
unmeasured size could change the choice. One DataFlowKernel serves the whole run
(:class:`gpuslice.rightsize.probe.Prober`). ``exhaustive=True`` measures every candidate size
instead (the sweep the benchmark compares against).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gpuslice.errors import GpusliceError, UsageError
from gpuslice.hardware.inventory import Gpu, Inventory, discover
from gpuslice.plan.resolve import slices_that_fit
from gpuslice.rightsize.choice import feasible, memory_cap_mib, recommend
from gpuslice.rightsize.identity import Call, function_id
from gpuslice.rightsize.measure import Point
from gpuslice.rightsize.probe import FILLED_SAMPLES, ProbeError, Prober
from gpuslice.rightsize.profile import Profile
from gpuslice.rightsize.search import Size, candidate_sizes, next_count
from gpuslice.rightsize.store import Lookup, ProfileStore

__all__ = ["Event", "ProfileError", "default_max_per_gpu", "gpu_model_name", "profile"]

#: A larger slice whose mean or p95 latency exceeds a smaller slice's by more than this is
#: measured again (once): more SMs are never slower, so one of the two met a host stall.
CONSISTENCY_TOLERANCE = 0.10


def _slower_than_a_smaller_slice(point: Point, others: Iterable[Point]) -> str | None:
    """Why ``point`` looks disturbed (slower than a slice with fewer SMs), or None."""
    if not point.samples:
        return None
    for other in others:
        if other is point or not other.samples or other.sms >= point.sms:
            continue
        for what, mine, theirs in (
            ("mean", point.mean_ms, other.mean_ms),
            ("p95", point.p95_ms, other.p95_ms),
        ):
            if mine > theirs * (1.0 + CONSISTENCY_TOLERANCE):
                return (
                    f"its {what} latency {mine:.1f} ms is above that of {other.per_gpu} "
                    f"slice(s) of {other.sms} SMs ({theirs:.1f} ms)"
                )
    return None


#: Seconds to wait before measuring a size again whose workers did not start.
RETRY_PAUSE_S = 20.0


class ProfileError(GpusliceError):
    """Profiling could not produce a recommendation (the function failed in every slice)."""


@dataclass(frozen=True)
class Event:
    """Progress of a profiling run, for a progress display.

    Attributes:
        kind: ``store`` (the store was asked), ``measuring`` (a size starts), ``retry`` (its
            workers did not start; once more), ``measured`` (a size is done), ``done``.
        message: one line for people.
        size: the size concerned, for ``measuring`` and ``measured``.
        point: the measured point, for ``measured``.
        lookup: the store's answer, for ``store``.
    """

    kind: str
    message: str
    size: Size | None = None
    point: Point | None = None
    lookup: Lookup | None = None


def gpu_model_name(gpu: Gpu) -> str:
    """The name profiles are keyed by: the catalog model, else the NVML product name."""
    return gpu.model.name if gpu.model is not None else gpu.name


def default_max_per_gpu(gpu: Gpu) -> int:
    """Most slices per GPU tried by default: the MPS client limit, at most the host's cores.

    Each slice is a worker process whose host thread launches the function's kernels; with
    more slices than cores the host, not the slice, stretches the launch gaps, and the
    profile would measure the profiling host. At least 8, so small machines can still profile
    an emulated GPU.
    """
    return min(gpu.max_mps_clients, max(8, os.cpu_count() or 1))


def _store_of(store: ProfileStore | str | Path | bool) -> ProfileStore | None:
    if store is False:
        return None
    if store is True:
        return ProfileStore()
    if isinstance(store, ProfileStore):
        return store
    return ProfileStore(store)


def profile(
    func: Callable[..., Any],
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    fleet: str | Path | None = None,
    gpu: int = 0,
    p95_ms: float | None = None,
    max_per_gpu: int | None = None,
    store: ProfileStore | str | Path | bool = True,
    refresh: bool = False,
    exhaustive: bool = False,
    samples: int = FILLED_SAMPLES,
    on_event: Callable[[Event], None] | None = None,
    run_dir: str | None = None,
) -> Profile:
    """Profile ``func`` in MPS slices of a few sizes through real Parsl workers.

    Args:
        func: an importable function (``module.function``), called as
            ``func(*args, **kwargs)`` in each slice.
        args, kwargs: the arguments of every call.
        fleet: fleet file describing the GPUs (emulated GPU); default the real GPUs (NVML).
        gpu: index of the GPU to profile on.
        p95_ms: latency bound: only sizes whose p95 call latency is at most this are chosen.
        max_per_gpu: most slices per GPU to consider (default :func:`default_max_per_gpu`).
        store: the profile store (a path, a :class:`ProfileStore`, True for the default one,
            False for none). A stored profile of the same code on the same GPU model is
            returned instead of measuring, unless ``refresh``; a new profile is stored.
        refresh: measure even when the store has a profile.
        exhaustive: measure every candidate size (a sweep) instead of searching.
        samples: calls timed per size with the GPU filled.
        on_event: called with progress :class:`Event` s.
        run_dir: Parsl's run directory (default a temporary one).

    Returns:
        The profile, with ``source == "store"`` when it came from the store.

    Raises:
        ProfileError: the function failed in every size tried.
        UsageError: bad arguments (GPU index, bound, cap, store path).
        NvmlUnavailable: no fleet and no usable NVIDIA driver.
    """
    if p95_ms is not None and p95_ms <= 0:
        raise UsageError(f"p95_ms must be above 0 (milliseconds), got {p95_ms}")
    if max_per_gpu is not None and max_per_gpu < 1:
        raise UsageError(f"max_per_gpu must be at least 1, got {max_per_gpu}")
    emit = on_event or (lambda _event: None)
    fid = function_id(func)
    inventory = discover(fleet)
    device = inventory.find(gpu)
    if device is None:
        raise UsageError(
            f"GPU {gpu} is not here ({len(inventory.gpus)} GPUs on {inventory.source}); "
            "pick one of `gpuslice gpus`"
        )
    model = gpu_model_name(device)
    the_store = _store_of(store)
    if the_store is not None and not refresh and not exhaustive:
        found = the_store.lookup(fid, model)
        emit(Event("store", f"profile store {the_store.path}: {found.reason}", lookup=found))
        if found.hit and found.profile is not None and found.profile.p95_bound_ms == p95_ms:
            return found.profile
        if found.hit:
            emit(Event("store", "the stored profile has another p95 bound; profiling again"))
    limit = max_per_gpu if max_per_gpu is not None else default_max_per_gpu(device)
    result = _run(
        func,
        Call(tuple(args), dict(kwargs) if kwargs else None),
        inventory,
        device,
        fleet=str(fleet) if fleet is not None else None,
        p95_ms=p95_ms,
        limit=min(limit, device.max_mps_clients),
        exhaustive=exhaustive,
        samples=samples,
        emit=emit,
        run_dir=run_dir,
        model=model,
        function=fid.name,
        code_hash=fid.code_hash,
    )
    if the_store is not None:
        the_store.put(result)
    emit(Event("done", f"profiled {fid.name} in {result.profiling_s:.1f} s"))
    return result


def _describe(size: Size, memory_mib: int | None) -> str:
    cap = f", {memory_mib} MiB cap" if memory_mib is not None else ""
    return f"{size.per_gpu} slice(s)/GPU of {size.compute}% ({size.sms} SMs{cap})"


def _run(
    func: Callable[..., Any],
    call: Call,
    inventory: Inventory,
    device: Gpu,
    *,
    fleet: str | None,
    p95_ms: float | None,
    limit: int,
    exhaustive: bool,
    samples: int,
    emit: Callable[[Event], None],
    run_dir: str | None,
    model: str,
    function: str,
    code_hash: str,
) -> Profile:
    if inventory.emulated:
        from gpuslice.mps.control import CONTROL_ENV, EMULATED_PROGRAM

        # This process stops the emulated daemons the workers started.
        os.environ.setdefault(CONTROL_ENV, EMULATED_PROGRAM)
    started = time.perf_counter()
    points: dict[int, Point] = {}
    order: list[int] = []
    remeasured: set[int] = set()
    cap: int | None = None
    with Prober(
        func, call, inventory, gpu=device.index, fleet=fleet, run_dir=run_dir, samples=samples
    ) as prober:

        def measure(size: Size, memory_mib: int | None) -> Point:
            emit(Event("measuring", f"measuring {_describe(size, memory_mib)}", size=size))
            try:
                point = prober.measure(size, memory_mib)
            except ProbeError as err:  # workers did not start: once more, after a pause
                emit(Event("retry", f"{err}; trying this size once more", size=size))
                time.sleep(RETRY_PAUSE_S)
                point = prober.measure(size, memory_mib)
            points[size.per_gpu] = point
            order.append(size.per_gpu)
            if point.failed and not point.samples:
                text = f"{_describe(size, memory_mib)}: failed ({point.error})"
            else:
                text = (
                    f"{_describe(size, memory_mib)}: p50 {point.p50_ms:.1f} ms, p95 "
                    f"{point.p95_ms:.1f} ms, {point.tasks_per_s_per_gpu:.1f} tasks/s per GPU"
                )
            emit(Event("measured", text, size=size, point=point))
            return point

        def check() -> None:
            """Measure again, once, each size slower than a smaller slice (a host stall)."""
            for n in sorted(points):
                suspect = _slower_than_a_smaller_slice(points[n], points.values())
                if suspect and n not in remeasured and n in by_count:
                    remeasured.add(n)
                    size = by_count[n]
                    limit = cap if n > 1 else None
                    emit(Event("retry", f"{_describe(size, limit)}: {suspect}; measuring again"))
                    measure(size, limit)

        whole = candidate_sizes(device.sm_count, 1)[0]
        first = measure(whole, None)
        if first.failed and not first.samples:
            raise ProfileError(
                f"{function} failed with the whole GPU to itself: {first.error}; fix the "
                "function (or its --args-from arguments) and profile again"
            )
        cap = memory_cap_mib(first.peak_memory_mib)
        # As many slices as the planner lets fit: caps plus a context reserve per client.
        fits = slices_that_fit(device.memory_mib, cap) if cap else limit
        grid = candidate_sizes(device.sm_count, max(1, min(limit, fits)))
        by_count = {s.per_gpu: s for s in grid}
        while True:
            measured = {n: p for n, p in points.items() if n in by_count}
            throughput = {
                n: (p.tasks_per_s_per_gpu if feasible(p, p95_ms) else None)
                for n, p in measured.items()
            }
            if exhaustive:
                todo = [s.per_gpu for s in grid if s.per_gpu not in points]
                step = todo[0] if todo else None
            else:
                step = next_count(
                    throughput,
                    grid,
                    p95_ms={n: p.p95_ms for n, p in measured.items() if p.samples},
                    p95_bound_ms=p95_ms,
                )
            if step is None:
                break
            measure(by_count[step], cap)
            check()
    elapsed = time.perf_counter() - started
    ordered = tuple(points[n] for n in sorted(points))
    try:
        recommended = recommend(
            ordered, device, p95_bound_ms=p95_ms, peak_memory_mib=first.peak_memory_mib
        )
    except ValueError as err:
        raise ProfileError(f"{function}: {err}") from err
    return Profile(
        function=function,
        code_hash=code_hash,
        gpu_model=model,
        gpu_name=device.name,
        sm_count=device.sm_count,
        memory_mib=device.memory_mib,
        emulated=inventory.emulated,
        p95_bound_ms=p95_ms,
        max_per_gpu=max(s.per_gpu for s in grid),
        points=ordered,
        order=tuple(order),
        recommended=recommended,
        profiling_s=elapsed,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        args_digest=call.digest(),
        exhaustive=exhaustive,
    )
