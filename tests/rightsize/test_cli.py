"""gpuslice profile and gpuslice plan suggest, end to end (the slow ones through real Parsl)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuslice.cli import cli
from gpuslice.rightsize.identity import function_id
from gpuslice.rightsize.store import ProfileStore
from tests.parsl.conftest import emulated_environment
from tests.rightsize import funcs
from tests.rightsize.helpers import point, profile_of

FLEET = str(Path(__file__).resolve().parents[2] / "src/gpuslice/examples/fleet-1xh100.yaml")


@pytest.fixture
def emulated() -> Iterator[Path]:
    with emulated_environment() as root:
        yield root


def _fill(store: ProfileStore) -> None:
    for func, light in ((funcs.quick, False), (funcs.where, True)):
        fid = function_id(func)
        points = [point(1, 100, 132, p50=100.0), point(2, 50, 66, p50=100.0 if light else 200.0)]
        store.put(profile_of(fid.name, points, code_hash=fid.code_hash))


def test_profile_refuses_a_spec_without_a_colon() -> None:
    result = CliRunner().invoke(cli, ["profile", "tests.rightsize.funcs.quick", "--fleet", FLEET])
    assert result.exit_code == 2
    assert "is not MODULE:FUNC" in result.output
    assert "Traceback" not in result.output


def test_plan_suggest_writes_a_plan_that_plan_check_accepts(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite")
    _fill(store)
    out = tmp_path / "plan.yaml"
    functions = "tests.rightsize.funcs:quick,tests.rightsize.funcs:where"
    result = CliRunner().invoke(
        cli,
        ["plan", "suggest", "--functions", functions, "--mix", "quick=0.7,where=0.3",
         "--fleet", FLEET, "--store", str(store.path), "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "cache hit" in result.output
    text = out.read_text()
    assert "# quick: tests.rightsize.funcs:quick" in text
    check = CliRunner().invoke(cli, ["plan", "check", str(out), "--fleet", FLEET])
    assert check.exit_code == 0, check.output
    assert "ok: 2 pools" in check.output


def test_plan_suggest_json_and_no_profile(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite")
    _fill(store)
    functions = "tests.rightsize.funcs:quick,tests.rightsize.funcs:where"
    result = CliRunner().invoke(
        cli,
        ["plan", "suggest", "--functions", functions, "--fleet", FLEET, "--store", str(store.path), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {p["pool"] for p in data["pools"]} == {"quick", "where"}
    assert data["plan"].startswith("# Suggested by `gpuslice plan suggest`")
    missing = CliRunner().invoke(
        cli,
        ["plan", "suggest", "--functions", "tests.rightsize.funcs:hungry", "--fleet", FLEET,
         "--store", str(store.path), "--no-profile"],
    )  # fmt: skip
    assert missing.exit_code == 2
    assert "was never profiled" in missing.output


def test_plan_suggest_rejects_a_malformed_mix(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        ["plan", "suggest", "--functions", "tests.rightsize.funcs:quick", "--mix", "quick:0.5",
         "--fleet", FLEET, "--store", str(tmp_path / "s.sqlite")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "is not NAME=NUMBER" in result.output


@pytest.mark.slow
def test_profile_measures_through_parsl_then_reads_the_store(
    emulated: Path, tmp_path: Path
) -> None:
    store = tmp_path / "profiles.sqlite"
    plot = tmp_path / "quick.png"
    args = ["profile", "tests.rightsize.funcs:quick", "--fleet", FLEET, "--max-per-gpu", "2",
            "--store", str(store), "--plot", str(plot), "--json"]  # fmt: skip
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    data = json.loads(first.stdout)
    assert data["function"] == "tests.rightsize.funcs:quick"
    assert data["gpu_model"] == "H100-80GB"
    assert data["source"] == "measured"
    assert set(data["recommended"]) >= {"kind", "compute", "memory_mib", "per_gpu"}
    # quick() holds 512 MiB: the cap is 512 * 1.2 rounded up to 256 MiB steps
    assert data["recommended"]["memory_mib"] == 768
    assert data["order"][0] == 1  # the whole GPU first
    for p in data["points"]:
        assert {"compute", "p50_ms", "p95_ms", "tasks_per_s_per_gpu", "peak_memory_mib"} <= set(p)
        assert p["peak_memory_mib"] == 512
        assert p["p50_ms"] >= 19  # 20 ms alone on the whole GPU; never faster
    assert data["profiling_s"] > 0
    assert plot.stat().st_size > 0
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["source"] == "store"
    assert "cache hit" in again.stderr
