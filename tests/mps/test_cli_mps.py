"""`gpuslice mps ensure --holder`, `mps status` with its leases, and `mps release`."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuslice.cli import cli
from gpuslice.mps import control, daemon
from gpuslice.mps.control import CONTROL_ENV, EMULATED_PROGRAM

from .conftest import DeviceDirs


def run(dirs: DeviceDirs, *args: str) -> tuple[int, str, str]:
    env = {CONTROL_ENV: EMULATED_PROGRAM}
    where = ["--pipe-dir", dirs.pipe, "--log-dir", dirs.log]
    result = CliRunner().invoke(cli, ["mps", *args, *where], env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def holder() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_status_lists_the_leases_that_hold_the_daemon(
    gpu_a: DeviceDirs, holder: subprocess.Popen[bytes]
) -> None:
    code, _, err = run(
        gpu_a,
        "ensure",
        "--device",
        gpu_a.device,
        "--holder",
        "wf-7",
        "--holder-pid",
        str(holder.pid),
    )
    assert code == 0, err

    code, out, _ = run(gpu_a, "status", "--json")
    (status,) = json.loads(out)
    assert status["leases"] == ["wf-7"]
    code, table, _ = run(gpu_a, "status")
    assert "leases" in table
    assert "wf-7" in table


def test_release_of_the_last_lease_stops_the_daemon(
    gpu_a: DeviceDirs, holder: subprocess.Popen[bytes]
) -> None:
    run(
        gpu_a,
        "ensure",
        "--device",
        gpu_a.device,
        "--holder",
        "wf-7",
        "--holder-pid",
        str(holder.pid),
    )
    pid = daemon.daemon_pid(gpu_a.pipe)

    code, out, err = run(gpu_a, "release", "--holder", "wf-7", "--json")

    assert code == 0, err
    (report,) = json.loads(out)
    assert report["stopped"]["daemon_pid"] == pid
    assert not control.ping(gpu_a.pipe)


def test_a_lease_taken_from_a_shell_lives_with_that_shell_by_default(gpu_a: DeviceDirs) -> None:
    code, out, err = run(gpu_a, "ensure", "--device", gpu_a.device, "--holder", "job", "--json")

    assert code == 0, err
    assert json.loads(out)[0]["leases"] == ["job"]
    lease = Path(daemon.leases_path(gpu_a.pipe), "job").read_text().split()
    assert int(lease[0]) == os.getppid()


def test_holder_pid_without_a_holder_is_a_usage_error(gpu_a: DeviceDirs) -> None:
    code, _, err = run(gpu_a, "ensure", "--holder-pid", "1")

    assert code == 2
    assert "--holder" in err


def test_a_refused_ensure_exits_with_the_reason_and_no_traceback(gpu_a: DeviceDirs) -> None:
    os.makedirs(gpu_a.pipe, mode=0o700)
    os.chmod(gpu_a.pipe, 0o777)

    code, _, err = run(gpu_a, "ensure", "--device", gpu_a.device)

    assert code == 1
    assert f"chmod 700 {gpu_a.pipe}" in err
    assert "Traceback" not in err
