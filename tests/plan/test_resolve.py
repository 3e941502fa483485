"""resolve(): binding plans to GPUs, and every rule that needs the hardware."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from gpuslice import Inventory, PlanError, resolve
from gpuslice.hardware.catalog import MPS_MAX_CLIENTS, get_model
from gpuslice.hardware.inventory import Gpu

Fleet = Callable[..., Inventory]


def problems(plan: str, inventory: Inventory) -> list[str]:
    with pytest.raises(PlanError) as caught:
        resolve(plan, inventory)
    return [str(p) for p in caught.value.problems]


def test_slices_bind_to_gpu_uuids_with_mps_settings(h100x2: Inventory) -> None:
    root = Path("/tmp/gs-t")  # short: its sockets must fit the unix path limit
    plan = f"version: 1\nmps_dir: {root}\npools:\n  small: {{mps: {{compute: 25, memory: 10GiB}}, per_gpu: 2}}\n"
    layout = resolve(plan, h100x2)
    small = layout.pool("small")
    assert [s.device for s in small.slices] == [h100x2.gpus[0].uuid] * 2 + [h100x2.gpus[1].uuid] * 2
    assert [s.rank for s in small.slices] == [0, 1, 2, 3]
    first = small.slices[0]
    assert (first.kind, first.compute, first.memory_mib) == ("mps", 25, 10240)
    assert first.expected_sms == 32  # 25% of 132 SMs, rounded down to whole SM pairs
    assert first.mps_pipe_dir == str(root / h100x2.gpus[0].uuid / "pipe")
    assert first.mps_log_dir == str(root / h100x2.gpus[0].uuid / "log")
    assert small.pipe_dirs == (
        str(root / h100x2.gpus[0].uuid / "pipe"),
        str(root / h100x2.gpus[1].uuid / "pipe"),
    )


def test_share_slices_have_no_mps_settings(h100x2: Inventory) -> None:
    layout = resolve("batch=3x share", h100x2)
    assert len(layout.slices) == 6
    assert all(
        s.mps_pipe_dir is None and s.compute is None and s.memory_mib is None for s in layout.slices
    )


def test_mig_slices_bind_to_mig_uuids(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": ["3g.20gb", "1g.5gb", "1g.5gb"]})
    layout = resolve("tiny=mig:1g.5gb, big=mig:3g.20gb", inv)
    tiny = [d.uuid for d in inv.gpus[0].mig_devices if d.profile == "1g.5gb"]
    assert layout.pool("tiny").devices == tuple(tiny)
    assert all(d.startswith("MIG-") for d in layout.pool("big").devices)
    assert layout.pool("big").slices[0].sm_count == 42


def test_mps_inside_mig_gets_a_daemon_per_instance(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": ["3g.20gb", "3g.20gb"]})
    layout = resolve(
        "version: 1\npools:\n  m: {mig: {profile: 3g.20gb, mps: {compute: 50}, per_instance: 2}}\n",
        inv,
    )
    pool = layout.pool("m")
    assert len(pool.slices) == 4
    assert len(pool.pipe_dirs) == 2
    assert all(s.device in (s.mps_pipe_dir or "") for s in pool.slices)
    assert pool.slices[0].expected_sms == 20  # 50% of 42, in SM pairs


def test_mig_count_takes_instances_in_order_and_pools_do_not_share_them(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": ["1g.5gb"] * 7})
    layout = resolve("a=2x mig:1g.5gb, b=mig:1g.5gb", inv)
    assert len(layout.pool("a").slices) == 2
    assert len(layout.pool("b").slices) == 5
    assert not set(layout.pool("a").devices) & set(layout.pool("b").devices)


def test_gpus_that_are_not_there_are_refused(h100x2: Inventory) -> None:
    found = problems("version: 1\ngpus: [0, 5, GPU-nope]\npools:\n  a: {share: {}}\n", h100x2)
    assert found[0].startswith("gpus.1: no GPU 5 here")
    assert found[1].startswith("gpus.2: no GPU 'GPU-nope' here")


def test_pool_gpus_may_name_indices_or_uuids(h100x2: Inventory) -> None:
    uuid = h100x2.gpus[1].uuid
    layout = resolve(f"a=mps:50%@0, b=mps:50%@{uuid}", h100x2)
    assert layout.pool("a").devices == (h100x2.gpus[0].uuid,)
    assert layout.pool("b").devices == (uuid,)


def test_pool_gpus_outside_the_plan_gpus_are_refused(h100x2: Inventory) -> None:
    found = problems("version: 1\ngpus: [0]\npools:\n  a: {share: {}, gpus: [1]}\n", h100x2)
    assert any("not among the plan's `gpus:`" in p for p in found)


def test_compute_over_100_percent_is_refused(h100x2: Inventory) -> None:
    found = problems("a=2x mps:40%, b=1x mps:30%", h100x2)
    assert len(found) == 2  # once per GPU
    assert "sums to 110% (a: 2x40%, b: 1x30%)" in found[0]
    assert "oversubscribe: true" in found[0]


def test_unlimited_mps_clients_count_as_100_percent(h100x2: Inventory) -> None:
    found = problems("a=2x mps", h100x2)
    assert "sums to 200%" in found[0]


def test_oversubscribe_allows_compute_over_100(h100x2: Inventory) -> None:
    plan = "version: 1\noversubscribe: true\npools:\n  a: {mps: {compute: 40}, per_gpu: 2}\n  b: {mps: {compute: 30}}\n"
    layout = resolve(plan, h100x2)
    assert all(p.oversubscribe for p in layout.pools)


def test_pool_level_oversubscribe_needs_every_pool_on_the_gpu(h100x2: Inventory) -> None:
    plan = "version: 1\npools:\n  a: {mps: {compute: 60}, oversubscribe: true}\n  b: {mps: {compute: 60}}\n"
    assert "sums to 120%" in problems(plan, h100x2)[0]
    both = plan.replace("b: {mps: {compute: 60}}", "b: {mps: {compute: 60}, oversubscribe: true}")
    assert len(resolve(both, h100x2).slices) == 4


def test_memory_caps_over_the_gpu_memory_are_refused(h100x2: Inventory) -> None:
    found = problems("a=3x mps:30%/30GiB", h100x2)
    # NVML reports 81,559 MiB (79.65 GiB) on an H100 80GB; 3 clients + the MPS server keep
    # 4 x 512 MiB for their CUDA contexts.
    assert "memory caps on GPU 0 (H100-80GB) sum to 90GiB (a: 3x30GiB)" in found[0]
    assert "with 2GiB kept for its 4 CUDA contexts" in found[0]
    assert "more than its 79.65GiB" in found[0]


def test_memory_cap_inside_a_mig_instance_is_checked_against_its_real_size(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": ["3g.20gb"]})
    # 3g.20gb holds 19.5 GiB usable, not the 20 GB of its name (MIG user guide).
    found = problems(
        "version: 1\npools:\n  m: {mig: {profile: 3g.20gb, mps: {compute: 50, memory: 10GiB}, per_instance: 2}}\n",
        inv,
    )
    assert "sum to 20GiB" in found[0]


def test_more_mps_clients_than_the_hardware_allows_are_refused(h100x2: Inventory) -> None:
    found = problems(
        f"version: 1\noversubscribe: true\npools:\n  a: {{mps: {{compute: 1}}, per_gpu: {MPS_MAX_CLIENTS + 1}}}\n",
        h100x2,
    )
    assert f"{MPS_MAX_CLIENTS + 1} MPS clients" in found[0]
    assert f"the {MPS_MAX_CLIENTS} client contexts" in found[0]


def test_mps_on_a_gpu_without_mps_is_refused() -> None:
    no_mps = dataclasses.replace(get_model("L4"), mps=False)
    gpu = Gpu(
        index=0,
        uuid="GPU-00000000-0000-0000-0000-000000000000",
        name="old",
        model=no_mps,
        memory_mib=16000,
        sm_count=40,
    )
    found = problems("a=mps:50%", Inventory(gpus=(gpu,), source="test"))
    assert "does not support MPS" in found[0]
    assert resolve("a=2x share", Inventory(gpus=(gpu,), source="test")).slices


def test_mig_profile_the_model_lacks_is_refused_with_a_suggestion(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": ["1g.5gb"]})
    found = problems("a=mig:1g.10gbb", inv)
    assert "A100-40GB has no MIG profile '1g.10gbb'" in found[0]
    assert "did you mean '1g.10gb'?" in found[0]


def test_mig_instances_that_do_not_exist_are_refused(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": ["1g.5gb", "1g.5gb"]})
    found = problems("a=3x mig:1g.5gb", inv)
    assert "GPU 0 has 2 unclaimed 1g.5gb instances, the pool needs 3" in found[0]
    assert "gpuslice mig apply" in found[0]
    assert "no GPU here has a 2g.10gb MIG instance" in problems("a=mig:2g.10gb", inv)[0]


def test_mig_pool_on_a_gpu_without_mig_is_refused(fleet: Fleet) -> None:
    inv = fleet({"model": "L4"}, {"model": "H100-80GB"})
    assert "GPU 0 (L4) has no MIG" in problems("a=mig:1g.10gb@0", inv)[0]
    assert "GPU 1 is not in MIG mode" in problems("a=mig:1g.10gb@1", inv)[0]


def test_whole_gpu_pools_skip_gpus_in_mig_mode(fleet: Fleet) -> None:
    inv = fleet({"model": "H100-80GB"}, {"model": "A100-40GB", "mig": ["7g.40gb"]})
    layout = resolve("a=2x mps:50%", inv)
    assert {s.gpu_index for s in layout.slices} == {0}
    assert "GPU 1 is in MIG mode" in problems("a=2x mps:50%@1", inv)[0]


def test_pool_with_no_usable_gpu_is_refused(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": ["7g.40gb"]})
    assert problems("a=share", inv) == [
        "pools.a: the pool has no GPU it can run on (fix: check `gpus:` and the GPUs' MIG mode with `gpuslice gpus`)"
    ]


def test_exclusive_process_gpu_refuses_time_sharing(fleet: Fleet) -> None:
    inv = fleet({"model": "H100-80GB", "compute_mode": "Exclusive_Process"})
    assert "compute mode Exclusive_Process" in problems("a=2x share", inv)[0]
    assert len(resolve("a=4x mps:25%", inv).slices) == 4


def test_prohibited_gpu_is_left_out(fleet: Fleet) -> None:
    inv = fleet({"model": "H100-80GB", "compute_mode": "Prohibited"}, {"model": "H100-80GB"})
    assert {s.gpu_index for s in resolve("a=share", inv).slices} == {1}
    assert "Prohibited" in problems("a=share@0", inv)[0]


def test_every_hardware_problem_is_reported_at_once(h100x2: Inventory) -> None:
    found = problems("a=3x mps:50%/30GiB, b=mig:1g.10gb, c=share@7", h100x2)
    assert len(found) == 6


def test_example_plans_resolve_on_example_fleets(examples: Path) -> None:
    from gpuslice import discover

    mixed = resolve(examples / "plan-mixed.yaml", discover(examples / "fleet-mixed.yaml"))
    assert mixed.pool_names == ("small", "large", "tiny", "medium", "batch")
    two = resolve(examples / "plan-two-pools.yaml", discover(examples / "fleet-2xh100.yaml"))
    assert len(two.pool("llm").slices) == 4
    assert len(two.pool("surrogate").slices) == 8


def test_mig_pools_with_a_count_claim_first_whatever_the_order(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": ["1g.5gb"] * 7})
    layout = resolve("rest=mig:1g.5gb, two=2x mig:1g.5gb", inv)
    assert layout.pool_names == ("rest", "two")
    assert len(layout.pool("two").slices) == 2
    assert len(layout.pool("rest").slices) == 5


def test_the_slice_bound_counts_mig_instances_that_exist(fleet: Fleet) -> None:
    plan = (
        "version: 1\npools:\n  a: {mig: {profile: 1g.5gb, per_instance: 3, mps: {compute: 30}}}\n"
    )
    # 1,024 GPUs x 7 instances x 3 clients = 21,504 slices: over the 16,384 bound.
    many = fleet({"model": "A100-40GB", "count": 1024, "mig": ["1g.5gb"] * 7})
    assert any("more than 16384 slices" in p for p in problems(plan, many))
    # The same plan on GPUs without MIG instances makes no slices: no bound, the real reason.
    plain = fleet({"model": "A100-40GB", "count": 1024})
    found = problems(plan, plain)
    assert not any("16384" in p for p in found)
    assert any("no GPU here is in MIG mode" in p for p in found)


def test_slices_that_fit_follow_the_context_reserve() -> None:
    from gpuslice.plan.resolve import slices_that_fit

    # An H100 as NVML reports it (81,559 MiB): 14 caps of 5 GiB plus 15 contexts of 512 MiB
    # take 71,680 + 7,680 = 79,360 MiB; 15 would take 76,800 + 8,192 = 84,992.
    assert slices_that_fit(81_559, 5_120) == 14
    assert slices_that_fit(81_559, 81_559) == 0
    assert slices_that_fit(1_536, 512) == 1
