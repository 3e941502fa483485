"""NVIDIA's own MPS control daemon, fetched from Debian's non-free archive for these tests.

``scripts/fetch-nvidia-mps.sh`` downloads and unpacks the package ``nvidia-cuda-mps`` into
``.cache/nvidia-mps/<version>/`` once (no system install, no root needed); every later run
finds it there. Where it cannot be fetched (no apt, no network) the tests skip and say why;
with ``GPUSLICE_REQUIRE_NVIDIA_MPS=1`` (set by CI) they fail instead, so CI cannot pass
without having run them. Every test runs against each version of :data:`VERSIONS` (Debian 12's
535 and Debian 13's 550), and the emulated program answers as the same version
(``GPUSLICE_EMULATED_MPS_VERSION``). ``GPUSLICE_NVIDIA_MPS_VERSION`` runs one version only;
``GPUSLICE_NVIDIA_MPS_CONTROL`` names an unpacked program to use instead (give its driver
version in ``GPUSLICE_NVIDIA_MPS_VERSION``, e.g. the one ``nvidia-smi`` prints).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FETCH = REPO / "scripts" / "fetch-nvidia-mps.sh"
#: Set to 1 to fail, rather than skip, when NVIDIA's program cannot be fetched (CI does).
REQUIRE_ENV = "GPUSLICE_REQUIRE_NVIDIA_MPS"
#: An unpacked nvidia-cuda-mps-control to use instead of fetching one.
PROGRAM_ENV = "GPUSLICE_NVIDIA_MPS_CONTROL"
#: One driver version to test against instead of all of VERSIONS.
VERSION_ENV = "GPUSLICE_NVIDIA_MPS_VERSION"
#: Debian's packagings of NVIDIA's program: bookworm's (12) and trixie's (13).
VERSIONS = ("535.261.03", "550.163.01")
#: What makes the emulated program answer as a given version.
EMULATED_VERSION_ENV = "GPUSLICE_EMULATED_MPS_VERSION"


@dataclass(frozen=True)
class NvidiaMps:
    """NVIDIA's control program and the driver version it comes from."""

    program: str
    version: str


def _versions() -> tuple[str, ...]:
    one = os.environ.get(VERSION_ENV)
    if one:
        return (one,)
    if os.environ.get(PROGRAM_ENV):
        return (VERSIONS[0],)
    return VERSIONS


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"NVIDIA's MPS control daemon is required ({REQUIRE_ENV}=1): {reason}")
    pytest.skip(f"NVIDIA's MPS control daemon is not available here: {reason}")


@pytest.fixture(scope="session", params=_versions())
def nvidia_mps(request: pytest.FixtureRequest) -> NvidiaMps:
    """NVIDIA's nvidia-cuda-mps-control of one version (fetched and cached on first use)."""
    version = str(request.param)
    given = os.environ.get(PROGRAM_ENV)
    if given:
        if not os.access(given, os.X_OK):
            _unavailable(f"{PROGRAM_ENV}={given} is not an executable file")
        return NvidiaMps(given, version)
    try:
        done = subprocess.run(
            [str(FETCH), version], capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        _unavailable(f"{FETCH} did not run: {err}")
    if done.returncode != 0:
        _unavailable(f"{FETCH} {version} failed: {done.stderr.strip() or done.stdout.strip()}")
    program = done.stdout.strip().splitlines()[-1]
    probe = subprocess.run([program, "-h"], capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        _unavailable(f"{program} -h exited {probe.returncode}: {probe.stderr.strip()}")
    return NvidiaMps(program, version)


@pytest.fixture(scope="session")
def nvidia_control(nvidia_mps: NvidiaMps) -> str:
    """Path of NVIDIA's nvidia-cuda-mps-control."""
    return nvidia_mps.program


@pytest.fixture(autouse=True)
def emulate_nvidias_version(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emulated program answers as the version of NVIDIA's that the test runs against."""
    if "nvidia_mps" in request.fixturenames:
        mps: NvidiaMps = request.getfixturevalue("nvidia_mps")
        monkeypatch.setenv(EMULATED_VERSION_ENV, mps.version)


@pytest.fixture
def short_root() -> Iterator[str]:
    """A short private directory under /tmp (unix socket paths are limited to 107 bytes)."""
    root = tempfile.mkdtemp(dir="/tmp", prefix="gs-c-")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
