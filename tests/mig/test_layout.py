"""Which MIG instances a plan needs on which GPU, and which are there."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gpuslice.errors import PlanError
from gpuslice.hardware.inventory import Inventory
from gpuslice.mig.layout import current_instances, gi_profile, required_instances

Fleet = Callable[..., Inventory]


def test_count_is_instances_on_every_targeted_gpu(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "count": 2, "mig": ["3g.20gb"]})
    assert required_instances("tiny=2x mig:1g.5gb", inv) == {
        0: ["1g.5gb", "1g.5gb"],
        1: ["1g.5gb", "1g.5gb"],
    }


def test_without_count_only_gpus_in_mig_mode_need_one(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": ["3g.20gb"]}, {"model": "A100-40GB"})
    assert required_instances("tiny=mig:1g.5gb", inv) == {0: ["1g.5gb"]}


def test_without_count_and_no_gpu_in_mig_mode_every_capable_gpu_needs_one(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "count": 2}, {"model": "L4"})
    assert required_instances("tiny=mig:1g.5gb", inv) == {0: ["1g.5gb"], 1: ["1g.5gb"]}


def test_gpus_whose_model_lacks_the_profile_are_not_targeted(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": []}, {"model": "H100-80GB", "mig": []})
    assert required_instances("tiny=mig:1g.5gb", inv) == {0: ["1g.5gb"]}


def test_explicit_pool_gpus_each_need_one(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "count": 3, "mig": ["3g.20gb"]})
    plan = "version: 1\npools:\n  t: {mig: 1g.5gb, gpus: [1, 2]}\n"
    assert required_instances(plan, inv) == {1: ["1g.5gb"], 2: ["1g.5gb"]}


def test_pools_of_one_profile_on_one_gpu_add_up(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": []})
    plan = "version: 1\npools:\n  a: {mig: {profile: 1g.5gb, count: 2}}\n  b: {mig: {profile: 1g.5gb, count: 1}}\n"
    assert required_instances(plan, inv) == {0: ["1g.5gb", "1g.5gb", "1g.5gb"]}


def test_plan_without_mig_pools_needs_nothing(h100x2: Inventory) -> None:
    assert required_instances("small=2x mps:25%", h100x2) == {}


def test_explicit_gpu_without_mig_is_refused(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": []}, {"model": "L4"})
    plan = "version: 1\npools:\n  t: {mig: 1g.5gb, gpus: [0, 1]}\n"
    with pytest.raises(PlanError, match="GPU 1 \\(L4\\) has no MIG"):
        required_instances(plan, inv)


def test_explicit_unknown_gpu_is_refused(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": []})
    plan = "version: 1\npools:\n  t: {mig: 1g.5gb, gpus: [7]}\n"
    with pytest.raises(PlanError, match="no GPU 7 here"):
        required_instances(plan, inv)


def test_profile_no_gpu_has_is_refused(h100x2: Inventory) -> None:
    with pytest.raises(PlanError, match=r"no GPU here can hold a 1g\.5gb"):
        required_instances("tiny=mig:1g.5gb", h100x2)


def test_current_instances_lists_every_gpu(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": ["3g.20gb", "1g.5gb"]}, {"model": "H100-80GB"})
    assert current_instances(inv) == {0: ["1g.5gb", "3g.20gb"], 1: []}


def test_split_compute_instance_names_map_to_their_gpu_instance_profile() -> None:
    assert gi_profile("1c.3g.20gb") == "3g.20gb"
    assert gi_profile("3g.20gb") == "3g.20gb"
