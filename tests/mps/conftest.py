"""Fixtures for the MPS layer: the emulated control program and short private directories.

Unix socket paths are limited to about 107 bytes, so the directories live under /tmp
rather than pytest's long tmp_path. Every fixture stops the daemons it may have started.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from gpuslice.mps import daemon, paths
from gpuslice.mps.control import CONTROL_ENV, EMULATED_PROGRAM


@dataclass(frozen=True)
class DeviceDirs:
    """The pipe and log directory of one device's daemon."""

    device: str
    pipe: str
    log: str


@pytest.fixture
def emulated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run MPS through the emulated control program."""
    monkeypatch.setenv(CONTROL_ENV, EMULATED_PROGRAM)
    monkeypatch.delenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", raising=False)


@pytest.fixture
def mps_root() -> Iterator[str]:
    """A short, private root for MPS directories, removed afterwards."""
    root = tempfile.mkdtemp(dir="/tmp", prefix="gs-")
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def device_dirs(emulated: None, mps_root: str) -> Iterator[Callable[[str], DeviceDirs]]:
    """Make ``DeviceDirs`` for a device UUID; any daemon on them is stopped afterwards."""
    made: list[DeviceDirs] = []

    def make(device: str) -> DeviceDirs:
        dirs = DeviceDirs(device, paths.pipe_dir(mps_root, device), paths.log_dir(mps_root, device))
        made.append(dirs)
        return dirs

    yield make
    for dirs in made:
        daemon.stop(dirs.pipe, timeout=5)


@pytest.fixture
def gpu_a(device_dirs: Callable[[str], DeviceDirs]) -> DeviceDirs:
    """Directories of an emulated GPU ``GPU-aaaa``."""
    return device_dirs("GPU-aaaa")
