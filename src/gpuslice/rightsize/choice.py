"""The recommended slice: compute, memory cap with headroom, slices per GPU, or MIG.

From the measured points (:mod:`gpuslice.rightsize.measure`) :func:`recommend` picks the size
with the most tasks per second per GPU whose p95 latency is within the bound, preferring the
largest slice among those within the knee tolerance
(:func:`gpuslice.rightsize.search.choose_count`).
The slice count already respects the MPS client limit and the memory that fits (the profiler
only measures such sizes).

MIG: a MIG instance isolates SMs, memory bandwidth and L2, so a function that suffers from its
neighbours under MPS may do better in MIG instances even with fewer SMs in all (seven
``1g`` instances of an H100 hold 7 x 16 = 112 of its 132 SMs). Following MISO (Li, Patel,
Samsi, Gadepally, Tiwari, "MISO: Exploiting Multi-Instance GPU Capability on Multi-Tenant
Systems for Machine Learning", SoCC 2022, https://arxiv.org/abs/2207.11428 : "use the
lightweight, more flexible Multi-Process Service (MPS) capability to predict the best MIG
partition"), the profiler does not re-partition the GPU: it predicts each homogeneous MIG
layout from the MPS measurements, taking an instance of ``s`` SMs to run like an MPS slice of
``s`` SMs *alone* (no interference), interpolated in ``1 / sms`` between measured sizes. A MIG
profile is recommended only when that prediction beats the best measured MPS size by
:data:`MIG_MARGIN`, because it is a prediction and because creating instances needs an idle GPU
and root (``gpuslice mig apply``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from gpuslice.hardware.inventory import Gpu
from gpuslice.rightsize.measure import Point
from gpuslice.rightsize.search import KNEE_TOLERANCE, choose_count

__all__ = [
    "HEADROOM",
    "MIG_MARGIN",
    "Recommendation",
    "feasible",
    "memory_cap_mib",
    "recommend",
]

#: Memory cap = peak x (1 + HEADROOM), rounded up to 256 MiB: room for allocator fragmentation
#: and, on a real GPU, for what ``torch.cuda.max_memory_reserved`` does not count (the CUDA
#: context, library workspaces). A choice, not a measurement; raise it with care for
#: functions whose memory depends on their input.
HEADROOM = 0.20
#: Caps are multiples of this (MiB).
CAP_STEP_MIB = 256
#: A predicted MIG layout must beat the best measured MPS size by this fraction.
MIG_MARGIN = 0.10


def memory_cap_mib(peak_mib: int | None) -> int | None:
    """The MPS memory cap for a function whose calls peaked at ``peak_mib`` (None: unknown)."""
    if peak_mib is None or peak_mib <= 0:
        return None
    wanted = peak_mib * (1.0 + HEADROOM)
    return max(CAP_STEP_MIB, math.ceil(wanted / CAP_STEP_MIB) * CAP_STEP_MIB)


@dataclass(frozen=True)
class Recommendation:
    """The slice to run a function in.

    Attributes:
        kind: ``mps`` (MPS slices with limits) or ``mig`` (MIG instances of one profile).
        compute: MPS ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``; for MIG, the instance's SMs as a
            percentage of the GPU's (for comparison only).
        memory_mib: MPS memory cap (peak with headroom), or the MIG instance's memory.
        per_gpu: slices (or instances) per GPU.
        sms: SMs each slice sees.
        mig_profile: the MIG profile, for ``kind == "mig"``.
        tasks_per_s_per_gpu: throughput of a GPU filled with these slices (measured for MPS,
            predicted for MIG).
        p50_ms, p95_ms: latency in the slice (measured for MPS, predicted for MIG).
        meets_bound: False when no size met the p95 bound (the lowest-latency size is given).
        predicted: True when the numbers are a prediction (MIG), not a measurement.
        reason: one sentence saying why this size.
    """

    kind: Literal["mps", "mig"]
    compute: int
    memory_mib: int | None
    per_gpu: int
    sms: int
    mig_profile: str | None
    tasks_per_s_per_gpu: float
    p50_ms: float
    p95_ms: float
    meets_bound: bool
    predicted: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recommendation:
        """From :meth:`to_dict`."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


def feasible(point: Point, p95_bound_ms: float | None) -> bool:
    """Whether a measured size can be used: no failed call and p95 within the bound."""
    if point.failed or point.samples == 0:
        return False
    return p95_bound_ms is None or point.p95_ms <= p95_bound_ms


def _interpolate_alone(points: Sequence[Point], sms: int) -> tuple[float, Point] | None:
    """Latency alone of a slice of ``sms`` SMs, interpolated in 1/sms; and the nearest point."""
    known = sorted(
        (1.0 / p.sms, p) for p in points if p.alone_ms is not None and not p.failed and p.sms > 0
    )
    if not known:
        return None
    x = 1.0 / sms
    if not known[0][0] - 1e-12 <= x <= known[-1][0] + 1e-12:
        return None  # outside the measured range: no extrapolation
    nearest = min(known, key=lambda item: abs(item[0] - x))[1]
    for (x0, p0), (x1, p1) in itertools.pairwise(known):
        if x0 <= x <= x1:
            a0, a1 = p0.alone_ms, p1.alone_ms
            assert a0 is not None
            assert a1 is not None
            if x1 == x0:
                return a0, nearest
            return a0 + (a1 - a0) * (x - x0) / (x1 - x0), nearest
    alone = known[0][1].alone_ms
    assert alone is not None
    return alone, nearest


def _mig_option(
    points: Sequence[Point], gpu: Gpu, cap: int | None, p95_bound_ms: float | None
) -> Recommendation | None:
    """The best homogeneous MIG layout predicted from the MPS points (MISO), if any fits."""
    model = gpu.model
    if model is None or not model.mig:
        return None
    options: list[Recommendation] = []
    for profile in model.mig_profiles:
        if profile.media_extensions or (cap is not None and cap > profile.memory_mib):
            continue
        found = _interpolate_alone(points, profile.sm_count)
        if found is None:
            continue
        alone_ms, nearest = found
        tail = nearest.p95_ms / nearest.p50_ms if nearest.p50_ms > 0 else 1.0
        p95 = alone_ms * tail
        if p95_bound_ms is not None and p95 > p95_bound_ms:
            continue
        options.append(
            Recommendation(
                kind="mig",
                compute=round(100 * profile.sm_count / gpu.sm_count),
                memory_mib=profile.memory_mib,
                per_gpu=profile.max_instances,
                sms=profile.sm_count,
                mig_profile=profile.name,
                tasks_per_s_per_gpu=profile.max_instances * 1000.0 / alone_ms,
                p50_ms=alone_ms,
                p95_ms=p95,
                meets_bound=True,
                predicted=True,
                reason="",
            )
        )
    return max(options, key=lambda r: r.tasks_per_s_per_gpu, default=None)


def _measured(point: Point, cap: int | None, *, meets_bound: bool, reason: str) -> Recommendation:
    """The MPS slice of a measured point, as a recommendation."""
    return Recommendation(
        kind="mps",
        compute=point.compute,
        memory_mib=cap,
        per_gpu=point.per_gpu,
        sms=point.sms,
        mig_profile=None,
        tasks_per_s_per_gpu=point.tasks_per_s_per_gpu,
        p50_ms=point.p50_ms,
        p95_ms=point.p95_ms,
        meets_bound=meets_bound,
        predicted=False,
        reason=reason,
    )


def recommend(
    points: Sequence[Point],
    gpu: Gpu,
    *,
    p95_bound_ms: float | None = None,
    peak_memory_mib: int | None = None,
    tolerance: float = KNEE_TOLERANCE,
) -> Recommendation:
    """The slice to recommend from measured points.

    Args:
        points: the measured sizes.
        gpu: the GPU they were measured on (its model gives the MIG profiles).
        p95_bound_ms: the latency bound, if any.
        peak_memory_mib: the function's peak memory (for the cap); default the points' peak.
        tolerance: the knee tolerance.

    Raises:
        ValueError: no point was measured successfully (every call failed).
    """
    usable = [p for p in points if not p.failed and p.samples > 0]
    if not usable:
        errors = "; ".join(sorted({p.error or "?" for p in points}))
        raise ValueError(f"every measured size failed: {errors}")
    if peak_memory_mib is None:
        peaks = [p.peak_memory_mib for p in usable if p.peak_memory_mib is not None]
        peak_memory_mib = max(peaks) if peaks else None
    cap = memory_cap_mib(peak_memory_mib)
    by_count = {p.per_gpu: p for p in usable}
    throughput = {
        p.per_gpu: (p.tasks_per_s_per_gpu if feasible(p, p95_bound_ms) else None) for p in points
    }
    chosen = choose_count(throughput, tolerance)
    bound_text = f"p95 <= {p95_bound_ms:g} ms" if p95_bound_ms is not None else "no latency bound"
    if chosen is None:
        fastest = min(usable, key=lambda p: p.p95_ms)
        return _measured(
            fastest,
            cap,
            meets_bound=False,
            reason=(
                f"no measured size meets {bound_text}; the lowest p95 "
                f"({fastest.p95_ms:.1f} ms) is {fastest.per_gpu} slice(s) of {fastest.compute}%"
            ),
        )
    point = by_count[chosen]
    best = max(t for t in throughput.values() if t is not None)
    knee = point.tasks_per_s_per_gpu < best
    reason = (
        f"{point.per_gpu} slice(s) of {point.compute}% ({point.sms} SMs) give "
        f"{point.tasks_per_s_per_gpu:.1f} tasks/s per GPU"
        + (
            f", within {tolerance:.0%} of the best measured ({best:.1f}) with larger slices "
            "(the knee)"
            if knee
            else ", the most of any measured size"
        )
        + f", {bound_text}"
    )
    mps = _measured(point, cap, meets_bound=True, reason=reason)
    mig = _mig_option(usable, gpu, cap, p95_bound_ms)
    if mig is not None and mig.tasks_per_s_per_gpu >= mps.tasks_per_s_per_gpu * (1 + MIG_MARGIN):
        gain = mig.tasks_per_s_per_gpu / mps.tasks_per_s_per_gpu - 1
        return Recommendation(
            **{
                **mig.to_dict(),
                "reason": (
                    f"{mig.per_gpu} MIG instances {mig.mig_profile} are predicted (MISO: from the "
                    f"MPS sizes measured alone) to give {mig.tasks_per_s_per_gpu:.1f} tasks/s "
                    f"per GPU, {gain:.0%} over the best MPS size ({mps.per_gpu} x "
                    f"{mps.compute}%), because co-located MPS slices slowed each other"
                ),
            }
        )
    return mps
