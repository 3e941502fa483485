"""Loading plans: YAML, compact form and the schema rules that need no hardware."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuslice import PlanError, UsageError, load_plan
from gpuslice.plan.compact import parse_compact, to_compact

VALID = """\
version: 1
gpus: all
pools:
  small:
    mps: {compute: 25, memory: 10GiB}
    per_gpu: 2
  large:
    mps: {compute: 50}
  tiny:
    mig: 1g.10gb
  batch:
    share: {}
    per_gpu: 4
"""


def problems(text: str) -> list[str]:
    with pytest.raises(PlanError) as caught:
        load_plan(text)
    return [str(p) for p in caught.value.problems]


def test_design_example_loads_with_sizes_in_mib() -> None:
    plan = load_plan(VALID)
    assert list(plan.pools) == ["small", "large", "tiny", "batch"]
    assert plan.pools["small"].mps is not None
    assert plan.pools["small"].mps.memory == 10 * 1024
    assert plan.pools["small"].per_gpu == 2
    assert plan.pools["tiny"].mig is not None
    assert plan.pools["tiny"].mig.profile == "1g.10gb"
    assert plan.pools["batch"].kind == "share"


def test_plan_file_path_loads(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(VALID)
    assert load_plan(path) == load_plan(str(path)) == load_plan(VALID)


def test_missing_plan_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read plan file"):
        load_plan(str(tmp_path / "nope.yaml"))


def test_unknown_key_names_the_nearest_valid_key() -> None:
    found = problems("version: 1\npools:\n  a:\n    mps: {compute: 20, memroy: 1GiB}\n")
    assert len(found) == 1
    assert "pools.a.mps.memroy (line 4" in found[0]
    assert "did you mean 'memory'?" in found[0]


def test_unknown_top_level_key_is_refused() -> None:
    found = problems("version: 1\npool:\n  a: {share: {}}\n")
    assert any("unknown key 'pool'" in p and "did you mean 'pools'?" in p for p in found)


def test_missing_version_is_refused_with_fix() -> None:
    found = problems("pools:\n  a: {share: {}}\n")
    assert found == [
        "version (line 1, column 1): required key is missing (fix: add `version: 1` at the top)"
    ]


@pytest.mark.parametrize("version", ["2", "0", "'1.0'", "true"])
def test_version_other_than_1_is_refused(version: str) -> None:
    found = problems(f"version: {version}\npools:\n  a: {{share: {{}}}}\n")
    assert len(found) == 1
    assert "unsupported plan version" in found[0]


@pytest.mark.parametrize(
    ("pool", "found"),
    [
        ("{per_gpu: 2}", "found none"),
        ("{mps: {}, share: {}}", "found mps and share"),
        ("{mps: {}, mig: 1g.10gb, share: {}}", "found mps and mig and share"),
    ],
)
def test_pool_needs_exactly_one_kind(pool: str, found: str) -> None:
    result = problems(f"version: 1\npools:\n  a: {pool}\n")
    assert len(result) == 1
    assert "exactly one of mps, mig or share" in result[0]
    assert found in result[0]


@pytest.mark.parametrize("compute", [0, 101, -5])
def test_compute_outside_1_to_100_is_refused(compute: int) -> None:
    found = problems(f"version: 1\npools:\n  a: {{mps: {{compute: {compute}}}}}\n")
    assert len(found) == 1
    assert found[0].startswith("pools.a.mps.compute")
    assert f"got {compute}" in found[0]


def test_compute_accepts_a_percent_sign() -> None:
    plan = load_plan("version: 1\npools:\n  a: {mps: {compute: '30%'}}\n")
    assert plan.pools["a"].mps is not None
    assert plan.pools["a"].mps.compute == 30


@pytest.mark.parametrize("memory", ["ten gigs", "10 parsecs", "-3GiB", "[1]"])
def test_memory_that_is_not_a_size_is_refused(memory: str) -> None:
    found = problems(f"version: 1\npools:\n  a: {{mps: {{memory: {memory}}}}}\n")
    assert len(found) == 1
    assert found[0].startswith("pools.a.mps.memory")
    assert "memory size" in found[0]


def test_invalid_pool_names_are_each_refused() -> None:
    found = problems(
        "version: 1\npools:\n  9lives: {share: {}}\n  'has space': {share: {}}\n  ok: {share: {}}\n"
    )
    assert len(found) == 2
    assert found[0].startswith("pools.9lives (line 3")
    assert found[1].startswith("pools.has space (line 4")


def test_duplicate_pool_names_in_yaml_are_refused_with_line() -> None:
    found = problems("version: 1\npools:\n  a: {share: {}}\n  a: {mps: {}}\n")
    assert len(found) == 1
    assert "line 4, column 3" in found[0]
    assert "duplicate key 'a' (first at line 3)" in found[0]


def test_malformed_yaml_reports_line_and_column() -> None:
    found = problems("version: 1\npools:\n  a: {mps: {compute: 20}\n  b: [\n")
    assert len(found) == 1
    assert found[0].startswith("<yaml> line ")
    assert "column" in found[0]
    assert "malformed YAML" in found[0]


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        "version: 3\npools:\n  a: {mps: {compute: 500, memory: lots}, per_gpu: 0}\n  b: {}\n  c: {sharing: {}}\n"
    )
    assert len(found) == 6, found


def test_non_mapping_plan_is_refused() -> None:
    assert "not list" in problems("- a\n- b\n")[0]


def test_mig_per_gpu_is_refused_with_the_right_key() -> None:
    found = problems("version: 1\npools:\n  a: {mig: 1g.10gb, per_gpu: 2}\n")
    assert "mig.count" in found[0]


def test_mig_per_instance_needs_mps() -> None:
    found = problems("version: 1\npools:\n  a: {mig: {profile: 3g.40gb, per_instance: 2}}\n")
    assert "mps" in found[0]


def test_gpus_must_be_all_or_a_list() -> None:
    found = problems("version: 1\ngpus: some\npools:\n  a: {share: {}}\n")
    assert found[0].startswith("gpus (line 2")


def test_compact_form_equals_yaml_form() -> None:
    compact = load_plan(
        "small=2x mps:25%/10GiB, large=1x mps:50%, tiny=mig:1g.10gb, batch=4x share"
    )
    assert compact == load_plan(VALID)


def test_compact_form_round_trips() -> None:
    text = "small=2x mps:25%/10GiB@0+1, tiny=2x mig:3g.40gb+mps:50%/1536MiB, batch=4x share"
    assert to_compact(load_plan(text)) == text


def test_compact_form_errors_are_located() -> None:
    with pytest.raises(PlanError) as caught:
        parse_compact("a=2x gpu:30%, b=2x mps:thirty, a=share, garbage")
    found = [str(p) for p in caught.value.problems]
    assert any(p.startswith("pools.a: unknown slice kind 'gpu'") for p in found)
    assert any(p.startswith("pools.b: cannot read MPS limits") for p in found)
    assert any("defined twice" in p for p in found)
    assert any(p.startswith("entry 4") for p in found)


def test_compact_form_values_are_checked_by_the_schema() -> None:
    found = problems("a=2x mps:150%")
    assert found[0].startswith("pools.a.mps.compute")


def test_a_directory_or_missing_path_is_named_as_a_file_problem(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="it is a directory"):
        load_plan(str(tmp_path))
    with pytest.raises(UsageError, match="cannot read plan file"):
        load_plan(str(tmp_path / "plans" / "small"))
