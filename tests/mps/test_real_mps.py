"""The same lifecycle against NVIDIA's own nvidia-cuda-mps-control on a real GPU."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator

import pytest

from gpuslice.hardware import nvml
from gpuslice.mps import control, daemon, paths


@pytest.fixture
def real_gpu(monkeypatch: pytest.MonkeyPatch) -> str:
    """UUID of the first real GPU, with NVIDIA's control program in charge."""
    if shutil.which(control.REAL_PROGRAM) is None:
        pytest.skip(f"{control.REAL_PROGRAM} is not on PATH")
    available, reason = nvml.nvml_available()
    if not available:
        pytest.skip(f"NVML cannot start: {reason}")
    monkeypatch.delenv(control.CONTROL_ENV, raising=False)
    return nvml.read_inventory().gpus[0].uuid


@pytest.fixture
def root() -> Iterator[str]:
    made = tempfile.mkdtemp(dir="/tmp", prefix="gs-")
    try:
        yield made
    finally:
        shutil.rmtree(made, ignore_errors=True)


@pytest.mark.gpu
def test_real_daemon_starts_answers_and_stops_without_leftovers(real_gpu: str, root: str) -> None:
    pipe, log = paths.pipe_dir(root, real_gpu), paths.log_dir(root, real_gpu)
    try:
        started = daemon.ensure(pipe, log, real_gpu)
        assert started.running
        assert started.pid is not None
        assert daemon.ensure(pipe, log, real_gpu).pid == started.pid
        assert control.get_default_active_thread_percentage(pipe) == 100.0
        control.set_default_device_pinned_mem_limit(pipe, 0, 1024)
    finally:
        report = daemon.stop(pipe, timeout=10)
    assert report.quit_accepted
    assert report.clean
    assert not daemon.process_alive(started.pid)
