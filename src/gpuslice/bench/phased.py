"""``gpuslice bench --workload phased``: a workflow in phases, fixed plans against elastic pools.

An active-learning loop changes phase as it runs: a burst of inference (an LLM answers many
small requests), then retraining (a few large, memory-hungry training tasks), then both at
once. Each phase starts when the one before it has finished, as in a workflow whose next step
needs the previous step's results. A fixed plan has to split the GPU between the two kinds of
slices once, so one pool's share idles in each of the first two phases; an elastic
configuration (:mod:`gpuslice.parsl.elastic`) moves the capacity to the pool that has work.

The task kinds and slices (one emulated H100, 80 GiB; costs from
:func:`gpuslice.bench.workloads.emulated_cost`):

- ``llm`` (GPT-2-medium shape, one 128-token prompt, 256 new tokens): 417 ms alone,
  kernels 17% of the time on 39% of the SMs, 1.3 GiB. Served by ``infer`` slices (many
  concurrent requests keep the GPU busy; each slice holds its own copy of the model).
- ``surrogate_train`` with a large network (16,384 molecules, batch 4,096, hidden 1,024,
  4 layers, 2 epochs): 3.9 s alone on the whole GPU, compute-bound, 30.6 GiB. It needs a slice
  with at least that much memory: a ``train`` slice (34 GiB).

The arrangements: fixed plans that split the GPU in different ways (every task kind to its own
pool, or both kinds in one pool of large slices) and the elastic configuration, which starts
from the plan a user would write (half the GPU each) and is allowed to resize within
:data:`ELASTIC_POLICY`. The run records, per arrangement: the workflow's makespan and each
phase's duration, the usual throughput and task completion times, and the capacity check: a
sampler reads the live worker pools' own environments every 0.25 s and every task reports its
slice and interval from inside its worker (:mod:`gpuslice.bench.sampler`); the slices on the
GPU must never exceed its compute or memory.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpuslice.bench.arrangements import Arrangement
from gpuslice.bench.harness import ArrangementResult, TaskSpec, _p95, _union_busy, write_json
from gpuslice.bench.phased_worker import check_in, phased_task
from gpuslice.bench.sampler import SliceSampler, interval_violations
from gpuslice.bench.workloads import WORKLOADS
from gpuslice.errors import UsageError
from gpuslice.hardware.inventory import Inventory
from gpuslice.mps.control import CONTROL_ENV, EMULATED_PROGRAM
from gpuslice.parsl.capacity import DeviceCapacity, SliceSize, overflow
from gpuslice.parsl.elastic import ElasticPolicy, PoolLimits
from gpuslice.plan.layout import Layout
from gpuslice.plan.resolve import resolve

__all__ = [
    "ELASTIC_POLICY",
    "LLM_PARAMS",
    "TRAIN_PARAMS",
    "Contender",
    "Phase",
    "PhasedResult",
    "check_in",
    "contenders",
    "phased_task",
    "phases",
    "run_phased",
]

#: One inference request: GPT-2-medium shape, a 128-token prompt, 256 new tokens (417 ms
#: alone, kernels 17% of the time on 39% of the SMs, 1.3 GiB).
LLM_PARAMS: dict[str, Any] = {"size": "medium", "prompt_tokens": 128, "new_tokens": 256}
#: The large retraining task (30.6 GiB, 3.9 s alone on an H100 in the cost model).
TRAIN_PARAMS: dict[str, Any] = {
    "n_molecules": 16384,
    "epochs": 2,
    "batch_size": 4096,
    "hidden": 1024,
    "layers": 4,
}
#: Which pool each task kind goes to in the two-pool plans.
ROUTES = {"llm": "infer", "surrogate_train": "train"}
#: How far the elastic arrangement may resize: inference keeps two slices (requests that
#: arrive during retraining are served at once), training may give all of its capacity away
#: (its next task then waits for a slice to start: the price of handing the GPU to the phase
#: that has work).
ELASTIC_POLICY = ElasticPolicy(
    pools={"infer": PoolLimits(min=2), "train": PoolLimits(min=0)},
    period_s=0.5,
    grow_after_s=1.0,
    idle_after_s=1.0,
    cooldown_s=3.0,
)
#: Seconds between two samples of the live worker pools.
SAMPLE_PERIOD_S = 0.25


@dataclass(frozen=True)
class Phase:
    """One step of the workflow: its tasks start when the step before has finished."""

    name: str
    tasks: tuple[TaskSpec, ...]


def _interleave(first: list[TaskSpec], second: list[TaskSpec]) -> tuple[TaskSpec, ...]:
    """Spread ``second`` evenly through ``first`` (both kinds arrive together)."""
    out: list[TaskSpec] = []
    step = max(1, len(first) // (len(second) + 1))
    rest = list(second)
    for i, task in enumerate(first):
        if rest and i % step == step - 1:
            out.append(rest.pop(0))
        out.append(task)
    return tuple(out + rest)


def phases(scale: float = 1.0) -> list[Phase]:
    """The workflow: an inference burst, then retraining, then both.

    Args:
        scale: multiplies every phase's task count, at least one task each (1.0: 900
            requests, 30 trainings, then 40 requests with 2 trainings).

    Raises:
        UsageError: a scale that is not positive.
    """
    llm = TaskSpec("llm", WORKLOADS["llm"].params(**LLM_PARAMS))
    train = TaskSpec("surrogate_train", WORKLOADS["surrogate_train"].params(**TRAIN_PARAMS))
    if not scale > 0:
        raise UsageError(f"the phased workflow's scale must be positive, not {scale:g}")
    counts = {"burst": 900, "train": 30, "both": 40, "both_train": 2}
    n = {k: max(1, round(v * scale)) for k, v in counts.items()}
    return [
        Phase("inference burst", tuple([llm] * n["burst"])),
        Phase("retraining", tuple([train] * n["train"])),
        Phase("both", _interleave([llm] * n["both"], [train] * n["both_train"])),
    ]


@dataclass(frozen=True)
class Contender:
    """An arrangement of the phased comparison: a plan and, for elastic, its policy."""

    arrangement: Arrangement
    policy: ElasticPolicy | None = None


#: The elastic arrangement's slices: inference 5% + 3 GiB, training 45% + 34 GiB, starting
#: from eleven inference slices and one training slice (the fixed plan ``fixed-11x5-45``).
#: Two training slices and the two inference slices the policy keeps make 100%.
ELASTIC_PLAN: dict[str, Any] = {
    "version": 1,
    "pools": {
        "infer": {"mps": {"compute": 5, "memory": "3GiB"}, "per_gpu": 11},
        "train": {"mps": {"compute": 45, "memory": "34GiB"}, "per_gpu": 1},
    },
}


def _split(infer_n: int, infer_pct: int, train_pct: int) -> dict[str, Any]:
    return {
        "version": 1,
        "pools": {
            "infer": {"mps": {"compute": infer_pct, "memory": "3GiB"}, "per_gpu": infer_n},
            "train": {"mps": {"compute": train_pct, "memory": "34GiB"}, "per_gpu": 1},
        },
    }


def contenders() -> list[Contender]:
    """The fixed plans and the elastic configuration, in the order they run.

    The fixed plans: the elastic arrangement's own starting plan without resizing, and the
    split and the one-pool plan that :func:`rank_fixed` rates best for this workflow under the
    emulation model (among every split of ``k`` inference slices of ``c``% beside one training
    slice, and every one-pool plan whose slices hold a training task), so the elastic run is
    measured against the strongest fixed plans, not a straw man.
    """
    fixed = [
        Arrangement(
            "fixed-11x5-45",
            "fixed: infer 11x5% + train 1x45% (elastic's start)",
            "d",
            ELASTIC_PLAN,
            routes=ROUTES,
        ),
        Arrangement(
            "fixed-8x5-60", "fixed: infer 8x5% + train 1x60%", "d", _split(8, 5, 60), routes=ROUTES
        ),
        Arrangement(
            "fixed-one-pool",
            "fixed: one pool, 2x50% + 38GiB",
            "d",
            {
                "version": 1,
                "pools": {"gpu": {"mps": {"compute": 50, "memory": "38GiB"}, "per_gpu": 2}},
            },
        ),
    ]
    elastic = Arrangement(
        "elastic",
        "elastic: infer 5% + train 45% slices, resized",
        "f",
        ELASTIC_PLAN,
        routes=ROUTES,
    )
    return [*(Contender(a) for a in fixed), Contender(elastic, ELASTIC_POLICY)]


def _throughput(slices: Sequence[tuple[str, int]], inventory_sms: int = 132) -> dict[str, float]:
    """Tasks per second of each kind with ``(kind, compute %)`` slices all busy at once."""
    from gpuslice.emulate.model import ActiveClient, mps_visible_sm_count, rates

    costs = {
        "llm": WORKLOADS["llm"].cost(**LLM_PARAMS),
        "surrogate_train": WORKLOADS["surrogate_train"].cost(**TRAIN_PARAMS),
    }
    clients = [
        ActiveClient(
            i,
            True,
            mps_visible_sm_count(inventory_sms, pct) / inventory_sms,
            costs[kind].occupancy,
            costs[kind].duty,
            float(getattr(costs[kind], "bandwidth", 0.0)),
        )
        for i, (kind, pct) in enumerate(slices)
    ]
    out: dict[str, float] = {}
    for (kind, _), rate in zip(slices, rates(clients), strict=True):
        out[kind] = out.get(kind, 0.0) + rate / costs[kind].work_ms * 1000
    return out


def estimate_fixed(
    infer: tuple[int, int] | None, train: tuple[int, int], workflow: Sequence[Phase]
) -> float:
    """The emulation model's makespan for a fixed plan (steady state, no start-up costs).

    Args:
        infer: ``(slices, compute %)`` of the inference pool, or None for one pool.
        train: ``(slices, compute %)`` of the training pool (the one pool when ``infer`` is
            None, which then runs both kinds).
        workflow: the phases.
    """
    total = 0.0
    for phase in workflow:
        kinds = Counter(t.workload for t in phase.tasks)
        if infer is None:  # one pool: the kinds take turns on all of its slices
            total += sum(
                n / _throughput([(kind, train[1])] * train[0])[kind] for kind, n in kinds.items()
            )
            continue
        busy = [("llm", infer[1])] * (infer[0] if kinds["llm"] else 0)
        busy += [("surrogate_train", train[1])] * (train[0] if kinds["surrogate_train"] else 0)
        rate = _throughput(busy)
        total += max(n / rate[kind] for kind, n in kinds.items())
    return total


def rank_fixed(workflow: Sequence[Phase], memory_mib: int = 81559) -> list[tuple[float, str]]:
    """Every fixed plan for the workflow, best first, by the model's makespan.

    Splits: ``k`` inference slices of ``c``% (3 GiB each) and one training slice of ``t``%
    (34 GiB); one-pool plans: ``n`` slices of ``100/n``% that each hold a training task (34 GiB
    or more). Each must fit a GPU of ``memory_mib`` (an H100-80GB by default) by the planner's
    rule (:func:`gpuslice.parsl.capacity.overflow`).
    """
    gpu = DeviceCapacity("GPU", memory_mib)
    infer_slice, train_slice = SliceSize(0, 3 * 1024), SliceSize(0, 34 * 1024)
    ranked = []
    for t in (40, 45, 50, 55, 60, 65, 70, 80):
        for c in (4, 5, 6, 8, 10, 12, 15, 20, 25):
            for k in range(1, 26):
                if k * c + t <= 100 and overflow(gpu, [*[infer_slice] * k, train_slice]) is None:
                    cost = estimate_fixed((k, c), (1, t), workflow)
                    ranked.append((cost, f"infer {k}x{c}% + train 1x{t}%"))
    for n in range(1, 5):
        if overflow(gpu, [train_slice] * n) is None:
            cost = estimate_fixed(None, (n, 100 // n), workflow)
            ranked.append((cost, f"one pool {n}x{100 // n}%"))
    return sorted(ranked)


# -- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhasedResult:
    """One arrangement's run of the phased workflow.

    Attributes:
        result: the summary row every benchmark table and plot shows (``wall_s`` is the
            makespan: first submission to last result).
        phases: per phase: name, tasks, seconds from its first submission to its last result.
        capacity: the capacity check: samples taken, violations found (expected empty), the
            peak sums per device, task instants checked.
        elastic: for the elastic arrangement, the controller's summary and decision log.
        timeline: live slices per pool over time (from the sampler), for the plot.
    """

    result: ArrangementResult
    phases: list[dict[str, Any]]
    capacity: dict[str, Any]
    elastic: dict[str, Any] | None = None
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return {
            **asdict(self.result),
            "phases": self.phases,
            "capacity": self.capacity,
            "elastic": self.elastic,
        }


class _Finished:
    """Completion times, recorded by each future's done-callback the moment it completes.

    A future wakes the threads waiting in ``result()`` before it runs its callbacks, so the
    phase waits here until every callback has run, not on ``result()``.
    """

    def __init__(self, count: int, on_done: Callable[[int], None] | None) -> None:
        self.left = count
        self.durations: list[float] = []
        self.last = time.perf_counter()
        self.on_done = on_done
        self.changed = threading.Condition()

    def track(self, future: Future[Any], sent: float) -> None:
        def record(_: Future[Any]) -> None:
            now = time.perf_counter()
            with self.changed:
                self.durations.append(now - sent)
                self.last = max(self.last, now)
                self.left -= 1
                self.changed.notify_all()
            if self.on_done is not None:
                self.on_done(1)

        future.add_done_callback(record)

    def wait(self) -> None:
        with self.changed:
            self.changed.wait_for(lambda: self.left <= 0)


def _stop_daemons(layout: Layout) -> None:
    from gpuslice.mps.daemon import stop

    for d in layout.daemons:
        stop(d.pipe_dir)


def _warm(layout: Layout, barrier: Path, timeout_s: float) -> set[int]:
    from gpuslice.parsl.app import gpu_app

    barrier.mkdir(parents=True, exist_ok=True)
    futures = []
    workers = len(layout.slices)
    for pool in layout.pools:
        app = gpu_app(pool=pool.name)(check_in)
        futures += [app(str(barrier), workers, timeout_s) for _ in pool.slices]
    pids = {f.result()["pid"] for f in futures}
    if len(pids) != workers:
        raise UsageError(f"the warm-up reached {len(pids)} workers, not {workers}")
    return pids


def run_phased(
    contender: Contender,
    workflow: Sequence[Phase],
    inventory: Inventory,
    *,
    run_dir: str | None = None,
    on_done: Callable[[int], None] | None = None,
    warm_up_timeout_s: float = 300.0,
) -> PhasedResult:
    """Run the workflow's phases one after the other under one arrangement, and measure it.

    Every worker of the starting plan is warmed first (untimed); slices an elastic
    configuration starts later start cold, which is the price of resizing and is timed.

    Args:
        contender: the plan (and policy, for elastic).
        workflow: the phases.
        inventory: the GPUs (NVML or an emulated fleet).
        run_dir: Parsl's run directory (a temporary one by default).
        on_done: called with 1 for every task completed (progress).
        warm_up_timeout_s: how long the warm-up waits for every worker.
    """
    import parsl

    from gpuslice.parsl.app import gpu_app
    from gpuslice.parsl.config import parsl_config
    from gpuslice.parsl.elastic import elastic_controller
    from gpuslice.parsl.executor import SliceExecutor
    from gpuslice.parsl.group import PoolProvider

    arrangement = contender.arrangement
    emulated = inventory.emulated
    if emulated:  # this process stops the emulated daemons the workers started
        os.environ.setdefault(CONTROL_ENV, EMULATED_PROGRAM)
    layout = resolve(json.dumps(arrangement.plan), inventory)
    owned = run_dir is None
    run_dir = run_dir or tempfile.mkdtemp(prefix="gpuslice-phased-")
    capacity = {s.device: DeviceCapacity(s.device, s.memory_total_mib) for s in layout.slices}
    parsl.clear()
    options: dict[str, Any] = {"retries": 2}
    if contender.policy is not None:
        options["elastic"] = contender.policy
    config = parsl_config(layout, run_dir=run_dir, **options)
    group = next(
        e.provider.group.id
        for e in config.executors
        if isinstance(e, SliceExecutor) and isinstance(e.provider, PoolProvider)
    )
    dfk = parsl.load(config)
    sampler = SliceSampler(period_s=SAMPLE_PERIOD_S, devices=frozenset(capacity), group=group)
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    tct: list[float] = []
    phase_rows: list[dict[str, Any]] = []
    elastic: dict[str, Any] | None = None
    try:
        apps = {p: gpu_app(pool=p)(phased_task) for p in layout.pool_names}
        _warm(layout, Path(run_dir) / "warm-up", warm_up_timeout_s)
        host_load = os.getloadavg()[0]
        start_epoch = time.time()
        start = time.perf_counter()
        with sampler:
            for phase in workflow:
                began = time.perf_counter()
                finished = _Finished(len(phase.tasks), on_done)
                submitted = []
                for spec in phase.tasks:
                    future = apps[arrangement.pool_for(spec.workload)](
                        spec.workload, spec.params, emulated
                    )
                    submitted.append(future)
                    finished.track(future, time.perf_counter())
                finished.wait()  # every completion time is recorded before results are read
                for future in submitted:
                    try:
                        results.append(future.result())
                    except Exception as err:  # a failed task is a measurement, not a crash
                        errors.append(f"{type(err).__name__}: {err}")
                tct += finished.durations
                phase_rows.append(
                    {
                        "name": phase.name,
                        "tasks": len(phase.tasks),
                        "seconds": finished.last - began,
                        "start_s": began - start,
                    }
                )
        wall = (phase_rows[-1]["start_s"] + phase_rows[-1]["seconds"]) if phase_rows else 0.0
        controller = elastic_controller(dfk)
        if controller is not None:
            elastic = {"summary": controller.summary(), "decisions": controller.decisions()}
    finally:
        dfk.cleanup()
        parsl.clear()
        _stop_daemons(layout)
        if owned:
            shutil.rmtree(run_dir, ignore_errors=True)

    violations, instants = interval_violations(results, capacity)
    check = {
        "sample_period_s": SAMPLE_PERIOD_S,
        "samples": len(sampler.samples),
        "slices_seen": len(sampler.seen),
        "violations": sampler.violations(capacity)[:20],
        "peak": sampler.peaks(),
        "capacity": {
            d: {"compute": c.compute, "memory_mib": c.memory_mib} for d, c in capacity.items()
        },
        "task_instants_checked": instants,
        "task_violations": violations[:20],
    }
    devices = sorted(capacity)
    busy = [
        _union_busy(
            [(r["start"], r["end"]) for r in results if r["device"] == d],
            start_epoch,
            start_epoch + wall,
        )
        / wall
        for d in devices
    ]
    completed = len(results)
    row = ArrangementResult(
        name=arrangement.name,
        label=arrangement.label,
        family=arrangement.family,
        workers=len(layout.slices),
        tasks=completed,
        failed=len(errors),
        wall_s=wall,
        throughput=completed / wall if wall > 0 else 0.0,
        mean_tct_s=statistics.fmean(tct) if tct else float("nan"),
        p95_tct_s=_p95(tct),
        gpu_busy_pct=100 * statistics.fmean(busy) if busy else None,
        busy_source="emulated kernels" if emulated else "task intervals",
        per_device=dict(Counter(r["device"] for r in results)),
        per_pool=dict(Counter(r["pool"] or "?" for r in results)),
        errors=errors[:5],
    )
    timeline = [{"t": s["t"] - start_epoch, "pools": s["pools"]} for s in sampler.timeline()]
    return PhasedResult(
        row,
        phase_rows,
        {**check, "host_load": host_load},
        elastic,
        timeline,
    )


def comparison(runs: Sequence[PhasedResult]) -> dict[str, Any]:
    """The elastic arrangement against the best fixed plan, by makespan."""
    fixed = [r for r in runs if r.elastic is None and r.result.failed == 0]
    elastic = next((r for r in runs if r.elastic is not None), None)
    if not fixed or elastic is None:
        return {}
    best = min(fixed, key=lambda r: r.result.wall_s)
    return {
        "best_fixed": best.result.name,
        "best_fixed_makespan_s": best.result.wall_s,
        "elastic_makespan_s": elastic.result.wall_s,
        "makespan_reduction_vs_best_fixed": 1 - elastic.result.wall_s / best.result.wall_s,
        "elastic_failed": elastic.result.failed,
        "capacity_violations": sum(
            len(r.capacity["violations"]) + len(r.capacity["task_violations"]) for r in runs
        ),
    }


def phase_table(runs: Sequence[PhasedResult]) -> str:
    """Markdown: each arrangement's makespan and phase durations."""
    names = [p["name"] for p in runs[0].phases] if runs else []
    lines = [
        "| arrangement | makespan (s) | " + " | ".join(f"{n} (s)" for n in names) + " | failed |",
        "|---|---:|" + "---:|" * len(names) + "---:|",
    ]
    for r in runs:
        cells = " | ".join(f"{p['seconds']:.1f}" for p in r.phases)
        lines.append(
            f"| {r.result.label} (`{r.result.name}`) | {r.result.wall_s:.1f} | {cells} | "
            f"{r.result.failed} |"
        )
    return "\n".join(lines) + "\n"


def plot_timeline(run: PhasedResult, path: Path, title: str) -> None:
    """Live slices per pool over time, with the phase boundaries (the elastic run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pools = sorted({p for row in run.timeline for p in row["pools"]})
    fig, axis = plt.subplots(figsize=(9, 3.6))
    times = [row["t"] for row in run.timeline]
    for pool in pools:
        axis.step(
            times,
            [row["pools"].get(pool, 0) for row in run.timeline],
            where="post",
            label=f"{pool} slices",
        )
    for phase in run.phases:
        axis.axvline(phase["start_s"], color="#888", linestyle=":", linewidth=1)
        axis.text(
            phase["start_s"],
            axis.get_ylim()[1] * 0.95,
            f" {phase['name']}",
            fontsize=8,
            va="top",
            color="#555",
        )
    axis.set_xlabel("seconds since the workflow started")
    axis.set_ylabel("live slices (worker pools)")
    axis.set_title(title)
    axis.legend(loc="center right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_phased(
    out: Path,
    stem: str,
    title: str,
    runs: Sequence[PhasedResult],
    inventory: Inventory,
    extra: dict[str, Any],
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``.png`` (the usual bars), ``-timeline.png`` and ``.md``."""
    from gpuslice.bench.report import markdown_table, plot, provenance

    rows = [r.result for r in runs]
    data = {
        **provenance(inventory),
        **extra,
        "arrangements": [r.to_dict() for r in runs],
        "comparisons": comparison(runs),
    }
    paths = {
        "json": out / f"{stem}.json",
        "png": out / f"{stem}.png",
        "timeline": out / f"{stem}-timeline.png",
        "md": out / f"{stem}.md",
    }
    write_json(paths["json"], data)
    plot(rows, paths["png"], title)
    elastic = next((r for r in runs if r.elastic is not None), None)
    if elastic is not None:
        plot_timeline(elastic, paths["timeline"], f"{title}: elastic slices over time")
    else:
        del paths["timeline"]
    summary = comparison(runs)
    lines = [f"### {title}", "", phase_table(runs), markdown_table(rows)]
    if summary:
        lines.append(
            f"Elastic makespan {summary['elastic_makespan_s']:.1f} s against "
            f"{summary['best_fixed_makespan_s']:.1f} s for the best fixed plan "
            f"(`{summary['best_fixed']}`): "
            f"{100 * summary['makespan_reduction_vs_best_fixed']:.0f}% sooner. Capacity "
            f"violations found: {summary['capacity_violations']}.\n"
        )
    paths["md"].write_text("\n".join(lines))
    return paths


def bench_phased(
    inventory: Inventory,
    names: str | None,
    percent: int | None,
    out: Path,
    smoke: bool,
    as_json: bool,
    console: Any,
) -> dict[str, Path]:
    """What ``gpuslice bench --workload phased`` does: run, write, print.

    Args:
        inventory: the GPUs.
        names: comma-separated arrangement names (default: all of :func:`contenders`).
        percent: the workflow's size in percent of the default (default 100; 2 with smoke).
        out: the results folder.
        smoke: a quick check: elastic and its start plan fixed, 2% of the tasks.
        as_json: print the result paths and the comparison as JSON instead of tables.
        console: where tables and progress go (stderr with ``as_json``).

    Raises:
        UsageError: an unknown arrangement name.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gpuslice.cli.options import print_json

    every = {c.arrangement.name: c for c in contenders()}
    if names:
        chosen = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in every]
        if unknown:
            raise UsageError(
                f"unknown arrangement {', '.join(unknown)} for the phased workload; "
                f"choose from {', '.join(every)}"
            )
    elif smoke:
        chosen = ["fixed-11x5-45", "elastic"]
    else:
        chosen = list(every)
    scale = (percent if percent is not None else (2 if smoke else 100)) / 100
    workflow = phases(scale)
    total = sum(len(p.tasks) for p in workflow)
    runs: list[PhasedResult] = []
    columns = (
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        for name in chosen:
            bar = progress.add_task(name, total=total)

            def advance(count: int, bar: Any = bar) -> None:
                progress.advance(bar, count)

            run = run_phased(every[name], workflow, inventory, on_done=advance)
            progress.update(bar, description=f"{name}: {run.result.wall_s:.1f} s")
            runs.append(run)
    device = "emulated" if inventory.emulated else inventory.gpus[0].name.replace(" ", "-")
    stem = f"phased-{device}{'-smoke' if smoke else ''}"
    title = f"phased workflow: {total} tasks on {len(inventory.gpus)}x {inventory.gpus[0].name}" + (
        " (emulated)" if inventory.emulated else ""
    )
    paths = write_phased(
        out,
        stem,
        title,
        runs,
        inventory,
        {
            "workload": "phased",
            "tasks": total,
            "phases": [{"name": p.name, "tasks": len(p.tasks)} for p in workflow],
            "elastic_policy": _policy(ELASTIC_POLICY),
        },
    )
    if as_json:
        elastic = next((r for r in runs if r.elastic is not None), None)
        print_json(
            {
                **{k: str(v) for k, v in paths.items()},
                "comparison": comparison(runs),
                "elastic": elastic.elastic if elastic is not None else None,
            }
        )
    else:
        console.print(paths["md"].read_text())
        console.print("results: " + ", ".join(str(p) for p in paths.values()))
    return paths


def _policy(policy: ElasticPolicy) -> dict[str, Any]:
    return {
        "pools": {n: asdict(p) for n, p in policy.pools.items()},
        "period_s": policy.period_s,
        "grow_after_s": policy.grow_after_s,
        "idle_after_s": policy.idle_after_s,
        "cooldown_s": policy.cooldown_s,
    }
