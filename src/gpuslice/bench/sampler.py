"""Check, from the workers themselves, that the slices on a device never exceed it.

Two independent views, both read from what the workers really run with rather than from the
controller's own books:

- :class:`SliceSampler` looks at every live process on this host every ``period_s`` seconds and
  reads the environment of each slice's worker pool (``/proc/<pid>/environ`` through psutil):
  ``GPUSLICE_SLICE``, ``CUDA_VISIBLE_DEVICES``, ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` and
  ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``. An elastic slice is live while any process carrying its
  ``GPUSLICE_SLICE`` is (its manager, its worker, a worker its crashed manager left behind); in a
  fixed plan's worker pool each worker process is one slice. Each sample sums the live slices
  per device.
- :func:`interval_violations` takes what every task reported from inside its worker (its slice,
  limits and start/end times) and sums, at every instant a task started or ended, the limits of
  the slices running a task on each device.

Both are checked against each device's compute (100%) and memory
(:class:`~gpuslice.parsl.capacity.DeviceCapacity`). Only this host's processes are seen, so the
sampler is for runs on one node (LocalProvider), which is what the benchmark does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from gpuslice.mps import env as mps_env
from gpuslice.parsl.capacity import DeviceCapacity, SliceSize, overflow
from gpuslice.parsl.elastic_node import SLICE_ENV
from gpuslice.parsl.worker import HOLDER_ENV

__all__ = [
    "Sample",
    "SliceSampler",
    "interval_violations",
    "limits_of",
]


def limits_of(environ: Mapping[str, str]) -> SliceSize | None:
    """The compute % and memory cap (MiB) a slice's environment sets, or None without both.

    ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` is read for device ordinal 0 in the ``<n>M``/``<n>G``
    form gpuslice writes (``gpuslice.mps.env.memory_limit``).
    """
    compute = environ.get(mps_env.COMPUTE, "").strip()
    memory = environ.get(mps_env.MEMORY, "").strip()
    if not compute or not memory.startswith("0="):
        return None
    value = memory.split(",", 1)[0][2:]
    unit = value[-1:].upper()
    scale = {"M": 1, "G": 1024}.get(unit)
    if scale is None or not value[:-1].isdigit():
        return None
    return SliceSize(int(float(compute)), int(value[:-1]) * scale)


def _is_pool_mp_manager(proc: psutil.Process) -> bool:
    """Whether a spawned child of a Parsl worker pool is its multiprocessing Manager, no worker.

    Parsl's ``process_worker_pool.py`` starts ``SpawnContext.Manager()`` ("Starts a server
    process") in its constructor, before it spawns any worker; that server is spawned like the
    workers (``spawn_main`` on its command line) and inherits the slice's environment, but runs
    no task. So the oldest spawned child of a worker pool is the Manager's server.
    """
    try:
        parent = proc.parent()
        if parent is None or "process_worker_pool" not in " ".join(parent.cmdline()):
            return False
        spawned = []
        for child in parent.children():
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    spawned.append((child.create_time(), child.pid))
            except (psutil.Error, OSError):
                continue
    except (psutil.Error, OSError):
        return False
    return bool(spawned) and min(spawned)[1] == proc.pid


@dataclass(frozen=True)
class _Live:
    slice: str
    pool: str
    device: str
    size: SliceSize


@dataclass(frozen=True)
class Sample:
    """What was live at one instant.

    Attributes:
        t: when (``time.time()``).
        slices: device -> the ids of the slices live on it.
        compute: device -> the sum of their compute percentages.
        memory_mib: device -> the sum of their memory caps.
    """

    t: float
    slices: dict[str, tuple[str, ...]]
    compute: dict[str, int]
    memory_mib: dict[str, int]


@dataclass
class SliceSampler:
    """Samples the slices' worker pools on this host in a thread (see the module's description).

    Use as a context manager around the run.

    Attributes:
        period_s: seconds between samples.
        devices: count only slices on these devices (None: every slice on this host).
        group: count only the worker pools of this configuration (the node group id that
            ``gpuslice node-run`` puts in their ``GPUSLICE_HOLDER``); None: every one. Other
            configurations on the host may use the same device names (an emulated fleet file
            names the same UUIDs for everyone who uses it).
        samples: every sample taken.
        seen: slice id -> (pool, device, size, first seen, last seen).
    """

    period_s: float = 0.2
    devices: frozenset[str] | None = None
    group: str | None = None
    samples: list[Sample] = field(default_factory=list)
    seen: dict[str, dict[str, Any]] = field(default_factory=dict)
    _known: dict[tuple[int, float], _Live | None] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _classify(self, proc: psutil.Process) -> _Live | None:
        try:
            environ = proc.environ()
            cmdline = " ".join(proc.cmdline())
        except (psutil.Error, OSError):
            return None
        size = limits_of(environ)
        device = environ.get(mps_env.VISIBLE)
        pool = environ.get(mps_env.POOL)
        if size is None or not device or not pool:
            return None
        if self.devices is not None and device not in self.devices:
            return None
        if self.group is not None and not environ.get(HOLDER_ENV, "").startswith(
            f"node-run.{self.group}."
        ):
            return None
        slice_id = environ.get(SLICE_ENV)
        if not slice_id:
            # A fixed plan's worker pool serves several slices of a device, one per worker:
            # each worker process (multiprocessing's spawn) is one slice; its manager is not.
            if "spawn_main" not in cmdline or _is_pool_mp_manager(proc):
                return None
            slice_id = f"{pool}.worker-{proc.pid}"
        return _Live(slice_id, pool, device, size)

    def scan(self) -> Sample:
        """Take one sample now (also what the thread does every ``period_s``)."""
        now = time.time()
        live: dict[str, _Live] = {}
        seen: set[tuple[int, float]] = set()
        for proc in psutil.process_iter():
            try:
                key = (proc.pid, proc.create_time())
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            seen.add(key)
            if key not in self._known:
                self._known[key] = self._classify(proc)
            found = self._known[key]
            if found is not None:
                # Any live process of a slice (its manager, a worker, an orphan) keeps it live.
                live[found.slice] = found
        for key in set(self._known) - seen:
            del self._known[key]
        slices: dict[str, list[str]] = {}
        compute: dict[str, int] = {}
        memory: dict[str, int] = {}
        for item in live.values():
            slices.setdefault(item.device, []).append(item.slice)
            compute[item.device] = compute.get(item.device, 0) + item.size.compute
            memory[item.device] = memory.get(item.device, 0) + item.size.memory_mib
            record = self.seen.setdefault(
                item.slice,
                {"pool": item.pool, "device": item.device, "size": item.size, "first": now},
            )
            record["last"] = now
        sample = Sample(now, {d: tuple(sorted(s)) for d, s in slices.items()}, compute, memory)
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.is_set():
            self.scan()
            self._stop.wait(self.period_s)

    def __enter__(self) -> SliceSampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gpuslice-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def violations(self, capacity: Mapping[str, DeviceCapacity]) -> list[str]:
        """Every sample in which a device's live slices exceeded it, described."""
        found = []
        for sample in self.samples:
            for device, ids in sample.slices.items():
                cap = capacity.get(device)
                if cap is None:
                    found.append(f"t={sample.t:.2f}: slices on an unknown device {device}")
                    continue
                sizes = [self.seen[i]["size"] for i in ids]
                problem = overflow(cap, sizes)
                if problem is not None:
                    found.append(f"t={sample.t:.2f}: {', '.join(ids)} {problem}")
        return found

    def peaks(self) -> dict[str, dict[str, int]]:
        """Per device, the largest compute and memory sums and slice count seen in any sample."""
        out: dict[str, dict[str, int]] = {}
        for sample in self.samples:
            for device, ids in sample.slices.items():
                peak = out.setdefault(device, {"compute": 0, "memory_mib": 0, "slices": 0})
                peak["compute"] = max(peak["compute"], sample.compute[device])
                peak["memory_mib"] = max(peak["memory_mib"], sample.memory_mib[device])
                peak["slices"] = max(peak["slices"], len(ids))
        return out

    def timeline(self) -> list[dict[str, Any]]:
        """Per sample: time and live slices per pool (for plots)."""
        rows = []
        for sample in self.samples:
            pools: dict[str, int] = {}
            for ids in sample.slices.values():
                for i in ids:
                    pool = self.seen[i]["pool"]
                    pools[pool] = pools.get(pool, 0) + 1
            rows.append({"t": sample.t, "pools": pools})
        return rows


def interval_violations(
    tasks: Iterable[Mapping[str, Any]], capacity: Mapping[str, DeviceCapacity]
) -> tuple[list[str], int]:
    """Check the slices running a task, per device, at every task start and end.

    Args:
        tasks: what tasks reported from inside their workers: ``slice``, ``device``,
            ``compute``, ``memory_mib``, ``start`` and ``end``.
        capacity: each device's capacity.

    Returns:
        The violations found (empty when none) and the number of instants checked.
    """
    by_device: dict[str, list[Mapping[str, Any]]] = {}
    for task in tasks:
        if task.get("slice"):
            by_device.setdefault(str(task["device"]), []).append(task)
    found: list[str] = []
    checked = 0
    for device, items in by_device.items():
        cap = capacity.get(device, DeviceCapacity(device, 0))
        # A sweep over starts and ends: at each instant, the slices with a task running then
        # (a task running over [start, end)); ends before starts at the same instant.
        events = sorted(
            [(float(t["end"]), 0, t) for t in items] + [(float(t["start"]), 1, t) for t in items],
            key=lambda e: (e[0], e[1]),
        )
        running: dict[str, int] = {}
        sizes: dict[str, SliceSize] = {}
        index = 0
        while index < len(events):
            instant = events[index][0]
            while index < len(events) and events[index][0] == instant:
                _, starts, t = events[index]
                name = str(t["slice"])
                running[name] = running.get(name, 0) + (1 if starts else -1)
                if running[name] == 0:
                    del running[name]
                sizes[name] = SliceSize(int(t["compute"]), int(t["memory_mib"]))
                index += 1
            checked += 1
            problem = overflow(cap, [sizes[n] for n in running])
            if problem is not None:
                found.append(f"t={instant:.3f}: {', '.join(sorted(running))} {problem}")
    return found, checked
