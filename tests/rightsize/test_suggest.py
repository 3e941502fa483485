"""plan suggest: packing profiled functions in proportion to their calls, as a checkable plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuslice.errors import UsageError
from gpuslice.hardware.inventory import discover
from gpuslice.plan.load import load_plan
from gpuslice.plan.resolve import resolve
from gpuslice.rightsize.measure import Point
from gpuslice.rightsize.suggest import pool_name, suggest_plan
from tests.rightsize.helpers import point, profile_of

FLEET = str(Path(__file__).resolve().parents[2] / "src/gpuslice/examples/fleet-1xh100.yaml")


def _compute_bound() -> object:
    # One slice's call takes 13.2 / SMs seconds: 100 ms on 132 SMs (10 calls/s), linear in SMs.
    return profile_of(
        "mod:alpha",
        [
            point(1, 100, 132, p50=100.0),
            point(2, 50, 66, p50=200.0),
            point(4, 25, 32, p50=412.5),
        ],
    )


def _light() -> object:
    # 100 ms per call on any slice of 20 SMs or more; never measured below 20 SMs.
    return profile_of(
        "mod:beta",
        [point(1, 100, 132, p50=100.0), point(2, 50, 66, p50=100.0), point(6, 16, 20, p50=100.0)],
    )


def test_the_light_function_gets_its_smallest_full_speed_slice_and_the_rest_goes_to_the_heavy() -> (
    None
):
    suggestion = suggest_plan([_compute_bound(), _light()], {"alpha": 0.5, "beta": 0.5})  # type: ignore[list-item]
    alpha, beta = suggestion.pools
    # beta: 10 calls/s from one 16% slice (20 SMs), its smallest measured slice. alpha gets
    # the other 84%: 110 SMs, 13.2 / 110 s per call = 8.33 calls/s. Shares are equal, so the
    # mix runs at min(8.33, 10) / 0.5 = 16.67 tasks/s per GPU. One more percent for alpha
    # would exceed 100%, and two alpha slices of 43% (56 SMs each) would need 86% + 16%.
    assert (beta.per_gpu, beta.compute, beta.sms) == (1, 16, 20)
    assert (alpha.per_gpu, alpha.compute, alpha.sms) == (1, 84, 110)
    # The plan counts what a slice delivered through Parsl: the helper's points delivered 95%
    # of their in-slice rate, alike for every size, so the packing is the same, the rates 0.95x.
    assert alpha.tasks_per_s_per_slice == pytest.approx(0.95 * 110 / 13.2)
    assert suggestion.tasks_per_s_per_gpu == pytest.approx(0.95 * 2 * 110 / 13.2)
    assert alpha.p95_ms == pytest.approx(1.1 * 13.2 * 1000 / 110)
    assert suggestion.routes == {"mod:alpha": "alpha", "mod:beta": "beta"}


def test_the_suggested_plan_passes_plan_check_and_explains_each_pool() -> None:
    suggestion = suggest_plan([_compute_bound(), _light()], {"mod:alpha": 3, "mod:beta": 1}, gpus=1)  # type: ignore[list-item]
    layout = resolve(load_plan(suggestion.yaml), discover(FLEET))
    assert {p.name for p in layout.pools} == {"alpha", "beta"}
    assert sum(s.compute or 0 for s in layout.slices) <= 100
    assert "# alpha: mod:alpha (code 0123456789abcdef)" in suggestion.yaml
    assert "memory cap = peak 1000MiB + 20% headroom" in suggestion.yaml
    assert "measured at" in suggestion.yaml or "interpolated between" in suggestion.yaml
    assert suggestion.plan["gpus"] == [0]


def test_a_latency_bound_that_leaves_no_room_is_refused_with_the_reason() -> None:
    # alpha's p95 is 1.1 * 13.2 s / SMs: under 120 ms it needs 122 SMs (93%), beta needs 16%.
    with pytest.raises(UsageError, match="do not fit on one GPU together"):
        suggest_plan([_compute_bound(), _light()], p95_ms={"alpha": 120.0})  # type: ignore[list-item]


def test_a_bound_no_slice_meets_is_refused() -> None:
    with pytest.raises(UsageError, match="no measured slice meets its p95 bound of 50 ms"):
        suggest_plan([_light()], p95_ms={"beta": 50.0})  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("mix", "message"),
    [
        ({"gamma": 1.0, "alpha": 1.0, "beta": 1.0}, "not one of the functions"),
        ({"alpha": 1.0}, "gives no share for mod:beta"),
        ({"alpha": 0.0, "beta": 1.0}, "must be above 0"),
    ],
)
def test_bad_mixes_are_usage_errors(mix: dict[str, float], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        suggest_plan([_compute_bound(), _light()], mix)  # type: ignore[list-item]


def test_profiles_of_different_gpu_models_are_refused() -> None:
    other = profile_of("mod:beta", [point(1, 100, 132, p50=100.0)], gpu_model="A100-40GB")
    with pytest.raises(UsageError, match="different GPU models"):
        suggest_plan([_compute_bound(), other])  # type: ignore[list-item]


def test_pool_names_are_valid_labels_and_unique() -> None:
    taken: set[str] = set()
    assert pool_name("pkg.mod:Model.predict", taken) == "predict"
    assert pool_name("other:predict", taken) == "predict-2"
    assert pool_name("m:_private", taken) == "f_private"


def test_equal_throughput_goes_to_fewer_larger_slices() -> None:
    # alpha alone: one 100% slice (132 SMs) and two 50% slices (2 x 66 SMs) give the same
    # 10 calls/s; the plan takes the one slice (lower latency, fewer MPS clients).
    suggestion = suggest_plan([_compute_bound()])  # type: ignore[list-item]
    (alpha,) = suggestion.pools
    assert (alpha.per_gpu, alpha.compute) == (1, 100)
    assert suggestion.tasks_per_s_per_gpu == pytest.approx(0.95 * 10.0)


def test_the_plan_counts_what_slices_delivered_through_parsl() -> None:
    # In the slice, one 100% slice and seven 14% slices both do 10 calls/s; through Parsl the
    # single slice with its short calls delivered 7/s (each call waited for the next), the
    # seven 9.8/s. The plan takes the seven.
    points = [
        point(1, 100, 132, p50=100.0, throughput=10.0),
        point(7, 14, 18, p50=700.0, throughput=10.0),
    ]
    points = [
        Point.from_dict({**points[0].to_dict(), "tasks_per_s_observed": 7.0}),
        Point.from_dict({**points[1].to_dict(), "tasks_per_s_observed": 9.8}),
    ]
    (only,) = suggest_plan([profile_of("mod:gamma", points)]).pools
    assert (only.per_gpu, only.compute) == (7, 14)
    assert only.tasks_per_s_per_slice == pytest.approx(9.8 / 7)
