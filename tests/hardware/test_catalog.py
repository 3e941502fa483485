"""The catalog against NVIDIA's documented MIG tables, and MIG placement."""

from __future__ import annotations

import pytest

from gpuslice.hardware.catalog import (
    MODELS,
    get_model,
    model_for_nvml_name,
    place_mig,
    placement_problem,
)

# (model, profile, compute slices, memory slices, usable MiB, max instances, starts, SMs)
# Names and instance counts: https://docs.nvidia.com/datacenter/tesla/mig-user-guide/supported-mig-profiles.html
# MiB/SMs/starts: `nvidia-smi mig -lgip` / `-lgipp` output (see catalog.py for each source).
DOCUMENTED = [
    ("A100-40GB", "1g.5gb", 1, 1, 4864, 7, (0, 1, 2, 3, 4, 5, 6), 14),
    ("A100-40GB", "1g.5gb+me", 1, 1, 4864, 1, (0, 1, 2, 3, 4, 5, 6), 14),
    ("A100-40GB", "1g.10gb", 1, 2, 9856, 4, (0, 2, 4, 6), 14),
    ("A100-40GB", "2g.10gb", 2, 2, 9856, 3, (0, 2, 4), 28),
    ("A100-40GB", "3g.20gb", 3, 4, 19968, 2, (0, 4), 42),
    ("A100-40GB", "4g.20gb", 4, 4, 19968, 1, (0,), 56),
    ("A100-40GB", "7g.40gb", 7, 8, 40192, 1, (0,), 98),
    ("A100-80GB", "1g.10gb", 1, 1, 9728, 7, (0, 1, 2, 3, 4, 5, 6), 14),
    ("A100-80GB", "1g.20gb", 1, 2, 19968, 4, (0, 2, 4, 6), 14),
    ("A100-80GB", "3g.40gb", 3, 4, 40192, 2, (0, 4), 42),
    ("A100-80GB", "7g.80gb", 7, 8, 80384, 1, (0,), 98),
    ("H100-80GB", "1g.10gb", 1, 1, 9856, 7, (0, 1, 2, 3, 4, 5, 6), 16),
    ("H100-80GB", "1g.10gb+me", 1, 1, 9856, 1, (0, 1, 2, 3, 4, 5, 6), 16),
    ("H100-80GB", "1g.20gb", 1, 2, 19968, 4, (0, 2, 4, 6), 26),
    ("H100-80GB", "2g.20gb", 2, 2, 19968, 3, (0, 2, 4), 32),
    ("H100-80GB", "3g.40gb", 3, 4, 40192, 2, (0, 4), 60),
    ("H100-80GB", "4g.40gb", 4, 4, 40192, 1, (0,), 64),
    ("H100-80GB", "7g.80gb", 7, 8, 81152, 1, (0,), 132),
    ("H100-NVL-94GB", "1g.12gb", 1, 1, 10880, 7, (0, 1, 2, 3, 4, 5, 6), 16),
    ("H100-NVL-94GB", "3g.47gb", 3, 4, 47232, 2, (0, 4), 60),
    ("H100-NVL-94GB", "7g.94gb", 7, 8, 94848, 1, (0,), 132),
    ("H200-141GB", "1g.18gb", 1, 1, 16384, 7, (0, 1, 2, 3, 4, 5, 6), 16),
    # NVIDIA/mig-parted#120's -lgip: 32.25, 69.50 and 139.75 GiB (x 1024 MiB).
    ("H200-141GB", "1g.35gb", 1, 2, 33024, 4, (0, 2, 4, 6), 26),
    ("H200-141GB", "2g.35gb", 2, 2, 33024, 3, (0, 2, 4), 32),
    ("H200-141GB", "3g.71gb", 3, 4, 71168, 2, (0, 4), 60),
    ("H200-141GB", "4g.71gb", 4, 4, 71168, 1, (0,), 64),
    ("H200-141GB", "7g.141gb", 7, 8, 143104, 1, (0,), 132),
    ("A30-24GB", "1g.6gb", 1, 1, 5952, 4, (0, 1, 2, 3), 14),
    ("A30-24GB", "1g.6gb+me", 1, 1, 5952, 1, (0, 1, 2, 3), 14),
    ("A30-24GB", "2g.12gb", 2, 2, 11968, 2, (0, 2), 28),
    ("A30-24GB", "2g.12gb+me", 2, 2, 11968, 1, (0, 2), 28),
    ("A30-24GB", "4g.24gb", 4, 4, 24000, 1, (0,), 56),
]

# Profile names per model, in -lgip order, from the "Supported MIG Profiles" page.
DOCUMENTED_NAMES = {
    "A100-40GB": ["1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"],
    "A100-80GB": ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"],
    "H100-80GB": ["1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"],
    "H100-PCIe-80GB": [
        "1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb",
    ],
    "H100-NVL-94GB": [
        "1g.12gb", "1g.12gb+me", "1g.24gb", "2g.24gb", "3g.47gb", "4g.47gb", "7g.94gb",
    ],
    "H200-141GB": [
        "1g.18gb", "1g.18gb+me", "1g.35gb", "2g.35gb", "3g.71gb", "4g.71gb", "7g.141gb",
    ],
    "A30-24GB": ["1g.6gb", "1g.6gb+me", "2g.12gb", "2g.12gb+me", "4g.24gb"],
}  # fmt: skip


@pytest.mark.parametrize(
    ("model", "name", "compute", "memory", "mib", "count", "starts", "sms"), DOCUMENTED
)
def test_profile_matches_documented_values(
    model: str,
    name: str,
    compute: int,
    memory: int,
    mib: int,
    count: int,
    starts: tuple[int, ...],
    sms: int,
) -> None:
    profile = MODELS[model].profile(name)
    assert profile is not None
    assert (
        profile.compute_slices,
        profile.memory_slices,
        profile.memory_mib,
        profile.max_instances,
        profile.placements,
        profile.sm_count,
        profile.media_extensions,
    ) == (compute, memory, mib, count, starts, sms, name.endswith("+me"))


@pytest.mark.parametrize(("model", "names"), DOCUMENTED_NAMES.items())
def test_profile_names_match_user_guide(model: str, names: list[str]) -> None:
    assert [p.name for p in MODELS[model].mig_profiles] == names


@pytest.mark.parametrize(
    ("model", "sms", "mig"),
    [
        ("A100-40GB", 108, True),
        ("A100-80GB", 108, True),
        ("H100-80GB", 132, True),
        ("H100-PCIe-80GB", 114, True),
        ("H100-NVL-94GB", 132, True),
        ("H200-141GB", 132, True),
        ("A30-24GB", 56, True),
        ("L40S", 142, False),
        ("L4", 58, False),
        ("V100-16GB", 80, False),
        ("V100-32GB", 80, False),
    ],
)
def test_model_sm_count_and_mig_support(model: str, sms: int, mig: bool) -> None:
    gpu = MODELS[model]
    assert (gpu.sm_count, gpu.mig, gpu.mps, gpu.max_mps_clients) == (sms, mig, True, 48)


@pytest.mark.parametrize("model", list(MODELS.values()), ids=list(MODELS))
def test_tables_are_self_consistent(model: object) -> None:
    from gpuslice.hardware.catalog import GpuModel

    assert isinstance(model, GpuModel)
    for p in model.mig_profiles:
        assert p.name.startswith(f"{p.compute_slices}g.")
        assert p.sm_count <= model.sm_count
        assert p.memory_mib <= model.memory_mib
        assert all(s + p.memory_slices <= model.memory_slices for s in p.placements)
        assert p.name == p.name.lower()
    # MIG-capable models without a profile table here have no geometry either.
    assert not model.mig_profiles or model.compute_slices in (4, 7)
    assert model.mig or not model.mig_profiles


def test_get_model_is_case_insensitive() -> None:
    assert get_model("h100-80gb") is MODELS["H100-80GB"]


def test_get_model_suggests_closest_and_lists_known() -> None:
    with pytest.raises(KeyError, match=r"did you mean H100-80GB\?.*known models: A100-40GB"):
        get_model("H100-80G")


@pytest.mark.parametrize(
    ("nvml_name", "memory", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", 81559, "H100-80GB"),
        ("NVIDIA H100 PCIe", None, "H100-PCIe-80GB"),
        ("NVIDIA H100 NVL", None, "H100-NVL-94GB"),
        ("NVIDIA A100-SXM4-40GB", None, "A100-40GB"),
        ("NVIDIA A100-PCIE-40GB", None, "A100-40GB"),
        ("NVIDIA A100-SXM4-80GB", None, "A100-80GB"),
        ("A100-SXM4-40GB", 40536, "A100-40GB"),
        ("NVIDIA A100 Tensor Core GPU", 81920, "A100-80GB"),
        ("NVIDIA A100 Tensor Core GPU", 40960, "A100-40GB"),
        ("Tesla V100-SXM2-16GB", None, "V100-16GB"),
        ("Tesla V100-SXM2-32GB", None, "V100-32GB"),
        ("NVIDIA H200", None, "H200-141GB"),
        ("NVIDIA A30", None, "A30-24GB"),
        ("NVIDIA L40S", None, "L40S"),
        ("NVIDIA L4", None, "L4"),
    ],
)
def test_model_for_nvml_name_recognises_products(
    nvml_name: str, memory: int | None, expected: str
) -> None:
    model = model_for_nvml_name(nvml_name, memory)
    assert model is not None
    assert model.name == expected


def test_model_for_nvml_name_returns_none_for_unknown_gpu() -> None:
    assert model_for_nvml_name("NVIDIA GeForce RTX 4090", 24564) is None


@pytest.mark.parametrize(
    ("model", "layout"),
    [
        ("A100-40GB", ["3g.20gb", "2g.10gb", "1g.5gb"]),
        ("A100-40GB", ["1g.5gb"] * 7),
        ("A100-40GB", ["4g.20gb", "3g.20gb"]),
        ("A100-40GB", ["3g.20gb", "3g.20gb"]),
        ("A100-40GB", ["2g.10gb", "2g.10gb", "2g.10gb", "1g.5gb"]),
        ("A100-40GB", ["1g.10gb"] * 4),
        ("A100-40GB", ["4g.20gb", "1g.5gb", "1g.5gb", "1g.5gb"]),
        ("A100-40GB", ["7g.40gb"]),
        ("A100-40GB", ["1g.5gb+me", "1g.5gb", "1g.5gb", "1g.5gb", "1g.5gb", "1g.5gb", "1g.5gb"]),
        ("H100-80GB", ["3g.40gb", "2g.20gb", "1g.10gb"]),
        ("H100-80GB", ["1g.20gb"] * 4),
        ("A30-24GB", ["2g.12gb", "1g.6gb", "1g.6gb"]),
        ("A30-24GB", ["1g.6gb"] * 4),
    ],
)
def test_place_mig_accepts_documented_layouts(model: str, layout: list[str]) -> None:
    gpu = MODELS[model]
    placed = place_mig(gpu, layout)
    assert placed is not None
    assert sorted(name for name, _ in placed) == sorted(layout)
    taken: set[int] = set()
    for name, start in placed:
        profile = gpu.profile(name)
        assert profile is not None
        assert start in profile.placements
        span = set(range(start, start + profile.memory_slices))
        assert not span & taken
        taken |= span
    assert placement_problem(gpu, layout) is None


@pytest.mark.parametrize(
    ("model", "layout", "reason"),
    [
        ("A100-40GB", ["4g.20gb", "4g.20gb"], "too many instances of 4g.20gb: 2 (max 1"),
        ("A100-40GB", ["4g.20gb", "3g.20gb", "1g.5gb"], "needs 8 compute slices"),
        ("A100-40GB", ["3g.20gb"] * 3, "too many instances of 3g.20gb"),
        ("A100-40GB", ["3g.20gb", "3g.20gb", "1g.5gb"], "does not fit"),
        ("A100-40GB", ["1g.5gb"] * 8, "too many instances of 1g.5gb"),
        ("A100-40GB", ["1g.5gb+me", "1g.5gb+me"], "max 1"),
        ("A100-40GB", ["1g.10gb", "1g.10gb", "1g.10gb", "3g.20gb"], "memory slices"),
        ("A100-40GB", ["2g.20gb"], "unknown MIG profile '2g.20gb'"),
        ("L4", ["1g.5gb"], "does not support MIG"),
        ("A30-24GB", ["2g.12gb", "2g.12gb", "1g.6gb"], "does not fit"),
    ],
)
def test_place_mig_refuses_impossible_layouts(model: str, layout: list[str], reason: str) -> None:
    gpu = MODELS[model]
    assert place_mig(gpu, layout) is None
    problem = placement_problem(gpu, layout)
    assert problem is not None
    assert reason in problem


def test_place_mig_uses_only_allowed_starts() -> None:
    # 3g at {0,4} and 2g at {0,2,4}: two 2g.10gb plus one 3g.20gb need 8 memory slices and
    # fit by count, and do fit by position (2g at 0 and 2, 3g at 4).
    gpu = MODELS["A100-40GB"]
    assert place_mig(gpu, ["2g.10gb", "2g.10gb", "3g.20gb"]) == (
        ("2g.10gb", 0),
        ("2g.10gb", 2),
        ("3g.20gb", 4),
    )


# NVML product names of current data-centre GPUs (as nvidia-smi prints them) and the catalog
# model each must map to; the longer names must not fall into a shorter family.
@pytest.mark.parametrize(
    ("nvml_name", "expected"),
    [
        ("NVIDIA A40", "A40"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA RTX 6000 Ada Generation", "RTX-6000-Ada"),
        ("NVIDIA B200", "B200"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA GH200 120GB", "GH200"),
        ("NVIDIA H20", "H20"),
        ("NVIDIA H800", "H800"),
        ("NVIDIA A800-SXM4-80GB", "A800-80GB"),
        ("NVIDIA H200", "H200-141GB"),
        ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
    ],
)
def test_current_data_centre_models_are_recognised(nvml_name: str, expected: str) -> None:
    model = model_for_nvml_name(nvml_name)
    assert model is not None
    assert model.name == expected


# Totals as NVML reports them (nvidia-smi memory.total), from published output: a plan that
# fits the fleet file must fit the real card.
@pytest.mark.parametrize(
    ("model", "mib"),
    [
        ("H100-80GB", 81559),
        ("A100-80GB", 81920),
        ("A100-40GB", 40960),
        ("H200-141GB", 143771),
        ("H100-NVL-94GB", 95830),
        ("A30-24GB", 24576),
        ("L40S", 46068),
        ("L4", 23034),
        ("A10", 23028),
        ("A40", 46068),
        ("B200", 183359),
        ("GH200", 97871),
        ("H20", 97871),
        ("V100-16GB", 16130),
        ("V100-32GB", 32502),
    ],
)
def test_model_memory_is_what_nvml_reports(model: str, mib: int) -> None:
    assert MODELS[model].memory_mib == mib


def test_unknown_product_names_stay_unknown() -> None:
    # An H800 PCIe's SM count is not confirmed: better unknown (no SM check) than wrong.
    assert model_for_nvml_name("NVIDIA H800 PCIe") is None
    assert model_for_nvml_name("NVIDIA RTX PRO 6000 Blackwell Server Edition") is None
