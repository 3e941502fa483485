"""The NVML reader against a fake pynvml (an H100 with MIG devices, one without, no driver)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

from gpuslice.errors import NvmlUnavailable
from gpuslice.hardware import nvml

MIB = 1024 * 1024


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {9: "Driver Not Loaded", 12: "NVML Shared Library Not Found", 6: "Not Found"}.get(
            self.value, f"error {self.value}"
        )


@dataclass
class FakeMig:
    uuid: str
    gi: int
    ci: int
    gi_slices: int
    ci_slices: int
    memory_mb: int
    sms: int


@dataclass
class FakeGpu:
    name: str
    uuid: str
    memory_bytes: int
    mig_mode: int | None  # None: MIG not supported
    migs: dict[int, FakeMig] = field(default_factory=dict)
    max_mig: int = 7
    compute_mode: int = 0
    utilization: int = 0
    pids: tuple[int, ...] = ()


def fake_pynvml(gpus: list[FakeGpu], init_error: int | None = None) -> types.ModuleType:
    """A module with the pynvml functions nvml.py calls, answering for ``gpus``."""
    mod = types.ModuleType("pynvml")
    state = {"inits": 0, "shutdowns": 0}
    handles: dict[str, Any] = {g.uuid: g for g in gpus}
    for g in gpus:
        handles.update({m.uuid: m for m in g.migs.values()})

    def init() -> None:
        if init_error is not None:
            raise FakeNVMLError(init_error)
        state["inits"] += 1

    def shutdown() -> None:
        state["shutdowns"] += 1

    def mig_mode(h: FakeGpu) -> list[int]:
        if h.mig_mode is None:
            raise FakeNVMLError(3)  # NOT_SUPPORTED
        return [h.mig_mode, h.mig_mode]

    def mig_by_index(h: FakeGpu, i: int) -> FakeMig:
        if i not in h.migs:
            raise FakeNVMLError(6)  # NOT_FOUND: empty slot
        return h.migs[i]

    def attributes(m: FakeMig) -> Any:
        return types.SimpleNamespace(
            multiprocessorCount=m.sms,
            gpuInstanceSliceCount=m.gi_slices,
            computeInstanceSliceCount=m.ci_slices,
            memorySizeMB=m.memory_mb,
        )

    def by_uuid(uuid: str) -> Any:
        if uuid not in handles:
            raise FakeNVMLError(6)
        return handles[uuid]

    funcs: dict[str, Any] = {
        "NVMLError": FakeNVMLError,
        "nvmlInit": init,
        "nvmlShutdown": shutdown,
        "nvmlDeviceGetCount": lambda: len(gpus),
        "nvmlDeviceGetHandleByIndex": lambda i: gpus[i],
        "nvmlDeviceGetHandleByUUID": by_uuid,
        "nvmlDeviceGetName": lambda h: h.name,
        "nvmlDeviceGetUUID": lambda h: h.uuid,
        "nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(total=h.memory_bytes),
        "nvmlDeviceGetComputeMode": lambda h: h.compute_mode,
        "nvmlDeviceGetMigMode": mig_mode,
        "nvmlDeviceGetMaxMigDeviceCount": lambda h: h.max_mig,
        "nvmlDeviceGetMigDeviceHandleByIndex": mig_by_index,
        "nvmlDeviceGetAttributes_v2": attributes,
        "nvmlDeviceGetGpuInstanceId": lambda m: m.gi,
        "nvmlDeviceGetComputeInstanceId": lambda m: m.ci,
        "nvmlSystemGetDriverVersion": lambda: "580.65.06",
        "nvmlSystemGetCudaDriverVersion": lambda: 13000,
        "nvmlDeviceGetUtilizationRates": lambda h: types.SimpleNamespace(gpu=h.utilization),
        "nvmlDeviceGetComputeRunningProcesses": lambda h: [
            types.SimpleNamespace(pid=p) for p in h.pids
        ],
        "state": state,
    }
    for key, value in funcs.items():
        setattr(mod, key, value)
    return mod


def h100_with_mig() -> FakeGpu:
    return FakeGpu(
        name="NVIDIA H100 80GB HBM3",
        uuid="GPU-aaaa",
        memory_bytes=81559 * MIB,
        mig_mode=1,
        migs={
            0: FakeMig("MIG-3g", gi=1, ci=0, gi_slices=3, ci_slices=3, memory_mb=40320, sms=60),
            2: FakeMig("MIG-1g", gi=9, ci=0, gi_slices=1, ci_slices=1, memory_mb=9856, sms=16),
            3: FakeMig("MIG-1g20", gi=5, ci=0, gi_slices=1, ci_slices=1, memory_mb=20096, sms=26),
        },
    )


def h100_plain() -> FakeGpu:
    return FakeGpu(
        name="NVIDIA H100 80GB HBM3",
        uuid="GPU-bbbb",
        memory_bytes=81559 * MIB,
        mig_mode=0,
        compute_mode=3,
        utilization=42,
        pids=(101, 202),
    )


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = fake_pynvml([h100_with_mig(), h100_plain()])
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


def test_read_inventory_lists_every_gpu_with_model_and_versions(fake: types.ModuleType) -> None:
    inv = nvml.read_inventory()
    assert [g.uuid for g in inv.gpus] == ["GPU-aaaa", "GPU-bbbb"]
    assert inv.source == "nvml"
    assert (inv.driver_version, inv.cuda_version) == ("580.65.06", "13.0")
    first = inv.gpus[0]
    assert first.model is not None
    assert first.model.name == "H100-80GB"
    assert (first.memory_mib, first.sm_count) == (81559, 132)


def test_read_inventory_reads_mig_devices_and_their_profiles(fake: types.ModuleType) -> None:
    gpu = nvml.read_inventory().gpus[0]
    assert gpu.mig_enabled
    got = [(m.uuid, m.profile, m.index, m.gpu_instance_id, m.sm_count) for m in gpu.mig_devices]
    assert got == [
        ("MIG-3g", "3g.40gb", 0, 1, 60),
        ("MIG-1g", "1g.10gb", 2, 9, 16),
        ("MIG-1g20", "1g.20gb", 3, 5, 26),
    ]
    assert gpu.mig_devices[0].memory_mib == 40320


def test_read_inventory_reports_gpu_without_mig_and_its_compute_mode(
    fake: types.ModuleType,
) -> None:
    gpu = nvml.read_inventory().gpus[1]
    assert (gpu.mig_enabled, gpu.mig_devices, gpu.compute_mode) == (
        False,
        (),
        "Exclusive_Process",
    )


def test_gpu_without_mig_support_reads_as_mig_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    v100 = FakeGpu("Tesla V100-SXM2-16GB", "GPU-v", 16384 * MIB, mig_mode=None)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([v100]))
    gpu = nvml.read_inventory().gpus[0]
    assert gpu.model is not None
    assert (gpu.model.name, gpu.mig_enabled, gpu.sm_count) == ("V100-16GB", False, 80)


def test_smaller_compute_instance_is_named_like_nvidia_smi(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpu = h100_with_mig()
    gpu.migs = {0: FakeMig("MIG-c", gi=1, ci=1, gi_slices=3, ci_slices=1, memory_mb=40320, sms=16)}
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([gpu]))
    assert nvml.read_inventory().gpus[0].mig_devices[0].profile == "1c.3g.40gb"


def test_read_inventory_shuts_nvml_down(fake: types.ModuleType) -> None:
    nvml.read_inventory()
    assert fake.state == {"inits": 1, "shutdowns": 1}


@pytest.mark.parametrize(
    ("code", "reason"),
    [(12, "libnvidia-ml.so.1 was not found"), (9, "driver is not loaded"), (4, "permission")],
)
def test_no_driver_raises_nvml_unavailable_with_reason(
    monkeypatch: pytest.MonkeyPatch, code: int, reason: str
) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([], init_error=code))
    with pytest.raises(NvmlUnavailable, match=reason) as info:
        nvml.read_inventory()
    assert "--fleet" in str(info.value)
    assert nvml.nvml_available() == (False, info.value.reason)


def test_nvml_available_when_init_works(fake: types.ModuleType) -> None:
    assert nvml.nvml_available() == (True, "")


def test_device_utilization_reads_percent(fake: types.ModuleType) -> None:
    assert nvml.device_utilization("GPU-bbbb") == 42


def test_compute_processes_lists_pids(fake: types.ModuleType) -> None:
    assert nvml.compute_processes("GPU-bbbb") == [101, 202]


def test_unknown_uuid_is_a_gpuslice_error(fake: types.ModuleType) -> None:
    with pytest.raises(NvmlUnavailable, match="nvmlDeviceGetHandleByUUID failed: Not Found"):
        nvml.compute_processes("GPU-nope")
    assert fake.state["shutdowns"] == fake.state["inits"]


@pytest.mark.gpu
def test_real_inventory_reads_every_gpu() -> None:
    available, reason = nvml.nvml_available()
    if not available:
        pytest.skip(f"NVML cannot start: {reason}")
    inv = nvml.read_inventory()
    assert inv.gpus
    for gpu in inv.gpus:
        assert gpu.uuid.startswith("GPU-")
        assert gpu.memory_mib > 0
        assert all(m.uuid.startswith("MIG-") for m in gpu.mig_devices)


def test_a_gpu_the_catalog_lacks_is_usable_with_nvml_memory_and_unknown_sms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gpuslice import resolve

    new = FakeGpu(
        "NVIDIA RTX PRO 6000 Blackwell Server Edition",
        "GPU-6d1c7e0a-3f0b-5b7e-9a57-6770752d7300",
        97887 * MIB,
        mig_mode=0,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([new]))
    inv = nvml.read_inventory()
    gpu = inv.gpus[0]
    assert (gpu.model, gpu.memory_mib, gpu.sm_count) == (None, 97887, 0)
    layout = resolve("a=2x mps:25%/8GiB, b=share", inv)
    mps = layout.pool("a").slices
    # Percentages and memory caps need no catalog; the SM expectation is left unknown, so
    # the worker skips its SM check instead of refusing every device.
    assert [(s.compute, s.memory_mib, s.expected_sms) for s in mps] == [(25, 8192, None)] * 2
    assert layout.pool("b").slices[0].expected_sms is None
    assert mps[0].memory_total_mib == 97887
