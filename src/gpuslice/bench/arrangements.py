"""The arrangements the benchmark compares, each a plan plus a routing of tasks to pools.

(a) ``one-per-gpu``: one worker per GPU, today's FaaS default.
(b) ``timeshare-N``: N workers per GPU, time-shared (Parsl's own oversubscription, no MPS).
(c) ``mps-unlimited-N``: N workers per GPU under MPS with no limits (Parsl's MPS recipe).
(d) ``gpuslice-N``: N MPS slices per GPU, each with 100/N % of the SMs and 1/N of the memory
    the planner leaves after its per-context reserve.
(e) ``batched-N``: one worker per GPU running N tasks' work as one batched call (the ceiling).
``suggested[-MIX]``: the plan ``gpuslice plan suggest`` writes for the mix from stored profiles
(:mod:`gpuslice.bench.suggested`).
"""

from __future__ import annotations

from collections.abc import Callable
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


#: Arrangements named without a count: name -> maker(memory_mib of the smallest GPU).
SINGLE: dict[str, Callable[[int], Arrangement]] = {
    "one-per-gpu": lambda _memory_mib: one_per_gpu(),
}

#: Arrangements named ``<family>-N``: family -> maker(N, memory_mib of the smallest GPU).
COUNTED: dict[str, Callable[[int, int], Arrangement]] = {
    "timeshare": lambda n, _memory_mib: timeshare(n),
    "mps-unlimited": lambda n, _memory_mib: mps_unlimited(n),
    "gpuslice": gpuslice_slices,
    "batched": lambda n, _memory_mib: batched(n),
}


def by_name(name: str, memory_mib: int) -> Arrangement:
    """An arrangement from its name, e.g. ``gpuslice-4`` or ``one-per-gpu``.

    Names are looked up in :data:`SINGLE`, then as ``<family>-N`` in :data:`COUNTED`; adding
    an arrangement is adding an entry to one of them.

    Raises:
        ValueError: the name is not an arrangement.
    """
    if name in SINGLE:
        return SINGLE[name](memory_mib)
    family, _, count = name.rpartition("-")
    if family in COUNTED and count.isdigit() and int(count) >= 1:
        return COUNTED[family](int(count), memory_mib)
    if name == "suggested" or name.startswith("suggested-"):
        from gpuslice.bench.suggested import suggested  # right-sizing: plan suggest's plan

        return suggested(name, memory_mib)
    choices = ", ".join([*SINGLE, *(f"{family}-N" for family in COUNTED), "suggested[-MIX]"])
    raise ValueError(f"unknown arrangement {name!r}; use one of {choices}")
