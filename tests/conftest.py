"""Shared fixtures: fleets described in YAML (the emulated GPU) and small helpers."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuslice.hardware.fleet import fleet_from_data
from gpuslice.hardware.inventory import Inventory

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "gpuslice" / "examples"


@pytest.fixture(autouse=True)
def _fresh_emulated_contexts() -> Iterator[None]:
    """Each test starts as a new process would: no emulated MPS context from an earlier test.

    Tests that run emulated kernels in the pytest process become MPS clients of their test's
    daemon; once that daemon is stopped the context is lost for good (as a real CUDA context
    is), which would fail every later test's kernels in this process.
    """
    from gpuslice.emulate.kernel import forget_contexts

    forget_contexts()
    yield
    forget_contexts()


@pytest.fixture
def fleet() -> Callable[..., Inventory]:
    """Build an emulated inventory: ``fleet({"model": "H100-80GB", "count": 2}, ...)``."""

    def make(*entries: dict[str, object]) -> Inventory:
        return fleet_from_data({"gpus": list(entries)}, source="fleet:test")

    return make


@pytest.fixture
def h100x2(fleet: Callable[..., Inventory]) -> Inventory:
    """Two whole H100-80GB GPUs."""
    return fleet({"model": "H100-80GB", "count": 2})


@pytest.fixture
def examples() -> Path:
    """The example plans and fleets shipped with the package."""
    return EXAMPLES


#: Programs a test run starts that must not outlive it.
_OURS = ("mps-control", "process_worker_pool", "interchange.py", "node-run")
_SESSION_START = time.time()
#: Marks the processes this test run starts (inherited by Parsl's and node-run's children).
_SESSION_ENV = "GPUSLICE_TEST_SESSION"
os.environ[_SESSION_ENV] = str(os.getpid())
_LEFT: list[str] = []


def _left_by_this_run(proc: Any) -> bool:
    """Whether ``proc`` was started by this test run and is one of :data:`_OURS`.

    MPS daemons start with a clean environment (no session mark); one whose pipe directory is
    gone (a test's temporary root, removed) is an orphan of a test either way.
    """
    cmdline = " ".join(proc.info["cmdline"] or ())
    if proc.info["create_time"] < _SESSION_START or not any(n in cmdline for n in _OURS):
        return False
    try:
        environ = proc.environ()
    except Exception:  # gone, or not ours to read
        return False
    if environ.get(_SESSION_ENV) == os.environ[_SESSION_ENV]:
        return True
    pipe = environ.get("CUDA_MPS_PIPE_DIRECTORY")
    return "mps-control" in cmdline and pipe is not None and not os.path.isdir(pipe)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop (and report) any daemon, worker pool or interchange this run started and left.

    A node-run whose block was cancelled by the last test may still be stopping: everything
    gets a few seconds to exit on its own first.
    """
    import psutil

    found = [
        proc
        for proc in psutil.process_iter(["pid", "cmdline", "create_time"])
        if proc.info["pid"] != os.getpid() and _left_by_this_run(proc)
    ]
    _, alive = psutil.wait_procs(found, timeout=10)
    for proc in alive:
        _LEFT.append(f"{proc.info['pid']}: {' '.join(proc.info['cmdline'] or ())[:160]}")
        with contextlib.suppress(psutil.Error):
            proc.kill()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _LEFT:
        terminalreporter.write_sep("=", f"{len(_LEFT)} process(es) left running by tests, killed")
        for line in _LEFT:
            terminalreporter.write_line(line)
