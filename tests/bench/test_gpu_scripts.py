"""The scripts a user with a GPU runs for the checks this project owes, run here on the emulated GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert set(data["phases"]) == {"unlimited", "alone-30", "alone-70", "together", "memory"}
    assert data["checks"]["memory"]["over_cap_failed_with_oom"] is True
    assert data["checks"]["memory"]["other_client_finished"] is True
    # 30% of 132 SMs, in SM pairs: 38 SMs; the emulated rate follows the SMs seen.
    assert data["phases"]["alone-30"]["sms"] == 38
    assert data["checks"]["alone-30"]["holds"] is True
    assert data["checks"]["alone-70"]["holds"] is True
    assert data["daemon_stop_clean"] is True
    assert "emulated" in data["device"]
