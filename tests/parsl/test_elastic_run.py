"""Elastic pools through real Parsl on the emulated GPU: capacity moves, nothing is lost.

One emulated H100, plan ``a=2x mps:20%/8GiB, b=1x mps:50%/30GiB`` (90% to start with), one
Parsl load for the module (``retries=2``). A backlog on one pool moves the GPU to it and back;
a worker killed and an MPS daemon killed while slices are being moved lose no task. Throughout,
:class:`~gpuslice.bench.sampler.SliceSampler` reads the live worker pools' own environments and
every task reports its slice and interval from inside its worker: the slices on the GPU must
never sum above 100% or its memory.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import psutil
import pytest

from gpuslice.bench.sampler import SliceSampler, interval_violations
from gpuslice.mps import daemon
from gpuslice.parsl.app import gpu_app
from gpuslice.parsl.capacity import DeviceCapacity
from gpuslice.parsl.elastic import ElasticController, ElasticPolicy, elastic_controller
from gpuslice.plan.layout import Layout
from tests.parsl.conftest import REPO, emulated_environment, loaded

pytestmark = pytest.mark.slow

FLEET_1XH100 = str(REPO / "src" / "gpuslice" / "examples" / "fleet-1xh100.yaml")
PLAN = "a=2x mps:20%/8GiB, b=1x mps:50%/30GiB"
POLICY = ElasticPolicy(period_s=0.5, grow_after_s=1.0, idle_after_s=1.0, cooldown_s=2.0)


def work(ms: float) -> dict[str, Any]:
    """An emulated kernel in this worker's slice; reports the slice and when it ran."""
    import os
    import time

    from gpuslice.emulate.kernel import kernel

    start = time.time()
    result = kernel(ms, duty=0.5, occupancy=0.2)
    limit = os.environ["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"]
    return {
        "slice": os.environ.get("GPUSLICE_SLICE"),
        "pool": os.environ.get("GPUSLICE_POOL"),
        "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "compute": int(os.environ["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"]),
        "memory_mib": int(limit.removeprefix("0=").removesuffix("M")),
        "start": start,
        "end": time.time(),
        "mode": result.mode,
        "pid": os.getpid(),
    }


class Run:
    """The module's loaded configuration, its controller and the GPU's capacity."""

    def __init__(self, layout: Layout, controller: ElasticController) -> None:
        self.layout = layout
        self.controller = controller
        self.capacity = {
            s.device: DeviceCapacity(s.device, s.memory_total_mib) for s in layout.slices
        }
        self.a = gpu_app(pool="a")(work)
        self.b = gpu_app(pool="b")(work)


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    with (
        emulated_environment() as root,
        loaded(
            PLAN,
            root,
            fleet=FLEET_1XH100,
            elastic=POLICY,
            retries=2,
            heartbeat_period=1,
            heartbeat_threshold=20,
        ) as layout,
    ):
        from parsl.dataflow.dflow import DataFlowKernelLoader

        controller = elastic_controller(DataFlowKernelLoader.dfk())
        assert controller is not None
        yield Run(layout, controller)


def results(futures: list[Future[Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    done, failed = [], []
    for future in futures:
        try:
            done.append(future.result(timeout=300))
        except Exception as err:  # counted and checked by the caller
            failed.append(f"{type(err).__name__}: {err}")
    return done, failed


def peak(controller: ElasticController, pool: str, since: float = 0.0) -> int:
    counts = [
        e["after"]["serving"].get(pool, 0)
        for e in controller.decisions()
        if "after" in e and e["t"] >= since
    ]
    return max(counts, default=0)


def wait_for(condition: Any, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("the condition never held")


def in_resize(controller: ElasticController, pool: str) -> dict[str, Any] | None:
    """A slice of ``pool`` being retired while it still runs a task, if any."""
    for s in controller.snapshot():
        if s["pool"] == pool and s["state"] == "retiring":
            return s
    return None


def test_capacity_moves_to_the_pool_with_the_backlog_and_back(run: Run) -> None:
    t0 = run.controller.decisions()[-1]["t"]
    with SliceSampler(
        period_s=0.2, devices=frozenset(run.capacity), group=run.controller.group
    ) as sampler:
        done_a, failed_a = results([run.a(500) for _ in range(30)])
        t1 = run.controller.decisions()[-1]["t"]
        done_b, failed_b = results([run.b(1500) for _ in range(6)])
    assert not failed_a + failed_b, failed_a + failed_b
    assert len(done_a) == 30
    assert len(done_b) == 6
    # a took the GPU (5 x 20%), then b did (2 x 50%).
    assert peak(run.controller, "a", t0) == 5
    assert peak(run.controller, "b", t1) == 2
    # The controller started new slices of a (node-run reports each start); whether they start
    # before the backlog drains, and so get work, depends on the host's speed.
    started = {
        e["reason"].split()[3]
        for e in run.controller.decisions()
        if e["kind"] == "slice"
        and e["t"] >= t0
        and e["reason"].startswith("node-run reports slice a.")
        and " started " in e["reason"]
    }
    assert len(started) >= 3, started
    resizes = [e for e in run.controller.decisions() if e["kind"] == "resize" and e["t"] >= t0]
    assert any("a has" in e["reason"] and "waiting" in e["reason"] for e in resizes)
    assert any("b has" in e["reason"] and "waiting" in e["reason"] for e in resizes)
    assert all({"before", "after", "targets", "time"} <= set(e) for e in resizes)
    # Never above the GPU, from the workers' own environments and their tasks' intervals.
    assert len(sampler.samples) > 20
    assert len(sampler.seen) >= 7
    assert sampler.violations(run.capacity) == []
    violations, instants = interval_violations(done_a + done_b, run.capacity)
    assert violations == []
    assert instants > 60  # a start and an end per task


def test_a_worker_killed_while_its_slice_is_retired_loses_no_task(run: Run) -> None:
    # b holds the GPU (two busy 50% slices, long tasks); a's burst makes the controller
    # retire one of b's busy slices, which finishes its task first. Its worker is killed
    # while it runs that task.
    with SliceSampler(
        period_s=0.2, devices=frozenset(run.capacity), group=run.controller.group
    ) as sampler:
        b_futures = [run.b(3000) for _ in range(6)]
        wait_for(lambda: sum(1 for s in run.controller.snapshot() if s["pool"] == "b") == 2)
        time.sleep(2.5)  # b's growth is out of its cooldown, its slices are busy
        a_futures = [run.a(400) for _ in range(30)]
        victim = wait_for(lambda: in_resize(run.controller, "b"))
        killed = wait_for(lambda: kill_worker(victim["slice"]), timeout=10)
        done, failed = results(b_futures + a_futures)
    print(f"\nkilled worker {killed} of retiring slice {victim['slice']}")
    assert not failed, failed
    assert len(done) == 36
    tries = [f.task_record["try_id"] for f in b_futures]
    assert any(t > 0 for t in tries), "the kill hit no task: the test proved nothing"
    assert sampler.violations(run.capacity) == []
    assert interval_violations(done, run.capacity)[0] == []


def test_an_mps_daemon_killed_during_a_resize_loses_no_task(run: Run) -> None:
    # b takes the GPU first (two busy 50% slices), so a's burst moves capacity whatever split
    # the earlier tests left: bursts sent together to pools already at their fair split (the
    # plan's, after an idle spell) move nothing, and the resize this test needs never came.
    (d,) = run.layout.daemons
    with SliceSampler(
        period_s=0.2, devices=frozenset(run.capacity), group=run.controller.group
    ) as sampler:
        b_futures = [run.b(3000) for _ in range(6)]
        wait_for(lambda: sum(1 for s in run.controller.snapshot() if s["pool"] == "b") == 2)
        time.sleep(2.5)  # b's growth is out of its cooldown, its slices are busy
        a_futures = [run.a(1000) for _ in range(20)]
        wait_for(
            lambda: (
                any(s["state"] in ("retiring", "starting") for s in run.controller.snapshot())
                and any(not f.done() for f in a_futures + b_futures)
            )
        )
        pid = daemon.read_pid(d.pipe_dir)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        done, failed = results(a_futures + b_futures)
    print(f"\nkilled MPS daemon {pid} during a resize")
    assert not failed, failed
    assert len(done) == 26
    assert {r["mode"] for r in done} == {"mps"}  # nothing ran outside MPS
    tries = [f.task_record["try_id"] for f in a_futures + b_futures]
    assert any(t > 0 for t in tries), "the kill hit no task: the test proved nothing"
    assert sampler.violations(run.capacity) == []


def kill_worker(slice_id: str) -> int | None:
    """SIGKILL the worker of a slice that is running an emulated kernel (a task), if any.

    The emulated GPU keeps one record per running kernel, named by its process
    (``<state dir>/<device>/<pid>-<tid>-<n>.json``, docs/emulation-model.md).
    """
    state = Path(os.environ["GPUSLICE_EMULATE_DIR"])
    running = {int(p.name.split("-", 1)[0]) for p in state.glob("*/*.json")}
    for pid in running:
        try:
            if psutil.Process(pid).environ().get("GPUSLICE_SLICE") == slice_id:
                os.kill(pid, signal.SIGKILL)
                return pid
        except (psutil.Error, ProcessLookupError):
            continue
    return None
