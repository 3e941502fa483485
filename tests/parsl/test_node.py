"""gpuslice node-run on the emulated GPU, with stand-in worker pools instead of Parsl's.

A stand-in worker pool is a small Python program that writes what it was started with (its
arguments and the slice variables of its environment) to a file and waits for SIGTERM, so these
tests see exactly what Parsl's process_worker_pool.py would get, without an interchange.
Real Parsl runs through node-run in test_run.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuslice.mps import control, daemon
from gpuslice.parsl.config import layout_of, node_spec
from gpuslice.parsl.node import NodeSpec, encode_spec
from gpuslice.plan.layout import Layout
from tests.parsl.conftest import FLEET_2XH100, REPO, emulated_environment

STAND_IN = textwrap.dedent(
    """
    import json, os, signal, sys, time
    out = os.environ["STAND_IN_DIR"]
    uid = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--uid="))
    keep = ("CUDA_VISIBLE_DEVICES", "CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
            "GPUSLICE_POOL", "GPUSLICE_DEVICE", "GPUSLICE_EXPECTED_SMS", "GPUSLICE_NODE",
            "GPUSLICE_HOLDER", "GPUSLICE_EMULATED", "GPUSLICE_MPS_CONTROL")
    record = {"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keep}, "pid": os.getpid()}
    path = os.path.join(out, uid + ".json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)
    with open(os.path.join(out, "starts.log"), "a") as f:
        f.write(uid + "\\n")
    crash = os.path.join(out, "crashed-" + os.environ["GPUSLICE_DEVICE"])
    if os.environ.get("STAND_IN_CRASH") and not os.path.exists(crash):
        open(crash, "w").close()
        sys.exit(3)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(0.1)
    """
)


@pytest.fixture
def root() -> Iterator[Path]:
    with emulated_environment() as where:
        yield where


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    script = tmp_path / "pwp.py"
    script.write_text(STAND_IN)
    return script


def spec_of(text: str, fleet: str = FLEET_2XH100, **changes: Any) -> NodeSpec:
    layout = layout_of(text, fleet)
    spec = node_spec(text, layout, group=f"t{os.getpid()}{time.monotonic_ns()}", fleet=fleet)
    return NodeSpec(**{**spec.__dict__, **changes})


class NodeRun:
    """``gpuslice node-run`` as a subprocess, as a job's shell runs it."""

    def __init__(self, spec: NodeSpec, commands: dict[str, str], out: Path, **env: str) -> None:
        self.out = out
        out.mkdir(exist_ok=True)
        argv = [sys.executable, "-m", "gpuslice", "node-run", "--spec", encode_spec(spec)]
        for pool, command in commands.items():
            argv += ["--pool", f"{pool}={command}"]
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, "STAND_IN_DIR": str(out), "PYTHONPATH": str(REPO), **env},
            stderr=subprocess.PIPE,
            text=True,
        )

    def records(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = sorted(self.out.glob("*.json"))
            if len(found) >= count:
                return [json.loads(p.read_text()) for p in found]
            assert self.proc.poll() is None, self.proc.communicate()[1]
            time.sleep(0.1)
        raise AssertionError(f"only {len(list(self.out.glob('*.json')))} of {count} worker pools")

    def wait(self, timeout: float = 60.0) -> tuple[int, str]:
        """Let it end by itself (a node run that cannot start)."""
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err

    def stop(self, timeout: float = 30.0) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err


def command(stand_in: Path) -> str:
    return f"{sys.executable} {stand_in} -a 127.0.0.1 --port=1 --block_id=0"


def test_one_worker_pool_per_pool_and_device_each_in_its_slice(
    root: Path, stand_in: Path, tmp_path: Path
) -> None:
    plan = "a=2x mps:30%/20GiB, b=1x mps:40%/20GiB"
    layout: Layout = layout_of(plan, FLEET_2XH100)
    run = NodeRun(spec_of(plan), {"a": command(stand_in), "b": command(stand_in)}, tmp_path / "o")
    try:
        records = run.records(4)
    finally:
        code, err = run.stop()
    assert code == 0, err
    seen = {(r["env"]["GPUSLICE_POOL"], r["env"]["GPUSLICE_DEVICE"]): r for r in records}
    assert set(seen) == {(s.pool, s.device) for s in layout.slices}
    for s in layout.slices:
        record = seen[(s.pool, s.device)]
        env, argv = record["env"], record["argv"]
        per_device = sum(1 for t in layout.pool(s.pool).slices if t.device == s.device)
        assert argv[argv.index("--available-accelerators") + 1 :] == [s.device] * per_device
        assert f"--max_workers_per_node={per_device}" in argv
        assert env["CUDA_VISIBLE_DEVICES"] == s.device
        assert env["CUDA_MPS_PIPE_DIRECTORY"] == s.mps_pipe_dir
        assert env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == str(s.compute)
        assert env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == f"0={s.memory_mib}M"
        assert env["GPUSLICE_EXPECTED_SMS"] == str(s.expected_sms)
        assert env["GPUSLICE_MPS_CONTROL"] == control.EMULATED_PROGRAM


def test_the_daemons_run_while_the_node_runs_and_stop_with_it(
    root: Path, stand_in: Path, tmp_path: Path
) -> None:
    plan = "a=2x mps:50%"
    layout = layout_of(plan, FLEET_2XH100)
    run = NodeRun(spec_of(plan), {"a": command(stand_in)}, tmp_path / "o")
    try:
        run.records(2)
        assert all(control.ping(d.pipe_dir) for d in layout.daemons)
    finally:
        code, err = run.stop()
    assert code == 0, err
    assert not any(control.ping(d.pipe_dir) for d in layout.daemons)


def test_keep_daemons_leaves_them_running(root: Path, stand_in: Path, tmp_path: Path) -> None:
    plan = "a=1x mps:50%"
    layout = layout_of(plan, FLEET_2XH100)
    run = NodeRun(spec_of(plan, keep_daemons=True), {"a": command(stand_in)}, tmp_path / "o")
    try:
        run.records(2)
    finally:
        run.stop()
    try:
        assert all(control.ping(d.pipe_dir) for d in layout.daemons)
    finally:
        for d in layout.daemons:
            daemon.stop(d.pipe_dir, timeout=5)


def test_a_daemon_that_dies_is_restarted(root: Path, stand_in: Path, tmp_path: Path) -> None:
    plan = "a=1x mps:50%"
    layout = layout_of(plan, FLEET_2XH100)
    first = layout.daemons[0]
    run = NodeRun(spec_of(plan), {"a": command(stand_in)}, tmp_path / "o")
    try:
        run.records(2)
        old = daemon.read_pid(first.pipe_dir)
        assert old is not None
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            new = daemon.read_pid(first.pipe_dir)
            if new not in (None, old) and control.ping(first.pipe_dir):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the daemon was not restarted")
    finally:
        code, err = run.stop()
    assert code == 0
    assert f"the MPS daemon of {first.device} ({old}) is gone" in err


def test_a_crashed_worker_pool_is_restarted(root: Path, stand_in: Path, tmp_path: Path) -> None:
    run = NodeRun(
        spec_of("a=1x share"), {"a": command(stand_in)}, tmp_path / "o", STAND_IN_CRASH="1"
    )
    try:
        run.records(2)
        deadline = time.monotonic() + 20
        starts: list[str] = []
        while time.monotonic() < deadline:
            starts = (tmp_path / "o" / "starts.log").read_text().split()
            if len(starts) >= 4:
                break
            time.sleep(0.2)
    finally:
        code, err = run.stop()
    assert code == 0, err
    assert len(starts) == 4  # each of the two worker pools crashed once and was started again
    # ... under a new manager id each time (test_elastic_faults.py: reusing it loses tasks).
    assert len(set(starts)) == 4
    assert sorted(u for u in starts if u.endswith(".r1")) == sorted(
        f"{u}.r1" for u in starts if not u.endswith(".r1")
    )
    assert err.count("exited 3; restarting it") == 2


def test_a_pool_that_does_not_fit_the_node_fails_naming_node_pool_and_reason(
    root: Path, stand_in: Path, tmp_path: Path
) -> None:
    spec = spec_of("a=2x mps:50%", pools={"a": 8})
    run = NodeRun(spec, {"a": command(stand_in)}, tmp_path / "o")
    code, err = run.wait()

    assert code == 1
    assert "pool 'a' cannot start on node" in err
    assert "sized for 8" in err
    assert not list((tmp_path / "o").glob("*.json"))


def test_a_plan_that_does_not_fit_the_node_fails_before_any_worker_starts(
    root: Path, stand_in: Path, tmp_path: Path
) -> None:
    # Sized on a fleet where it fits; the node's copy of the plan asks for 2x90% per GPU.
    node_plan = {"version": 1, "pools": {"a": {"mps": {"compute": 90}, "per_gpu": 2}}}
    spec = spec_of("a=2x mps:50%", plan=node_plan)
    run = NodeRun(spec, {"a": command(stand_in)}, tmp_path / "o")
    code, err = run.wait()

    assert code == 1
    assert "cannot start on node" in err
    assert "sums to 180%" in err


def test_a_second_node_run_of_the_same_configuration_on_one_host_is_refused(
    root: Path, stand_in: Path, tmp_path: Path
) -> None:
    spec = spec_of("a=1x share")
    first = NodeRun(spec, {"a": command(stand_in)}, tmp_path / "o1")
    try:
        first.records(2)
        second = NodeRun(spec, {"a": command(stand_in)}, tmp_path / "o2")
        code, err = second.wait()
    finally:
        first.stop()
    assert code == 1
    assert "already runs on this host" in err


def test_in_a_batch_job_gpus_all_means_the_jobs_gpus(
    root: Path, stand_in: Path, tmp_path: Path
) -> None:
    layout = layout_of("a=1x mps:50%", FLEET_2XH100)
    second = layout.pool("a").slices[1].device  # GPU 1 of the fleet
    # Slurm gave the job GPU 1 only (its global ID, as SLURM_JOB_GPUS names it).
    run = NodeRun(
        spec_of("a=1x mps:50%", pools={"a": 1}),
        {"a": command(stand_in)},
        tmp_path / "o",
        SLURM_JOB_ID="77",
        SLURM_JOB_GPUS="1",
        CUDA_VISIBLE_DEVICES="1",
    )
    try:
        (record,) = run.records(1)
    finally:
        code, err = run.stop()
    assert code == 0, err
    assert record["env"]["GPUSLICE_DEVICE"] == second


def test_mps_pools_are_refused_where_the_scheduler_runs_its_own_mps(
    root: Path, stand_in: Path, tmp_path: Path
) -> None:
    # A Slurm gres/mps job: Slurm's prolog runs the MPS daemon, the job has 50% of GPU 0.
    slurm_mps = {
        "SLURM_JOB_ID": "78",
        "SLURM_JOB_GPUS": "0",
        "CUDA_VISIBLE_DEVICES": "0",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50",
    }
    refused = NodeRun(
        spec_of("a=1x mps:25%", pools={"a": 1}),
        {"a": command(stand_in)},
        tmp_path / "o1",
        **slurm_mps,
    )
    code, err = refused.wait()
    assert code == 1
    assert "the scheduler runs its own MPS for this job" in err
    assert "50% of GPU 0" in err

    shared = NodeRun(
        spec_of("b=2x share", pools={"b": 2}),
        {"b": command(stand_in)},
        tmp_path / "o2",
        **slurm_mps,
    )
    try:
        (record,) = shared.records(1)
    finally:
        code, err = shared.stop()
    assert code == 0, err
    # A client of the scheduler's daemon, held to the job's share.
    assert record["env"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "50"
    assert record["argv"][-2:] == [record["env"]["GPUSLICE_DEVICE"]] * 2
