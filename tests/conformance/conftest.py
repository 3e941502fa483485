"""NVIDIA's own MPS control daemon, fetched from Debian's non-free archive for these tests.

``scripts/fetch-nvidia-mps.sh`` downloads and unpacks the package ``nvidia-cuda-mps`` into
``.cache/nvidia-mps/<version>/`` once (no system install, no root needed); every later run
finds it there. Where it cannot be fetched (no apt, no network) the tests skip and say why;
with ``GPUSLICE_REQUIRE_NVIDIA_MPS=1`` (set by CI) they fail instead, so CI cannot pass
without having run them. ``GPUSLICE_NVIDIA_MPS_CONTROL`` names an unpacked program to use
instead, ``GPUSLICE_NVIDIA_MPS_VERSION`` another version (``550.163.01``, Debian 13's).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FETCH = REPO / "scripts" / "fetch-nvidia-mps.sh"
#: Set to 1 to fail, rather than skip, when NVIDIA's program cannot be fetched (CI does).
REQUIRE_ENV = "GPUSLICE_REQUIRE_NVIDIA_MPS"
#: An unpacked nvidia-cuda-mps-control to use instead of fetching one.
PROGRAM_ENV = "GPUSLICE_NVIDIA_MPS_CONTROL"


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"NVIDIA's MPS control daemon is required ({REQUIRE_ENV}=1): {reason}")
    pytest.skip(f"NVIDIA's MPS control daemon is not available here: {reason}")


@pytest.fixture(scope="session")
def nvidia_control() -> str:
    """Path of NVIDIA's nvidia-cuda-mps-control (fetched and cached on first use)."""
    given = os.environ.get(PROGRAM_ENV)
    if given:
        if not os.access(given, os.X_OK):
            _unavailable(f"{PROGRAM_ENV}={given} is not an executable file")
        return given
    try:
        done = subprocess.run(
            [str(FETCH)], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        _unavailable(f"{FETCH} did not run: {err}")
    if done.returncode != 0:
        _unavailable(f"{FETCH} failed: {done.stderr.strip() or done.stdout.strip()}")
    program = done.stdout.strip().splitlines()[-1]
    probe = subprocess.run([program, "-h"], capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        _unavailable(f"{program} -h exited {probe.returncode}: {probe.stderr.strip()}")
    return program


@pytest.fixture
def short_root() -> Iterator[str]:
    """A short private directory under /tmp (unix socket paths are limited to 107 bytes)."""
    root = tempfile.mkdtemp(dir="/tmp", prefix="gs-c-")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
