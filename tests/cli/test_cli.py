"""The `gpuslice` command: output, JSON, exit codes, and no traceback for user input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuslice import Layout, discover, resolve
from gpuslice.cli import cli


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_gpus_lists_the_fleet(examples: Path) -> None:
    code, out, _ = run("gpus", "--fleet", str(examples / "fleet-mixed.yaml"))
    assert code == 0
    assert "emulated" in out
    assert "H100-80GB" in out
    assert "3g.20gb" in out
    assert "L4" in out


def test_gpus_json_is_the_inventory(examples: Path) -> None:
    code, out, _ = run("gpus", "--fleet", str(examples / "fleet-mixed.yaml"), "--json")
    assert code == 0
    data = json.loads(out)
    assert data == discover(examples / "fleet-mixed.yaml").to_dict()
    assert [g["mig_enabled"] for g in data["gpus"]] == [False, True, False]


def test_fleet_comes_from_the_environment_too(examples: Path) -> None:
    code, out, _ = run(
        "gpus", "--json", env={"GPUSLICE_FLEET": str(examples / "fleet-2xh100.yaml")}
    )
    assert code == 0
    assert len(json.loads(out)["gpus"]) == 2


def test_plan_check_accepts_a_valid_plan(examples: Path) -> None:
    code, out, _ = run(
        "plan",
        "check",
        str(examples / "plan-two-pools.yaml"),
        "--fleet",
        str(examples / "fleet-2xh100.yaml"),
    )
    assert code == 0
    assert "ok: 2 pools, 12 slices" in out


def test_plan_check_lists_every_problem_with_exit_2(examples: Path) -> None:
    code, out, err = run(
        "plan",
        "check",
        "a=3x mps:50%/30GiB, b=mig:1g.10gb",
        "--fleet",
        str(examples / "fleet-2xh100.yaml"),
    )
    assert code == 2
    assert out == ""
    assert "5 problems" in err
    assert "Traceback" not in err


def test_malformed_plan_file_exits_2_with_line(tmp_path: Path, examples: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\npools:\n  a: {mps: {compute: 20}\n")
    code, _, err = run("plan", "check", str(bad), "--fleet", str(examples / "fleet-2xh100.yaml"))
    assert code == 2
    assert "line 4" in err or "line 3" in err


def test_missing_files_exit_2(tmp_path: Path, examples: Path) -> None:
    code, _, err = run(
        "plan", "check", str(tmp_path / "none.yaml"), "--fleet", str(examples / "fleet-2xh100.yaml")
    )
    assert code == 2
    assert "cannot read plan file" in err
    code, _, err = run("gpus", "--fleet", str(tmp_path / "none.yaml"))
    assert code == 2


def test_bad_fleet_file_names_the_model(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("gpus:\n  - {model: H100-80G, count: 2}\n  - {model: L4, mig: [1g.5gb]}\n")
    code, _, err = run("gpus", "--fleet", str(fleet))
    assert code == 2
    assert "unknown GPU model 'H100-80G'" in err
    assert "L4 has no MIG" in err


def test_plan_show_json_loads_back_to_the_same_layout(examples: Path) -> None:
    fleet = examples / "fleet-mixed.yaml"
    plan = examples / "plan-mixed.yaml"
    code, out, _ = run("plan", "show", str(plan), "--fleet", str(fleet), "--json")
    assert code == 0
    assert Layout.from_dict(json.loads(out)) == resolve(plan, discover(fleet))


def test_plan_show_table_has_every_slice(examples: Path) -> None:
    code, out, _ = run(
        "plan", "show", "a=2x mps:30%/8GiB, b=share", "--fleet", str(examples / "fleet-2xh100.yaml")
    )
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert [row.split("│")[3].strip() for row in rows] == ["mps"] * 4 + ["share"] * 2
    assert "38/132" in out  # 30% of 132 SMs, rounded down to SM pairs


def test_no_gpu_and_no_fleet_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuslice.hardware import nvml

    available, _ = nvml.nvml_available()
    if available:
        pytest.skip("a GPU is present")
    monkeypatch.delenv("GPUSLICE_FLEET", raising=False)
    code, _, err = run("gpus")
    assert code == 1
    assert "no NVIDIA GPU or driver" in err
    assert "--fleet" in err


def test_console_script_runs_without_traceback(examples: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpuslice.cli",
            "plan",
            "check",
            "x=mps:500%",
            "--fleet",
            str(examples / "fleet-2xh100.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "pools.x.mps.compute" in proc.stderr


def test_help_explains_the_verbs() -> None:
    code, out, _ = run("--help")
    assert code == 0
    for verb in ("gpus", "plan", "env"):
        assert verb in out


def test_a_gpu_the_catalog_lacks_shows_unknown_sms_and_plans_still_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.hardware.test_nvml import MIB, FakeGpu, fake_pynvml

    new = FakeGpu(
        "NVIDIA RTX PRO 6000 Blackwell Server Edition",
        "GPU-6d1c7e0a-3f0b-5b7e-9a57-6770752d7300",
        97887 * MIB,
        mig_mode=0,
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([new]))
    monkeypatch.delenv("GPUSLICE_FLEET", raising=False)
    code, out, _ = run("gpus")
    assert code == 0
    row = next(line for line in out.splitlines() if "GPU-6d1c7e0a" in line)
    assert [cell.strip() for cell in row.split("│")][5] == "?"  # SMs unknown, not 0
    code, out, _ = run("plan", "show", "a=2x mps:25%/8GiB")
    assert code == 0
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert [[c.strip() for c in r.split("│")][7:9] for r in rows] == [["?/?", "8GiB"]] * 2
