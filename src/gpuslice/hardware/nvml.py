"""Read the GPUs of this node through NVML: the only module that imports ``pynvml``.

Everything above this module works with the typed values of
:mod:`gpuslice.hardware.inventory`. Each query names its ``nvidia-smi`` equivalent. Every
``NVMLError`` is translated: a failing ``nvmlInit`` becomes :class:`NvmlUnavailable`, a failing
query becomes :class:`NvmlUnavailable` too (with the query named), so callers see gpuslice
errors only. ``pynvml`` is imported lazily, so importing gpuslice never needs a driver.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from gpuslice.errors import NvmlUnavailable
from gpuslice.hardware.catalog import GpuModel, model_for_nvml_name
from gpuslice.hardware.inventory import Gpu, Inventory, MigDevice

# NVML return codes (nvml.h); kept here so the reasons below do not depend on pynvml's
# exception subclass names.
_NVML_ERROR_NO_PERMISSION = 4
_NVML_ERROR_NOT_FOUND = 6
_NVML_ERROR_DRIVER_NOT_LOADED = 9
_NVML_ERROR_LIBRARY_NOT_FOUND = 12
_NVML_ERROR_FUNCTION_NOT_FOUND = 13
_NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18

_INIT_REASONS = {
    _NVML_ERROR_LIBRARY_NOT_FOUND: "the NVML library libnvidia-ml.so.1 was not found "
    "(no NVIDIA driver installed)",
    _NVML_ERROR_DRIVER_NOT_LOADED: "the NVIDIA kernel driver is not loaded",
    _NVML_ERROR_NO_PERMISSION: "no permission to open the NVIDIA devices (/dev/nvidia*)",
    _NVML_ERROR_LIB_RM_VERSION_MISMATCH: "the NVML library and the kernel driver versions "
    "differ (reboot or reload the driver after an upgrade)",
}

# nvmlDeviceGetComputeMode values (NVML_COMPUTEMODE_*), named as nvidia-smi prints them.
_COMPUTE_MODES = {0: "Default", 1: "Exclusive_Thread", 2: "Prohibited", 3: "Exclusive_Process"}


def _pynvml() -> ModuleType:
    """Import pynvml (package nvidia-ml-py) on first use."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as err:  # pragma: no cover - it is a dependency
        raise NvmlUnavailable("the Python package nvidia-ml-py is not installed") from err


def _is_nvml_error(nvml: ModuleType, err: BaseException) -> bool:
    return isinstance(err, nvml.NVMLError)


def _code(err: BaseException) -> int | None:
    value = getattr(err, "value", None)
    return value if isinstance(value, int) else None


@contextmanager
def _session() -> Iterator[ModuleType]:
    """nvmlInit … nvmlShutdown around one read; init failures become NvmlUnavailable."""
    nvml = _pynvml()
    try:
        nvml.nvmlInit()
    except Exception as err:
        if not _is_nvml_error(nvml, err):
            raise
        reason = _INIT_REASONS.get(_code(err) or -1, f"nvmlInit failed: {err}")
        raise NvmlUnavailable(reason) from err
    try:
        yield nvml
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception as err:
            if not _is_nvml_error(nvml, err):
                raise


def _call(nvml: ModuleType, function: str, *args: Any) -> Any:
    """Call ``pynvml.<function>(*args)``; an NVMLError becomes NvmlUnavailable naming it."""
    try:
        return getattr(nvml, function)(*args)
    except Exception as err:
        if not _is_nvml_error(nvml, err):
            raise
        raise NvmlUnavailable(f"{function} failed: {err}") from err


def _text(value: object) -> str:
    # Old pynvml releases return bytes; 11.5+ return str.
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_available() -> tuple[bool, str]:
    """Whether NVML starts here, and the reason when it does not (``nvidia-smi`` runs at all)."""
    try:
        with _session():
            return True, ""
    except NvmlUnavailable as err:
        return False, err.reason


def _mig_profile_name(model: GpuModel | None, attrs: Any) -> str:
    """The GI profile name of a MIG device from its attributes, as ``nvidia-smi -L`` prints it.

    nvidia-smi names a MIG device ``<gi slices>g.<memory>gb``; NVML's attributes give the GPU
    instance's slice count and memory, so the catalog profile with that slice count and the
    nearest memory is the one (``+me`` variants cannot be told apart by attributes and map to
    the plain profile). A compute instance smaller than its GPU instance is prefixed
    ``<ci slices>c.`` as in the MIG user guide's "MIG Device Names".
    """
    gi_slices = int(attrs.gpuInstanceSliceCount)
    ci_slices = int(attrs.computeInstanceSliceCount)
    memory = int(attrs.memorySizeMB)
    name = f"{gi_slices}g.{round(memory / 1024)}gb"
    if model is not None:
        plain = [
            p
            for p in model.mig_profiles
            if p.compute_slices == gi_slices and not p.media_extensions
        ]
        if plain:
            name = min(plain, key=lambda p: abs(p.memory_mib - memory)).name
    if 0 < ci_slices < gi_slices:
        name = f"{ci_slices}c.{name}"
    return name


def _read_mig_devices(nvml: ModuleType, handle: Any, model: GpuModel | None) -> list[MigDevice]:
    devices: list[MigDevice] = []
    count = _call(nvml, "nvmlDeviceGetMaxMigDeviceCount", handle)
    for slot in range(int(count)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except Exception as err:
            # An empty slot answers NOT_FOUND (nvidia-smi skips it as well).
            if _is_nvml_error(nvml, err) and _code(err) == _NVML_ERROR_NOT_FOUND:
                continue
            if not _is_nvml_error(nvml, err):
                raise
            raise NvmlUnavailable(f"nvmlDeviceGetMigDeviceHandleByIndex failed: {err}") from err
        attrs = _call(nvml, "nvmlDeviceGetAttributes_v2", mig)
        devices.append(
            MigDevice(
                uuid=_text(_call(nvml, "nvmlDeviceGetUUID", mig)),
                profile=_mig_profile_name(model, attrs),
                index=slot,
                gpu_instance_id=int(_call(nvml, "nvmlDeviceGetGpuInstanceId", mig)),
                compute_instance_id=int(_call(nvml, "nvmlDeviceGetComputeInstanceId", mig)),
                memory_mib=int(attrs.memorySizeMB),
                sm_count=int(attrs.multiprocessorCount),
            )
        )
    return devices


def _mig_enabled(nvml: ModuleType, handle: Any) -> bool:
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
    except Exception as err:
        # GPUs without MIG (V100, L4, ...) answer NOT_SUPPORTED: MIG is simply off.
        if _is_nvml_error(nvml, err):
            return False
        raise
    return int(current) == 1  # NVML_DEVICE_MIG_ENABLE


def _read_gpu(nvml: ModuleType, index: int) -> Gpu:
    handle = _call(nvml, "nvmlDeviceGetHandleByIndex", index)
    name = _text(_call(nvml, "nvmlDeviceGetName", handle))
    memory = _call(nvml, "nvmlDeviceGetMemoryInfo", handle)
    memory_mib = int(memory.total) // (1024 * 1024)
    model = model_for_nvml_name(name, memory_mib)
    try:
        mode = _COMPUTE_MODES.get(int(nvml.nvmlDeviceGetComputeMode(handle)), "Default")
    except Exception as err:
        if not _is_nvml_error(nvml, err):
            raise
        mode = "Default"
    mig_enabled = _mig_enabled(nvml, handle)
    mig_devices = tuple(_read_mig_devices(nvml, handle, model)) if mig_enabled else ()
    return Gpu(
        index=index,
        uuid=_text(_call(nvml, "nvmlDeviceGetUUID", handle)),
        name=name,
        model=model,
        memory_mib=memory_mib,
        # NVML has no SM count for a whole GPU; the catalog has it. A model the catalog lacks
        # gets 0 (unknown): it stays usable, since compute percentages and memory caps need no
        # catalog, and its slices get no expected SM count (the worker skips that check).
        sm_count=model.sm_count if model is not None else 0,
        mig_enabled=mig_enabled,
        mig_devices=mig_devices,
        compute_mode=mode,
    )


def read_inventory() -> Inventory:
    """Read every GPU of this node (``nvidia-smi -L`` plus ``nvidia-smi -q``).

    Per GPU: index, UUID, product name, total memory (``memory.total``), SM count (from the
    catalog), MIG current mode (``mig.mode.current``), MIG devices (``nvidia-smi -L``: UUIDs,
    GPU/compute instance ids as in ``nvidia-smi mig -lgi``/``-lci``, memory, SMs, profile) and
    compute mode (``compute_mode``). Also the driver version (``driver_version``) and the CUDA
    driver API version (the "CUDA Version" in ``nvidia-smi``'s header).

    Raises:
        NvmlUnavailable: NVML cannot start (no driver or GPU) or a query failed.
    """
    with _session() as nvml:
        count = int(_call(nvml, "nvmlDeviceGetCount"))
        gpus = tuple(_read_gpu(nvml, i) for i in range(count))
        driver = _text(_call(nvml, "nvmlSystemGetDriverVersion"))
        cuda = int(_call(nvml, "nvmlSystemGetCudaDriverVersion"))
    # NVML encodes CUDA 12.4 as 12040.
    return Inventory(
        gpus=gpus,
        source="nvml",
        driver_version=driver,
        cuda_version=f"{cuda // 1000}.{(cuda % 1000) // 10}",
    )


def _handle_by_uuid(nvml: ModuleType, uuid: str) -> Any:
    return _call(nvml, "nvmlDeviceGetHandleByUUID", uuid)


def device_utilization(uuid: str) -> int:
    """GPU utilisation in percent over the last sample period (``utilization.gpu``).

    Args:
        uuid: ``GPU-…`` UUID (MIG devices do not report utilisation through NVML).

    Raises:
        NvmlUnavailable: NVML cannot start or the device does not answer.
    """
    with _session() as nvml:
        handle = _handle_by_uuid(nvml, uuid)
        rates = _call(nvml, "nvmlDeviceGetUtilizationRates", handle)
        return int(rates.gpu)


def compute_processes(uuid: str) -> list[int]:
    """PIDs of the compute processes on a device (``nvidia-smi --query-compute-apps=pid``).

    Under MPS the work of clients shows up as the ``nvidia-cuda-mps-server`` process.

    Args:
        uuid: ``GPU-…`` or ``MIG-…`` UUID.

    Raises:
        NvmlUnavailable: NVML cannot start or the device does not answer.
    """
    with _session() as nvml:
        handle = _handle_by_uuid(nvml, uuid)
        procs = _call(nvml, "nvmlDeviceGetComputeRunningProcesses", handle)
        return [int(p.pid) for p in procs]


def memory_used_mib(uuid: str) -> int:
    """Device memory in use on a device, all processes together (``memory.used``), in MiB.

    Args:
        uuid: ``GPU-…`` UUID.

    Raises:
        NvmlUnavailable: NVML cannot start or the device does not answer.
    """
    with _session() as nvml:
        handle = _handle_by_uuid(nvml, uuid)
        info = _call(nvml, "nvmlDeviceGetMemoryInfo", handle)
        return int(info.used) // (1024 * 1024)
