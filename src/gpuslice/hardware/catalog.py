"""GPU models gpuslice knows: SM counts, memory, MPS/MIG support and MIG profile tables.

Every number here is taken from NVIDIA's documentation; the source of each table is cited
beside it. Tests in ``tests/hardware/test_catalog.py`` check the tables against those values.

Sources:
    [MIG-PROFILES] https://docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-mig-profiles.html
        (profile names, fractions of memory/SMs, number of instances, ``+me`` rules).
    [MIG-GPUS] https://docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-gpus.html
    [LGIP] ``nvidia-smi mig -lgip`` / ``-lgipp`` output (usable GiB, SMs per instance and
        placements) as printed in the MIG user guide's "Getting Started" chapter for the
        A100-40GB, and as published by operators of real machines for the other models.
    [GO-NVML] NVIDIA/go-nvml ``pkg/nvml/mock/shared/gpus/a100.go`` (MemorySizeMB of each
        A100 profile, product names such as ``NVIDIA A100-PCIE-40GB``).
    [MPS] https://docs.nvidia.com/deploy/mps/ — 48 client contexts per device on Volta and
        later. Newer MPS pages are reported to allow 60 from CUDA 13.1; that was NOT confirmed
        here, so gpuslice keeps the documented 48 (the safe lower bound).
    [MODAL] https://thundergolfer.com/blog/nvidia-gpu-memory-capacity — a table of the
        memory NVML reports (nvidia-smi ``memory.total``) on rented GPUs: H200 143,771 MiB,
        H100 81,559, A100 80GB 81,920, A100 40GB 40,960, A10 23,028, L40S 46,068, L4 23,034.
    [SMI] ``nvidia-smi`` output published by users of real machines (found with a code search
        of public repositories): the ``memory.total`` column for the named product. Where
        outputs differ between drivers or ECC settings the LOWEST is kept, so a plan accepted
        on a fleet file is accepted on the real card.

Whole-GPU memory is what NVML reports, not the marketing size (an "80 GB" H100 reports
81,559 MiB): plans checked against a fleet file must fit the real card. GDDR6 boards (A40,
L40, L40S, RTX 6000 Ada) report 46,068 MiB with ECC on and 49,140 MiB with ECC off; the
catalog keeps the ECC-on figure. Memory only matters for fleet files: NVML-discovered GPUs
use NVML's own total, and GPUs missing from the catalog are planned with NVML's memory and
an unknown SM count.

Usable memory of a MIG profile differs by a few hundred MiB between driver releases (e.g. the
H100 ``1g.10gb`` prints 9.62 GiB on one driver and 9.75 GiB on another). The tables keep the
LOWEST value seen in published ``-lgip`` output, so a memory cap that fits here fits on every
driver. Values marked ``UNCONFIRMED`` are documented nominal sizes or estimates.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MigProfile:
    """One GPU-instance profile of a MIG-capable GPU (a row of ``nvidia-smi mig -lgip``).

    Attributes:
        name: profile name as NVIDIA prints it, e.g. ``1g.10gb`` or ``1g.10gb+me``.
        compute_slices: number of compute slices (the ``Ng`` in the name), out of 7 (4 on A30).
        memory_slices: number of memory slices the profile occupies, out of 8 (4 on A30).
        memory_mib: memory usable by CUDA inside the instance (below the name's nominal size).
        max_instances: how many instances of this profile alone fit on one GPU.
        placements: allowed start positions in memory slices (``nvidia-smi mig -lgipp``).
        sm_count: streaming multiprocessors of one instance.
        media_extensions: True for ``+me`` profiles (NVDEC/NVJPG/OFA attached).
    """

    name: str
    compute_slices: int
    memory_slices: int
    memory_mib: int
    max_instances: int
    placements: tuple[int, ...]
    sm_count: int
    media_extensions: bool = False


@dataclass(frozen=True)
class GpuModel:
    """A GPU model as gpuslice plans for it.

    Attributes:
        name: gpuslice's name for the model, e.g. ``H100-80GB`` (used in fleet files).
        nvml_names: product names NVML reports for it (``nvmlDeviceGetName``), used to
            recognise real GPUs.
        architecture: ``Volta``, ``Ampere``, ``Ada``, ``Hopper``.
        sm_count: streaming multiprocessors of the whole GPU.
        memory_mib: total device memory as NVML reports it.
        mps: whether CUDA MPS (with per-client limits, Volta+) is supported.
        mig: whether MIG is supported.
        max_mps_clients: client CUDA contexts one MPS server accepts per device.
        memory_slices: memory slices of the MIG geometry (8, or 4 on A30); 0 without MIG.
        compute_slices: compute slices of the MIG geometry (7, or 4 on A30); 0 without MIG.
        mig_profiles: MIG GPU-instance profiles, empty without MIG.
    """

    name: str
    nvml_names: tuple[str, ...]
    architecture: str
    sm_count: int
    memory_mib: int
    mps: bool
    mig: bool
    max_mps_clients: int
    memory_slices: int = 0
    compute_slices: int = 0
    mig_profiles: tuple[MigProfile, ...] = ()

    def profile(self, name: str) -> MigProfile | None:
        """The MIG profile called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for profile in self.mig_profiles:
            if profile.name == wanted:
                return profile
        return None


# Volta and later: 48 client contexts per device [MPS]. (60 from CUDA 13.1: unconfirmed.)
MPS_MAX_CLIENTS = 48

#: Device memory gpuslice keeps free for each CUDA context on a device: every worker (MPS
#: client or time-shared process) and the MPS server. Memory caps plus this reserve must fit
#: in the device's memory. NVIDIA documents no per-context figure, so the value comes from
#: measurements by others, rounded up: a PyTorch context "uses around 400MB if CUDA >= 11.7
#: is used and lazy module loading enabled" (NVIDIA's ptrblck in
#: https://github.com/pytorch/pytorch/issues/109888; "~300MB" in
#: https://github.com/pytorch/pytorch/issues/107667), a bare context held 256 MiB on an RTX
#: 3090 (https://github.com/invoke-ai/InvokeAI/issues/9413), and an idle MPS server 27 MB on a
#: V100 (https://github.com/nebuly-ai/nos/issues/39). Under Volta MPS each client keeps its
#: own context storage, "so the resource reduction is to a much lesser degree"
#: (https://docs.nvidia.com/deploy/mps/when-to-use-mps.html). Owed: measure on a real GPU.
CUDA_CONTEXT_RESERVE_MIB = 512

_ONE_SLICE_STARTS = (0, 1, 2, 3, 4, 5, 6)


def _p(
    name: str,
    compute: int,
    memory: int,
    mib: int,
    max_instances: int,
    starts: tuple[int, ...],
    sms: int,
) -> MigProfile:
    return MigProfile(
        name=name,
        compute_slices=compute,
        memory_slices=memory,
        memory_mib=mib,
        max_instances=max_instances,
        placements=starts,
        sm_count=sms,
        media_extensions=name.endswith("+me"),
    )


# A100-SXM4-40GB / A100-PCIE-40GB.
# Names and instance counts: [MIG-PROFILES]. Usable MiB, SMs and placements: the MIG user
# guide's own `nvidia-smi mig -lgip` / `-lgipp` example (4.75 / 9.62 / 19.50 / 39.25 GiB;
# placements {0..6}:1, {0,2,4,6}:2, {0,2,4}:2, {0,4}:4, {0}:4, {0}:8), which [GO-NVML]
# repeats as MemorySizeMB 4864 / 9856 / 19968 / 40192.
_A100_40GB_PROFILES = (
    _p("1g.5gb", 1, 1, 4864, 7, _ONE_SLICE_STARTS, 14),
    _p("1g.5gb+me", 1, 1, 4864, 1, _ONE_SLICE_STARTS, 14),
    _p("1g.10gb", 1, 2, 9856, 4, (0, 2, 4, 6), 14),
    _p("2g.10gb", 2, 2, 9856, 3, (0, 2, 4), 28),
    _p("3g.20gb", 3, 4, 19968, 2, (0, 4), 42),
    _p("4g.20gb", 4, 4, 19968, 1, (0,), 56),
    _p("7g.40gb", 7, 8, 40192, 1, (0,), 98),
)

# A100-SXM4-80GB / A100 80GB PCIe: same geometry, names scaled per [MIG-PROFILES]
# ("1g.10gb, 1g.10gb+me, 1g.20gb, 2g.20gb, 3g.40gb, 4g.40gb, 7g.80gb").
# Usable MiB: lowest published -lgip values 9.50 / 19.50 / 39.25 / 78.50 GiB ([GO-NVML]
# has 9856 for 1g.10gb and 80384 for 7g.80gb; other drivers print 9.75 GiB for 1g.10gb).
_A100_80GB_PROFILES = (
    _p("1g.10gb", 1, 1, 9728, 7, _ONE_SLICE_STARTS, 14),
    _p("1g.10gb+me", 1, 1, 9728, 1, _ONE_SLICE_STARTS, 14),
    _p("1g.20gb", 1, 2, 19968, 4, (0, 2, 4, 6), 14),
    _p("2g.20gb", 2, 2, 19968, 3, (0, 2, 4), 28),
    _p("3g.40gb", 3, 4, 40192, 2, (0, 4), 42),
    _p("4g.40gb", 4, 4, 40192, 1, (0,), 56),
    _p("7g.80gb", 7, 8, 80384, 1, (0,), 98),
)

# H100 SXM5 80GB (132 SMs). Names/counts: [MIG-PROFILES]. SMs 16/16/26/32/60/64/132 and
# usable GiB from published -lgip output on H100 80GB HBM3 (9.62-9.75 / 19.50-19.62 /
# 39.25-39.50 / 79.25 GiB; lowest kept). Placements as on A100 (same 7+8 slice geometry).
_H100_80GB_PROFILES = (
    _p("1g.10gb", 1, 1, 9856, 7, _ONE_SLICE_STARTS, 16),
    _p("1g.10gb+me", 1, 1, 9856, 1, _ONE_SLICE_STARTS, 16),
    _p("1g.20gb", 1, 2, 19968, 4, (0, 2, 4, 6), 26),
    _p("2g.20gb", 2, 2, 19968, 3, (0, 2, 4), 32),
    _p("3g.40gb", 3, 4, 40192, 2, (0, 4), 60),
    _p("4g.40gb", 4, 4, 40192, 1, (0,), 64),
    _p("7g.80gb", 7, 8, 81152, 1, (0,), 132),
)

# H100 PCIe 80GB (114 SMs). Names, counts and memory as the SXM5 part ([MIG-GPUS] lists both
# with 7 instances). SMs per instance UNCONFIRMED: no published -lgip output was found; the
# values assume 16 SMs per compute slice and 114 for the whole-GPU 7g profile.
_H100_PCIE_80GB_PROFILES = (
    _p("1g.10gb", 1, 1, 9856, 7, _ONE_SLICE_STARTS, 16),
    _p("1g.10gb+me", 1, 1, 9856, 1, _ONE_SLICE_STARTS, 16),
    _p("1g.20gb", 1, 2, 19968, 4, (0, 2, 4, 6), 16),
    _p("2g.20gb", 2, 2, 19968, 3, (0, 2, 4), 32),
    _p("3g.40gb", 3, 4, 40192, 2, (0, 4), 48),
    _p("4g.40gb", 4, 4, 40192, 1, (0,), 64),
    _p("7g.80gb", 7, 8, 81152, 1, (0,), 114),
)

# H100 NVL 94GB (132 SMs). Published -lgip output of "NVIDIA H100 NVL": 1g.12gb 10.62-10.75,
# 1g.24gb / 2g.24gb 21.50-21.62, 3g.47gb / 4g.47gb 46.12-46.38, 7g.94gb 92.62 GiB;
# SMs 16/16/26/32/60/64/132; -lgi shows 3g.47gb at 0:4 and 4:4, 2g.24gb at 0:2/2:2/4:2.
_H100_NVL_94GB_PROFILES = (
    _p("1g.12gb", 1, 1, 10880, 7, _ONE_SLICE_STARTS, 16),
    _p("1g.12gb+me", 1, 1, 10880, 1, _ONE_SLICE_STARTS, 16),
    _p("1g.24gb", 1, 2, 22016, 4, (0, 2, 4, 6), 26),
    _p("2g.24gb", 2, 2, 22016, 3, (0, 2, 4), 32),
    _p("3g.47gb", 3, 4, 47232, 2, (0, 4), 60),
    _p("4g.47gb", 4, 4, 47232, 1, (0,), 64),
    _p("7g.94gb", 7, 8, 94848, 1, (0,), 132),
)

# H200 141GB (132 SMs). Names/counts: [MIG-PROFILES]. Usable GiB and SMs from the `nvidia-smi
# mig -lgip` output of an 8-GPU H200 node posted to NVIDIA's mig-parted
# (https://github.com/NVIDIA/mig-parted/issues/120): 1g.18gb 16.00 GiB / 16 SMs (7),
# 1g.18gb+me 16.00 / 16 (1), 1g.35gb 32.25 / 26 (4), 2g.35gb 32.25 / 32 (3), 3g.71gb 69.50 /
# 60 (2), 4g.71gb 69.50 / 64 (1), 7g.141gb 139.75 / 132 (1). Placements as on H100 (same 7+8
# slice geometry; no published -lgipp output was found).
_H200_141GB_PROFILES = (
    _p("1g.18gb", 1, 1, 16384, 7, _ONE_SLICE_STARTS, 16),
    _p("1g.18gb+me", 1, 1, 16384, 1, _ONE_SLICE_STARTS, 16),
    _p("1g.35gb", 1, 2, 33024, 4, (0, 2, 4, 6), 26),
    _p("2g.35gb", 2, 2, 33024, 3, (0, 2, 4), 32),
    _p("3g.71gb", 3, 4, 71168, 2, (0, 4), 60),
    _p("4g.71gb", 4, 4, 71168, 1, (0,), 64),
    _p("7g.141gb", 7, 8, 143104, 1, (0,), 132),
)

# A30 24GB (56 SMs): 4 compute and 4 memory slices. Names/counts: [MIG-PROFILES]
# (2g.12gb+me needs R525+). Published -lgip: 1g.6gb 5.81, 2g.12gb 11.69, 4g.24gb 23.44-23.50
# GiB; SMs 14/28/56; -lgipp: {0,1,2,3}:1, {0,2}:2, {0}:4.
_A30_24GB_PROFILES = (
    _p("1g.6gb", 1, 1, 5952, 4, (0, 1, 2, 3), 14),
    _p("1g.6gb+me", 1, 1, 5952, 1, (0, 1, 2, 3), 14),
    _p("2g.12gb", 2, 2, 11968, 2, (0, 2), 28),
    _p("2g.12gb+me", 2, 2, 11968, 1, (0, 2), 28),
    _p("4g.24gb", 4, 4, 24000, 1, (0,), 56),
)


def _mig_model(
    name: str,
    nvml_names: tuple[str, ...],
    architecture: str,
    sm_count: int,
    memory_mib: int,
    profiles: tuple[MigProfile, ...],
    slices: tuple[int, int] = (7, 8),
) -> GpuModel:
    return GpuModel(
        name=name,
        nvml_names=nvml_names,
        architecture=architecture,
        sm_count=sm_count,
        memory_mib=memory_mib,
        mps=True,
        mig=True,
        max_mps_clients=MPS_MAX_CLIENTS,
        compute_slices=slices[0],
        memory_slices=slices[1],
        mig_profiles=profiles,
    )


def _plain_model(
    name: str, nvml_names: tuple[str, ...], architecture: str, sm_count: int, memory_mib: int
) -> GpuModel:
    return GpuModel(
        name=name,
        nvml_names=nvml_names,
        architecture=architecture,
        sm_count=sm_count,
        memory_mib=memory_mib,
        mps=True,
        mig=False,
        max_mps_clients=MPS_MAX_CLIENTS,
    )


def _mig_capable_model(
    name: str,
    nvml_names: tuple[str, ...],
    architecture: str,
    sm_count: int,
    memory_mib: int,
) -> GpuModel:
    """A MIG-capable model whose profile table gpuslice does not have (yet).

    Plans may still use its MIG instances on real hardware, where NVML reports each
    instance's memory and SMs; a fleet file cannot describe them.
    """
    return GpuModel(
        name=name,
        nvml_names=nvml_names,
        architecture=architecture,
        sm_count=sm_count,
        memory_mib=memory_mib,
        mps=True,
        mig=True,
        max_mps_clients=MPS_MAX_CLIENTS,
    )


# Whole-GPU memory is NVML's total ([MODAL], [SMI]); see the module docstring.
_MODEL_LIST: tuple[GpuModel, ...] = (
    _mig_model(
        "A100-40GB",
        ("NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB", "A100-SXM4-40GB", "A100-PCIE-40GB"),
        "Ampere",
        108,
        40960,  # [MODAL]
        _A100_40GB_PROFILES,
    ),
    _mig_model(
        "A100-80GB",
        ("NVIDIA A100-SXM4-80GB", "NVIDIA A100-PCIE-80GB", "NVIDIA A100 80GB PCIe"),
        "Ampere",
        108,
        81920,  # [MODAL]
        _A100_80GB_PROFILES,
    ),
    _mig_model(
        "H100-80GB",
        ("NVIDIA H100 80GB HBM3",),
        "Hopper",
        132,
        81559,  # [MODAL]; also the emulated H100 of gpuslice.emulate.model
        _H100_80GB_PROFILES,
    ),
    _mig_model(
        "H100-PCIe-80GB",
        ("NVIDIA H100 PCIe",),
        "Hopper",
        114,
        81559,  # UNCONFIRMED: assumed equal to the SXM part's NVML total
        _H100_PCIE_80GB_PROFILES,
    ),
    _mig_model(
        "H100-NVL-94GB",
        ("NVIDIA H100 NVL",),
        "Hopper",
        132,
        95830,  # [SMI] "NVIDIA H100 NVL ... 95830MiB" (several machines and drivers)
        _H100_NVL_94GB_PROFILES,
    ),
    _mig_model(
        "H200-141GB",
        ("NVIDIA H200", "NVIDIA H200 NVL"),
        "Hopper",
        132,
        143771,  # [MODAL] (H200 SXM; the NVL board's total is UNCONFIRMED)
        _H200_141GB_PROFILES,
    ),
    _mig_model(
        "A30-24GB",
        ("NVIDIA A30",),
        "Ampere",
        56,
        24576,  # [SMI] "NVIDIA A30 ... 24576MiB"
        _A30_24GB_PROFILES,
        slices=(4, 4),
    ),
    _plain_model("L40S", ("NVIDIA L40S",), "Ada", 142, 46068),  # [MODAL]
    _plain_model("L4", ("NVIDIA L4",), "Ada", 58, 23034),  # [MODAL]
    # V100: [SMI] shows 16130 and 16160 MiB (16 GB), 32502 and 32768 MiB (32 GB); lowest kept.
    _plain_model(
        "V100-16GB",
        ("Tesla V100-SXM2-16GB", "Tesla V100-PCIE-16GB", "Tesla V100-FHHL-16GB"),
        "Volta",
        80,
        16130,
    ),
    _plain_model(
        "V100-32GB",
        ("Tesla V100-SXM2-32GB", "Tesla V100-PCIE-32GB", "Tesla V100S-PCIE-32GB"),
        "Volta",
        80,
        32502,
    ),
    # Current data-centre models without a MIG profile table here. SM counts: CUDA cores
    # divided by 128 per SM (Ampere GA10x, Ada, Hopper), as NVIDIA's product pages give the
    # core counts; memory: [MODAL] / [SMI]; each other value is marked UNCONFIRMED.
    # A40: 10,752 cores; spec pages list "SM Count 84" (https://www.elprocus.com/nvidia-a40-gpu:
    # "GPCs - 7, SMs - 84, and TPCs - 42"); memory [SMI] (46068 MiB ECC on, 49140 MiB ECC off).
    _plain_model("A40", ("NVIDIA A40",), "Ampere", 84, 46068),
    _plain_model("A10", ("NVIDIA A10",), "Ampere", 72, 23028),  # 9,216 cores UNCONFIRMED; [MODAL]
    _plain_model("L40", ("NVIDIA L40",), "Ada", 142, 46068),  # UNCONFIRMED: as L40S (18,176 cores)
    _plain_model(
        "RTX-6000-Ada",
        ("NVIDIA RTX 6000 Ada Generation",),
        "Ada",
        142,  # 18,176 cores UNCONFIRMED
        46068,  # [SMI] shows 49140 MiB with ECC off; ECC-on figure as the other 48 GB boards
    ),
    _mig_capable_model(
        "B200",
        ("NVIDIA B200",),
        "Blackwell",
        148,  # [SMI] a device query of "NVIDIA B200" printing "Processor(s): 148"
        183359,  # [SMI] "NVIDIA B200 ... 183359MiB" (several machines, drivers 570-595)
    ),
    _mig_capable_model(
        "GH200",
        ("NVIDIA GH200 480GB", "NVIDIA GH200 120GB", "GH200 120GB"),
        "Hopper",
        132,  # UNCONFIRMED: the H100 SXM5 configuration
        97871,  # [SMI] "NVIDIA GH200 480GB ... 97871MiB"; the 144 GB HBM3e part: UNCONFIRMED
    ),
    _mig_capable_model(
        "H20",
        ("NVIDIA H20",),
        "Hopper",
        78,  # UNCONFIRMED: 78 SMs as reported from a Geekbench 6 run, not by NVIDIA
        97871,  # [SMI] "NVIDIA H20 ... 97871MiB"
    ),
    _mig_capable_model(
        "H800",
        ("NVIDIA H800", "NVIDIA H800 80GB HBM3"),
        "Hopper",
        132,  # UNCONFIRMED: the H100 SXM5 configuration
        81559,  # UNCONFIRMED: assumed equal to the H100 SXM5's NVML total
    ),
    _mig_capable_model(
        "A800-80GB",
        ("NVIDIA A800-SXM4-80GB", "NVIDIA A800 80GB PCIe"),
        "Ampere",
        108,  # UNCONFIRMED: the A100 configuration
        81920,  # UNCONFIRMED: assumed equal to the A100 80GB's NVML total
    ),
)

#: Every model gpuslice knows, by its gpuslice name.
MODELS: dict[str, GpuModel] = {model.name: model for model in _MODEL_LIST}


def get_model(name: str) -> GpuModel:
    """The catalog model called ``name`` (case-insensitive).

    Raises:
        KeyError: unknown name; the message lists the known models and the closest match.
    """
    by_lower = {key.lower(): model for key, model in MODELS.items()}
    found = by_lower.get(name.strip().lower())
    if found is not None:
        return found
    close = difflib.get_close_matches(name.strip().lower(), list(by_lower), n=1, cutoff=0.4)
    hint = f"did you mean {by_lower[close[0]].name}? " if close else ""
    raise KeyError(f"unknown GPU model {name!r}; {hint}known models: {', '.join(MODELS)}")


def model_for_nvml_name(name: str, memory_mib: int | None = None) -> GpuModel | None:
    """The catalog model of a GPU whose NVML product name is ``name``, or None.

    Args:
        name: ``nvmlDeviceGetName`` (``nvidia-smi --query-gpu=name``), e.g.
            ``NVIDIA H100 80GB HBM3``.
        memory_mib: total memory NVML reports; picks the 40/80 GB (or 16/32 GB) variant when the
            name alone is ambiguous.
    """
    wanted = name.strip().lower()
    for model in _MODEL_LIST:
        if wanted in (n.lower() for n in model.nvml_names):
            return model
    # Names not listed verbatim (a new board variant, a "Mock " prefix in NVIDIA's own mocks):
    # match on the family and let memory choose among its sizes.
    # Longer tokens first: "gh200" contains "h200", "h200" contains "h20", "a100" "a10".
    families = (
        ("gh200", ("GH200",)),
        ("a100", ("A100-40GB", "A100-80GB")),
        ("a800", ("A800-80GB",)),
        ("h100 nvl", ("H100-NVL-94GB",)),
        ("h100 pcie", ("H100-PCIe-80GB",)),
        ("h100", ("H100-80GB",)),
        ("h200", ("H200-141GB",)),
        ("h800 pcie", ()),  # 114 SMs like the H100 PCIe? UNCONFIRMED: leave it unknown
        ("h800", ("H800",)),
        ("h20", ("H20",)),
        ("b200", ("B200",)),
        ("a30", ("A30-24GB",)),
        ("a40", ("A40",)),
        ("a10", ("A10",)),
        ("l40s", ("L40S",)),
        ("l40", ("L40",)),
        ("rtx 6000 ada", ("RTX-6000-Ada",)),
        ("v100", ("V100-16GB", "V100-32GB")),
    )
    words = re.split(r"[\s_-]+", wanted)
    for token, names in families:
        # Whole words: "a10" must not match "a100", nor "h20" "h200" or "l40" "l40s".
        parts = token.split()
        if any(words[i : i + len(parts)] == parts for i in range(len(words))):
            if not names:
                return None
            candidates = [MODELS[n] for n in names]
            if len(candidates) == 1 or memory_mib is None:
                sized = [m for m in candidates if m.name.lower().split("-")[-1] in wanted]
                return sized[0] if sized else candidates[0]
            return min(candidates, key=lambda m: abs(m.memory_mib - memory_mib))
    if wanted.endswith(" l4") or wanted == "l4":
        return MODELS["L4"]
    return None


def _counts_problem(model: GpuModel, profiles: Sequence[str]) -> str | None:
    if not model.mig:
        return f"{model.name} does not support MIG"
    for name in profiles:
        if model.profile(name) is None:
            known = ", ".join(p.name for p in model.mig_profiles)
            return f"unknown MIG profile {name!r} for {model.name} (known: {known})"
    for name, count in Counter(p.lower() for p in profiles).items():
        profile = model.profile(name)
        assert profile is not None  # checked above
        if count > profile.max_instances:
            return (
                f"too many instances of {profile.name}: {count} (max {profile.max_instances} "
                f"on {model.name})"
            )
    compute = sum(p.compute_slices for p in (model.profile(n) for n in profiles) if p)
    if compute > model.compute_slices:
        return (
            f"does not fit: needs {compute} compute slices, {model.name} has {model.compute_slices}"
        )
    memory = sum(p.memory_slices for p in (model.profile(n) for n in profiles) if p)
    if memory > model.memory_slices:
        return f"does not fit: needs {memory} memory slices, {model.name} has {model.memory_slices}"
    return None


def place_mig(model: GpuModel, profiles: Sequence[str]) -> tuple[tuple[str, int], ...] | None:
    """A placement of these GPU-instance profiles on one empty GPU of ``model``, or None.

    The placement honours each profile's allowed start positions (``nvidia-smi mig -lgipp``),
    keeps the memory slices of instances from overlapping and the sum of compute slices within
    the GPU's. Profiles are matched case-insensitively; the result uses catalog names.

    Args:
        model: the GPU model.
        profiles: a multiset of profile names, e.g. ``["3g.20gb", "2g.10gb", "1g.5gb"]``.

    Returns:
        ``((profile, start_memory_slice), ...)`` ordered by start, or None when impossible
        (unknown profile, too many instances, or no arrangement fits).
    """
    if _counts_problem(model, profiles) is not None:
        return None
    wanted = [model.profile(name) for name in profiles]
    items = sorted((p for p in wanted if p is not None), key=lambda p: -p.memory_slices)
    used = [False] * model.memory_slices
    chosen: list[tuple[str, int]] = []

    def fits(profile: MigProfile, start: int) -> bool:
        end = start + profile.memory_slices
        return end <= model.memory_slices and not any(used[start:end])

    def mark(profile: MigProfile, start: int, value: bool) -> None:
        for i in range(start, start + profile.memory_slices):
            used[i] = value

    def search(i: int, min_start: int) -> bool:
        if i == len(items):
            return True
        profile = items[i]
        # Identical consecutive profiles are tried in increasing start order only, which
        # removes permutations of the same set without losing any arrangement.
        floor = min_start if i > 0 and items[i - 1] == profile else 0
        for start in profile.placements:
            if start < floor or not fits(profile, start):
                continue
            mark(profile, start, True)
            chosen.append((profile.name, start))
            if search(i + 1, start + 1):
                return True
            chosen.pop()
            mark(profile, start, False)
        return False

    if not search(0, 0):
        return None
    return tuple(sorted(chosen, key=lambda item: item[1]))


def placement_problem(model: GpuModel, profiles: Sequence[str]) -> str | None:
    """Why these profiles cannot be created together on one GPU of ``model``, or None if they can.

    Returns a sentence for people: an unknown profile, too many instances of one profile,
    too many compute or memory slices, or no arrangement honouring the allowed start positions.
    """
    problem = _counts_problem(model, profiles)
    if problem is not None:
        return problem
    if place_mig(model, profiles) is None:
        return (
            f"does not fit: no arrangement of {', '.join(profiles)} on {model.name} respects the "
            "allowed start positions (see `nvidia-smi mig -lgipp`)"
        )
    return None
