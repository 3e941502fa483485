"""The recommendation: the knee within the bound, the memory cap, and MIG predicted from MPS."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gpuslice.hardware.inventory import Gpu, Inventory
from gpuslice.rightsize.choice import memory_cap_mib, recommend
from tests.rightsize.helpers import point


@pytest.fixture
def h100(fleet: Callable[..., Inventory]) -> Gpu:
    return fleet({"model": "H100-80GB", "count": 1}).gpus[0]


def test_memory_cap_is_peak_plus_a_fifth_in_256_mib_steps() -> None:
    assert memory_cap_mib(1000) == 1280  # 1200 rounded up to 5 x 256
    assert memory_cap_mib(2048) == 2560  # 2457.6 -> 2560
    assert memory_cap_mib(10) == 256
    assert memory_cap_mib(None) is None


def test_recommends_the_largest_slice_within_the_knee_tolerance(h100: Gpu) -> None:
    points = [
        point(1, 100, 132, p50=100.0),  # 10 tasks/s
        point(2, 50, 66, p50=101.0),  # 19.80
        point(4, 25, 32, p50=200.0),  # 20.0: best, but 2 slices are within 3%
    ]
    rec = recommend(points, h100)
    assert (rec.kind, rec.per_gpu, rec.compute, rec.sms) == ("mps", 2, 50, 66)
    assert rec.memory_mib == 1280
    assert "knee" in rec.reason
    assert rec.meets_bound


def test_a_latency_bound_rules_out_the_faster_but_slower_sizes(h100: Gpu) -> None:
    points = [
        point(1, 100, 132, p50=40.0, p95=45.0),  # 25 tasks/s
        point(3, 33, 42, p50=60.0, p95=70.0),  # 50 tasks/s
        point(7, 14, 18, p50=100.0, p95=120.0),  # 70 tasks/s, over the bound
    ]
    rec = recommend(points, h100, p95_bound_ms=80.0)
    assert rec.per_gpu == 3
    assert rec.p95_ms == pytest.approx(70.0)


def test_no_size_within_the_bound_gives_the_lowest_p95_and_says_so(h100: Gpu) -> None:
    points = [point(1, 100, 132, p50=40.0, p95=45.0), point(2, 50, 66, p50=50.0, p95=55.0)]
    rec = recommend(points, h100, p95_bound_ms=10.0)
    assert not rec.meets_bound
    assert rec.per_gpu == 1
    assert "no measured size meets" in rec.reason


def test_every_size_failing_is_an_error(h100: Gpu) -> None:
    with pytest.raises(ValueError, match="every measured size failed"):
        recommend([point(1, 100, 132, p50=1.0, failed=3)], h100)


def test_mig_is_recommended_when_mps_neighbours_slow_each_other(h100: Gpu) -> None:
    # Alone, 10 ms on 132 SMs and 20 ms on 18 SMs; with 7 slices co-located, 80 ms (interference).
    points = [
        point(1, 100, 132, p50=10.0, p95=11.0, alone=10.0),  # 100 tasks/s
        point(7, 14, 18, p50=80.0, p95=88.0, alone=20.0),  # 87.5 tasks/s
    ]
    rec = recommend(points, h100)
    # 1g.20gb has 26 SMs (4 instances): alone latency interpolated in 1/SMs between 1/132 and
    # 1/18: 10 + 10 * (1/26 - 1/132) / (1/18 - 1/132) = 16.437 ms; 4 / 16.437 ms = 243.4/s,
    # the best MIG layout and more than 1.1 x the best MPS size (100/s).
    alone = 10 + 10 * (1 / 26 - 1 / 132) / (1 / 18 - 1 / 132)
    assert rec.kind == "mig"
    assert rec.mig_profile == "1g.20gb"
    assert rec.per_gpu == 4
    assert rec.sms == 26
    assert rec.predicted
    assert rec.tasks_per_s_per_gpu == pytest.approx(4000 / alone)
    assert rec.p95_ms == pytest.approx(alone * 88.0 / 80.0)  # the nearest point's tail
    assert "MISO" in rec.reason


def test_mig_is_not_predicted_outside_the_measured_sizes(h100: Gpu) -> None:
    # Measured only down to 66 SMs: every MIG profile but 7g.80gb (132 SMs) would be an
    # extrapolation, and one 7g instance (100/s) does not beat two MPS slices (200/s).
    points = [point(1, 100, 132, p50=10.0, alone=10.0), point(2, 50, 66, p50=10.0, alone=10.0)]
    rec = recommend(points, h100)
    assert rec.kind == "mps"
    assert rec.per_gpu == 2
