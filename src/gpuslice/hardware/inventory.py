"""The GPUs of one node, as typed values: read through NVML or described by a fleet file."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpuslice.hardware.catalog import GpuModel

#: The compute modes a GPU can be in, named as ``nvidia-smi -q`` prints them. NVML's
#: ``nvmlComputeMode_t`` also has EXCLUSIVE_THREAD, whose support NVIDIA removed
#: (https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceEnumvs.html, nvmlComputeMode_t).
COMPUTE_MODES = ("Default", "Exclusive_Process", "Prohibited")
_MODE_ALIASES = {
    "default": "Default",
    "exclusive_process": "Exclusive_Process",
    "e_process": "Exclusive_Process",  # the abbreviation in nvidia-smi's table
    "prohibited": "Prohibited",
}


def compute_mode(text: str) -> str | None:
    """The canonical name of a compute mode (case and separators ignored), or None if unknown.

    ``exclusive_process``, ``EXCLUSIVE_PROCESS`` (as ``nvidia-smi -c`` takes it) and
    ``E. Process`` (as nvidia-smi's table shows it) all give ``Exclusive_Process``.
    """
    key = re.sub(r"[\s_.-]+", "_", text.strip().lower()) if len(text) <= 40 else ""
    return _MODE_ALIASES.get(key)


@dataclass(frozen=True)
class MigDevice:
    """A MIG compute instance, addressable by CUDA as ``MIG-<uuid>``.

    Attributes:
        uuid: ``MIG-…`` UUID (what goes into ``CUDA_VISIBLE_DEVICES``).
        profile: GPU-instance profile name, e.g. ``1g.10gb``.
        index: position among the parent GPU's MIG devices
            (``nvmlDeviceGetMigDeviceHandleByIndex``).
        gpu_instance_id: GPU instance id (``nvidia-smi mig -lgi``).
        compute_instance_id: compute instance id (``nvidia-smi mig -lci``).
        memory_mib: memory of the instance.
        sm_count: streaming multiprocessors of the instance.
        placement_start: first memory slice of the GPU instance, when known.
    """

    uuid: str
    profile: str
    index: int
    gpu_instance_id: int
    compute_instance_id: int
    memory_mib: int
    sm_count: int
    placement_start: int | None = None


@dataclass(frozen=True)
class Gpu:
    """One physical GPU.

    Attributes:
        index: NVML index (``nvidia-smi -L`` order).
        uuid: ``GPU-…`` UUID.
        name: product name as NVML reports it (or the catalog name for a fleet file).
        model: the catalog entry, or None when the GPU is not in the catalog.
        memory_mib: total device memory.
        sm_count: streaming multiprocessors (from the catalog; 0 when the model is not in
            the catalog and the count is unknown: slices then get no expected SM count).
        mig_enabled: whether MIG mode is on (current mode).
        mig_devices: MIG compute instances present, in NVML order.
        compute_mode: ``Default``, ``Exclusive_Process`` or ``Prohibited``.
    """

    index: int
    uuid: str
    name: str
    model: GpuModel | None
    memory_mib: int
    sm_count: int
    mig_enabled: bool = False
    mig_devices: tuple[MigDevice, ...] = ()
    compute_mode: str = "Default"

    @property
    def supports_mps(self) -> bool:
        """MPS with per-client limits needs Volta or later; unknown models are assumed able."""
        return self.model.mps if self.model is not None else True

    @property
    def max_mps_clients(self) -> int:
        """Client contexts one MPS server accepts on this GPU (48 on Volta and later)."""
        return self.model.max_mps_clients if self.model is not None else 48


@dataclass(frozen=True)
class Inventory:
    """The GPUs gpuslice plans over.

    Attributes:
        gpus: GPUs in index order.
        source: ``nvml`` or ``fleet:<path>``.
        driver_version: NVIDIA driver version, when read through NVML.
        cuda_version: CUDA driver API version, e.g. ``12.4``, when read through NVML.
        emulated: True when the GPUs are described, not present.
    """

    gpus: tuple[Gpu, ...]
    source: str
    driver_version: str | None = None
    cuda_version: str | None = None
    emulated: bool = False
    _by_key: dict[str, Gpu] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for gpu in self.gpus:
            self._by_key[gpu.uuid.lower()] = gpu
            self._by_key[str(gpu.index)] = gpu

    def find(self, key: str | int) -> Gpu | None:
        """The GPU with this index or UUID (case-insensitive), or None."""
        return self._by_key.get(str(key).lower())

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, as ``gpuslice gpus --json`` prints it."""
        return {
            "source": self.source,
            "emulated": self.emulated,
            "driver_version": self.driver_version,
            "cuda_version": self.cuda_version,
            "gpus": [
                {
                    "index": g.index,
                    "uuid": g.uuid,
                    "name": g.name,
                    "model": g.model.name if g.model else None,
                    "memory_mib": g.memory_mib,
                    "sm_count": g.sm_count,
                    "mps": g.supports_mps,
                    "mig_capable": bool(g.model and g.model.mig),
                    "mig_enabled": g.mig_enabled,
                    "compute_mode": g.compute_mode,
                    "mig_devices": [asdict(d) for d in g.mig_devices],
                }
                for g in self.gpus
            ],
        }


def discover(fleet: str | Path | None = None) -> Inventory:
    """Read the GPUs of this node, or of a fleet file.

    Args:
        fleet: path to a fleet YAML file describing GPUs that are not present
            (``gpus: [{model: H100-80GB, count: 2, mig: [1g.10gb, 3g.40gb]}]``).
            None reads the real GPUs through NVML.

    Raises:
        NvmlUnavailable: no fleet file given and NVML cannot start (no driver/GPU).
        PlanError: the fleet file is malformed; every problem is listed.
    """
    if fleet is not None:
        from gpuslice.hardware.fleet import load_fleet

        return load_fleet(fleet)
    from gpuslice.hardware.nvml import read_inventory

    return read_inventory()
