"""Plan rules that follow the hardware (issue 9, plan side): compute modes, memory headroom
for CUDA contexts, unknown GPU models, and one rule for memory units."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gpuslice import PlanError, load_plan, resolve
from gpuslice.hardware.inventory import Inventory

Fleet = Callable[..., Inventory]


def problems(plan: str, inventory: Inventory) -> list[str]:
    with pytest.raises(PlanError) as caught:
        resolve(plan, inventory)
    return [str(p) for p in caught.value.problems]


# -- compute modes ----------------------------------------------------------------------------


def test_exclusive_process_refuses_mps_slices_beside_a_time_shared_worker(fleet: Fleet) -> None:
    gpu = fleet({"model": "H100-80GB", "compute_mode": "Exclusive_Process"})
    found = problems("a=2x mps:40%, b=share", gpu)
    assert len(found) == 1
    assert found[0].startswith("pools.a+b: GPU 0 (H100-80GB) is in compute mode Exclusive_Process")
    assert "the time-shared workers of pool b cannot run beside it" in found[0]


def test_exclusive_process_accepts_mps_slices_alone_and_one_plain_worker_alone(
    fleet: Fleet,
) -> None:
    gpu = fleet({"model": "H100-80GB", "compute_mode": "Exclusive_Process"})
    assert len(resolve("a=3x mps:30%", gpu).slices) == 3
    assert len(resolve("b=share", gpu).slices) == 1


def test_exclusive_process_on_another_gpu_does_not_matter(fleet: Fleet) -> None:
    gpus = fleet(
        {"model": "H100-80GB", "compute_mode": "Exclusive_Process"},
        {"model": "H100-80GB"},
    )
    layout = resolve(
        "version: 1\npools:\n  a: {mps: {compute: 40}, gpus: [0]}\n  b: {share: {}, gpus: [1]}\n",
        gpus,
    )
    assert [s.gpu_index for s in layout.slices] == [0, 1]


@pytest.mark.parametrize("written", ["EXCLUSIVE_PROCESS", "exclusive_process", "E. Process"])
def test_fleet_compute_modes_are_read_as_nvidia_smi_writes_them(fleet: Fleet, written: str) -> None:
    assert (
        fleet({"model": "L4", "compute_mode": written}).gpus[0].compute_mode == "Exclusive_Process"
    )


@pytest.mark.parametrize("written", ["$(reboot)", "Exclusive_Thread", "exclusive", ""])
def test_unknown_fleet_compute_modes_are_refused(fleet: Fleet, written: str) -> None:
    with pytest.raises(PlanError, match="unknown compute mode"):
        fleet({"model": "L4", "compute_mode": written})


# -- memory: the card's real total, and a reserve for every CUDA context -----------------------


def test_caps_that_fit_the_marketing_size_but_not_the_real_card_are_refused(fleet: Fleet) -> None:
    # 2 x 40 GiB = 81,920 MiB: the nominal "80 GB", but NVML reports 81,559 MiB on an H100.
    found = problems("a=2x mps:50%/40GiB", fleet({"model": "H100-80GB"}))
    assert "memory caps on GPU 0 (H100-80GB) sum to 80GiB" in found[0]


def test_caps_fit_up_to_the_memory_left_after_each_context_reserve(fleet: Fleet) -> None:
    h100 = fleet({"model": "H100-80GB"})
    # 81,559 MiB - 3 contexts (2 clients + the MPS server) x 512 MiB = 80,023 MiB for caps.
    assert len(resolve("a=2x mps:50%/40011MiB", h100).slices) == 2
    found = problems("a=2x mps:50%/40012MiB", h100)
    assert "with 1.5GiB kept for its 3 CUDA contexts" in found[0]
    assert "equal caps of at most 39.07GiB fit here" in found[0]


def test_time_shared_workers_beside_capped_slices_count_as_contexts(fleet: Fleet) -> None:
    h100 = fleet({"model": "H100-80GB"})
    # 1 client + the server + 4 time-shared workers = 6 contexts = 3,072 MiB: 78,487 MiB left.
    assert resolve("a=mps:50%/78487MiB, b=4x share", h100).slices
    assert "6 CUDA contexts" in problems("a=mps:50%/78488MiB, b=4x share", h100)[0]


def test_more_contexts_than_a_device_holds_are_refused_without_caps(fleet: Fleet) -> None:
    l4 = fleet({"model": "L4"})  # 23,034 MiB: room for 44 contexts of 512 MiB
    assert len(resolve("a=44x share", l4).slices) == 44
    found = problems("a=45x share", l4)
    assert "cannot hold 45 CUDA contexts" in found[0]
    assert "at most 44 contexts fit" in found[0]


def test_mps_inside_a_mig_instance_keeps_the_reserve_in_the_instance(fleet: Fleet) -> None:
    a100 = fleet({"model": "A100-40GB", "mig": ["1g.5gb"]})  # 4,864 MiB usable
    # 2 clients + server: 1,536 MiB reserved, 3,328 MiB for caps.
    plan = "version: 1\npools:\n  a: {mig: {profile: 1g.5gb, per_instance: 2, mps: {compute: 50, memory: %s}}}\n"
    assert len(resolve(plan % "1664MiB", a100).slices) == 2
    assert "3 CUDA contexts" in problems(plan % "1665MiB", a100)[0]


# -- unknown GPU models --------------------------------------------------------------------------


def test_a_slice_on_a_gpu_of_unknown_sm_count_gets_no_expected_sms(fleet: Fleet) -> None:
    import dataclasses

    h100 = fleet({"model": "H100-80GB"})
    unknown = dataclasses.replace(h100.gpus[0], model=None, name="NVIDIA Future GPU", sm_count=0)
    inventory = Inventory(gpus=(unknown,), source="nvml")
    layout = resolve("a=2x mps:30%/10GiB, b=share", inventory)
    assert [s.expected_sms for s in layout.slices] == [None, None, None]
    assert [s.compute for s in layout.pool("a").slices] == [30, 30]


def test_mig_instances_nvml_reports_on_a_model_without_a_profile_table_are_used(
    fleet: Fleet,
) -> None:
    import dataclasses

    from gpuslice.hardware.catalog import MODELS
    from gpuslice.hardware.inventory import MigDevice

    b200 = fleet({"model": "B200"}).gpus[0]
    instance = MigDevice(
        uuid="MIG-6d1c7e0a-3f0b-5b7e-9a57-6770752d7301",
        profile="1g.23gb",
        index=0,
        gpu_instance_id=1,
        compute_instance_id=0,
        memory_mib=23552,
        sm_count=18,
    )
    gpu = dataclasses.replace(b200, mig_enabled=True, mig_devices=(instance,))
    assert MODELS["B200"].mig
    assert not MODELS["B200"].mig_profiles
    layout = resolve("a=mig:1g.23gb", Inventory(gpus=(gpu,), source="nvml"))
    assert [(s.device, s.sm_count, s.expected_sms) for s in layout.slices] == [
        (instance.uuid, 18, 18)
    ]


# -- one rule for memory sizes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_value", "compact", "mib"),
    [
        ("4096", "4096", 4096),  # a bare number is MiB, as a number...
        ('"4096"', "4096", 4096),  # ...and as text
        ("10GiB", "10GiB", 10240),
        ("1.5GiB", "1.5GiB", 1536),
        ("10G", "10G", 10240),  # one letter: binary, as nvidia-smi and MPS write it
        ("10GB", "10GB", 9536),  # decimal: 10,000,000,000 bytes, rounded down to whole MiB
        ("1048576KiB", "1048576KiB", 1024),
    ],
)
def test_memory_means_the_same_in_yaml_and_the_compact_form(
    yaml_value: str, compact: str, mib: int
) -> None:
    from_yaml = load_plan(f"version: 1\npools:\n  a: {{mps: {{memory: {yaml_value}}}}}\n")
    from_compact = load_plan(f"a=mps:/{compact}")
    assert from_yaml.pools["a"].mps is not None
    assert from_compact.pools["a"].mps is not None
    assert from_yaml.pools["a"].mps.memory == from_compact.pools["a"].mps.memory == mib


@pytest.mark.parametrize("value", ["10.9", "10.5", '"10.9"'])
def test_a_bare_fraction_of_a_mib_is_refused_with_the_rule(value: str) -> None:
    with pytest.raises(PlanError) as caught:
        load_plan(f"version: 1\npools:\n  a: {{mps: {{memory: {value}}}}}\n")
    message = str(caught.value)
    assert "not a whole number of MiB" in message
    assert "a bare number means MiB" in message


@pytest.mark.parametrize("value", ["512B", "0", "1000KB"])
def test_sizes_below_one_mib_are_refused(value: str) -> None:
    with pytest.raises(PlanError, match="less than 1 MiB"):
        load_plan(f"a=mps:/{value}")
