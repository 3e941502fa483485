"""`gpuslice mig assert|apply`: output, JSON and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuslice.cli import cli


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def a100(tmp_path: Path) -> str:
    """A fleet file: one A100-40GB with a 3g.20gb and a 1g.5gb instance, one without MIG mode."""
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "gpus:\n  - {model: A100-40GB, mig: [3g.20gb, 1g.5gb]}\n  - {model: A100-40GB}\n"
    )
    return str(path)


def test_assert_passes_with_exit_0(a100: str) -> None:
    code, out, _ = run("mig", "assert", "tiny=mig:1g.5gb", "--fleet", a100)
    assert code == 0
    assert "GPU 0 (A100-40GB): ok" in out
    assert "satisfies the plan" in out


def test_assert_fails_with_exit_1_and_the_diff_on_stdout(a100: str) -> None:
    code, out, err = run("mig", "assert", "tiny=2x mig:1g.5gb", "--fleet", a100)
    assert code == 1
    assert "GPU 0 (A100-40GB): missing 1x 1g.5gb" in out
    assert "GPU 1 (A100-40GB): MIG mode is off" in out
    assert "Traceback" not in err


def test_assert_json_is_the_diff(a100: str) -> None:
    code, out, _ = run("mig", "assert", "tiny=2x mig:1g.5gb", "--fleet", a100, "--json")
    assert code == 1
    data = json.loads(out)
    assert data["satisfied"] is False
    assert data["mig_mode_off"] == [1]
    assert [g["missing"] for g in data["gpus"]] == [["1g.5gb"], ["1g.5gb", "1g.5gb"]]


def test_assert_of_a_plan_naming_a_missing_gpu_exits_2(a100: str, tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\npools:\n  t: {mig: 1g.5gb, gpus: [5]}\n")
    code, out, err = run("mig", "assert", str(plan), "--fleet", a100)
    assert code == 2
    assert out == ""
    assert "no GPU 5 here" in err


def test_apply_on_a_fleet_prints_the_commands_and_runs_nothing(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("gpus:\n  - {model: A100-40GB, mig: [3g.20gb, 1g.5gb]}\n")
    code, out, _ = run("mig", "apply", "tiny=2x mig:1g.5gb", "--fleet", str(fleet))
    assert code == 0
    assert "emulated GPUs" in out
    assert "nvidia-smi mig -i 0 -cgi 1g.5gb -C" in out


def test_apply_json_keeps_stdout_for_the_report(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("gpus:\n  - {model: A100-40GB, mig: [3g.20gb, 1g.5gb]}\n")
    code, out, _ = run("mig", "apply", "tiny=2x mig:1g.5gb", "--fleet", str(fleet), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["dry_run"] is True
    assert data["commands"] == [["nvidia-smi", "mig", "-i", "0", "-cgi", "1g.5gb", "-C"]]


def test_apply_with_mig_mode_off_exits_1_with_the_enable_command(a100: str) -> None:
    code, _, err = run("mig", "apply", "tiny=2x mig:1g.5gb", "--fleet", a100, "--dry-run")
    assert code == 1
    assert "sudo nvidia-smi -i 1 -mig 1" in err
    assert "Traceback" not in err
