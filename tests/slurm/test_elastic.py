"""Elastic pools on the test machine's real Slurm: a block is a node, capacity moves inside it.

A two-pool plan on an emulated H100 (``a=2x mps:20%/8GiB, b=1x mps:50%/30GiB``) through
Parsl's SlurmProvider with an :class:`~gpuslice.parsl.elastic.ElasticPolicy`: the node's
``gpuslice node-run`` runs inside the Slurm job and connects back to the controller's hub in
this process. A backlog on ``a`` must grow it inside that one job (every task of both pools
reports the same Slurm job), lose no task, and never put more than the GPU on it, checked from
the tasks' own slices and intervals.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import parsl
import pytest

from gpuslice.bench.sampler import interval_violations
from gpuslice.parsl.app import gpu_app
from gpuslice.parsl.capacity import DeviceCapacity
from gpuslice.parsl.config import layout_of, parsl_config
from gpuslice.parsl.elastic import ElasticPolicy, elastic_controller
from gpuslice.parsl.elastic_node import initial_slice_id
from tests.parsl.conftest import emulated_environment, wait_for_workers
from tests.slurm.cluster import Cluster
from tests.slurm.test_gpuslice import FLEET_1XH100, cleanup, provider

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

PLAN = "a=2x mps:20%/8GiB, b=1x mps:50%/30GiB"
POLICY = ElasticPolicy(period_s=0.5, grow_after_s=1.0, idle_after_s=1.0, cooldown_s=2.0)


def work(ms: float) -> dict[str, Any]:
    """An emulated kernel in this task's slice; where it ran (Slurm job) and its slice."""
    import os
    import time

    from gpuslice.emulate.kernel import kernel

    start = time.time()
    kernel(ms, duty=0.5, occupancy=0.2)
    limit = os.environ["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"]
    return {
        "job": os.environ.get("SLURM_JOB_ID"),
        "slice": os.environ.get("GPUSLICE_SLICE"),
        "pool": os.environ.get("GPUSLICE_POOL"),
        "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "compute": int(os.environ["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"]),
        "memory_mib": int(limit.removeprefix("0=").removesuffix("M")),
        "start": start,
        "end": time.time(),
    }


@pytest.fixture
def root() -> Iterator[Path]:
    with emulated_environment() as where:
        yield where


def test_a_backlog_grows_its_pool_inside_the_slurm_job_and_loses_no_task(
    slurm_cluster: Cluster, root: Path
) -> None:
    layout = layout_of(PLAN, FLEET_1XH100)
    dfk = parsl.load(
        parsl_config(
            PLAN,
            fleet=FLEET_1XH100,
            provider=provider(slurm_cluster, scheduler_options="#SBATCH --gres=gpu:1"),
            run_dir=str(root / "runinfo"),
            address="127.0.0.1",
            elastic=POLICY,
            retries=2,
        )
    )
    try:
        wait_for_workers(dfk, layout)
        controller = elastic_controller(dfk)
        assert controller is not None
        futures = [gpu_app(pool="a")(work)(700) for _ in range(30)]
        futures += [gpu_app(pool="b")(work)(300) for _ in range(2)]
        done = [f.result(timeout=300) for f in futures]
        decisions = controller.decisions()
    finally:
        cleanup()
    print(
        f"\nSlurm elastic: a grew to {max(e['after']['serving'].get('a', 0) for e in decisions if 'after' in e)} slices in one job"
    )
    assert len(done) == 32
    assert len({d["job"] for d in done}) == 1, "every slice must run in the block's one job"
    grown = max(e["after"]["serving"].get("a", 0) for e in decisions if "after" in e)
    assert grown > 2, [e.get("reason") for e in decisions]
    assert any(e["kind"] == "resize" and "a has" in e["reason"] for e in decisions)
    plan_slices = {initial_slice_id("a", "n0", s.rank) for s in layout.pool("a").slices}
    started = {
        e["reason"].split()[3]
        for e in decisions
        if e["kind"] == "slice"
        and e["reason"].startswith("node-run reports slice a.")
        and " started " in e["reason"]
    }
    assert started - plan_slices, f"no new slice of a started inside the job: {sorted(started)}"
    capacity = {s.device: DeviceCapacity(s.device, s.memory_total_mib) for s in layout.slices}
    violations, instants = interval_violations(done, capacity)
    assert violations == []
    assert instants >= len(done)
