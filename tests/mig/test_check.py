"""`assert_layout`: the MIG diff between a plan and the GPUs, on emulated fleets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from gpuslice.hardware.inventory import Inventory
from gpuslice.mig.check import assert_layout

Fleet = Callable[..., Inventory]


@pytest.fixture
def a100(fleet: Fleet) -> Inventory:
    """One A100-40GB in MIG mode with a 3g.20gb and a 1g.5gb instance."""
    return fleet({"model": "A100-40GB", "mig": ["3g.20gb", "1g.5gb"]})


def test_two_small_instances_wanted_one_present_is_missing_one(a100: Inventory) -> None:
    diff = assert_layout("tiny=2x mig:1g.5gb", a100)
    assert not diff.satisfied
    assert diff.missing == {0: ("1g.5gb",)}
    gpu = diff.gpu(0)
    assert gpu.required == ("1g.5gb", "1g.5gb")
    assert gpu.present == ("1g.5gb", "3g.20gb")
    assert diff.mig_mode_off == ()


def test_mps_inside_an_existing_instance_is_satisfied(a100: Inventory) -> None:
    plan = (
        "version: 1\npools:\n  m: {mig: {profile: 3g.20gb, mps: {compute: 50}, per_instance: 2}}\n"
    )
    diff = assert_layout(plan, a100)
    assert diff.satisfied
    assert diff.missing == {}


def test_instances_the_plan_does_not_use_are_allowed(a100: Inventory) -> None:
    assert assert_layout("tiny=mig:1g.5gb", a100).satisfied


def test_gpu_with_mig_off_is_reported_with_everything_missing(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB"})
    diff = assert_layout("tiny=mig:1g.5gb", inv)
    assert not diff.satisfied
    assert diff.mig_mode_off == (0,)
    assert diff.missing == {0: ("1g.5gb",)}
    assert "nvidia-smi -i 0 -mig 1" in diff.describe()
    assert diff.to_dict()["enable_commands"] == ["nvidia-smi -i 0 -mig 1"]


def test_a_split_gpu_instance_does_not_count_as_the_whole_profile(a100: Inventory) -> None:
    gpu = a100.gpus[0]
    split = tuple(
        replace(d, profile="1c.3g.20gb") if d.profile == "3g.20gb" else d for d in gpu.mig_devices
    )
    inv = replace(a100, gpus=(replace(gpu, mig_devices=split),))
    diff = assert_layout("m=mig:3g.20gb", inv)
    assert diff.missing == {0: ("3g.20gb",)}


def test_plan_without_mig_pools_is_satisfied_with_nothing_to_check(h100x2: Inventory) -> None:
    diff = assert_layout("small=2x mps:25%", h100x2)
    assert diff.satisfied
    assert diff.gpus == ()


def test_json_form_lists_required_present_and_missing(a100: Inventory) -> None:
    data = assert_layout("tiny=2x mig:1g.5gb", a100).to_dict()
    assert data["satisfied"] is False
    assert data["emulated"] is True
    assert data["gpus"][0]["missing"] == ["1g.5gb"]
    assert data["gpus"][0]["present"] == ["1g.5gb", "3g.20gb"]
