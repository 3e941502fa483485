"""Fixtures for the Parsl layer: a real Parsl run on the emulated GPU.

Unix socket paths (the emulated MPS daemon's) are limited to about 107 bytes, so MPS
directories live in a short directory under /tmp. Every fixture that loads Parsl cleans the
DataFlowKernel up, clears it, and stops the MPS daemons it started.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from parsl.dataflow.dflow import DataFlowKernelLoader
from parsl.providers import LocalProvider

from gpuslice.mps import daemon
from gpuslice.mps.control import CONTROL_ENV, EMULATED_PROGRAM
from gpuslice.parsl.config import parsl_config
from gpuslice.plan.layout import Layout

REPO = Path(__file__).resolve().parents[2]
FLEET_2XH100 = str(REPO / "src" / "gpuslice" / "examples" / "fleet-2xh100.yaml")


@contextmanager
def emulated_environment() -> Iterator[Path]:
    """Short private MPS and emulator directories in os.environ, restored afterwards."""
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="gsp-"))
    names = ("GPUSLICE_MPS_ROOT", "GPUSLICE_EMULATE_DIR", CONTROL_ENV)
    saved = {k: os.environ.get(k) for k in names}
    os.environ["GPUSLICE_MPS_ROOT"] = str(root / "mps")
    os.environ["GPUSLICE_EMULATE_DIR"] = str(root / "emu")
    # This process stops the daemons afterwards, through the same emulated control program.
    os.environ[CONTROL_ENV] = EMULATED_PROGRAM
    try:
        yield root
    finally:
        stop_daemons_under(root / "mps")
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)


def stop_daemons_under(mps_root: Path, wait_s: float = 20.0) -> None:
    """Wait for the MPS daemons under ``mps_root`` to go, then stop any that did not.

    Parsl's cleanup cancels a block and returns at once; the block's node-run then stops its
    worker pools and releases its daemons. Removing the root before that would cut node-run off
    from its daemons (their pipe directories gone) and leave them running.
    """
    from gpuslice.mps import daemon

    pipes = [str(p) for p in sorted(mps_root.glob("*/pipe"))]
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(daemon.daemon_pid(p) for p in pipes):
        time.sleep(0.2)
    for pipe in pipes:
        if daemon.daemon_pid(pipe):
            daemon.stop(pipe, timeout=5)


@contextmanager
def loaded(
    plan: str,
    root: Path,
    *,
    fleet: str = FLEET_2XH100,
    daemons: Layout | None = None,
    **options: object,
) -> Iterator[Layout]:
    """parsl.load a gpuslice config of ``plan`` on an emulated fleet; clean up afterwards.

    ``daemons`` is the layout whose MPS daemons to stop at the end (default: the plan on
    ``fleet``; a node-local run starts the daemons of the node's layout instead).
    """
    from gpuslice.parsl.config import layout_of

    layout = layout_of(plan, fleet)
    # The user's own worker_init (kept by gpuslice, run first) lets workers import the test
    # modules whose functions they run, as a user's would activate their environment.
    provider = LocalProvider(
        init_blocks=1, min_blocks=1, max_blocks=1, worker_init=f"export PYTHONPATH={REPO}"
    )
    config = parsl_config(
        plan,
        fleet=fleet,
        provider=provider,
        run_dir=str(root / "runinfo"),
        **options,
    )
    dfk = DataFlowKernelLoader.load(config)
    try:
        wait_for_workers(dfk, layout)
        yield layout
    finally:
        # parsl.dfk().cleanup() and parsl.clear(), named through their class: ruff takes a bare
        # `import parsl` here for this tests/parsl package.
        try:
            DataFlowKernelLoader.dfk().cleanup()
        finally:
            DataFlowKernelLoader.clear()
            stopping = daemons or layout
            for d in stopping.daemons:
                daemon.stop(d.pipe_dir, timeout=5)


def wait_for_workers(dfk: object, layout: Layout, timeout: float = 240.0) -> None:
    """Wait until every pool's worker pools (one per device) have connected.

    Tests then time their tasks, not Parsl's start-up, which on a loaded 2-core machine can
    take a minute.
    """
    import time

    expected = {pool.name: len(set(pool.devices)) for pool in layout.pools}
    deadline = time.monotonic() + timeout
    executors = dfk.executors  # type: ignore[attr-defined]
    while True:
        connected = {name: len(executors[name].connected_managers()) for name in expected}
        if all(connected[name] >= count for name, count in expected.items()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker pools connected after {timeout:g}s: {connected}")
        time.sleep(0.1)  # a round trip to each interchange: cheap, and tests start sooner


@pytest.fixture(scope="module")
def parsl_root() -> Iterator[Path]:
    """A module's emulated environment (one Parsl load per module keeps the tests fast)."""
    with emulated_environment() as root:
        yield root
