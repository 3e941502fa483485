"""Hand-made points and profiles for the right-sizing tests (no measurement involved)."""

from __future__ import annotations

from gpuslice.rightsize.choice import Recommendation
from gpuslice.rightsize.measure import Point
from gpuslice.rightsize.profile import Profile


def point(
    per_gpu: int,
    compute: int,
    sms: int,
    *,
    p50: float,
    p95: float | None = None,
    alone: float | None = None,
    throughput: float | None = None,
    peak: int | None = 1000,
    failed: int = 0,
) -> Point:
    """A point whose throughput is per_gpu slices finishing a call every p50 ms by default."""
    p95 = p95 if p95 is not None else p50 * 1.1
    tps = throughput if throughput is not None else per_gpu * 1000.0 / p50
    return Point(
        per_gpu=per_gpu,
        compute=compute,
        sms=sms,
        memory_mib=None,
        p50_ms=p50,
        p95_ms=p95,
        p25_ms=p50 * 0.95,
        p75_ms=p50 * 1.05,
        p95_low_ms=p95 * 0.97,
        p95_high_ms=p95 * 1.03,
        mean_ms=p50,
        alone_ms=alone if alone is not None else p50,
        tasks_per_s_per_gpu=tps,
        tasks_per_s_spread=tps * 0.01,
        tasks_per_s_observed=tps * 0.95,
        peak_memory_mib=peak,
        samples=24,
        seconds=3.0,
        failed=failed,
    )


def profile_of(
    function: str,
    points: list[Point],
    *,
    code_hash: str = "0123456789abcdef",
    gpu_model: str = "H100-80GB",
    bound: float | None = None,
    per_gpu: int = 1,
    created: str = "2026-11-29T00:00:00+00:00",
) -> Profile:
    """A profile around hand-made points; its recommendation is the point with ``per_gpu``."""
    chosen = next(p for p in points if p.per_gpu == per_gpu)
    rec = Recommendation(
        kind="mps",
        compute=chosen.compute,
        memory_mib=1280,
        per_gpu=chosen.per_gpu,
        sms=chosen.sms,
        mig_profile=None,
        tasks_per_s_per_gpu=chosen.tasks_per_s_per_gpu,
        p50_ms=chosen.p50_ms,
        p95_ms=chosen.p95_ms,
        meets_bound=True,
        predicted=False,
        reason="hand-made",
    )
    return Profile(
        function=function,
        code_hash=code_hash,
        gpu_model=gpu_model,
        gpu_name="NVIDIA H100 80GB HBM3",
        sm_count=132,
        memory_mib=81920,
        emulated=True,
        p95_bound_ms=bound,
        max_per_gpu=16,
        points=tuple(sorted(points, key=lambda p: p.per_gpu)),
        order=tuple(p.per_gpu for p in points),
        recommended=rec,
        profiling_s=12.5,
        created=created,
        args_digest="feedfacefeedface",
    )
