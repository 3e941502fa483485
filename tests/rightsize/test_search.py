"""The knee search: candidate sizes, bounds, the choice, and which size comes next."""

from __future__ import annotations

import math

import pytest

from gpuslice.rightsize.search import (
    Size,
    candidate_sizes,
    choose_count,
    fitted_seconds,
    next_count,
    rate_bound,
)

# H100: 132 SMs. A percentage c gives floor(1.32 c / 2) * 2 SMs (at least 2); 100 // c slices.
H100_SMS = 132


def test_candidate_sizes_keep_only_efficient_sizes_of_an_h100() -> None:
    sizes = candidate_sizes(H100_SMS, 48)
    # By hand: 8 x 12% sees 14 SMs, as does 9 x 11%: 8 is dominated. 16 x 6% and 20 x 5% both
    # see 6 SMs: 16 is dominated. 33 x 3% and 48 x 2% both see 2: 33 is dominated.
    assert [(s.per_gpu, s.compute, s.sms) for s in sizes] == [
        (1, 100, 132),
        (2, 50, 66),
        (3, 33, 42),
        (4, 25, 32),
        (5, 20, 26),
        (6, 16, 20),
        (7, 14, 18),
        (9, 11, 14),
        (10, 10, 12),
        (12, 8, 10),
        (14, 7, 8),
        (20, 5, 6),
        (25, 4, 4),
        (48, 2, 2),
    ]


def test_candidate_sizes_respect_the_cap_on_slices() -> None:
    sizes = candidate_sizes(H100_SMS, 16)
    assert [s.per_gpu for s in sizes] == [1, 2, 3, 4, 5, 6, 7, 9, 10, 12, 14, 16]
    assert sizes[-1] == Size(16, 6, 6)  # the largest percentage that still gives 16 slices
    assert all(s.per_gpu * s.compute <= 100 for s in sizes)
    assert candidate_sizes(H100_SMS, 0) == []


def test_rate_bound_combines_monotone_linear_and_concave_limits() -> None:
    linear = [(10, 1.0), (20, 2.0)]
    assert rate_bound(30, linear) == pytest.approx(3.0)  # 2 + 0.1 * 10, and 1 * 30 / 10
    assert rate_bound(15, linear) == pytest.approx(1.5)  # at most linear from 10 SMs
    flat = [(10, 1.0), (20, 1.0)]
    assert rate_bound(40, flat) == pytest.approx(1.0)  # the flat secant, extended
    assert rate_bound(5, flat) == pytest.approx(1.0)  # monotone: never above a larger slice
    assert rate_bound(5, []) == math.inf


def test_choose_count_takes_the_largest_slice_within_the_tolerance() -> None:
    # best 20.0; 19.8 >= 0.97 * 20 = 19.4, so 2 slices (larger) win over 4
    assert choose_count({1: 10.0, 2: 19.8, 4: 20.0}) == 2
    assert choose_count({1: 10.0, 2: 19.0, 4: 20.0}) == 4
    assert choose_count({1: 10.0, 4: None}) == 1
    assert choose_count({1: None}) is None


def test_search_measures_the_whole_gpu_then_the_smallest_slice() -> None:
    grid = candidate_sizes(H100_SMS, 16)
    assert next_count({}, grid) == 1
    assert next_count({1: 10.0}, grid) == 16


def test_search_stops_at_once_for_a_function_that_uses_every_sm() -> None:
    # Per-slice rate proportional to SMs: 10 tasks/s on the whole GPU, so a GPU filled with
    # n slices of s SMs does 10 * n * s / 132 <= 10: no size beats one slice.
    grid = candidate_sizes(H100_SMS, 16)
    measured = {1: 10.0, 16: 10.0 * 16 * 6 / 132}
    assert next_count(measured, grid) is None
    assert choose_count(measured) == 1


def test_search_goes_where_the_latency_bound_is_predicted_to_hold() -> None:
    grid = candidate_sizes(H100_SMS, 16)
    # p95 50 ms on 132 SMs, 400 ms on 6 SMs (16 slices, over the 100 ms bound). Interpolated
    # in 1/SMs: 42 SMs (3 slices) -> 85.7 ms, 32 SMs (4 slices) -> 102.1 ms. Every unmeasured
    # size could beat the whole GPU (bound n * 10), so the largest bound within the latency
    # bound wins: 3 slices.
    nxt = next_count({1: 10.0, 16: None}, grid, p95_ms={1: 50.0, 16: 400.0}, p95_bound_ms=100.0)
    assert nxt == 3


def test_search_does_not_measure_below_an_infeasible_size() -> None:
    grid = candidate_sizes(H100_SMS, 16)
    # 4 slices were over the bound: 5..16 are smaller slices, so they are over it too.
    measured = {1: 10.0, 16: None, 3: 29.0, 4: None}
    nxt = next_count(
        measured, grid, p95_ms={1: 50.0, 16: 400.0, 3: 90.0, 4: 110.0}, p95_bound_ms=100.0
    )
    assert nxt == 2 or nxt is None
    assert all(n < 4 for n in [nxt] if n is not None)


def test_the_fitted_curve_is_amdahl_with_a_knee() -> None:
    # Two small slices on the slope: t = a + b / s with t(10) = 0.3 and t(20) = 0.2 gives
    # b = 0.1 / (1/10 - 1/20) = 2, a = 0.1. The whole GPU (132 SMs) took 0.15: the knee is
    # where 0.1 + 2 / s = 0.15, s = 40 SMs; past it the time stays 0.15.
    measured = [(10, 0.3), (20, 0.2), (132, 0.15)]
    assert fitted_seconds(14, measured) == pytest.approx(0.1 + 2 / 14)
    assert fitted_seconds(66, measured) == pytest.approx(0.15)
    # Two points: the straight line in 1/s between them (here no knee).
    assert fitted_seconds(66, [(6, 0.4), (132, 0.1)]) == pytest.approx(
        0.4 + (0.1 - 0.4) * (1 / 66 - 1 / 6) / (1 / 132 - 1 / 6)
    )


def test_the_search_refines_next_to_the_best_and_stops_on_its_bounds() -> None:
    grid = candidate_sizes(H100_SMS, 16)
    by = {s.per_gpu: s for s in grid}

    # Time per call: 0.1 + 2 / s seconds below 40 SMs, 0.15 above (the curve of the test
    # above). Measured: the whole GPU (6.67/s), 16 slices of 6 SMs (36.9/s), 12 of 10 (40.0/s).
    def t(s: int) -> float:
        return max(0.15, 0.1 + 2 / s)

    measured = {n: n / t(by[n].sms) for n in (1, 16, 12)}
    # Only 14 slices (8 SMs) could beat 12 by more than 5%: the secant through 10 and 132 SMs,
    # extended down, bounds one slice at 3.33 - 2 * (6.67 - 3.33) / 122 = 3.28/s, so 14
    # slices at 45.9/s (>= 42.0). 9 slices (14 SMs): the secant through 6 and 10 SMs extended
    # up gives 4.36/s, 39.2/s for 9 slices: neither better by 5% nor within 3% (38.8/s).
    assert next_count(measured, grid) == 14
    measured[14] = 14 / t(8)  # 40.0/s, as good as 12 slices
    assert next_count(measured, grid) is None
    assert choose_count(measured) == 12  # the larger slice of the two


def test_with_a_latency_bound_the_smallest_slice_could_miss_the_middle_comes_second() -> None:
    grid = candidate_sizes(H100_SMS, 16)  # 12 sizes; the middle one (index 6) is 7 x 14%
    assert [s.per_gpu for s in grid][6] == 7
    # 50 ms on 132 SMs; the smallest slice has 6 SMs, so at most 50 * 132 / 6 = 1100 ms:
    # a 100 ms bound may cut the grid, a 2000 ms bound cannot.
    assert next_count({1: 10.0}, grid, p95_ms={1: 50.0}, p95_bound_ms=100.0) == 7
    assert next_count({1: 10.0}, grid, p95_ms={1: 50.0}, p95_bound_ms=2000.0) == 16
    assert next_count({1: 10.0}, grid, p95_ms={1: 50.0}) == 16


def test_a_middle_slice_over_the_bound_rules_out_every_smaller_slice() -> None:
    grid = candidate_sizes(H100_SMS, 16)
    # 7 x 18 SMs took 150 ms: 5 and 6 (smaller slices) are over the bound unmeasured. Of 2..4,
    # p95 interpolated in 1/SMs between 50 ms (132 SMs) and 150 ms (18 SMs) puts 4 x 32 SMs
    # at 99.4 ms, within it; with one feasible size every bound is n x 10/s, so 4 comes next.
    nxt = next_count({1: 10.0, 7: None}, grid, p95_ms={1: 50.0, 7: 150.0}, p95_bound_ms=100.0)
    assert nxt == 4


def test_with_only_the_knee_open_the_size_expected_best_is_measured() -> None:
    grid = candidate_sizes(H100_SMS, 16)
    # A call takes max(1/12, 3 / s) seconds on s SMs: 12/s on the whole GPU; 16 x 6 SMs give
    # 16 * 6 / 3 = 32/s, 7 x 18 SMs 42/s. The fit through 6 and 18 SMs is exactly 3 / s,
    # flat at 1/12 s; the bounds (at most linear from 6 SMs) give the same: 4 x 32 SMs
    # 42.67/s, 5 x 26 SMs 43.33/s. Neither beats 42 by 5% (44.1); both are larger slices than
    # the choice within 3% of it (40.74). 5 x 20% is expected best: measured, it either
    # becomes the best (and 4 x 25% is judged against a measurement) or settles the knee.
    measured = {1: 12.0, 16: 32.0, 7: 42.0}
    assert choose_count(measured) == 7
    assert next_count(measured, grid) == 5
