"""`gpuslice env` and `gpuslice mps ...` from the command line, on the emulated GPU."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuslice.cli import cli
from gpuslice.mps.control import CONTROL_ENV, EMULATED_PROGRAM

PLAN = "a=2x mps:30%/8GiB, b=share"


@pytest.fixture
def env(examples: Path) -> Iterator[dict[str, str]]:
    root = Path(tempfile.mkdtemp(prefix="gsc-", dir="/tmp"))
    yield {
        "GPUSLICE_MPS_ROOT": str(root),
        CONTROL_ENV: EMULATED_PROGRAM,
        "GPUSLICE_FLEET": str(examples / "fleet-2xh100.yaml"),
    }
    shutil.rmtree(root, ignore_errors=True)


def run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_env_prints_the_exact_exports_of_a_slice(env: dict[str, str]) -> None:
    code, out, _ = run(env, "env", PLAN, "a", "--slice", "2")
    assert code == 0
    root = env["GPUSLICE_MPS_ROOT"]
    lines = out.splitlines()
    device = next(
        line.split("=", 1)[1] for line in lines if line.startswith("export CUDA_VISIBLE_DEVICES=")
    )
    assert lines == [
        "export CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
        f"export CUDA_MPS_LOG_DIRECTORY={root}/{device}/log",
        "export CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=8192M",
        f"export CUDA_MPS_PIPE_DIRECTORY={root}/{device}/pipe",
        f"export CUDA_VISIBLE_DEVICES={device}",
    ]


def test_env_of_a_share_slice_is_only_its_device(env: dict[str, str]) -> None:
    code, out, _ = run(env, "env", PLAN, "b")
    assert code == 0
    assert len(out.splitlines()) == 1
    assert out.startswith("export CUDA_VISIBLE_DEVICES=GPU-")


def test_mps_ensure_status_stop_for_a_plan(env: dict[str, str]) -> None:
    code, out, err = run(env, "mps", "ensure", "--plan", PLAN, "--json")
    assert code == 0, err
    started = json.loads(out)
    assert len(started) == 2  # one daemon per GPU of pool a
    assert all(s["running"] and s["started"] for s in started)
    code, out, _ = run(env, "mps", "ensure", "--plan", PLAN, "--json")
    assert not any(s["started"] for s in json.loads(out))  # idempotent
    code, out, _ = run(env, "mps", "status", "--plan", PLAN, "--json")
    assert [s["pid"] for s in json.loads(out)] == [s["pid"] for s in started]
    code, out, _ = run(env, "mps", "stop", "--plan", PLAN, "--json")
    assert code == 0
    assert all(r["was_running"] and not r["killed"] for r in json.loads(out))
    code, out, _ = run(env, "mps", "status", "--plan", PLAN, "--json")
    assert not any(s["running"] for s in json.loads(out))


def test_mps_without_a_target_says_how_to_name_one(env: dict[str, str]) -> None:
    code, _, err = run({**env, "CUDA_MPS_PIPE_DIRECTORY": ""}, "mps", "status")
    assert code == 2
    assert "--pipe-dir" in err


def test_mps_for_a_plan_without_mps_is_a_usage_error(env: dict[str, str]) -> None:
    code, _, err = run(env, "mps", "ensure", "--plan", "b=2x share")
    assert code == 2
    assert "no MPS slices" in err
