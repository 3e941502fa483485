"""The scripts a user with a GPU runs for the checks this project owes, run here on the emulated GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_mps_limits_script_runs_its_phases_on_the_emulated_gpu(tmp_path: Path) -> None:
    out = tmp_path / "mps_limits.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "mps_limits.py"),
            "--emulated",
            "--iterations",
            "8",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert set(data["phases"]) == {
        "unlimited", "alone-30", "alone-70", "together", "memory",
        "pinned", "replies", "reserve", "server-limits", "control-death",
    }  # fmt: skip
    assert data["checks"]["memory"]["over_cap_failed_with_oom"] is True
    assert data["checks"]["memory"]["other_client_finished"] is True
    # 30% of 132 SMs, in SM pairs: 38 SMs; the emulated rate follows the SMs seen.
    assert data["phases"]["alone-30"]["sms"] == 38
    assert data["checks"]["alone-30"]["holds"] is True
    assert data["checks"]["alone-70"]["holds"] is True
    assert data["daemon_stop_clean"] is True
    assert "emulated" in data["device"]
    assert "partial" not in data  # the final write, with the checks
    # The probe holds 64 MiB blocks: 64 of them under 4096 MiB, 46 (2944 MiB) under 3000 MiB,
    # since the emulated server enforces MiB.
    assert data["checks"]["pinned-mib"]["held_mib_at_4096"] == 4096
    assert data["checks"]["pinned-mib"]["held_mib_at_3000"] == 2944
    assert data["checks"]["pinned-mib"]["enforced_as"] == "MiB"
    # The emulator gives a client the lower of its own and its server's limits.
    above = data["checks"]["client-above-server"]
    assert (above["client_sms"], above["client_held_mib"]) == (38, 2048)
    replies = {r["command"]: r for r in data["phases"]["replies"]["replies"]}
    server = data["phases"]["replies"]["servers"][0]
    client = data["phases"]["replies"]["client"]["pid"]
    assert replies["get_server_list"]["stdout"] == f"{server}\n"
    assert replies[f"get_client_list {server}"]["stdout"] == f"{client}\n"
    assert replies["get_client_list 4242"]["stdout"] == "Server 4242 not found\n"
    assert data["phases"]["reserve"] == {"skipped": "needs NVML's memory.used of a real GPU"}
    death = data["checks"]["control-death"]
    assert death["client_error"].startswith("CudaError: cudaErrorMpsConnectionFailed")
    assert death["servers_alive_after"] == []


def _mps_limits_module() -> Any:
    spec = importlib.util.spec_from_file_location("mps_limits", SCRIPTS / "mps_limits.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_client_that_hangs_is_killed_and_reported_not_waited_for() -> None:
    # A CUDA call can hang once its MPS side is gone; the script must go on to its next phase.
    mps_limits = _mps_limits_module()
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    hung = subprocess.Popen(sleeper, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert mps_limits.collect(hung, timeout=0.5) == {"failed": True, "hung": "killed after 0.5 s"}
    assert hung.returncode is not None
    silent = subprocess.Popen(sleeper, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    with pytest.raises(RuntimeError, match=r"not ready after 0\.5 s"):
        mps_limits.first_line(silent, timeout=0.5)
    assert silent.returncode is not None
