"""Mixed tenants on one GPU: a latency-bound inference function beside a heavy one.

Each tenant's calls follow a seeded schedule, the same for every arrangement: a Poisson
stream (an inference endpoint's requests) or a burst submitted at once (a batch of training
or stencil runs). Each call is timed from submission to result (queueing, Parsl and the
slice) and inside its slice. The comparison (``benchmarks/rightsize_tenants.py``) runs, in one
run and with the same number of workers:

- ``timeshare``, ``mps-unlimited``, ``equal``: one pool of N workers shared by both tenants,
  time-sliced, under MPS without limits, and as N equal MPS slices (what ``gpuslice bench``
  calls ``timeshare-N``, ``mps-unlimited-N``, ``gpuslice-N``);
- ``mps-unlimited-pools``: a pool per tenant, MPS without limits (separates the effect of
  pools from that of limits);
- ``right-sized``: the plan ``plan suggest`` writes from the tenants' profiles and shares.

"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

from gpuslice.hardware.inventory import Inventory
from gpuslice.rightsize.measure import timed_call

__all__ = [
    "Setup",
    "Tenant",
    "TenantRun",
    "TenantStats",
    "arrivals",
    "baseline_setups",
    "markdown_table",
    "plot_runs",
    "run_setup",
]


@dataclass(frozen=True)
class Tenant:
    """One tenant: a function called as a Poisson stream, or as a burst.

    Attributes:
        name: short name, also its pool's name in the per-tenant arrangements.
        function: the function (importable by name).
        rate_per_s: mean calls per second over the run (a burst submits ``rate x duration``
            calls at the start).
        p95_bound_ms: its latency bound, if any.
        burst: submit all its calls at once at the start instead of as a Poisson stream.
    """

    name: str
    function: Callable[..., Any]
    rate_per_s: float
    p95_bound_ms: float | None = None
    burst: bool = False


@dataclass(frozen=True)
class Setup:
    """An arrangement of the tenants: a plan with one pool per tenant.

    Attributes:
        name: short id.
        label: for people.
        plan: the v1 plan mapping.
        routes: tenant name -> pool.
    """

    name: str
    label: str
    plan: dict[str, Any] = field(hash=False)
    routes: dict[str, str] = field(hash=False)


@dataclass(frozen=True)
class TenantStats:
    """What one tenant got under one arrangement.

    Attributes:
        submitted, completed, failed: calls.
        p50_ms, p95_ms: submission to result.
        in_slice_p50_ms, in_slice_p95_ms: the call alone, inside its slice.
        tasks_per_s: completed calls per second, from the start to its last result (for a
            burst, its makespan).
    """

    submitted: int
    completed: int
    failed: int
    p50_ms: float
    p95_ms: float
    in_slice_p50_ms: float
    in_slice_p95_ms: float
    tasks_per_s: float


@dataclass(frozen=True)
class TenantRun:
    """One arrangement's run.

    Attributes:
        name, label: from the :class:`Setup`.
        plan: the plan it ran.
        workers: Parsl workers (slices).
        wall_s: first submission to last result.
        tasks_per_s: all tenants' completed calls per second of ``wall_s``.
        tenants: per-tenant statistics.
        errors: the first few errors.
    """

    name: str
    label: str
    plan: dict[str, Any]
    workers: int
    wall_s: float
    tasks_per_s: float
    tenants: dict[str, TenantStats]
    errors: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TenantRun:
        """From :meth:`to_dict`."""
        tenants = {k: TenantStats(**v) for k, v in data["tenants"].items()}
        return cls(**{**data, "tenants": tenants})


def arrivals(
    tenants: Sequence[Tenant], duration_s: float, seed: int = 11
) -> list[tuple[float, str]]:
    """A seeded schedule of (seconds from start, tenant) over ``duration_s``.

    A Poisson stream per tenant, or for a burst tenant ``round(rate x duration)`` calls at 0.
    """
    rng = random.Random(seed)
    schedule: list[tuple[float, str]] = []
    for tenant in tenants:
        if tenant.burst:
            schedule += [(0.0, tenant.name)] * round(tenant.rate_per_s * duration_s)
            continue
        t = rng.expovariate(tenant.rate_per_s)
        while t < duration_s:
            schedule.append((t, tenant.name))
            t += rng.expovariate(tenant.rate_per_s)
    return sorted(schedule)


def baseline_setups(counts: dict[str, int], memory_mib: int, gpu: int = 0) -> list[Setup]:
    """The arrangements the right-sized plan is compared with, with the same workers in all.

    Args:
        counts: workers per tenant (the right-sized plan's slices); the shared arrangements
            get their sum in one pool.
        memory_mib: the GPU's memory (equal slices get an equal share).
        gpu: the GPU index.
    """
    total = sum(counts.values())
    shared = dict.fromkeys(counts, "gpu")
    from gpuslice.plan.resolve import equal_memory_cap_mib

    cap = equal_memory_cap_mib(memory_mib, total)  # equal shares of what the planner leaves
    equal = {"compute": max(1, 100 // total), "memory": f"{cap}MiB"}

    def one_pool(kind: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"version": 1, "gpus": [gpu], **extra, "pools": {"gpu": {**kind, "per_gpu": total}}}

    return [
        Setup(
            "timeshare", f"{total} workers time-sliced, one pool", one_pool({"share": {}}), shared
        ),
        Setup(
            "mps-unlimited",
            f"{total} MPS workers without limits, one pool",
            one_pool({"mps": {}}, oversubscribe=True),
            shared,
        ),
        Setup(
            "equal",
            f"{total} equal slices of {equal['compute']}%, one pool",
            one_pool({"mps": equal}),
            shared,
        ),
        Setup(
            "mps-unlimited-pools",
            "MPS without limits, a pool per tenant ("
            + ", ".join(f"{n} {k}" for n, k in counts.items())
            + ")",
            {
                "version": 1,
                "gpus": [gpu],
                "oversubscribe": True,
                "pools": {n: {"mps": {}, "per_gpu": k} for n, k in counts.items()},
            },
            {n: n for n in counts},
        ),
    ]


def _rate(done: Sequence[int], start: float, finished: dict[int, float]) -> float:
    """Completed calls per second from the start to the last of them (a burst's makespan)."""
    if not done:
        return 0.0
    span = max(finished[i] for i in done) - start
    return len(done) / span if span > 0 else 0.0


def _quantile(values: Sequence[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[q - 1]


def run_setup(
    setup: Setup,
    tenants: Sequence[Tenant],
    schedule: Sequence[tuple[float, str]],
    inventory: Inventory,
    *,
    fleet: str | None = None,
    run_dir: str | None = None,
) -> TenantRun:
    """Run the schedule under one arrangement through real Parsl and measure each tenant."""
    from parsl.dataflow.dflow import DataFlowKernel

    from gpuslice.mps.control import CONTROL_ENV, EMULATED_PROGRAM
    from gpuslice.mps.daemon import stop
    from gpuslice.parsl.app import gpu_app
    from gpuslice.parsl.config import parsl_config
    from gpuslice.plan.resolve import resolve

    if inventory.emulated:
        os.environ.setdefault(CONTROL_ENV, EMULATED_PROGRAM)
    layout = resolve(json.dumps(setup.plan), inventory)
    owned = run_dir is None
    run_dir = run_dir or tempfile.mkdtemp(prefix="gpuslice-tenants-")
    by_name = {t.name: t for t in tenants}
    dfk = DataFlowKernel(parsl_config(layout, run_dir=run_dir, fleet=None))
    submitted: dict[int, float] = {}
    finished: dict[int, float] = {}
    results: dict[int, dict[str, Any]] = {}
    errors: list[str] = []
    lock = threading.Lock()
    try:
        apps = {
            t.name: gpu_app(pool=setup.routes[t.name], data_flow_kernel=dfk)(timed_call)
            for t in tenants
        }
        warm: list[Future[Any]] = []
        for pool in {setup.routes[t.name] for t in tenants}:
            tenant = next(t for t in tenants if setup.routes[t.name] == pool)
            slots = len(layout.pool(pool).slices)
            warm += [apps[tenant.name](tenant.function, [], {}) for _ in range(2 * slots)]
        for future in warm:
            future.result()

        def record(i: int) -> Callable[[Future[Any]], None]:
            def done(future: Future[Any]) -> None:
                now = time.perf_counter()
                with lock:
                    finished[i] = now
                    try:
                        results[i] = future.result()
                    except Exception as err:  # a failed call is a measurement
                        errors.append(f"{type(err).__name__}: {err}")

            return done

        futures: list[Future[Any]] = []
        start = time.perf_counter()
        for i, (offset, name) in enumerate(schedule):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            submitted[i] = time.perf_counter()
            future = apps[name](by_name[name].function, [], {})
            future.add_done_callback(record(i))
            futures.append(future)
        for future in futures:
            try:
                future.result()
            except Exception:  # recorded by the callback
                continue
        time.sleep(0.05)  # let the last callbacks record
    finally:
        dfk.cleanup()
        for d in layout.daemons:
            stop(d.pipe_dir, timeout=5)
        if owned:
            shutil.rmtree(run_dir, ignore_errors=True)
    wall = max(finished.values()) - start if finished else float("nan")
    stats: dict[str, TenantStats] = {}
    for name in by_name:
        mine = [i for i, (_, n) in enumerate(schedule) if n == name]
        ok = [i for i in mine if i in results]
        latency = sorted((finished[i] - submitted[i]) * 1000.0 for i in ok)
        in_slice = sorted(float(results[i]["ms"]) for i in ok)
        stats[name] = TenantStats(
            submitted=len(mine),
            completed=len(ok),
            failed=len(mine) - len(ok),
            p50_ms=_quantile(latency, 10),
            p95_ms=_quantile(latency, 19),
            in_slice_p50_ms=_quantile(in_slice, 10),
            in_slice_p95_ms=_quantile(in_slice, 19),
            tasks_per_s=_rate(ok, start, finished),
        )
    return TenantRun(
        name=setup.name,
        label=setup.label,
        plan=setup.plan,
        workers=len(layout.slices),
        wall_s=wall,
        tasks_per_s=sum(s.completed for s in stats.values()) / wall if wall > 0 else 0.0,
        tenants=stats,
        errors=errors[:5],
    )


def markdown_table(runs: Sequence[TenantRun], inference: str, heavy: str) -> str:
    """One row per arrangement: inference p50/p95, both tenants' throughput, the total."""
    lines = [
        f"| arrangement | workers | {inference} p50 (ms) | {inference} p95 (ms) | "
        f"{inference} in-slice p95 (ms) | {inference} tasks/s | {heavy} tasks/s | "
        f"{heavy} p95 (ms) | total tasks/s | failed |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        i, h = r.tenants[inference], r.tenants[heavy]
        lines.append(
            f"| {r.label} (`{r.name}`) | {r.workers} | {i.p50_ms:.0f} | {i.p95_ms:.0f} | "
            f"{i.in_slice_p95_ms:.0f} | {i.tasks_per_s:.2f} | {h.tasks_per_s:.2f} | "
            f"{h.p95_ms:.0f} | {r.tasks_per_s:.2f} | {i.failed + h.failed} |"
        )
    return "\n".join(lines) + "\n"


def plot_runs(runs: Sequence[TenantRun], inference: str, heavy: str, path: str, title: str) -> None:
    """The inference tenant's p95 and the heavy tenant's throughput per arrangement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 4.2))
    p95 = [r.tenants[inference].p95_ms for r in runs]
    left.bar(names, p95, color="#d1605e")
    left.set_yscale("log")
    for x, value in enumerate(p95):
        left.annotate(f"{value:.0f}", (x, value), ha="center", va="bottom", fontsize=8)
    left.set_ylabel("ms, submission to result (log scale)")
    left.set_title(f"{inference}: p95 latency (lower is better)", fontsize=10)
    rates = [r.tenants[heavy].tasks_per_s for r in runs]
    right.bar(names, rates, color="#e39c3a")
    for x, value in enumerate(rates):
        right.annotate(f"{value:.2f}", (x, value), ha="center", va="bottom", fontsize=8)
    right.set_ylabel("calls per second until its last result")
    right.set_title(f"{heavy}: throughput of the batch (higher is better)", fontsize=10)
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=25, labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
