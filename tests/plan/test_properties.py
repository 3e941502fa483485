"""Properties of resolve() over generated plans and fleets (hypothesis)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gpuslice import Layout, PlanError, resolve
from gpuslice.hardware.catalog import MODELS
from gpuslice.hardware.fleet import fleet_from_data
from gpuslice.hardware.inventory import Inventory

WHOLE = ["H100-80GB", "A100-40GB", "L4", "V100-16GB", "H200-141GB"]
MIG_LAYOUTS = {
    "A100-40GB": [
        ["1g.5gb"] * 7,
        ["3g.20gb", "2g.10gb", "1g.5gb", "1g.5gb"],
        ["4g.20gb", "3g.20gb"],
    ],
    "H100-80GB": [["1g.10gb"] * 7, ["3g.40gb", "3g.40gb"], ["2g.20gb", "2g.20gb", "2g.20gb"]],
}

fleets = st.lists(
    st.one_of(
        st.builds(lambda m, n: {"model": m, "count": n}, st.sampled_from(WHOLE), st.integers(1, 3)),
        st.sampled_from(
            [(m, layout) for m, layouts in MIG_LAYOUTS.items() for layout in layouts]
        ).map(lambda pair: {"model": pair[0], "mig": pair[1]}),
    ),
    min_size=1,
    max_size=4,
)

mps_specs = st.fixed_dictionaries(
    {},
    optional={
        "compute": st.integers(1, 100),
        "memory": st.sampled_from(["512MiB", "4GiB", "10GiB", "20GiB", "41GiB"]),
    },
)
whole_pools = st.one_of(
    st.fixed_dictionaries({"mps": mps_specs, "per_gpu": st.integers(1, 8)}),
    st.fixed_dictionaries({"share": st.just({}), "per_gpu": st.integers(1, 4)}),
)
mig_pools = st.builds(
    lambda profile, mps, per: {
        "mig": {
            "profile": profile,
            **({"mps": mps, "per_instance": per} if mps is not None else {}),
        }
    },
    st.sampled_from(["1g.5gb", "3g.20gb", "2g.10gb", "1g.10gb", "3g.40gb", "2g.20gb"]),
    st.one_of(st.none(), mps_specs),
    st.integers(1, 3),
)
plans = st.builds(
    lambda pools, over: {
        "version": 1,
        "oversubscribe": over,
        "pools": {f"p{i}": p for i, p in enumerate(pools)},
    },
    st.lists(st.one_of(whole_pools, mig_pools), min_size=1, max_size=4),
    st.booleans(),
)


def _accepted(plan: dict[str, Any], fleet: list[dict[str, Any]]) -> tuple[Layout, Inventory] | None:
    inventory = fleet_from_data({"gpus": fleet}, source="fleet:hypothesis")
    try:
        return resolve(json.dumps(plan), inventory), inventory
    except PlanError:
        return None


@settings(max_examples=300, deadline=None)
@given(plan=plans, fleet=fleets)
def test_an_accepted_plan_never_overcommits_a_device(
    plan: dict[str, Any], fleet: list[dict[str, Any]]
) -> None:
    result = _accepted(plan, fleet)
    if result is None:
        return
    layout, inventory = result
    compute: dict[str, int] = defaultdict(int)
    memory: dict[str, int] = defaultdict(int)
    clients: dict[str, int] = defaultdict(int)
    device_memory: dict[str, int] = {}
    for s in layout.slices:
        device_memory[s.device] = s.memory_total_mib
        if s.uses_mps:
            compute[s.device] += s.compute or 100
            memory[s.device] += s.memory_mib or 0
            clients[s.device] += 1
    for device, total in compute.items():
        assert plan["oversubscribe"] or total <= 100, (device, total)
        assert memory[device] <= device_memory[device]
        assert clients[device] <= 48
    whole = {g.uuid: g for g in inventory.gpus}
    for s in layout.slices:
        if s.kind != "mig":
            assert not whole[s.device].mig_enabled  # whole-GPU slices only on GPUs outside MIG mode
        else:
            assert s.device.startswith("MIG-")
    mig_owner = {}
    for s in layout.slices:
        if s.kind == "mig":
            assert mig_owner.setdefault(s.device, s.pool) == s.pool  # no instance in two pools


@settings(max_examples=150, deadline=None)
@given(plan=plans, fleet=fleets)
def test_layout_json_loads_back_to_the_same_layout(
    plan: dict[str, Any], fleet: list[dict[str, Any]]
) -> None:
    result = _accepted(plan, fleet)
    if result is None:
        return
    layout, _ = result
    assert Layout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout


def test_property_strategies_reach_accepted_plans() -> None:
    # Guard against a vacuous property: the generated space must contain valid plans.
    plan = {
        "version": 1,
        "oversubscribe": False,
        "pools": {"p0": {"mps": {"compute": 50}, "per_gpu": 2}},
    }
    assert _accepted(plan, [{"model": "H100-80GB", "count": 2}]) is not None
    assert set(WHOLE) <= set(MODELS)
