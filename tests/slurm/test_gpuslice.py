"""gpuslice on the test machine's real Slurm: one job per node carries every pool of a plan.

A 60/40 two-pool plan on an emulated H100, through Parsl's SlurmProvider. Tasks of both pools
report, from inside, the Slurm job and node they run in and the slice they got (device,
percentage, memory cap, and what the MPS daemon granted them): both pools must share one job,
each task in its own slice. Then a node that cannot give a pool its slices: the pool's tasks fail
with node-run's message, which names the node and the reason.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import parsl
import pytest
from parsl.launchers import SingleNodeLauncher
from parsl.providers import SlurmProvider

from gpuslice.parsl.app import gpu_app
from gpuslice.parsl.config import layout_of, parsl_config
from gpuslice.plan.layout import Layout
from tests.parsl.conftest import emulated_environment, wait_for_workers
from tests.slurm.cluster import Cluster

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXAMPLES = REPO / "src" / "gpuslice" / "examples"
FLEET_1XH100 = str(EXAMPLES / "fleet-1xh100.yaml")
FLEET_2XH100 = str(EXAMPLES / "fleet-2xh100.yaml")
PLAN = "inference=1x mps:60%/40GiB, training=1x mps:40%/30GiB"


class QuickSlurm(SlurmProvider):  # type: ignore[misc]
    """Parsl's SlurmProvider, polled every 2 s instead of 60 (the tests wait on job states)."""

    @property
    def status_polling_interval(self) -> int:
        return 2


def provider(cluster: Cluster, **options: Any) -> SlurmProvider:
    return QuickSlurm(
        partition=cluster.partition,
        nodes_per_block=1,
        init_blocks=1,
        min_blocks=0,
        max_blocks=1,
        walltime="00:10:00",
        # The job's shell: this environment's programs and the tests' modules.
        worker_init=f"export PATH={BIN}:$PATH; export PYTHONPATH={REPO}",
        launcher=SingleNodeLauncher(),
        # Not --exclusive: an exclusive job gets every GPU of the node (4 fake ones here).
        exclusive=False,
        cmd_timeout=30,
        **options,
    )


def inside() -> dict[str, Any]:
    """Where a task runs (Slurm job and node) and the slice it got, from inside it."""
    import os

    from gpuslice.emulate.kernel import mps_connection

    grant = mps_connection()
    return {
        "job": os.environ.get("SLURM_JOB_ID"),
        "node": os.environ.get("SLURMD_NODENAME"),
        "pool": os.environ.get("GPUSLICE_POOL"),
        "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "percentage": os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"),
        "memory": os.environ.get("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"),
        "granted": None if grant is None else grant.active_thread_percentage,
    }


@pytest.fixture
def root() -> Iterator[Path]:
    with emulated_environment() as where:
        yield where


def cleanup() -> float:
    began = time.monotonic()
    try:
        parsl.dfk().cleanup()
    finally:
        parsl.clear()
    return time.monotonic() - began


def test_one_job_carries_both_pools_each_task_in_its_slice(
    slurm_cluster: Cluster, root: Path
) -> None:
    layout: Layout = layout_of(PLAN, FLEET_1XH100)
    began = time.monotonic()
    dfk = parsl.load(
        parsl_config(
            PLAN,
            fleet=FLEET_1XH100,
            provider=provider(slurm_cluster, scheduler_options="#SBATCH --gres=gpu:1"),
            run_dir=str(root / "runinfo"),
            address="127.0.0.1",
        )
    )
    try:
        wait_for_workers(dfk, layout)
        started_s = time.monotonic() - began
        futures = {p: [gpu_app(pool=p)(inside)() for _ in range(4)] for p in layout.pool_names}
        seen = {p: [f.result(timeout=120) for f in fs] for p, fs in futures.items()}
        jobs = dict(slurm_cluster.queued())
    finally:
        cleanup_s = cleanup()
    print(
        f"\nSlurm: workers of both pools up {started_s:.1f}s after load; cleanup {cleanup_s:.1f}s"
    )
    views = [v for vs in seen.values() for v in vs]
    assert len({v["job"] for v in views}) == 1, "both pools' tasks must run in one job"
    (job,) = {v["job"] for v in views}
    assert job in jobs
    assert {v["node"] for v in views} == {slurm_cluster.hostname}
    for pool, pool_views in seen.items():
        (the_slice,) = layout.pool(pool).slices
        for view in pool_views:
            assert view["pool"] == pool
            assert view["device"] == the_slice.device
            assert view["percentage"] == str(the_slice.compute)
            assert view["memory"] == f"0={the_slice.memory_mib}M"
            assert view["granted"] == the_slice.compute


def test_a_pool_that_cannot_start_on_the_node_fails_naming_node_and_reason(
    slurm_cluster: Cluster, root: Path
) -> None:
    # Sized for two GPUs per node; the node (described by its own fleet) has one.
    config = parsl_config(
        "a=1x mps:50%",
        fleet=FLEET_2XH100,
        node_fleet=FLEET_1XH100,
        provider=provider(slurm_cluster),
        run_dir=str(root / "runinfo"),
        address="127.0.0.1",
    )
    parsl.load(config)
    began = time.monotonic()
    try:
        future = gpu_app(pool="a")(inside)()
        with pytest.raises(Exception, match="cannot start on node") as raised:
            future.result(timeout=240)
        failed_after = time.monotonic() - began
    finally:
        cleanup()
    message = str(raised.value)
    print(f"\nthe pool's task failed {failed_after:.1f}s after it was submitted")
    assert f"pool 'a' cannot start on node {slurm_cluster.hostname}" in message
    assert "sized for 2" in message
