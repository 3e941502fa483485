"""Elastic pools: move GPU capacity between pools while the workflow runs, losing no task.

``parsl_config(plan, elastic=ElasticPolicy(...))`` starts the plan's slices, then lets an
:class:`ElasticController` (a thread in the submitting process) resize the pools: it grows a
pool whose tasks wait and takes the capacity from pools that do not need it.

What NVIDIA and Parsl allow, and what follows (REFERENCE.md, "Resizing"):

- An MPS client's compute and memory limits are fixed when its CUDA context is created, so a
  slice keeps its size for its whole life. Resizing a pool means changing its *number* of
  slices, each of the plan's size; a slice is one Parsl worker pool with one worker
  (:mod:`gpuslice.parsl.elastic_node`), so one slice can be retired alone.
- Parsl's HighThroughputExecutor has no public call to drain one chosen worker pool. Its
  interchange command ``HOLD_MANAGER`` (``HighThroughputExecutor._hold_manager``, what Parsl's
  own ``scale_in`` uses; parsl/executors/high_throughput/interchange.py, ``process_command``)
  stops sending tasks to one manager, and ``connected_managers()`` reports each manager's
  tasks. A slice is retired by holding its manager, waiting until it has no task (what runs is
  finished first; what waits stays queued at the interchange for other workers), and only then
  asking its node to stop it.
- ``outstanding()`` counts a pool's tasks not yet done; minus the tasks its managers hold, what
  is left waits for a worker: the pool's backlog.

The capacity of a device is never exceeded, at any instant: a slice counts against its device
from the moment the controller decides to start it until its node reports that every process of
its worker pool has exited; the controller starts a slice only where the slices still counted
leave room (:func:`gpuslice.parsl.capacity.overflow`), and the node checks again before it
starts one. Parsl's own scaling strategy is off in elastic mode (it would add and remove whole
nodes on its own rules); the controller works within the nodes the provider starts.

The decisions are a pure function, :func:`decide`, of what the controller sees (tested without
Parsl); every resize is logged with its reason, time and the pools' slice counts before and
after (:meth:`ElasticController.decisions`, and a JSON-lines file in Parsl's run directory).

Policy, in order:

1. A pool's *demand* is the number of slices it can keep busy: its outstanding tasks once a
   backlog has lasted ``grow_after_s`` (hysteresis), else the slices it used in the last
   ``idle_after_s``; bounded by its minimum and maximum.
2. Capacity is shared by weighted dominant-resource fairness: slices are handed out one at a
   time to the pool with the smallest weighted share (its slices' compute or memory, whichever is
   the larger fraction of the total) among those whose demand is not met, while they fit.
   The result is each pool's *target*.
3. A pool below its target gets slices, pools with larger slices first: where a device has
   room, at once, unless that room is promised to a slice waiting for leaving slices to go; else
   from pools above their target on one device, idle slices first (longest idle first), busy
   ones (drained) only from pools that did not grow in the last ``cooldown_s``. A pool that gave
   slices does not grow again for ``cooldown_s`` unless it has none.
4. Pools above their target keep their slices until another pool needs the room: idle slices
   cost nothing under MPS (a limit, not a reservation), and keeping them avoids needless
   restarts.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuslice.errors import UsageError
from gpuslice.parsl.capacity import DeviceCapacity, SliceSize, overflow
from gpuslice.parsl.elastic_node import initial_slice_id
from gpuslice.parsl.hub import Hub, HubAddress, NodeLink

if TYPE_CHECKING:
    from gpuslice.parsl.executor import SliceExecutor
    from gpuslice.plan.layout import Layout

__all__ = [
    "LOG_NAME",
    "DeviceView",
    "ElasticController",
    "ElasticPolicy",
    "Move",
    "PoolLimits",
    "PoolView",
    "SliceView",
    "decide",
    "elastic_controller",
    "targets",
]

logger = logging.getLogger(__name__)

#: The decision log's file name in Parsl's run directory.
LOG_NAME = "gpuslice-elastic.jsonl"


@dataclass(frozen=True)
class PoolLimits:
    """How far the controller may resize one pool.

    Attributes:
        min: slices the pool keeps over the whole configuration (all nodes), whatever its load.
            0 lets an idle pool give all its capacity away (its next task then waits for a
            slice to start, a few seconds).
        max: slices it may have at most; None: as many as fit.
        weight: its share of contended capacity relative to other pools (fairness).
    """

    min: int = 0
    max: int | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.min < 0:
            raise UsageError(f"PoolLimits.min must be 0 or more, not {self.min}")
        if self.max is not None and self.max < max(self.min, 1):
            raise UsageError(
                f"PoolLimits.max ({self.max}) must be at least 1 and at least min ({self.min})"
            )
        if not self.weight > 0:
            raise UsageError(f"PoolLimits.weight must be positive, not {self.weight}")

    @property
    def ceiling(self) -> float:
        """``max``, or infinity."""
        return math.inf if self.max is None else self.max


@dataclass(frozen=True)
class ElasticPolicy:
    """When and how far the elastic controller resizes pools.

    Attributes:
        pools: limits per pool name; pools not named get :class:`PoolLimits` defaults
            (min 0, no max, weight 1). Give ``PoolLimits(min=n, max=n)`` to keep a pool fixed.
        period_s: seconds between two looks at the pools.
        grow_after_s: seconds a pool's tasks must have waited for a worker before it grows.
        idle_after_s: seconds a slice must have been idle before its capacity may be taken
            without a fairness reason.
        cooldown_s: seconds after a pool grew during which its busy slices are not taken, and
            after it shrank during which it does not grow (unless it has no slice at all).
        register_timeout_s: seconds a retiring slice's manager may take to connect to its
            interchange before the slice is stopped anyway.
        log: path of the JSON-lines decision log; default :data:`LOG_NAME` in Parsl's run
            directory.
    """

    pools: Mapping[str, PoolLimits] = field(default_factory=dict)
    period_s: float = 1.0
    grow_after_s: float = 2.0
    idle_after_s: float = 3.0
    cooldown_s: float = 5.0
    register_timeout_s: float = 60.0
    log: str | None = None

    def __post_init__(self) -> None:
        for name in ("period_s", "grow_after_s", "idle_after_s", "cooldown_s"):
            value = getattr(self, name)
            if not value >= 0 or (name == "period_s" and value == 0):
                raise UsageError(f"ElasticPolicy.{name} must be a positive number, not {value}")
        for pool, limits in self.pools.items():
            if not isinstance(limits, PoolLimits):
                raise UsageError(
                    f"ElasticPolicy.pools[{pool!r}] must be a PoolLimits, not "
                    f"{type(limits).__name__}; e.g. PoolLimits(min=0, max=8)"
                )

    def limits(self, pool: str) -> PoolLimits:
        """The limits of ``pool`` (defaults when the policy does not name it)."""
        return self.pools.get(pool, PoolLimits())

    def check(self, layout: Layout) -> None:
        """Refuse a policy or plan the controller cannot work with.

        Raises:
            UsageError: the policy names a pool the plan lacks, or a pool is not MPS with both
                a compute and a memory limit, or allows oversubscription.
        """
        names = set(layout.pool_names)
        unknown = sorted(set(self.pools) - names)
        if unknown:
            raise UsageError(
                f"ElasticPolicy.pools names {', '.join(map(repr, unknown))}, which the plan "
                f"does not have; its pools are {', '.join(layout.pool_names)}"
            )
        for pool in layout.pools:
            unlimited = [s for s in pool.slices if s.compute is None or s.memory_mib is None]
            if pool.kind != "mps" or unlimited:
                raise UsageError(
                    f"elastic mode moves MPS capacity between pools, so pool {pool.name!r} needs "
                    "`mps: {compute: N, memory: SIZE}` (it is "
                    f"{pool.kind}{' without a limit' if unlimited else ''}); give it both limits, "
                    "or run this plan without elastic="
                )
            if pool.oversubscribe:
                raise UsageError(
                    f"pool {pool.name!r} allows oversubscription, so its slices have no capacity "
                    "to keep; remove `oversubscribe: true` or run without elastic="
                )


# -- what the controller sees, and what it decides (pure) ---------------------------------


@dataclass(frozen=True)
class SliceView:
    """One slice as the controller sees it.

    Attributes:
        id: the slice's id.
        pool: its pool.
        node: the node id it runs on.
        device: its device UUID.
        size: what it takes of the device.
        state: ``starting`` (start sent, not yet reported), ``serving``, ``retiring`` (held,
            finishing its tasks) or ``stopping`` (stop sent, its processes not yet gone).
        tasks: tasks its manager holds at the interchange (0 when not connected).
        idle_s: seconds its manager has had no task; None when busy or not connected.
    """

    id: str
    pool: str
    node: str
    device: str
    size: SliceSize
    state: str
    tasks: int = 0
    idle_s: float | None = None

    @property
    def active(self) -> bool:
        """Starting or serving: counts toward its pool's size."""
        return self.state in ("starting", "serving")

    @property
    def leaving(self) -> bool:
        """Retiring or stopping: still holds its capacity, but no longer its pool's."""
        return self.state in ("retiring", "stopping")


@dataclass(frozen=True)
class PoolView:
    """One pool's load.

    Attributes:
        name: the pool.
        outstanding: tasks submitted to its executor and not yet done.
        queued: of those, tasks no manager holds (waiting for a worker).
        backlog_s: seconds ``queued`` has been above 0 without a break (0 when it is 0).
        since_grow_s: seconds since the pool last grew (None: never).
        since_shrink_s: seconds since the pool last gave a slice away (None: never).
    """

    name: str
    outstanding: int = 0
    queued: int = 0
    backlog_s: float = 0.0
    since_grow_s: float | None = None
    since_shrink_s: float | None = None


@dataclass(frozen=True)
class DeviceView:
    """One device of one node, and the size of each pool's slice on it.

    Attributes:
        node: the node id.
        capacity: what the device offers.
        pools: pool -> the size of its slice there (pools the node can run there).
        gpu_index: the GPU's index on its node (for people).
    """

    node: str
    capacity: DeviceCapacity
    pools: Mapping[str, SliceSize]
    gpu_index: int = 0

    @property
    def device(self) -> str:
        """The device's UUID."""
        return self.capacity.device


@dataclass(frozen=True)
class Move:
    """One thing the controller does.

    Attributes:
        kind: ``start`` (a new slice of ``pool`` on ``device``) or ``retire`` (hold ``slice``,
            stop it once idle).
        pool: the pool that grows (start) or gives (retire).
        node: the node id.
        device: the device.
        reason: why, in words.
        slice: the slice to retire.
        receiver: for a retire, the pool the capacity goes to.
    """

    kind: str
    pool: str
    node: str
    device: str
    reason: str
    slice: str | None = None
    receiver: str | None = None


def _demand(policy: ElasticPolicy, pool: PoolView, slices: Sequence[SliceView]) -> int:
    """How many slices the pool can keep busy now (see the module's policy, step 1)."""
    limits = policy.limits(pool.name)
    mine = [s for s in slices if s.pool == pool.name and s.active]
    recent = sum(
        1
        for s in mine
        if s.state == "starting"
        or s.tasks > 0
        or s.idle_s is None
        or s.idle_s < policy.idle_after_s
    )
    want = recent
    if pool.queued > 0 and pool.backlog_s >= policy.grow_after_s:
        want = max(want, pool.outstanding)
    return int(min(max(want, limits.min), limits.ceiling))


def targets(
    policy: ElasticPolicy,
    pools: Sequence[PoolView],
    devices: Sequence[DeviceView],
    slices: Sequence[SliceView],
) -> dict[str, int]:
    """Each pool's target number of slices (the module's policy, steps 1 and 2).

    Weighted dominant-resource fairness over the devices' total compute and memory; a pool
    that cannot run anywhere gets 0.
    """
    total_compute = sum(d.capacity.compute for d in devices)
    total_memory = sum(d.capacity.memory_mib for d in devices)
    size: dict[str, SliceSize] = {}
    for d in devices:
        for name, s in d.pools.items():
            size.setdefault(name, s)
    demand = {p.name: _demand(policy, p, slices) if p.name in size else 0 for p in pools}
    alloc = dict.fromkeys(demand, 0)
    used_c = used_m = 0

    def fits(name: str) -> bool:
        s = size[name]
        return used_c + s.compute <= total_compute and used_m + s.memory_mib <= total_memory

    def share(name: str) -> float:
        s = size[name]
        dominant = max(
            alloc[name] * s.compute / max(total_compute, 1),
            alloc[name] * s.memory_mib / max(total_memory, 1),
        )
        return dominant / policy.limits(name).weight

    # Minimums first, then one slice at a time to the pool furthest below its fair share.
    for name, wanted in demand.items():
        while alloc[name] < min(policy.limits(name).min, wanted) and fits(name):
            alloc[name] += 1
            used_c += size[name].compute
            used_m += size[name].memory_mib
    while True:
        hungry = [n for n in demand if alloc[n] < demand[n] and fits(n)]
        if not hungry:
            return alloc
        queued = {p.name: p.queued for p in pools}
        pick = min(hungry, key=lambda n: (share(n), -queued.get(n, 0), n))
        alloc[pick] += 1
        used_c += size[pick].compute
        used_m += size[pick].memory_mib


def _victim_order(s: SliceView) -> tuple[int, float]:
    # Idle ones first, longest idle first; then busy ones with the fewest tasks.
    if s.tasks == 0 and s.idle_s is not None:
        return (0, -s.idle_s)
    return (1, float(s.tasks))


def _without(items: Sequence[SliceSize], removed: Iterable[SliceSize]) -> list[SliceSize]:
    left = list(items)
    for r in removed:
        left.remove(r)
    return left


class _Room:
    """What one device holds now, and what it will hold once its leaving slices are gone.

    ``now``: every slice counted (active, leaving, and starts decided in this step).
    ``later``: what stays (active slices, starts decided, slices waiting for room).
    A start needs room in both: now, because the leaving slices still run; later, so it does
    not take room promised to a slice that waits for it.
    """

    def __init__(self, device: DeviceView, slices: Sequence[SliceView]) -> None:
        self.device = device
        here = [s for s in slices if s.device == device.device and s.node == device.node]
        self.now = [s.size for s in here]
        self.later = [s.size for s in here if s.active]

    def fits_now(self, need: SliceSize) -> bool:
        cap = self.device.capacity
        return (
            overflow(cap, [*self.now, need]) is None and overflow(cap, [*self.later, need]) is None
        )

    def fits_later(self, need: SliceSize) -> bool:
        return overflow(self.device.capacity, [*self.later, need]) is None


def decide(
    policy: ElasticPolicy,
    pools: Sequence[PoolView],
    devices: Sequence[DeviceView],
    slices: Sequence[SliceView],
) -> tuple[dict[str, int], list[Move]]:
    """What to start and what to retire now (the module's policy, steps 3 and 4).

    Every ``start`` is on a device where the slices still counted (including those retiring
    or stopping) leave room for it; a slice that needs room held by leaving slices waits for
    them to be gone, and that room is not given to another start meanwhile.

    Returns:
        The targets and the moves, in the order to make them.
    """
    goal = targets(policy, pools, devices, slices)
    by_name = {p.name: p for p in pools}
    active = {p.name: sum(1 for s in slices if s.pool == p.name and s.active) for p in pools}
    excess = {n: max(0, active[n] - goal[n]) for n in goal}
    rooms = {(d.node, d.device): _Room(d, slices) for d in devices}
    taken: set[str] = set()
    moves: list[Move] = []

    def may_grow(view: PoolView) -> bool:
        if active[view.name] < policy.limits(view.name).min:
            return True
        if view.queued == 0 or view.backlog_s < policy.grow_after_s:
            return False
        shrunk = view.since_shrink_s is not None and view.since_shrink_s < policy.cooldown_s
        return not shrunk or active[view.name] == 0

    def may_take_busy(pool: str) -> bool:
        grew = by_name[pool].since_grow_s if pool in by_name else None
        return grew is None or grew >= policy.cooldown_s

    largest = {
        p.name: max((d.pools[p.name].compute for d in devices if p.name in d.pools), default=0)
        for p in pools
    }
    # Largest slices first (first-fit decreasing, the classic packing rule): small slices fit
    # in the gaps big ones leave, not the other way round.
    growers = sorted(
        (p for p in pools if goal[p.name] > active[p.name] and may_grow(p)),
        key=lambda p: (-largest[p.name], -(goal[p.name] - active[p.name]), -p.queued, p.name),
    )
    for view in growers:
        name = view.name
        why = (
            f"{name} has {view.queued} task(s) waiting for {view.backlog_s:.1f}s"
            if view.queued
            else f"{name} is below its minimum of {policy.limits(name).min}"
        )
        homes = [rooms[(d.node, d.device)] for d in devices if name in d.pools]
        for _ in range(goal[name] - active[name]):
            mine = {
                (r.device.node, r.device.device): sum(
                    1
                    for s in slices
                    if s.pool == name and s.device == r.device.device and s.node == r.device.node
                )
                for r in homes
            }
            free = [r for r in homes if r.fits_now(r.device.pools[name])]
            if free:
                best = min(
                    free,
                    key=lambda r: (
                        mine[(r.device.node, r.device.device)],
                        sum(x.compute for x in r.now),
                        r.device.node,
                        r.device.device,
                    ),
                )
                need = best.device.pools[name]
                best.now.append(need)
                best.later.append(need)
                moves.append(
                    Move("start", name, best.device.node, best.device.device, f"grow: {why}")
                )
                continue
            waiting = next((r for r in homes if r.fits_later(r.device.pools[name])), None)
            if waiting is not None:
                # Leaving slices will free the room; it is promised to this slice.
                waiting.later.append(waiting.device.pools[name])
                continue
            found = _victims(policy, name, homes, slices, excess, taken, may_take_busy)
            if found is None:
                break
            room, victims = found
            need = room.device.pools[name]
            room.later = [*_without(room.later, [v.size for v in victims]), need]
            for victim in victims:
                taken.add(victim.id)
                excess[victim.pool] -= 1
                state = (
                    f"idle {victim.idle_s:.1f}s"
                    if victim.tasks == 0 and victim.idle_s is not None
                    else f"busy with {victim.tasks} task(s), finished first"
                )
                moves.append(
                    Move(
                        "retire",
                        victim.pool,
                        room.device.node,
                        room.device.device,
                        f"grow: {why}; {victim.pool} has more than its share "
                        f"({active[victim.pool]} slices, target {goal[victim.pool]}): "
                        f"slice {victim.id} {state}",
                        slice=victim.id,
                        receiver=name,
                    )
                )
    return goal, moves


def _victims(
    policy: ElasticPolicy,
    receiver: str,
    homes: Sequence[_Room],
    slices: Sequence[SliceView],
    excess: Mapping[str, int],
    taken: set[str],
    may_take_busy: Callable[[str], bool],
) -> tuple[_Room, list[SliceView]] | None:
    """The device where retiring the fewest slices of pools above their target makes room."""
    best: tuple[tuple[int, int], _Room, list[SliceView]] | None = None
    for room in homes:
        d = room.device
        need = d.pools[receiver]
        staying = list(room.later)
        budget = dict(excess)
        chosen: list[SliceView] = []
        candidates = sorted(
            (
                s
                for s in slices
                if s.device == d.device
                and s.node == d.node
                and s.state == "serving"
                and s.pool != receiver
                and s.id not in taken
            ),
            key=_victim_order,
        )
        for s in candidates:
            if overflow(d.capacity, [*staying, need]) is None:
                break
            idle = s.tasks == 0 and s.idle_s is not None and s.idle_s >= policy.idle_after_s
            if budget.get(s.pool, 0) <= 0 or not (idle or may_take_busy(s.pool)):
                continue
            budget[s.pool] -= 1
            chosen.append(s)
            staying = _without(staying, [s.size])
        if not chosen or overflow(d.capacity, [*staying, need]) is not None:
            continue
        score = (len(chosen), sum(1 for s in chosen if s.tasks > 0))
        if best is None or score < best[0]:
            best = (score, room, chosen)
    return None if best is None else (best[1], best[2])


# -- the controller -------------------------------------------------------------------------


@dataclass
class _Node:
    id: str
    name: str
    link: NodeLink
    devices: dict[str, DeviceView]
    connected: bool = True


@dataclass
class _Tracked:
    """The controller's record of one slice."""

    id: str
    pool: str
    node: str
    device: str
    size: SliceSize
    state: str
    uids: list[str] = field(default_factory=list)
    since: float = field(default_factory=time.monotonic)
    held: set[str] = field(default_factory=set)
    #: When the controller decided to start it (None for the plan's own slices).
    decided: float | None = None
    #: Whether its current manager has connected to the interchange.
    connected: bool = False

    @property
    def uid(self) -> str | None:
        return self.uids[-1] if self.uids else None


class ElasticController:
    """Watches every pool's backlog and moves capacity between pools (see the module).

    Created by :func:`gpuslice.parsl_config` for an elastic configuration and owned by its
    node group; the hub starts when the first node is composed, the thread when every pool's
    executor has started, and both stop with the DataFlowKernel's cleanup.

    Args:
        policy: the limits and timings.
        group: the node group id.
    """

    def __init__(self, policy: ElasticPolicy, group: str) -> None:
        self.policy = policy
        self.group = group
        self.executors: dict[str, SliceExecutor] = {}
        self.hub = Hub(group, self._on_hello, self._on_message, self._on_closed)
        self.nodes: dict[str, _Node] = {}
        self.slices: dict[str, _Tracked] = {}
        self.lock = threading.RLock()
        self.log: list[dict[str, Any]] = []
        self._log_path: Path | None = Path(policy.log) if policy.log else None
        self._started_at = time.monotonic()
        self._epoch = time.time()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._backlog_since: dict[str, float] = {}
        self._last_grow: dict[str, float] = {}
        self._last_shrink: dict[str, float] = {}
        self._counter = 0
        self._errors = 0
        self._start_latencies: list[float] = []

    # -- lifecycle -----------------------------------------------------------------------

    def hub_address(self) -> HubAddress:
        """Start the hub if needed; where nodes connect."""
        return self.hub.start()

    def start(self, executors: Mapping[str, SliceExecutor]) -> None:
        """Start the controller thread (once every pool's executor has started)."""
        with self.lock:
            if self._thread is not None or self._stop.is_set():
                return
            self.executors = dict(executors)
            if self._log_path is None:
                run_dir = next((getattr(e, "run_dir", None) for e in executors.values()), None)
                if run_dir:
                    self._log_path = Path(run_dir) / LOG_NAME
            self._started_at = time.monotonic()
            self._epoch = time.time()
            self._record("controller", reason="started", policy=_policy_dict(self.policy))
            self._thread = threading.Thread(target=self._run, name="gpuslice-elastic", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop deciding and close the hub (idempotent; the nodes stop with their blocks)."""
        if self._stop.is_set():
            return
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        with self.lock:
            if self._thread is not None:
                self._record("controller", reason="stopped")
        self.hub.stop()

    @property
    def running(self) -> bool:
        """True while the controller thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.policy.period_s):
            try:
                self.step()
            except Exception:  # a failed look must not end elasticity for the whole run
                self._errors += 1
                logger.exception("gpuslice elastic controller: a step failed")

    # -- node messages -------------------------------------------------------------------

    def _on_hello(self, link: NodeLink) -> None:
        hello = link.hello
        templates: dict[str, dict[str, Any]] = hello.get("templates", {})
        devices: dict[str, DeviceView] = {}
        for entry in hello.get("devices", []):
            device = str(entry["device"])
            capacity = DeviceCapacity(
                device,
                int(entry["memory_mib"]),
                int(entry.get("compute", 100)),
                int(entry.get("clients", DeviceCapacity(device, 0).clients)),
            )
            sizes = {
                pool: SliceSize(int(per[device]["compute"]), int(per[device]["memory_mib"]))
                for pool, per in templates.items()
                if device in per
            }
            devices[device] = DeviceView(
                link.node_id, capacity, sizes, int(entry.get("gpu_index", 0))
            )
        with self.lock:
            self.nodes[link.node_id] = _Node(
                link.node_id, str(hello.get("node", link.peer)), link, devices
            )
            # The plan's slices, which the node starts right after its welcome.
            for entry in hello.get("initial", []):
                pool, device = str(entry["pool"]), str(entry["device"])
                slice_id = initial_slice_id(pool, link.node_id, int(entry["rank"]))
                self.slices[slice_id] = _Tracked(
                    slice_id, pool, link.node_id, device, devices[device].pools[pool], "starting"
                )
            self._record(
                "node",
                node=link.node_id,
                reason=f"node {hello.get('node')} (node-run {hello.get('pid')}) connected "
                f"from {link.peer} with {len(devices)} device(s)",
            )

    def _on_message(self, link: NodeLink, message: dict[str, Any]) -> None:
        op = message.get("op")
        slice_id = str(message.get("slice", ""))
        with self.lock:
            tracked = self.slices.get(slice_id)
            if op == "started":
                before = self.counts()
                if tracked is None:
                    tracked = _Tracked(
                        slice_id,
                        str(message["pool"]),
                        link.node_id,
                        str(message["device"]),
                        SliceSize(int(message["compute"]), int(message["memory_mib"])),
                        "serving",
                    )
                    self.slices[slice_id] = tracked
                elif tracked.state == "starting":
                    tracked.state, tracked.since = "serving", time.monotonic()
                tracked.uids.append(str(message["uid"]))
                what = "restarted" if message.get("replaces") else "started"
                self._record_slice(
                    tracked,
                    what,
                    f"node-run reports slice {slice_id} {what} as manager {tracked.uid}",
                    before=before,
                    after=self.counts(),
                )
            elif op in ("exited", "refused") and tracked is not None:
                before = self.counts()
                del self.slices[slice_id]
                reason = (
                    f"refused by its node: {message.get('reason')}"
                    if op == "refused"
                    else f"every process of its worker pool has exited "
                    f"({message.get('reason') or 'stopped'}); its capacity is free"
                )
                event = "gone" if op == "exited" else "refused"
                self._record_slice(tracked, event, reason, before=before, after=self.counts())

    def _on_closed(self, link: NodeLink) -> None:
        with self.lock:
            node = self.nodes.get(link.node_id)
            if node is not None:
                node.connected = False
            self._record(
                "node",
                node=link.node_id,
                reason=f"node {node.name if node else link.peer} disconnected; its slices are "
                "no longer resized",
            )

    # -- one look --------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """Slices per pool: ``serving`` (taking tasks or starting) and ``held`` (all counted)."""
        pools = list(self.executors) or sorted({s.pool for s in self.slices.values()})
        serving = dict.fromkeys(pools, 0)
        held = dict.fromkeys(pools, 0)
        for s in self.slices.values():
            held[s.pool] = held.get(s.pool, 0) + 1
            if s.state in ("starting", "serving"):
                serving[s.pool] = serving.get(s.pool, 0) + 1
        return {"serving": serving, "holding_capacity": held}

    def _observe(self) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
        outstanding: dict[str, int] = {}
        managers: dict[str, dict[str, Any]] = {}
        for pool, executor in self.executors.items():
            outstanding[pool] = int(executor.outstanding())
            for m in executor.connected_managers():
                managers[str(m["manager"])] = {**m, "pool": pool}
        return outstanding, managers

    def step(self) -> list[Move]:
        """Look at every pool once, decide and act; returns the moves made."""
        outstanding, managers = self._observe()
        now = time.monotonic()
        with self.lock:
            self._note_connections(managers, now)
            self._advance_retiring(managers, now)
            pools = self._pool_views(outstanding, managers, now)
            views = self._slice_views(managers)
            devices = [d for n in self.nodes.values() if n.connected for d in n.devices.values()]
            goal, moves = decide(self.policy, pools, devices, views)
            before = self.counts()
            for move in moves:
                self._act(move, managers, now)
            if moves:
                self._record(
                    "resize",
                    reason="; ".join(dict.fromkeys(m.reason for m in moves)),
                    moves=[{k: v for k, v in m.__dict__.items() if v is not None} for m in moves],
                    targets=goal,
                    load={
                        p.name: {"outstanding": p.outstanding, "queued": p.queued} for p in pools
                    },
                    before=before,
                    after=self.counts(),
                )
            return moves

    def _pool_views(
        self, outstanding: Mapping[str, int], managers: Mapping[str, Mapping[str, Any]], now: float
    ) -> list[PoolView]:
        views = []
        for pool in self.executors:
            held = sum(int(m["tasks"]) for m in managers.values() if m["pool"] == pool)
            queued = max(0, outstanding.get(pool, 0) - held)
            if queued > 0:
                self._backlog_since.setdefault(pool, now)
            else:
                self._backlog_since.pop(pool, None)
            since = self._backlog_since.get(pool)
            grow = self._last_grow.get(pool)
            shrink = self._last_shrink.get(pool)
            views.append(
                PoolView(
                    pool,
                    outstanding.get(pool, 0),
                    queued,
                    0.0 if since is None else now - since,
                    None if grow is None else now - grow,
                    None if shrink is None else now - shrink,
                )
            )
        return views

    def _note_connections(self, managers: Mapping[str, Mapping[str, Any]], now: float) -> None:
        """Log each slice the controller started once its manager connects (its start-up time)."""
        for s in self.slices.values():
            if s.connected or s.uid is None or s.uid not in managers:
                continue
            s.connected = True
            if s.decided is None:
                continue
            latency = now - s.decided
            self._start_latencies.append(latency)
            self._record_slice(
                s,
                "connected",
                f"its manager connected to the interchange {latency:.1f}s after the start was "
                "decided",
                latency_s=round(latency, 3),
            )

    def _slice_views(self, managers: Mapping[str, Mapping[str, Any]]) -> list[SliceView]:
        views = []
        for s in self.slices.values():
            node = self.nodes.get(s.node)
            if node is None or not node.connected:
                continue
            found = managers.get(s.uid or "")
            tasks = int(found["tasks"]) if found else 0
            idle = None
            if found is not None and tasks == 0:
                idle = float(found["idle_duration"])
            views.append(SliceView(s.id, s.pool, s.node, s.device, s.size, s.state, tasks, idle))
        return views

    def _act(self, move: Move, managers: Mapping[str, Mapping[str, Any]], now: float) -> None:
        node = self.nodes[move.node]
        if move.kind == "start":
            self._counter += 1
            slice_id = f"{move.pool}.{move.node}.e{self._counter}"
            size = node.devices[move.device].pools[move.pool]
            self.slices[slice_id] = _Tracked(
                slice_id, move.pool, move.node, move.device, size, "starting", decided=now
            )
            self._last_grow[move.pool] = now
            if not node.link.send(
                {"op": "start", "slice": slice_id, "pool": move.pool, "device": move.device}
            ):
                del self.slices[slice_id]
            return
        assert move.slice is not None
        tracked = self.slices[move.slice]
        tracked.state, tracked.since = "retiring", now
        self._last_shrink[move.pool] = now
        self._hold(tracked, managers)

    def _hold(self, tracked: _Tracked, managers: Mapping[str, Mapping[str, Any]]) -> None:
        uid = tracked.uid
        if uid is None or uid in tracked.held or uid not in managers:
            return
        executor = self.executors[tracked.pool]
        # Parsl's own scale_in holds managers this way before it cancels their blocks.
        executor._hold_manager(uid)
        tracked.held.add(uid)

    def _advance_retiring(self, managers: Mapping[str, Mapping[str, Any]], now: float) -> None:
        """Hold retiring slices' managers; stop those with no task left."""
        for tracked in list(self.slices.values()):
            if tracked.state != "retiring":
                continue
            self._hold(tracked, managers)
            uid = tracked.uid
            found = managers.get(uid or "")
            if found is None:
                ready = now - tracked.since > self.policy.register_timeout_s
                why = "its manager never connected to the interchange"
            else:
                ready = uid in tracked.held and not found["active"] and int(found["tasks"]) == 0
                why = "its manager is held and has finished its tasks"
            if not ready:
                continue
            node = self.nodes.get(tracked.node)
            if node is None or not node.connected:
                continue
            tracked.state, tracked.since = "stopping", now
            node.link.send({"op": "stop", "slice": tracked.id})
            counts = self.counts()
            self._record_slice(
                tracked, "stop", f"asked node-run to stop it: {why}", before=counts, after=counts
            )

    # -- the log ---------------------------------------------------------------------------

    def _record_slice(self, tracked: _Tracked, event: str, reason: str, **extra: Any) -> None:
        """Log one slice's event with where the slice is (pool, node, device, manager)."""
        self._record(
            "slice",
            event=event,
            slice=tracked.id,
            pool=tracked.pool,
            node=tracked.node,
            device=tracked.device,
            uid=tracked.uid,
            reason=reason,
            **extra,
        )

    def _record(self, kind: str, **fields: Any) -> None:
        entry = {
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "t": round(time.monotonic() - self._started_at, 3),
            "kind": kind,
            **fields,
        }
        self.log.append(entry)
        logger.info("gpuslice elastic: %s", json.dumps(entry, default=str))
        if self._log_path is not None:
            try:
                with self._log_path.open("a") as out:
                    out.write(json.dumps(entry, default=str) + "\n")
            except OSError as err:
                logger.warning("gpuslice elastic: cannot write %s: %s", self._log_path, err)
                self._log_path = None

    def snapshot(self) -> list[dict[str, Any]]:
        """Every slice the controller counts now: id, pool, node, device, state, manager id."""
        with self.lock:
            return [
                {
                    "slice": s.id,
                    "pool": s.pool,
                    "node": s.node,
                    "device": s.device,
                    "state": s.state,
                    "uid": s.uid,
                    "compute": s.size.compute,
                    "memory_mib": s.size.memory_mib,
                }
                for s in self.slices.values()
            ]

    def decisions(self) -> list[dict[str, Any]]:
        """The decision log so far: every resize, slice start and exit, with reasons."""
        with self.lock:
            return [dict(e) for e in self.log]

    def summary(self) -> dict[str, Any]:
        """Counts of resizes, slices started and stopped, and the pools' slices now."""
        with self.lock:
            events = [e.get("event") for e in self.log if e["kind"] == "slice"]
            return {
                "resizes": sum(1 for e in self.log if e["kind"] == "resize"),
                "slices_started": events.count("started"),
                "slices_restarted": events.count("restarted"),
                "slices_gone": events.count("gone"),
                "starts_refused": events.count("refused"),
                "start_latency_s": _stats(self._start_latencies),
                "step_errors": self._errors,
                "now": self.counts(),
            }


def _stats(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "min": round(ordered[0], 3),
        "median": round(ordered[len(ordered) // 2], 3),
        "max": round(ordered[-1], 3),
    }


def _policy_dict(policy: ElasticPolicy) -> dict[str, Any]:
    return {
        "pools": {
            name: {"min": p.min, "max": p.max, "weight": p.weight}
            for name, p in policy.pools.items()
        },
        "period_s": policy.period_s,
        "grow_after_s": policy.grow_after_s,
        "idle_after_s": policy.idle_after_s,
        "cooldown_s": policy.cooldown_s,
    }


def elastic_controller(config_or_dfk: Any) -> ElasticController | None:
    """The elastic controller of a loaded configuration (a ``parsl.Config`` or a DFK), if any.

    Example::

        config = gpuslice.parsl_config(plan, elastic=ElasticPolicy())
        parsl.load(config)
        ...
        print(elastic_controller(config).decisions())
    """
    executors = getattr(config_or_dfk, "executors", [])
    if isinstance(executors, Mapping):
        executors = list(executors.values())
    for executor in executors:
        group = getattr(getattr(executor, "provider", None), "group", None)
        controller = getattr(group, "elastic", None)
        if isinstance(controller, ElasticController):
            return controller
    return None


def with_policy(policy: ElasticPolicy, **changes: Any) -> ElasticPolicy:
    """A copy of ``policy`` with some fields changed."""
    return replace(policy, **changes)
