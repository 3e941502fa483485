"""``gpuslice node-run`` in elastic mode: one worker pool per slice, started and stopped on request.

With ``parsl_config(..., elastic=ElasticPolicy(...))`` each node runs :class:`ElasticNodeAgent`
instead of :class:`~gpuslice.parsl.node.NodeAgent`. It sets the node up the same way (the plan
resolved on the node's GPUs, the MPS daemons leased for the run, one node run per configuration
and host) and differs in three ways:

- **One Parsl worker pool per slice**, each with one worker and its own manager id, so the
  controller can hold one slice's manager at its interchange and retire that slice alone. The
  plan's slices start at once; each worker pool gets its slice's environment (as in
  :mod:`gpuslice.parsl.node`) plus :data:`SLICE_ENV`, the slice's id.
- **A control channel**: the node connects to the controller's hub (:mod:`gpuslice.parsl.hub`),
  says which devices it has and which pools can run on each, and then reports every slice it
  starts (``started``: slice id, manager id, pool, device, limits) and every slice whose
  processes are all gone (``exited``); the controller asks it to ``start`` and ``stop`` slices.
- **Capacity is freed only when a slice's processes are gone.** Each worker pool runs in its own
  process group (session); a slice counts against its device until no process of that group
  is left, its workers included (a manager that dies leaves its workers behind for a moment,
  and a worker may hold a CUDA context). Before it starts a slice the node checks that the
  slices it still has on the device plus the new one fit the device
  (:func:`gpuslice.parsl.capacity.overflow`), whatever the controller believes, and refuses the
  start otherwise.

A worker pool that crashes is restarted with a *new* manager id once its old processes are
gone (the interchange then fails the old manager's tasks as lost after its heartbeat threshold,
and Parsl retries them; reusing the id would make the interchange replace the old record and
forget those tasks). The node ends when its block is cancelled (SIGTERM), or when the hub has
gone and no slice is left.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import psutil

from gpuslice.parsl.capacity import DeviceCapacity, SliceSize, overflow
from gpuslice.parsl.hub import HubAddress, HubClient, HubError
from gpuslice.parsl.node import (
    MANAGER_RESTARTS,
    STOP_GRACE_S,
    SUPERVISE_PERIOD_S,
    NodeAgent,
    NodeError,
    NodeSpec,
    _say,
    register_emulated_devices,
)
from gpuslice.plan.layout import Layout, Slice

__all__ = ["SLICE_ENV", "ElasticNodeAgent", "census", "initial_slice_id"]

#: The slice's id in every process of its worker pool (the controller's name for it).
SLICE_ENV = "GPUSLICE_SLICE"

#: Seconds between the hub's messages are waited for when nothing else is due.
_IDLE_WAIT_S = SUPERVISE_PERIOD_S


def initial_slice_id(pool: str, node_id: str, rank: int) -> str:
    """The id of a slice the plan starts on a node (node and controller both name it so).

    Args:
        pool: the slice's pool.
        node_id: the id the hub gave the node.
        rank: the slice's rank in its pool, in the plan resolved on the node.
    """
    return f"{pool}.{node_id}.{rank}"


def census() -> dict[int, int]:
    """Live (non-zombie) processes per process group on this host.

    A zombie has exited and holds nothing (no CUDA context, no memory); it only waits to be
    reaped, so it does not count.
    """
    counts: dict[int, int] = {}
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            group = os.getpgid(proc.pid)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
        counts[group] = counts.get(group, 0) + 1
    return counts


@dataclass
class _Slice:
    """One slice this node runs: one Parsl worker pool (manager) with one worker."""

    id: str
    pool: str
    device: str
    size: SliceSize
    base: list[str]
    env: dict[str, str]
    incarnation: int = 0
    proc: subprocess.Popen[bytes] | None = None
    #: ``running``; ``restarting`` (crashed, old processes going); ``stopping`` (asked to, or
    #: given up, or finished by itself); ``gone`` (no process left: capacity freed).
    state: str = "running"
    restarts: int = 0
    signalled_at: float | None = None
    killed: bool = False
    failed: bool = False
    reason: str = ""

    @property
    def uid(self) -> str:
        """The manager id of the current worker pool (new for every restart)."""
        return self.id if self.incarnation == 0 else f"{self.id}.r{self.incarnation}"

    def argv(self) -> list[str]:
        return [
            *self.base,
            "--max_workers_per_node=1",
            f"--uid={self.uid}",
            "--available-accelerators",
            self.device,
        ]

    def start(self) -> None:
        env = {**self.env}
        # Its own session: the slice's processes are one process group, found and stopped
        # together, workers orphaned by a crashed manager included.
        self.proc = subprocess.Popen(self.argv(), env=env, start_new_session=True)
        self.state = "running"
        self.signalled_at = None
        self.killed = False

    @property
    def group(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def report(self) -> dict[str, Any]:
        return {
            "slice": self.id,
            "uid": self.uid,
            "pool": self.pool,
            "device": self.device,
            "compute": self.size.compute,
            "memory_mib": self.size.memory_mib,
            "pid": self.proc.pid if self.proc is not None else None,
            "incarnation": self.incarnation,
        }


class ElasticNodeAgent(NodeAgent):
    """Runs one node of an elastic configuration (see the module's description).

    Args:
        spec: what the configuration tells every node; ``spec.elastic`` holds the hub.
        commands: pool name -> the Parsl worker-pool command its executor formatted for this
            block.
    """

    def __init__(self, spec: NodeSpec, commands: dict[str, str]) -> None:
        super().__init__(spec, commands)
        if spec.elastic is None:
            raise NodeError("an elastic node needs the controller's hub in its spec")
        self.hub = HubAddress.from_dict(spec.elastic["hub"])
        self.client: HubClient | None = None
        self.slices: dict[str, _Slice] = {}
        self.templates: dict[tuple[str, str], Slice] = {}
        self.capacity: dict[str, DeviceCapacity] = {}

    # -- set-up --------------------------------------------------------------------------

    def _templates(self, layout: Layout) -> None:
        for s in layout.slices:
            if s.pool not in self.commands:
                continue
            if s.compute is None or s.memory_mib is None or not s.uses_mps:
                raise self._fail(
                    s.pool,
                    "elastic pools need MPS slices with a compute and a memory limit "
                    f"(got {s.kind} with compute={s.compute}, memory={s.memory_mib}MiB)",
                )
            self.templates.setdefault((s.pool, s.device), s)
            self.capacity.setdefault(s.device, DeviceCapacity(s.device, s.memory_total_mib))

    def _initial(self, layout: Layout) -> list[Slice]:
        return [s for s in layout.slices if s.pool in self.commands]

    def _hello(self, initial: list[Slice]) -> dict[str, Any]:
        templates: dict[str, dict[str, dict[str, int]]] = {}
        for (pool, device), s in self.templates.items():
            assert s.compute is not None
            assert s.memory_mib is not None
            templates.setdefault(pool, {})[device] = {
                "compute": s.compute,
                "memory_mib": s.memory_mib,
            }
        gpu_of = {s.device: s.gpu_index for s in self.templates.values()}
        return {
            "group": self.spec.group,
            "node": self.node,
            "pid": os.getpid(),
            "devices": [
                {
                    "device": c.device,
                    "gpu_index": gpu_of[c.device],
                    "compute": c.compute,
                    "memory_mib": c.memory_mib,
                    "clients": c.clients,
                }
                for c in self.capacity.values()
            ],
            "templates": templates,
            # The plan's slices, started right after the welcome: the controller counts their
            # capacity from now on.
            "initial": [{"pool": s.pool, "device": s.device, "rank": s.rank} for s in initial],
        }

    def start(self) -> None:
        """Resolve, lock, reach the hub, start the daemons and the plan's slices.

        Raises:
            NodeError: a pool cannot start here, or the hub cannot be reached; nothing is
                left running.
        """
        self._environment()
        layout = self.layout()
        self._take_node_lock()
        try:
            if self.spec.emulated:
                register_emulated_devices(layout)
            self._templates(layout)
            initial = self._initial(layout)
            try:
                self.client = HubClient.connect(self.hub, self._hello(initial))
            except HubError as err:
                raise self._fail(None, str(err)) from err
            self._start_daemons(layout)
            self._start_initial(initial, self.client.node_id)
        except BaseException:
            self.stop()
            raise
        summary = ", ".join(f"{s.id} on {s.device}" for s in self.slices.values())
        _say(f"node {self.node}: elastic slices started ({summary})")

    def _start_initial(self, initial: list[Slice], node_id: str) -> None:
        for s in initial:
            refusal = self.launch(initial_slice_id(s.pool, node_id, s.rank), s.pool, s.device)
            if refusal is not None:
                raise self._fail(s.pool, refusal)

    # -- slices --------------------------------------------------------------------------

    def in_use(self, device: str) -> list[SliceSize]:
        """What the slices on ``device`` take, from their start until their processes are gone."""
        return [s.size for s in self.slices.values() if s.device == device and s.state != "gone"]

    def launch(self, slice_id: str, pool: str, device: str) -> str | None:
        """Start a slice of ``pool`` on ``device``; returns why not, or None once started."""
        template = self.templates.get((pool, device))
        if template is None:
            return f"pool {pool!r} has no slice on {device} in the plan resolved on this node"
        if slice_id in self.slices and self.slices[slice_id].state != "gone":
            return f"slice {slice_id} already runs"
        if self.stopping:
            return "the node is stopping"
        assert template.compute is not None
        assert template.memory_mib is not None
        size = SliceSize(template.compute, template.memory_mib)
        problem = overflow(self.capacity[device], [*self.in_use(device), size])
        if problem is not None:
            return f"no room for a {pool} slice {problem}"
        env = self._env(template)
        env[SLICE_ENV] = slice_id
        made = _Slice(slice_id, pool, device, size, shlex.split(self.commands[pool]), env)
        made.start()
        self.slices[slice_id] = made
        self._send({"op": "started", **made.report()})
        return None

    def _send(self, message: dict[str, Any]) -> None:
        if self.client is not None:
            self.client.send(message)

    def _command(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        slice_id = str(message.get("slice", ""))
        if op == "start":
            refusal = self.launch(slice_id, str(message.get("pool")), str(message.get("device")))
            if refusal is not None:
                _say(f"refused to start slice {slice_id}: {refusal}")
                self._send({"op": "refused", "slice": slice_id, "reason": refusal})
        elif op == "stop":
            found = self.slices.get(slice_id)
            if found is None or found.state == "gone":
                self._send({"op": "exited", "slice": slice_id, "final": True, "code": None})
            elif found.state in ("running", "restarting"):
                # A slice being restarted is not started again: its old processes are going.
                found.state = "stopping"
                found.reason = "stopped by the controller"
        else:
            _say(f"ignored a message from the controller: {op!r}")

    def _signal(self, s: _Slice, now: float) -> None:
        group = s.group
        if group is None:
            return
        if s.signalled_at is None:
            s.signalled_at = now
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGTERM)
        elif not s.killed and now - s.signalled_at > STOP_GRACE_S:
            s.killed = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)

    def _crashed(self, s: _Slice, code: int) -> None:
        if code == 0:
            # A worker pool ends by itself when its interchange is gone or it drained.
            s.state, s.reason = "stopping", "its worker pool finished"
        elif self.stopping or s.restarts >= MANAGER_RESTARTS:
            s.state, s.failed = "stopping", True
            s.reason = f"its worker pool exited {code} {s.restarts + 1} times"
        else:
            s.state, s.reason = "restarting", f"its worker pool exited {code}"
            _say(f"slice {s.id}'s worker pool ({s.uid}) exited {code}; restarting it")

    def _watch_slice(self, s: _Slice, groups: dict[int, int], now: float) -> None:
        assert s.proc is not None
        code = s.proc.poll()
        if s.state == "running":
            if code is None:
                return
            self._crashed(s, code)
        # restarting or stopping: every process of the slice's group must be gone.
        self._signal(s, now)
        if s.proc.poll() is None or groups.get(s.proc.pid, 0) > 0:
            return
        if s.state == "restarting":
            old = s.uid
            s.restarts += 1
            s.incarnation += 1
            s.start()
            _say(f"slice {s.id} runs again as {s.uid} (was {old})")
            self._send({"op": "started", **s.report(), "replaces": old})
            return
        s.state = "gone"
        _say(f"slice {s.id} ({s.pool} on {s.device}) is gone: {s.reason}")
        self._send(
            {
                "op": "exited",
                "slice": s.id,
                "uid": s.uid,
                "code": s.proc.returncode,
                "final": True,
                "failed": s.failed,
                "reason": s.reason,
            }
        )

    def _give_up(self, device: str, reason: str) -> None:
        for s in self.slices.values():
            if s.device == device and s.state in ("running", "restarting"):
                s.state, s.failed = "stopping", True
                s.reason = reason
                _say(f"stopping slice {s.id} on {device}: {reason}; Parsl retries its tasks")

    def supervise(self) -> int:
        """Serve the controller and watch daemons and slices until the block ends.

        Returns:
            0 when the block was cancelled or the hub went away with every slice gone; 1 when
            slices failed (a device given up on, a worker pool that kept crashing).
        """
        while not self.stopping:
            client = self.client
            if client is not None and client.connected:
                for message in client.receive(_IDLE_WAIT_S):
                    self._command(message)
            else:
                time.sleep(_IDLE_WAIT_S)
            for watch in self.daemons:
                self._watch_daemon(watch)
            self._watch_all()
            hub_gone = client is None or not client.connected
            if hub_gone and all(s.state == "gone" for s in self.slices.values()):
                break
        failed = [s.id for s in self.slices.values() if s.failed]
        if failed and not self.stopping:
            _say(f"node {self.node}: the controller is gone; failed slices: {', '.join(failed)}")
            return 1
        return 0

    def _watch_all(self) -> None:
        now = time.monotonic()
        moving = any(
            s.state in ("restarting", "stopping")
            or (s.state == "running" and s.proc is not None and s.proc.poll() is not None)
            for s in self.slices.values()
        )
        groups = census() if moving else {}
        for s in list(self.slices.values()):
            if s.state != "gone":
                self._watch_slice(s, groups, now)

    # -- shutdown ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every slice (their whole process groups), then the daemons, as NodeAgent does."""
        self.stopping = True
        for s in self.slices.values():
            if s.state in ("running", "restarting"):
                s.state, s.reason = "stopping", "the node run ends"
        deadline = time.monotonic() + STOP_GRACE_S + 5
        while any(s.state != "gone" for s in self.slices.values()):
            self._watch_all()
            if time.monotonic() > deadline:
                left = [s.id for s in self.slices.values() if s.state != "gone"]
                _say(f"slices whose processes would not end: {', '.join(left)}")
                break
            time.sleep(0.1)
        if self.client is not None:
            self.client.close()
        super().stop()
