"""The one-node Slurm cluster works for gpuslice: jobs run, GPUs and gres/mps reach them, and
``stop`` leaves nothing behind. Also: where Slurm cannot start, the reason says why."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

from gpuslice.hardware.allocation import job_allocation, restrict_inventory
from gpuslice.hardware.fleet import fleet_from_data
from tests.slurm import cluster as slurm
from tests.slurm.cluster import Cluster, ClusterUnavailable

pytestmark = pytest.mark.slurm

# Run inside a job (batch script or srun step): what job_allocation() reads there, as JSON.
REPORT = """\
import json, sys
from gpuslice.hardware.allocation import job_allocation
a = job_allocation()
print(json.dumps({"where": sys.argv[1], "gpus": a.gpus, "source": a.source,
                  "mps": None if a.scheduler_mps is None else a.scheduler_mps.percentage}))
"""


def _reports(output: str) -> dict[str, dict[str, object]]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return {str(line["where"]): line for line in lines}


def _report_script(cluster: Cluster, *steps: str) -> str:
    script = cluster.scratch / "report.py"
    script.write_text(REPORT)
    lines = ["#!/bin/bash", f"{sys.executable} {script} batch"]
    lines += [
        f"srun -n1 {options} {sys.executable} {script} {name}"
        for name, options in (step.split(":", 1) for step in steps)
    ]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_sbatch_wrap_runs_on_the_node_and_its_output_comes_back(slurm_cluster: Cluster) -> None:
    job = slurm_cluster.batch("--wrap", "echo job $SLURM_JOB_ID on $SLURMD_NODENAME")
    assert job.output.strip() == f"job {job.job_id} on {slurm_cluster.hostname}"


@pytest.mark.slow
def test_a_job_writes_to_the_scratch_directory(slurm_cluster: Cluster) -> None:
    target = Path(tempfile.mkdtemp(dir=slurm_cluster.scratch)) / "written"
    slurm_cluster.batch("--wrap", f"echo $SLURM_JOB_PARTITION > {target}")
    assert target.read_text().strip() == slurm_cluster.partition


@pytest.mark.slow
def test_a_job_given_gpus_reads_them_as_job_allocation_does(slurm_cluster: Cluster) -> None:
    holder = slurm_cluster.submit("--gres=gpu:1", "--wrap", "sleep 60")
    try:
        job = slurm_cluster.batch(
            "--gpus=2", script=_report_script(slurm_cluster, "step:--gres=gpu:1")
        )
    finally:
        slurm_cluster.cancel(holder)
    reports = _reports(job.output)
    batch, step = reports["batch"], reports["step"]
    assert batch["source"] == "SLURM_JOB_GPUS"
    gpus = batch["gpus"]
    assert isinstance(gpus, list)
    assert len(gpus) == 2
    # The holder has a GPU of its own, so this job's two are not both the first two.
    assert gpus != ["0", "1"]
    assert step["source"] == "SLURM_STEP_GPUS"
    assert step["gpus"] == gpus[:1]

    # The same IDs pick the node's GPUs of those indices out of a fleet describing the node.
    fleet = fleet_from_data({"gpus": [{"model": "H100-80GB", "count": 4}]}, source="fleet:4")
    allocation = job_allocation(
        {"SLURM_JOB_ID": job.job_id, "SLURM_JOB_GPUS": ",".join(map(str, gpus))}
    )
    picked = restrict_inventory(fleet, allocation)
    assert [g.index for g in picked.gpus] == [int(g) for g in gpus]


@pytest.mark.slow
def test_an_exclusive_job_gives_its_gpus_to_the_batch_script_but_not_to_an_srun_step(
    slurm_cluster: Cluster,
) -> None:
    # Parsl's SlurmProvider submits with --exclusive; SrunLauncher runs the workers in a step.
    job = slurm_cluster.batch(
        "--exclusive", script=_report_script(slurm_cluster, "step:", "asked:--gpus-per-node=4")
    )
    reports = _reports(job.output)
    every = [str(i) for i in range(slurm_cluster.gpus)]
    assert reports["batch"]["gpus"] == every
    assert reports["step"]["gpus"] == []
    assert "gpus_per_node" in str(reports["step"]["source"])
    assert reports["asked"]["gpus"] == every


@pytest.mark.slow
def test_a_gres_mps_job_is_seen_as_the_schedulers_mps(slurm_cluster: Cluster) -> None:
    job = slurm_cluster.batch("--gres=mps:50", script=_report_script(slurm_cluster))
    report = _reports(job.output)["batch"]
    assert report["mps"] == 50.0
    assert report["source"] == "SLURM_JOB_GPUS"


@pytest.mark.slow
def test_a_percentage_exported_at_submission_is_not_taken_for_slurms(
    slurm_cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Slurm removes it from jobs without gres/mps, so a user's value is no false alarm.
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "77")
    job = slurm_cluster.batch("--gpus=1", script=_report_script(slurm_cluster))
    assert _reports(job.output)["batch"]["mps"] is None


@pytest.mark.slow
def test_start_again_reuses_the_running_cluster(slurm_cluster: Cluster) -> None:
    again = slurm.start(slurm_cluster.root, owner_pid=slurm_cluster.owner_pid)
    assert again.pids == slurm_cluster.pids
    assert again.slurmctld_port == slurm_cluster.slurmctld_port
    assert again.started_in_s == 0.0


@pytest.mark.slow
def test_stop_cancels_jobs_stops_daemons_and_removes_the_directory(
    slurm_cluster: Cluster,
) -> None:
    # A second, GPU-less cluster of its own, beside the session's, with a job still running.
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="gs-slurm-stop-"))
    other = slurm.start(root, gpus=0, owner_pid=os.getpid())
    try:
        assert other.slurmctld_port != slurm_cluster.slurmctld_port
        other.submit("--wrap", "sleep 300")
        # RUNNING in squeue comes before slurmstepd has started the script: wait for it.
        deadline = time.monotonic() + 30
        while not other.job_processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert other.job_processes(), "the job should be running before stop"
    finally:
        slurm.stop(root)
    assert not root.exists()
    assert slurm._processes_of(other.conf) == []
    assert slurm.status(root) is None
    # The session's cluster is untouched.
    assert slurm.status(slurm_cluster.root) is not None


def test_without_root_the_reason_says_root_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterUnavailable, match="needs root"):
        slurm.start(Path("/tmp/gs-slurm-never"))
    assert not Path("/tmp/gs-slurm-never").exists()


def test_without_slurm_or_apt_the_reason_names_the_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(slurm, "_which", lambda program: None)
    with pytest.raises(ClusterUnavailable) as raised:
        slurm.ensure_installed()
    assert "no apt-get" in raised.value.reason
    assert "slurmctld slurmd slurm-client munge" in raised.value.reason


def test_stop_refuses_a_directory_that_is_not_a_clusters(tmp_path: Path) -> None:
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    with pytest.raises(ValueError, match="not a cluster directory"):
        slurm.stop(tmp_path)
    assert keep.read_text() == "mine"


def test_start_refuses_a_directory_that_is_not_a_clusters(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    if os.geteuid() != 0:
        pytest.skip("start checks for root first")
    with pytest.raises(ClusterUnavailable, match="neither empty nor a cluster directory"):
        slurm.start(tmp_path, install=False)
    assert (tmp_path / "keep.txt").read_text() == "mine"
