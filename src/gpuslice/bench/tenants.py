"""Mixed tenants on one GPU: a latency-bound inference function beside a heavy one.

Both tenants send calls as Poisson streams at fixed rates (the same seeded schedule for every
arrangement), as a FaaS endpoint receives them; each call is timed from submission to result
(queueing, Parsl and the slice) and inside its slice. An arrangement is a plan with one pool
per tenant. The comparison (``benchmarks/rightsize_tenants.py``) runs, in one run:

- ``timeshare``: each tenant's workers time-share the GPU (no MPS);
- ``mps-unlimited``: the same workers as MPS clients without limits;
- ``equal``: the same number of MPS slices, all of equal size;
- ``right-sized``: the plan ``plan suggest`` writes from the tenants' profiles and shares.

Limits matter here: without them the heavy tenant's kernels take the SMs (MPS) or the device's
time (time-sharing) the inference kernels need, and the inference p95 grows; equal slices
protect the inference calls but starve the heavy tenant.
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
    """One tenant: a function called as a Poisson stream.

    Attributes:
        name: short name, also its pool's name in the baseline arrangements.
        function: the function (importable by name).
        rate_per_s: mean calls per second.
        p95_bound_ms: its latency bound, if any.
    """

    name: str
    function: Callable[..., Any]
    rate_per_s: float
    p95_bound_ms: float | None = None


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
        tasks_per_s: completed calls per second of the run.
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


def arrivals(
    tenants: Sequence[Tenant], duration_s: float, seed: int = 11
) -> list[tuple[float, str]]:
    """A seeded schedule of (seconds from start, tenant) for Poisson streams over ``duration_s``."""
    rng = random.Random(seed)
    schedule: list[tuple[float, str]] = []
    for tenant in tenants:
        t = rng.expovariate(tenant.rate_per_s)
        while t < duration_s:
            schedule.append((t, tenant.name))
            t += rng.expovariate(tenant.rate_per_s)
    return sorted(schedule)


def baseline_setups(counts: dict[str, int], memory_mib: int, gpu: int = 0) -> list[Setup]:
    """Time-sharing, MPS without limits and equal slices, with ``counts`` workers per tenant."""
    total = sum(counts.values())
    equal = {"compute": max(1, 100 // total), "memory": f"{memory_mib // total}MiB"}
    routes = {name: name for name in counts}
    return [
        Setup(
            "timeshare",
            "time-sharing (no MPS)",
            {
                "version": 1,
                "gpus": [gpu],
                "pools": {n: {"share": {}, "per_gpu": k} for n, k in counts.items()},
            },
            routes,
        ),
        Setup(
            "mps-unlimited",
            "MPS without limits",
            {
                "version": 1,
                "gpus": [gpu],
                "oversubscribe": True,
                "pools": {n: {"mps": {}, "per_gpu": k} for n, k in counts.items()},
            },
            routes,
        ),
        Setup(
            "equal",
            f"equal slices ({total} x {equal['compute']}%)",
            {
                "version": 1,
                "gpus": [gpu],
                "pools": {n: {"mps": dict(equal), "per_gpu": k} for n, k in counts.items()},
            },
            routes,
        ),
    ]


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
        for t in tenants:
            slots = len(layout.pool(setup.routes[t.name]).slices)
            warm += [apps[t.name](t.function, [], {}) for _ in range(2 * slots)]
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
            tasks_per_s=len(ok) / wall if wall > 0 else 0.0,
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
    """Inference p95 and throughput per arrangement, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in runs]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.8))
    left.bar(names, [r.tenants[inference].p95_ms for r in runs], color="#d1605e")
    left.set_ylabel("ms, submission to result")
    left.set_title(f"{inference}: p95 latency (lower is better)")
    right.bar(
        names, [r.tenants[inference].tasks_per_s for r in runs], label=inference, color="#2f7ab9"
    )
    right.bar(
        names,
        [r.tenants[heavy].tasks_per_s for r in runs],
        bottom=[r.tenants[inference].tasks_per_s for r in runs],
        label=heavy,
        color="#e39c3a",
    )
    right.set_ylabel("completed tasks per second")
    right.set_title("throughput (higher is better)")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=20)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
