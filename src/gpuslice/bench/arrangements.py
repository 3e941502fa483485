"""The arrangements the benchmark compares, each a plan plus a routing of tasks to pools.

(a) ``one-per-gpu``: one worker per GPU, today's FaaS default.
(b) ``timeshare-N``: N workers per GPU, time-shared (Parsl's own oversubscription, no MPS).
(c) ``mps-unlimited-N``: N workers per GPU under MPS with no limits (Parsl's MPS recipe).
(d) ``gpuslice-N``: N MPS slices per GPU, each with 100/N % of the SMs and 1/N of the memory
    the planner leaves after its per-context reserve.
(e) ``batched-N``: one worker per GPU running N tasks' work as one batched call (the ceiling).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

POOL = "gpu"


@dataclass(frozen=True)
class Arrangement:
    """One way of running the task list.

    Attributes:
        name: short id used in tables, JSON and on the command line.
        label: what it is, for people.
        family: ``a``..``e`` as in the issue, for grouping.
        plan: the v1 plan mapping (one pool called ``gpu``).
        batch: tasks merged into one call (1 except for the batched ceiling).
        routes: workload name -> pool; workloads not listed go to the pool ``gpu``.
    """

    name: str
    label: str
    family: str
    plan: dict[str, Any] = field(hash=False)
    batch: int = 1
    routes: dict[str, str] = field(default_factory=dict, hash=False)

    def pool_for(self, workload: str) -> str:
        """The pool a task of ``workload`` is sent to."""
        return self.routes.get(workload, POOL)


def one_per_gpu() -> Arrangement:
    """(a) one worker per GPU."""
    return Arrangement(
        "one-per-gpu",
        "one task per GPU (FaaS default)",
        "a",
        {"version": 1, "pools": {POOL: {"share": {}, "per_gpu": 1}}},
    )


def timeshare(n: int) -> Arrangement:
    """(b) N time-shared workers per GPU."""
    return Arrangement(
        f"timeshare-{n}",
        f"{n} workers/GPU, time-sliced",
        "b",
        {"version": 1, "pools": {POOL: {"share": {}, "per_gpu": n}}},
    )


def mps_unlimited(n: int) -> Arrangement:
    """(c) N MPS clients per GPU without limits."""
    return Arrangement(
        f"mps-unlimited-{n}",
        f"{n} workers/GPU, MPS without limits",
        "c",
        {"version": 1, "oversubscribe": True, "pools": {POOL: {"mps": {}, "per_gpu": n}}},
    )


def gpuslice_slices(n: int, memory_mib: int) -> Arrangement:
    """(d) N equal MPS slices per GPU with compute and memory limits.

    Each cap is an equal share of what the planner leaves after its per-context reserve.
    """
    from gpuslice.plan.resolve import equal_memory_cap_mib

    cap = equal_memory_cap_mib(memory_mib, n)
    spec = {"compute": max(1, 100 // n), "memory": f"{cap}MiB"}
    return Arrangement(
        f"gpuslice-{n}",
        f"gpuslice: {n} slices/GPU, {spec['compute']}% + {cap // 1024}GiB each",
        "d",
        {"version": 1, "pools": {POOL: {"mps": spec, "per_gpu": n}}},
    )


def batched(n: int) -> Arrangement:
    """(e) one worker per GPU, N tasks batched per call."""
    return Arrangement(
        f"batched-{n}",
        f"ceiling: {n} tasks batched in one process",
        "e",
        {"version": 1, "pools": {POOL: {"share": {}, "per_gpu": 1}}},
        batch=n,
    )


def standard(memory_mib: int, counts: tuple[int, ...] = (2, 3, 4, 7)) -> list[Arrangement]:
    """The full comparison of the issue: (a), then (b), (c), (d) for each N, then (e)."""
    chosen = [one_per_gpu()]
    chosen += [timeshare(n) for n in counts]
    chosen += [mps_unlimited(n) for n in counts]
    chosen += [gpuslice_slices(n, memory_mib) for n in counts]
    chosen.append(batched(max(counts)))
    return chosen


def by_name(name: str, memory_mib: int) -> Arrangement:
    """An arrangement from its name, e.g. ``gpuslice-4`` or ``one-per-gpu``.

    Raises:
        ValueError: the name is not an arrangement.
    """
    if name == "one-per-gpu":
        return one_per_gpu()
    family, _, count = name.rpartition("-")
    makers = {"timeshare": timeshare, "mps-unlimited": mps_unlimited, "batched": batched}
    if count.isdigit() and int(count) >= 1:
        if family in makers:
            return makers[family](int(count))
        if family == "gpuslice":
            return gpuslice_slices(int(count), memory_mib)
    raise ValueError(
        f"unknown arrangement {name!r}; use one-per-gpu, timeshare-N, mps-unlimited-N, "
        "gpuslice-N or batched-N"
    )
