"""Parsl's own SlurmProvider on the test cluster: plain HighThroughputExecutor python_apps run
in the provider's batch jobs, with SingleNodeLauncher and with SrunLauncher, and
``dfk.cleanup()`` cancels the jobs.

No gpuslice here: this is the ground the cluster tests of gpuslice stand on. What a job needs
(found here): ``worker_init`` must put the test's virtual environment first on PATH, since
``process_worker_pool.py`` is started by name and the submitting process may run the venv's
python without having activated it; and PYTHONPATH must reach the repository, since the app is
pickled by reference to this module. On the submitting side, HTEX starts ``interchange.py``
from PATH as well, hence ``interchange_launch_cmd``.

Both launchers run in one Parsl load (one executor each, two jobs side by side on the node,
so not ``--exclusive``): a load and a cleanup cost seconds on this 2-core machine.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import parsl
import pytest
from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SingleNodeLauncher, SrunLauncher
from parsl.launchers.base import Launcher
from parsl.providers import SlurmProvider

from tests.slurm.cluster import Cluster

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def worker_init() -> str:
    """What a SlurmProvider job needs to start this environment's Parsl workers."""
    # sys.executable is the venv's python (not resolved through its symlink), so its
    # directory holds process_worker_pool.py too; `source <venv>/bin/activate` does the same.
    return f"export PATH={BIN}:$PATH; export PYTHONPATH={REPO}"


def where() -> dict[str, str | None]:
    """The job, node and step a task runs in, as its worker sees them."""
    import os

    return {
        "job": os.environ.get("SLURM_JOB_ID"),
        "node": os.environ.get("SLURMD_NODENAME"),
        "step": os.environ.get("SLURM_STEP_ID"),
    }


@dataclass(frozen=True)
class Run:
    """One Parsl load on the cluster: per executor, its jobs and the tasks' reports."""

    job_ids: Mapping[str, tuple[str, ...]]
    reports: Mapping[str, tuple[dict[str, str | None], ...]]
    first_result_s: float
    cleanup_s: float


def run_on_slurm(
    cluster: Cluster,
    launchers: Mapping[str, Launcher],
    run_dir: Path,
    *,
    tasks: int = 3,
    exclusive: bool = False,
) -> Run:
    """Load one HTEX per launcher on a SlurmProvider, run ``tasks`` apps on each, clean up."""
    providers = {
        label: SlurmProvider(
            partition=cluster.partition,
            nodes_per_block=1,
            init_blocks=1,
            min_blocks=0,
            max_blocks=1,
            walltime="00:10:00",
            worker_init=worker_init(),
            launcher=launcher,
            exclusive=exclusive,
            cmd_timeout=30,
        )
        for label, launcher in launchers.items()
    }
    executors = [
        HighThroughputExecutor(
            label=label,
            address="127.0.0.1",
            max_workers_per_node=1,
            provider=provider,
            # HTEX starts ``interchange.py`` by name, from this process's PATH, which lacks a
            # virtualenv run without activation (.venv/bin/pytest).
            interchange_launch_cmd=[str(BIN / "interchange.py")],
        )
        for label, provider in providers.items()
    ]
    began = time.monotonic()
    parsl.load(Config(executors=executors, run_dir=str(run_dir), strategy="none"))
    try:
        futures = {
            label: [parsl.python_app(where, executors=[label])() for _ in range(tasks)]
            for label in launchers
        }
        firsts = {label: fs[0].result(timeout=120) for label, fs in futures.items()}
        first_result_s = time.monotonic() - began
        reports = {
            label: (firsts[label], *(f.result(timeout=60) for f in fs[1:]))
            for label, fs in futures.items()
        }
        job_ids = {label: tuple(p.resources) for label, p in providers.items()}
    finally:
        cleaning = time.monotonic()
        try:
            parsl.dfk().cleanup()
        finally:
            parsl.clear()
        cleanup_s = time.monotonic() - cleaning
    return Run(job_ids, reports, first_result_s, cleanup_s)


def _gone(cluster: Cluster, job_ids: set[str], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while job_ids & set(cluster.queued()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_python_apps_run_in_the_providers_jobs_and_cleanup_cancels_them(
    slurm_cluster: Cluster, tmp_path: Path
) -> None:
    # Parsl's run directory holds the submit scripts; the jobs read them on this same host.
    run = run_on_slurm(
        slurm_cluster,
        {"single": SingleNodeLauncher(), "srun": SrunLauncher()},
        tmp_path / "runinfo",
    )
    print(  # the measurement quoted in the report (pytest -s shows it)
        f"both launchers: first results {run.first_result_s:.1f} s after parsl.load, "
        f"cleanup {run.cleanup_s:.1f} s"
    )
    jobs = set()
    for label, in_step in (("single", False), ("srun", True)):
        assert len(run.job_ids[label]) == 1, f"{label}: one block, one job: {run.job_ids}"
        (job_id,) = run.job_ids[label]
        jobs.add(job_id)
        reports = run.reports[label]
        assert {r["job"] for r in reports} == {job_id}
        assert {r["node"] for r in reports} == {slurm_cluster.hostname}
        # SingleNodeLauncher starts the pool in the batch script; SrunLauncher in an srun step.
        assert {r["step"] is not None for r in reports} == {in_step}, label
    assert len(jobs) == 2
    # Parsl's cleanup scancels the blocks' jobs; Slurm ends their processes.
    assert _gone(slurm_cluster, jobs), f"jobs {jobs} still queued after cleanup"
    assert slurm_cluster.job_processes() == []
