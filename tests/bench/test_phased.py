"""The phased workflow, its arrangements, the capacity checks, and a real elastic smoke run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuslice.bench.phased import (
    ELASTIC_POLICY,
    TRAIN_PARAMS,
    contenders,
    estimate_fixed,
    phased_task,
    phases,
)
from gpuslice.bench.sampler import SliceSampler, interval_violations, limits_of
from gpuslice.bench.workloads import WORKLOADS
from gpuslice.cli import cli
from gpuslice.errors import UsageError
from gpuslice.hardware.inventory import discover
from gpuslice.parsl.capacity import DeviceCapacity, SliceSize
from gpuslice.plan.resolve import resolve
from tests.parsl.conftest import stop_daemons_under

REPO = Path(__file__).resolve().parents[2]
FLEET_1XH100 = str(REPO / "src" / "gpuslice" / "examples" / "fleet-1xh100.yaml")


def test_the_workflow_is_a_burst_then_retraining_then_both() -> None:
    burst, retrain, both = phases(1.0)
    assert (burst.name, retrain.name, both.name) == ("inference burst", "retraining", "both")
    assert {t.workload for t in burst.tasks} == {"llm"}
    assert {t.workload for t in retrain.tasks} == {"surrogate_train"}
    kinds = [t.workload for t in both.tasks]
    assert kinds.count("surrogate_train") == 2
    # The two trainings arrive among the requests, not after them.
    assert kinds.index("surrogate_train") < len(kinds) // 2
    assert kinds[-1] == "llm"


def test_the_workflow_scales_and_keeps_every_phase() -> None:
    tiny = phases(0.001)
    assert all(len(p.tasks) >= 1 for p in tiny)
    assert len(phases(0.5)[0].tasks) * 2 == len(phases(1.0)[0].tasks)
    with pytest.raises(UsageError, match="must be positive"):
        phases(0)


def test_every_arrangement_fits_the_gpu_and_gives_training_the_memory_it_needs() -> None:
    inventory = discover(FLEET_1XH100)
    needs = WORKLOADS["surrogate_train"].cost(**TRAIN_PARAMS).memory_mib
    llm_needs = WORKLOADS["llm"].cost("medium").memory_mib
    names = []
    for contender in contenders():
        layout = resolve(json.dumps(contender.arrangement.plan), inventory)
        names.append(contender.arrangement.name)
        for pool in layout.pools:
            for s in pool.slices:
                assert s.memory_mib is not None
                if pool.name in ("train", "gpu"):
                    assert s.memory_mib >= needs
                else:
                    assert s.memory_mib >= llm_needs
        if contender.policy is not None:
            contender.policy.check(layout)
    assert names[-1] == "elastic"
    assert [c.policy for c in contenders()].count(ELASTIC_POLICY) == 1


def test_the_model_estimate_rewards_training_compute_in_a_training_workflow() -> None:
    retraining = [phases(1.0)[1]]
    slow = estimate_fixed((2, 10), (1, 40), retraining)
    fast = estimate_fixed((2, 10), (1, 80), retraining)
    # 30 trainings of 3.88 s alone: at 80% of the SMs about 30 x 3.88 / 0.8 s.
    assert fast == pytest.approx(30 * 3.879 / (104 / 132), rel=0.05)
    assert slow > 1.9 * fast


def test_limits_are_read_from_a_slice_environment() -> None:
    env = {
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "45",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=36864M",
    }
    assert limits_of(env) == SliceSize(45, 36864)
    assert limits_of({**env, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=2G"}) == SliceSize(45, 2048)
    assert limits_of({"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "45"}) is None


def test_interval_check_finds_slices_that_overlap_beyond_the_device() -> None:
    cap = {"GPU-0": DeviceCapacity("GPU-0", 80 * 1024)}

    def task(slice_id: str, compute: int, start: float, end: float) -> dict[str, object]:
        return {
            "slice": slice_id,
            "device": "GPU-0",
            "compute": compute,
            "memory_mib": 1024,
            "start": start,
            "end": end,
        }

    fine = [task("a", 60, 0, 2), task("b", 40, 1, 3), task("c", 60, 2.5, 4)]
    assert interval_violations(fine, cap)[0] == []
    # c starts while a still runs: 60 + 40 + 60 = 160% at t = 1.5.
    bad = [task("a", 60, 0, 2), task("b", 40, 1, 3), task("c", 60, 1.5, 4)]
    found, checked = interval_violations(bad, cap)
    assert checked == 6
    assert found
    assert "compute would sum to 160%" in found[0]


@pytest.fixture
def fake_slices() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def start_fake(slices: list[subprocess.Popen[bytes]], slice_id: str, compute: int) -> None:
    env = {
        **os.environ,
        "GPUSLICE_SLICE": slice_id,
        "GPUSLICE_POOL": "p",
        "CUDA_VISIBLE_DEVICES": "GPU-fake",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(compute),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=1024M",
    }
    # A "manager" with a "worker" child in its own process group, as node-run starts them.
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    slices.append(subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True))


def test_the_sampler_reads_live_slices_from_their_own_environments(
    fake_slices: list[subprocess.Popen[bytes]],
) -> None:
    cap = {"GPU-fake": DeviceCapacity("GPU-fake", 80 * 1024)}
    start_fake(fake_slices, "s1", 60)
    time.sleep(0.5)
    sampler = SliceSampler(devices=frozenset(cap))
    first = sampler.scan()
    assert first.slices["GPU-fake"] == ("s1",)
    assert first.compute["GPU-fake"] == 60
    assert sampler.violations(cap) == []
    start_fake(fake_slices, "s2", 50)
    time.sleep(0.5)
    second = sampler.scan()
    assert second.slices["GPU-fake"] == ("s1", "s2")
    (problem,) = sampler.violations(cap)
    assert "s1, s2 on GPU-fake: compute would sum to 110%" in problem
    assert sampler.peaks()["GPU-fake"] == {"compute": 110, "memory_mib": 2048, "slices": 2}


#: A stand-in for Parsl's process_worker_pool.py that starts processes as it does: first
#: ``SpawnContext.Manager()`` (a spawned server process), then one spawned process per worker.
FAKE_POOL = """
import sys, time
from parsl.multiprocessing import SpawnContext

def work():
    time.sleep(60)

if __name__ == "__main__":
    manager = SpawnContext.Manager()
    workers = [SpawnContext.Process(target=work) for _ in range(int(sys.argv[1]))]
    for w in workers:
        w.start()
    time.sleep(60)
"""


def test_the_sampler_counts_each_worker_of_a_fixed_plans_worker_pool_of_this_run_only(
    fake_slices: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    # A fixed plan's worker pool: a manager and its workers share one environment without
    # GPUSLICE_SLICE; each worker is one slice, the pool's multiprocessing Manager server is not.
    env = {
        **os.environ,
        "GPUSLICE_POOL": "q",
        "CUDA_VISIBLE_DEVICES": "GPU-fixed",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "30",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=2G",
    }
    env.pop("GPUSLICE_SLICE", None)
    script = tmp_path / "process_worker_pool.py"
    script.write_text(FAKE_POOL)
    ours = {**env, "GPUSLICE_HOLDER": "node-run.g1.100"}
    theirs = {**env, "GPUSLICE_HOLDER": "node-run.g2.200"}  # another run, same device name
    for workers, environ in ((2, ours), (1, theirs)):
        fake_slices.append(
            subprocess.Popen(
                [sys.executable, str(script), str(workers)], env=environ, start_new_session=True
            )
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = SliceSampler(devices=frozenset({"GPU-fixed"})).scan().slices.get("GPU-fixed", ())
        if len(found) >= 3:
            break
        time.sleep(0.2)
    time.sleep(0.5)
    assert len(SliceSampler(devices=frozenset({"GPU-fixed"})).scan().slices["GPU-fixed"]) == 3
    sample = SliceSampler(devices=frozenset({"GPU-fixed"}), group="g1").scan()
    assert len(sample.slices["GPU-fixed"]) == 2
    assert sample.compute["GPU-fixed"] == 60
    assert sample.memory_mib["GPU-fixed"] == 4096


def test_a_phased_task_reports_its_slice_from_inside_its_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUSLICE_EMULATE_DIR", str(tmp_path))
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.setenv("GPUSLICE_SLICE", "infer.n0.3")
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "5")
    monkeypatch.setenv("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "0=3072M")
    out = phased_task("llm", WORKLOADS["llm"].params("tiny"), emulated=True)
    assert (out["slice"], out["compute"], out["memory_mib"]) == ("infer.n0.3", 5, 3072)
    assert out["end"] >= out["start"]


def test_an_unknown_phased_arrangement_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "--workload",
            "phased",
            "--fleet",
            FLEET_1XH100,
            "--plans",
            "nope",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2
    assert "unknown arrangement nope for the phased workload" in result.output


@pytest.mark.slow
def test_phased_smoke_runs_elastic_and_checks_capacity_throughout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = Path(tempfile.mkdtemp(prefix="gsb-", dir="/tmp"))
    monkeypatch.setenv("GPUSLICE_MPS_ROOT", str(root / "mps"))
    monkeypatch.setenv("GPUSLICE_EMULATE_DIR", str(root / "emu"))
    try:
        result = CliRunner().invoke(
            cli,
            [
                "bench",
                "--workload",
                "phased",
                "--fleet",
                FLEET_1XH100,
                "--plans",
                "elastic",
                "--tasks",
                "1",
                "--out",
                str(tmp_path),
                "--json",
            ],
        )
    finally:
        stop_daemons_under(root / "mps")
        shutil.rmtree(root, ignore_errors=True)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    data = json.loads(Path(summary["json"]).read_text())
    (run,) = data["arrangements"]
    assert run["name"] == "elastic"
    assert run["failed"] == 0, run["errors"]
    assert run["tasks"] == data["tasks"] == 9 + 1 + 2
    assert [p["name"] for p in run["phases"]] == ["inference burst", "retraining", "both"]
    assert run["capacity"]["samples"] > 10
    assert run["capacity"]["violations"] == []
    assert run["capacity"]["task_violations"] == []
    decisions = summary["elastic"]["decisions"]
    # The log reaches the JSON; at 1% of the tasks the backlogs are too short to be sure of a
    # resize (tests/parsl/test_elastic_run.py moves capacity through real Parsl).
    assert decisions[0]["kind"] == "controller"
    assert any(d["kind"] == "slice" for d in decisions)
    assert summary["elastic"]["summary"]["step_errors"] == 0
    assert Path(summary["timeline"]).stat().st_size > 5_000
