"""``gpuslice node-run`` in elastic mode, with stand-in worker pools and a real hub.

The stand-in worker pool writes what it was started with (arguments, slice variables) and
starts a child in its process group, as Parsl's manager starts its worker; on SIGTERM the
stand-in exits at once and its child lingers a moment (``STAND_IN_LINGER`` seconds), as a
worker finishing up would. The node must count the slice until that child is gone too.
"""

from __future__ import annotations

import json
import queue
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuslice.mps import daemon
from gpuslice.parsl.config import layout_of
from gpuslice.parsl.hub import Hub, NodeLink
from gpuslice.parsl.node import NodeSpec
from tests.parsl.conftest import FLEET_2XH100, REPO, emulated_environment
from tests.parsl.test_node import NodeRun, spec_of

STAND_IN = textwrap.dedent(
    """
    import json, os, signal, subprocess, sys, time
    out = os.environ["STAND_IN_DIR"]
    uid = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--uid="))
    linger = os.environ.get("STAND_IN_LINGER", "0")
    child = subprocess.Popen([sys.executable, "-c", (
        "import os, signal, sys, time\\n"
        "def bye(*_):\\n"
        f"    time.sleep({linger})\\n"
        f"    open({out!r} + '/gone-' + str(os.getpid()), 'w').close()\\n"
        "    sys.exit(0)\\n"
        "signal.signal(signal.SIGTERM, bye)\\n"
        "time.sleep(3600)\\n")])
    keep = ("CUDA_VISIBLE_DEVICES", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "GPUSLICE_POOL", "GPUSLICE_SLICE")
    record = {"argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keep},
              "pid": os.getpid(), "child": child.pid, "pgid": os.getpgid(0)}
    path = os.path.join(out, uid + ".json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)
    crash = os.path.join(out, "crashed-" + os.environ["GPUSLICE_SLICE"])
    if os.environ.get("STAND_IN_CRASH") == os.environ["GPUSLICE_SLICE"] and not os.path.exists(crash):
        open(crash, "w").close()
        os._exit(3)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(0.1)
    """
)
PLAN = "a=2x mps:20%/8GiB, b=1x mps:50%/20GiB"
#: One GPU keeps the other tests' process count (and their time) small.
FLEET_1XH100 = str(REPO / "src" / "gpuslice" / "examples" / "fleet-1xh100.yaml")


class Controller:
    """A hub whose callbacks queue what nodes say (the test plays the controller)."""

    def __init__(self) -> None:
        self.said: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.links: list[NodeLink] = []
        self.hub = Hub("t", self._hello, self._message, lambda link: None, bind="127.0.0.1")

    def _hello(self, link: NodeLink) -> None:
        self.links.append(link)
        self.said.put(("hello", link.hello))

    def _message(self, link: NodeLink, message: dict[str, Any]) -> None:
        self.said.put((str(message["op"]), message))

    def expect(self, op: str, timeout: float = 60.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {op} {match} from the node")
            kind, message = self.said.get(timeout=left)
            if kind == op and all(message.get(k) == v for k, v in match.items()):
                return message

    def send(self, **message: Any) -> None:
        assert self.links[0].send(message)


@pytest.fixture
def controller() -> Iterator[Controller]:
    made = Controller()
    made.hub.start(["127.0.0.1"])
    try:
        yield made
    finally:
        made.hub.stop()


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    script = tmp_path / "pwp.py"
    script.write_text(STAND_IN)
    return script


def command(stand_in: Path) -> str:
    return f"{sys.executable} {stand_in} -a 127.0.0.1 --port=1 --block_id=0"


def elastic_spec(controller: Controller, plan: str = PLAN, fleet: str = FLEET_1XH100) -> NodeSpec:
    assert controller.hub.address is not None
    return spec_of(plan, fleet, elastic={"hub": controller.hub.address.to_dict()})


def records(out: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


def wait_for_records(out: Path, count: int, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(found := records(out)) < count:
        assert time.monotonic() < deadline, f"only {len(found)} of {count} worker pools"
        time.sleep(0.1)
    return found


@pytest.fixture
def root() -> Iterator[Path]:
    """Private emulator and MPS directories; afterwards, whatever daemons run there stop."""
    with emulated_environment() as where:
        try:
            yield where
        finally:
            for pipe in (where / "mps").glob("*/pipe"):
                daemon.stop(str(pipe), timeout=5)


def test_each_slice_is_its_own_worker_pool_and_is_reported_to_the_controller(
    root: Path, controller: Controller, stand_in: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    spec = elastic_spec(controller, PLAN, FLEET_2XH100)
    run = NodeRun(spec, {"a": command(stand_in), "b": command(stand_in)}, out)
    try:
        hello = controller.expect("hello")
        started = [controller.expect("started") for _ in range(6)]
        found = wait_for_records(out, 6)
    finally:
        code, err = run.stop()
    assert code == 0, err
    layout = layout_of(PLAN, FLEET_2XH100)
    assert {d["device"] for d in hello["devices"]} == {s.device for s in layout.slices}
    # 81,559 MiB: what NVML reports as an H100 80GB SXM's total (the catalog's figure).
    assert all(d["compute"] == 100 and d["memory_mib"] == 81559 for d in hello["devices"])
    assert len(hello["initial"]) == 6
    # 2 GPUs x (2 a-slices + 1 b-slice): six worker pools, one worker each, own manager ids.
    assert sorted(m["uid"] for m in started) == sorted(found)
    for uid, record in found.items():
        argv, env = record["argv"], record["env"]
        assert "--max_workers_per_node=1" in argv
        assert argv[argv.index("--available-accelerators") + 1 :] == [env["CUDA_VISIBLE_DEVICES"]]
        assert env["GPUSLICE_SLICE"] == uid
        assert record["pgid"] == record["pid"]  # its own process group
        expected = {"a": ("20", "0=8192M"), "b": ("50", "0=20480M")}[env["GPUSLICE_POOL"]]
        assert (
            env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"],
            env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"],
        ) == expected


def test_a_start_is_taken_while_it_fits_the_device_and_refused_beyond(
    root: Path, controller: Controller, stand_in: Path, tmp_path: Path
) -> None:
    plan = "a=1x mps:20%/8GiB, b=1x mps:50%/20GiB"
    out = tmp_path / "o"
    run = NodeRun(
        elastic_spec(controller, plan), {"a": command(stand_in), "b": command(stand_in)}, out
    )
    try:
        hello = controller.expect("hello")
        (device,) = [d["device"] for d in hello["devices"]]
        controller.expect("started")
        controller.expect("started")
        # 20% + 50% in use: a second b slice would make 120%; a second a slice makes 90%.
        controller.send(op="start", slice="b.extra", pool="b", device=device)
        refused = controller.expect("refused", slice="b.extra")
        controller.send(op="start", slice="a.extra", pool="a", device=device)
        taken = controller.expect("started", slice="a.extra")
        controller.send(op="start", slice="a.more", pool="a", device=device)
        refused_more = controller.expect("refused", slice="a.more")
        controller.send(op="start", slice="z.1", pool="z", device=device)
        refused_z = controller.expect("refused", slice="z.1")
        found = wait_for_records(out, 3)
    finally:
        code, err = run.stop()
    assert code == 0, err
    assert f"on {device}: compute would sum to 120% (at most 100%)" in refused["reason"]
    assert taken["compute"] == 20
    assert "compute would sum to 110%" in refused_more["reason"]
    assert "pool 'z' has no slice on" in refused_z["reason"]
    assert sorted(found) == sorted(["a.n0.0", "b.n0.0", "a.extra"])


def test_a_stopped_slice_is_gone_only_once_every_process_of_it_has_exited(
    root: Path, controller: Controller, stand_in: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    run = NodeRun(
        elastic_spec(controller, "a=1x mps:60%/8GiB"),
        {"a": command(stand_in)},
        out,
        STAND_IN_LINGER="2",
    )
    try:
        controller.expect("hello")
        started = controller.expect("started")
        device = started["device"]
        record = wait_for_records(out, 1)[started["uid"]]
        # Another 60% slice does not fit until the first one is gone, child included.
        controller.send(op="start", slice="a.second", pool="a", device=device)
        controller.expect("refused", slice="a.second")
        controller.send(op="stop", slice=started["slice"])
        gone = controller.expect("exited", slice=started["slice"])
        child_gone = (out / f"gone-{record['child']}").exists()
        controller.send(op="start", slice="a.second", pool="a", device=device)
        second = controller.expect("started", slice="a.second")
    finally:
        code, err = run.stop()
    assert code == 0, err
    assert gone["final"] is True
    assert child_gone, "the node reported the slice gone while its worker still ran"
    assert second["uid"] == "a.second"


def test_a_crashed_slice_restarts_under_a_new_manager_id(
    root: Path, controller: Controller, stand_in: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    plan = "a=1x mps:30%/8GiB"
    spec = elastic_spec(controller, plan)
    run = NodeRun(spec, {"a": command(stand_in)}, out, STAND_IN_CRASH="a.n0.0")
    try:
        controller.expect("hello")
        first = controller.expect("started", slice="a.n0.0")
        again = controller.expect("started", slice="a.n0.0", uid="a.n0.0.r1")
    finally:
        code, err = run.stop()
    assert code == 0, err
    assert first["uid"] == "a.n0.0"
    assert again["replaces"] == "a.n0.0"
    assert "slice a.n0.0's worker pool (a.n0.0) exited 3; restarting it" in err


def test_a_node_that_cannot_reach_its_controller_fails_before_any_worker_starts(
    root: Path, controller: Controller, stand_in: Path, tmp_path: Path
) -> None:
    spec = elastic_spec(controller, "a=1x mps:30%/8GiB")
    controller.hub.stop()
    out = tmp_path / "o"
    run = NodeRun(spec, {"a": command(stand_in)}, out)
    code, err = run.wait()
    assert code == 1
    assert "cannot reach the elastic controller of this configuration (127.0.0.1:" in err
    assert not records(out)
