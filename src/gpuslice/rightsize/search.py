"""Which slice sizes to measure: a knee search that stops when no new point could change the choice.

The profiler fills a GPU with equal MPS slices of one size and measures the tasks per second
the GPU completes. It wants the size with the most tasks per second per GPU within the latency
bound; among sizes within :data:`KNEE_TOLERANCE` of that best, the largest slice, because it
has the lowest latency for the same throughput. That size is the *knee* of GSLICE and D-STACK:
the GPU percentage beyond which more SMs buy a function almost nothing (Dhakal, Kulkarni,
Ramakrishnan, "GSLICE: controlled spatial sharing of GPUs for a scalable inference platform",
SoCC 2020, https://doi.org/10.1145/3419111.3421284 ; "D-STACK: High Throughput DNN Inference by
Effective Multiplexing and Spatio-Temporal Scheduling of GPUs", https://arxiv.org/abs/2304.13541 ,
which calls it the "Knee"). Those systems find it from latency against GPU% measured alone;
here the throughput of the filled GPU is measured, so interference between co-located slices is
in the numbers.

**Sizes** (:func:`candidate_sizes`). A slice of ``c`` percent sees the SMs MPS grants for
``c`` (rounded down to SM pairs), and ``100 // c`` of them fill the GPU. Many percentages give
the same SMs or the same count, so only the efficient ones are kept: no other size has as
many slices and more SMs each, or as many SMs and more slices. On an H100 (132 SMs) that is
1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 14, 20, 25, 33 slices per GPU.

**Bounds** (this module's own rule, written down so it can be checked). Throughput of a filled
GPU is ``T = n(s) * r(s)``: the number of slices of ``s`` SMs, known exactly, times the rate of
one slice. The per-slice rate is assumed

1. *monotone*: more SMs are never slower, ``r(s) <= r(s')`` for ``s < s'``;
2. *at most linear*: ``k`` times the SMs are at most ``k`` times faster,
   ``r(s) <= r(s0) * s / s0`` for ``s > s0``; and
3. *concave*: each added SM buys no more than the one before (kernels that fit in fewer SMs
   gain nothing from more: the knee).

From the sizes measured so far these give an upper bound on ``T`` at every unmeasured size.
A size is measured only if it could change the choice: its bound beats the choice's
throughput by more than :data:`NOISE_MARGIN` (so, under the assumptions, nothing unmeasured
is more than 5% better than the choice), or it is a larger slice that both its bound and the
fitted curve (:func:`fitted_seconds`, Amdahl's law with a knee) put within the knee tolerance
of the best. Among those, the largest slice the fitted curve predicts within the tolerance of
its best prediction is measured next, skipping
sizes whose p95, interpolated linearly in ``1 / sms`` between measured sizes, is over the
bound. Latency grows as slices shrink, so a size over the latency bound makes every smaller
slice infeasible too, and they are not measured.

**Order** (what to measure first; it never decides when to stop). The whole GPU, then the
smallest slice, whose filled throughput bounds the small-slice end. With a latency bound that
the smallest slice could miss (the whole GPU's p95 times the SMs it loses, the most an at most
linear slowdown allows, is over the bound), the middle of the grid comes second instead: one
probe there either rules out every smaller slice at once (over the bound) or leaves the
smallest slice next, as without a bound; a bisection for where the bound is crossed. Once no
unmeasured size could beat the choice by the noise margin and only the knee is open (larger
slices predicted as good), the one expected best (its prediction capped by its bound) is
measured: if it is the new best, the tolerance window moves up with it and the others it
leaves need no measurement.

Measuring costs most where the slices are many (each is a Parsl worker to start), so the
bounds, not the fit, decide that the small-slice end need not be measured again.

What it cannot see: a curve that breaks the assumptions by more than the noise margin (for
example interference that makes mid-sized slices slower than small ones). The benchmark
``benchmarks/rightsize_sweep.py`` checks the choice against an exhaustive sweep.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpuslice.mps.limits import visible_sm_count

__all__ = [
    "KNEE_TOLERANCE",
    "NOISE_MARGIN",
    "Size",
    "candidate_sizes",
    "choose_count",
    "fitted_seconds",
    "next_count",
    "rate_bound",
]

#: Sizes whose throughput is within this fraction of the best are "as good": the largest slice
#: among them is chosen (the knee).
KNEE_TOLERANCE = 0.03

#: Measured throughputs on a shared machine (or a real GPU with clocks and caches) vary by a
#: few percent; bounds are raised by this much before deciding a size cannot matter.
NOISE_MARGIN = 0.05


@dataclass(frozen=True, order=True)
class Size:
    """A GPU filled with equal MPS slices.

    Attributes:
        per_gpu: slices on the GPU.
        compute: each slice's ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``.
        sms: SMs each slice sees.
    """

    per_gpu: int
    compute: int
    sms: int


def candidate_sizes(sm_count: int, max_per_gpu: int) -> list[Size]:
    """The efficient sizes for a GPU of ``sm_count`` SMs, fewest slices (largest) first.

    Args:
        sm_count: SMs of the GPU.
        max_per_gpu: most slices allowed (MPS clients, memory, the user's cap).

    Returns:
        Sizes such that no other size has at least as many slices and as many SMs each with
        one of them more. Percentages sum to at most 100.
    """
    if max_per_gpu < 1:
        return []
    options: dict[tuple[int, int], Size] = {}
    for compute in range(100, 0, -1):
        n = min(100 // compute, max_per_gpu)
        sms = visible_sm_count(sm_count, compute)
        key = (n, sms)
        if key not in options:  # the largest percentage giving this (n, sms): the first seen
            options[key] = Size(n, compute, sms)
    sizes = list(options.values())
    efficient = [
        a
        for a in sizes
        if not any(
            b.per_gpu >= a.per_gpu and b.sms >= a.sms and (b.per_gpu, b.sms) != (a.per_gpu, a.sms)
            for b in sizes
        )
    ]
    return sorted(efficient)


def choose_count(
    throughput: Mapping[int, float | None], tolerance: float = KNEE_TOLERANCE
) -> int | None:
    """The chosen slices per GPU: fewest slices within ``tolerance`` of the best throughput.

    Args:
        throughput: slices per GPU -> measured tasks/s per GPU, or None where that size is
            infeasible (over the latency bound, out of memory, failed).
        tolerance: the knee tolerance.

    Returns:
        The chosen ``n``, or None when no measured size is feasible.
    """
    feasible = {n: t for n, t in throughput.items() if t is not None}
    if not feasible:
        return None
    best = max(feasible.values())
    return min(n for n, t in feasible.items() if t >= (1.0 - tolerance) * best)


def rate_bound(sms: int, measured: Sequence[tuple[int, float]]) -> float:
    """Highest per-slice rate a slice of ``sms`` SMs could have (see the module docstring).

    Args:
        sms: SMs of an unmeasured size.
        measured: ``(sms, per-slice rate)`` of measured feasible sizes, ``sms`` not among them.

    Returns:
        The bound; ``math.inf`` when nothing measured constrains it.
    """
    points = sorted(measured)
    bound = math.inf
    for s, r in points:
        # Larger measured slice: monotone. Smaller: at most linear.
        bound = min(bound, r) if s > sms else min(bound, r * sms / s)
    below = [p for p in points if p[0] < sms]
    above = [p for p in points if p[0] > sms]
    if len(below) >= 2:  # concave: the secant just below, extended up
        (s0, r0), (s1, r1) = below[-2], below[-1]
        bound = min(bound, r1 + (r1 - r0) / (s1 - s0) * (sms - s1))
    if len(above) >= 2:  # concave: the secant just above, extended down
        (s0, r0), (s1, r1) = above[0], above[1]
        bound = min(bound, r0 - (r1 - r0) / (s1 - s0) * (s0 - sms))
    return bound


def _interpolate(x: float, known: Sequence[tuple[float, float]]) -> float:
    """Piecewise-linear interpolation of ``known`` (sorted by x) at ``x``, flat beyond the ends.

    Latency is interpolated in ``1 / sms``: the Amdahl form ``t = a + b / sms`` (a part that
    does not scale with SMs, a part that does) is a straight line there. An interpolated
    latency only steers which size is measured next; it never decides when to stop.
    """
    if x <= known[0][0]:
        return known[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(known):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return known[-1][1]


def fitted_seconds(sms: int, measured: Sequence[tuple[int, float]]) -> float:
    """Time per call of one slice of ``sms`` SMs predicted by Amdahl's law with a knee.

    ``t(s) = max(t_flat, a + b / s)``: a part ``a`` that more SMs do not speed up (host time,
    launch gaps), a part ``b / s`` that they do (Amdahl, "Validity of the single processor
    approach to achieving large scale computing capabilities", AFIPS 1967), and no gain past
    the SMs the kernels can fill (the knee; D-STACK models the parallelism a DNN can use in the
    same spirit). ``a`` and ``b`` come from the two smallest measured slices, ``t_flat`` from
    the largest; with only two points it is the straight line between them in ``1 / s``. It
    chooses where to measure next and whether a larger slice looks as good; it never decides
    that no size could beat the choice (the bounds do).

    Args:
        sms: SMs of the slice to predict.
        measured: ``(sms, seconds per call of one slice)`` of measured feasible sizes.
    """
    points = sorted(measured)
    if len(points) == 1:
        return points[0][1]
    (s_a, t_a), (s_b, t_b) = points[0], points[1]
    b = max(0.0, (t_a - t_b) / (1.0 / s_a - 1.0 / s_b))
    a = t_a - b / s_a
    return max(points[-1][1], a + b / sms)


def next_count(
    throughput: Mapping[int, float | None],
    candidates: Sequence[Size],
    *,
    p95_ms: Mapping[int, float] | None = None,
    p95_bound_ms: float | None = None,
    tolerance: float = KNEE_TOLERANCE,
    margin: float = NOISE_MARGIN,
) -> int | None:
    """The next number of slices per GPU to measure, or None when the choice is settled.

    Args:
        throughput: slices per GPU -> tasks/s per GPU measured so far, None where infeasible.
        candidates: the sizes the search may measure (:func:`candidate_sizes`).
        p95_ms: measured p95 latency per size, to predict where the latency bound is crossed.
        p95_bound_ms: the latency bound, if any.
        tolerance: the knee tolerance.
        margin: how much an unmeasured size must be able to beat the choice by (its bound
            over the choice's throughput) to be measured.

    Returns:
        The whole GPU first (the reference, and the function's memory), then the smallest
        slice (the middle of the grid first where the latency bound may cut the grid), then,
        among sizes that could still change the choice, the largest slice the fitted curve
        predicts within the knee tolerance of the best prediction (only the knee open: the
        size predicted best), skipping sizes whose p95, interpolated linearly in ``1 / sms``
        between measured sizes, is over the bound (if all are, the largest of them); None
        when no unmeasured size could change :func:`choose_count`'s answer.
    """
    grid = sorted(candidates)
    if not grid:
        return None
    if grid[0].per_gpu not in throughput:
        return grid[0].per_gpu
    infeasible = [n for n, t in throughput.items() if t is None]
    limit = min(infeasible) if infeasible else math.inf
    open_ = [g for g in grid if g.per_gpu not in throughput and g.per_gpu < limit]
    feasible = {n: t for n, t in throughput.items() if t is not None}
    if not open_ or not feasible:
        return None  # all measured, or even the whole GPU is infeasible
    if len(throughput) == 1 and _bound_may_cut(grid, p95_ms, p95_bound_ms):
        return grid[len(grid) // 2].per_gpu  # bisect for where the latency bound is crossed
    if not infeasible and grid[-1].per_gpu not in throughput:
        return grid[-1].per_gpu  # the other end of the range
    by_count = {g.per_gpu: g for g in grid}
    rates = [(by_count[n].sms, t / n) for n, t in feasible.items() if n in by_count]
    choice = choose_count(throughput, tolerance)
    assert choice is not None  # there is a feasible size
    choice_t = feasible[choice]
    best = max(feasible.values())
    measured = {n: t for n, t in feasible.items() if n in by_count}
    speed = sorted((1.0 / by_count[n].sms, n / t) for n, t in measured.items() if t > 0)
    measured_speed = [(by_count[n].sms, n / t) for n, t in measured.items() if t > 0]
    latency = sorted((1.0 / by_count[n].sms, p) for n, p in (p95_ms or {}).items() if n in by_count)
    promising: list[tuple[float, float, int, bool]] = []  # predicted, bound, n, could beat
    for size in open_:
        bound = size.per_gpu * rate_bound(size.sms, rates)
        predicted = size.per_gpu / fitted_seconds(size.sms, measured_speed) if speed else bound
        beats = bound >= choice_t * (1.0 + margin)
        larger_and_as_good = (
            size.per_gpu < choice and min(bound, predicted) >= (1.0 - tolerance) * best
        )
        if beats or larger_and_as_good:
            promising.append((predicted, bound, size.per_gpu, beats))
    if not promising:
        return None
    within = [
        (predicted, bound, n, beats)
        for predicted, bound, n, beats in promising
        if p95_bound_ms is None
        or not latency
        or _interpolate(1.0 / by_count[n].sms, latency) <= p95_bound_ms
    ]
    if not within:
        return min(n for _, _, n, _ in promising)  # the largest slice left: closest to the bound
    if not any(beats for _, _, _, beats in within):
        # Only the knee is open: the larger slice expected best, its prediction capped by its
        # bound (ties: the larger slice).
        return max(within, key=lambda c: (min(c[0], c[1]), -c[2]))[2]
    # The knee again: among sizes predicted within the tolerance of the best prediction, the
    # largest slice (on a plateau it settles the choice with the fewest workers).
    top = max(predicted for predicted, _, _, _ in within)
    return min(n for predicted, _, n, _ in within if predicted >= (1.0 - tolerance) * top)


def _bound_may_cut(
    grid: Sequence[Size], p95_ms: Mapping[int, float] | None, p95_bound_ms: float | None
) -> bool:
    """Whether the latency bound could rule out the grid's smallest slice, seen from the whole GPU.

    Latency grows at most linearly as SMs shrink (the second assumption read for time), so the
    smallest slice's p95 is at most the whole GPU's times the SM ratio; only if that is over
    the bound can a middle probe rule anything out.
    """
    whole, smallest = grid[0], grid[-1]
    if p95_bound_ms is None or p95_ms is None or whole.per_gpu not in p95_ms or len(grid) < 3:
        return False
    return p95_ms[whole.per_gpu] * whole.sms / smallest.sms > p95_bound_ms
