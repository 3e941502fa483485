"""Run one task list through real Parsl under several arrangements and measure each.

For every arrangement the harness resolves its plan, loads a fresh ``parsl.Config`` made by
:func:`gpuslice.parsl_config`, starts and warms every worker (untimed), submits the whole
task list at once (a burst, as a FaaS queue sees it), and records for each task the time
from submission to result. GPU busy time comes from NVML samples on a real GPU, and from
the emulated kernels' own start/end times (the union per device, what NVML's utilisation
reports) on the emulated GPU.

Two things keep the comparison fair:

- The warm-up reaches every worker: one warm-up task per worker, each waiting at a barrier
  (:func:`gpuslice.bench.task.check_in`) until all of them have checked in, so no worker can
  take two; the harness then checks that as many distinct worker processes answered as the
  arrangement has workers, and counts any timed task that ran on a worker the warm-up missed.
- A call's completion is recorded in its future's done-callback, the moment Parsl completes
  it, and the harness reads results only after every call's completion was recorded
  (:class:`Completions`): a future's waiters wake before its callbacks run, so reading
  ``result()`` first could miss the last completions.
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
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpuslice.bench.arrangements import Arrangement
from gpuslice.bench.task import WarmUpError, run_task, warm_up
from gpuslice.bench.workloads import WORKLOADS
from gpuslice.errors import UsageError
from gpuslice.hardware.inventory import Inventory
from gpuslice.mps.control import CONTROL_ENV, EMULATED_PROGRAM
from gpuslice.plan.layout import Layout
from gpuslice.plan.resolve import resolve

#: Workload mixes: (workload, size preset, share of the tasks).
MIXES: dict[str, tuple[tuple[str, str, float], ...]] = {
    "llm": (("llm", "medium", 1.0),),
    "surrogate": (("surrogate_infer", "large", 0.75), ("surrogate_train", "medium", 0.25)),
    # Two tenants that want different slices: launch-bound LLM decoding (many small slices)
    # beside a stencil that fills every SM it gets (one large slice): the right-sizing mix.
    "llm-stencil": (("llm", "medium", 0.8), ("stencil", "large", 0.2)),
    "science": (("science", "large", 1.0),),
    "stencil": (("stencil", "medium", 1.0),),
}


@dataclass(frozen=True)
class TaskSpec:
    """One task of the list: a workload and its keyword arguments."""

    workload: str
    params: dict[str, Any] = field(hash=False)


def task_list(mix: str, count: int, size: str | None = None) -> list[TaskSpec]:
    """``count`` tasks of a mix, interleaved deterministically in the mix's proportions.

    Raises:
        UsageError: unknown mix or size.
    """
    if mix not in MIXES:
        raise UsageError(f"unknown workload mix {mix!r}; choose one of {', '.join(MIXES)}")
    parts = MIXES[mix]
    tasks: list[TaskSpec] = []
    credit = [0.0] * len(parts)
    for _ in range(count):
        for i, (_, _, share) in enumerate(parts):
            credit[i] += share
        pick = max(range(len(parts)), key=lambda i: credit[i])
        credit[pick] -= 1.0
        workload, preset, _ = parts[pick]
        tasks.append(TaskSpec(workload, WORKLOADS[workload].params(size or preset)))
    return tasks


@dataclass(frozen=True)
class ArrangementResult:
    """What one arrangement achieved on the task list.

    Attributes:
        name, label, family: from the :class:`Arrangement`.
        workers: Parsl workers (slices) the arrangement ran.
        tasks: tasks completed; failed: tasks that raised (their errors in ``errors``).
        wall_s: first submission to last result.
        throughput: completed tasks per second of ``wall_s``.
        mean_tct_s, p95_tct_s: task completion time, submission to result.
        gpu_busy_pct: mean share of time a kernel was running, over the GPUs used.
        busy_source: ``nvml`` (sampled) or ``emulated kernels`` (their own timestamps).
        per_device: tasks per device UUID; per_pool: tasks per pool, as the workers saw it.
        warmed_workers: distinct worker processes warmed before timing (equal to ``workers``).
        cold_workers: worker processes that ran timed tasks without having been warmed (0 in a
            fair run; more when Parsl replaced a worker during the run).
        host_load: the host's 1-minute load average when timing started (``os.getloadavg``).
        emulator_lag_ms: on the emulated GPU, how much longer than the model the kernels took
            on average (late wake-ups on a loaded host; ``KernelResult.lag_ms``); None on
            a real GPU.
    """

    name: str
    label: str
    family: str
    workers: int
    tasks: int
    failed: int
    wall_s: float
    throughput: float
    mean_tct_s: float
    p95_tct_s: float
    gpu_busy_pct: float | None
    busy_source: str
    per_device: dict[str, int]
    per_pool: dict[str, int]
    errors: list[str]
    warmed_workers: int = 0
    cold_workers: int = 0
    host_load: float | None = None
    emulator_lag_ms: float | None = None


def _p95(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def _union_busy(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Seconds in [start, end] covered by at least one interval."""
    busy, reach = 0.0, start
    for first, last in sorted(intervals):
        lo, hi = max(first, reach), min(last, end)
        if hi > lo:
            busy += hi - lo
            reach = hi
    return busy


class _NvmlSampler:
    """Samples NVML utilisation of the layout's GPUs in a thread (real GPUs only)."""

    def __init__(self, uuids: Sequence[str], period_s: float = 0.1) -> None:
        self.uuids, self.period_s = list(uuids), period_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from gpuslice.hardware.nvml import device_utilization

        while not self._stop.wait(self.period_s):
            values = [device_utilization(u) for u in self.uuids]
            self.samples.append(sum(values) / len(values))

    def __enter__(self) -> _NvmlSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _batches(tasks: Sequence[TaskSpec], size: int) -> list[tuple[TaskSpec, list[int]]]:
    """Group task indices by workload into calls of ``size`` tasks (order kept)."""
    if size == 1:
        return [(t, [i]) for i, t in enumerate(tasks)]
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        groups.setdefault(
            json.dumps([t.workload, t.params], sort_keys=True, default=str), []
        ).append(i)
    calls = []
    for indices in groups.values():
        for k in range(0, len(indices), size):
            chunk = indices[k : k + size]
            calls.append((tasks[chunk[0]], chunk))
    calls.sort(key=lambda call: call[1][0])
    return calls


class Completions:
    """When each submitted call completed, recorded the moment its future completes.

    ``concurrent.futures.Future`` (and Parsl's ``AppFuture``) wakes the threads waiting in
    ``result()`` before it runs its done-callbacks, so a harness that reads ``result()`` and
    then looks for a time a callback records can miss it. Here the callback records the time
    and counts down; :meth:`wait` returns only once every tracked call was recorded.

    Attributes:
        done_at: task index -> ``time.perf_counter()`` when its call completed.
    """

    def __init__(self, on_done: Callable[[int], None] | None = None) -> None:
        self.done_at: dict[int, float] = {}
        self._on_done = on_done
        self._pending = 0
        self._changed = threading.Condition()

    def track(self, future: Future[Any], indices: list[int]) -> None:
        """Record the completion of ``future``, the call that runs tasks ``indices``."""
        with self._changed:
            self._pending += 1

        def record(_: Future[Any]) -> None:
            now = time.perf_counter()
            with self._changed:
                for i in indices:
                    self.done_at[i] = now
                self._pending -= 1
                self._changed.notify_all()
            if self._on_done is not None:
                self._on_done(len(indices))

        future.add_done_callback(record)

    def wait(self, timeout: float | None = None) -> None:
        """Block until every tracked call's completion is recorded.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: self._pending == 0, timeout):
                raise TimeoutError(f"{self._pending} calls had not completed after {timeout} s")


def _warm_all(
    arrangement: Arrangement,
    tasks: Sequence[TaskSpec],
    layout: Layout,
    emulated: bool,
    barrier_dir: Path,
    timeout_s: float,
    retries: int = 5,
) -> set[str]:
    """Warm every worker of the arrangement; the distinct worker processes that answered.

    One warm-up task per worker, all waiting at one barrier. A warm-up task that fails (a
    worker's slice check can fail on a loaded machine: its daemon's ping starts the control
    program, which then misses its timeout when several workers start at once) is sent again,
    up to ``retries`` times, a second more after each failure so that the workers' retries
    do not all start together; the worker it failed in is idle again and takes it, or
    another idle one does.

    Raises:
        WarmUpError: a warm-up task failed ``retries + 1`` times, or fewer distinct workers
            answered than the arrangement has.
    """
    from gpuslice.parsl.app import gpu_app

    workers = len(layout.slices)
    pending: dict[Future[Any], tuple[Callable[[], Future[Any]], int]] = {}
    for pool in layout.pool_names:
        routed = [t for t in tasks if arrangement.pool_for(t.workload) == pool] or list(tasks)
        calls: dict[str, tuple[str, dict[str, Any]]] = {}
        for t in routed:  # each distinct task once: on a GPU each builds its model
            key = json.dumps([t.workload, t.params], sort_keys=True, default=str)
            calls.setdefault(key, (t.workload, t.params))
        warm_app = gpu_app(pool=pool)(warm_up)
        args = (list(calls.values()), emulated, str(barrier_dir), workers, timeout_s)

        def submit(app: Any = warm_app, args: tuple[Any, ...] = args) -> Future[Any]:
            future: Future[Any] = app(*args)
            return future

        for _ in layout.pool(pool).slices:
            pending[submit()] = (submit, 0)
    warmed: set[str] = set()
    while pending:
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        for future in done:
            again, tries = pending.pop(future)
            error = future.exception()
            if error is None:
                warmed.add(future.result()["worker"])
            elif tries < retries:
                time.sleep(1.0 + tries)
                pending[again()] = (again, tries + 1)
            else:
                raise WarmUpError(
                    f"arrangement {arrangement.name}: a worker failed its warm-up "
                    f"{tries + 1} times ({type(error).__name__}: {error})"
                ) from error
    if len(warmed) != workers:
        raise WarmUpError(
            f"arrangement {arrangement.name}: the warm-up reached {len(warmed)} distinct worker "
            f"processes, not the {workers} its plan starts; its timings would not be comparable"
        )
    return warmed


def _stop_daemons(layout: Layout) -> None:
    from gpuslice.mps.daemon import stop

    for d in layout.daemons:
        stop(d.pipe_dir)


def run_arrangement(
    arrangement: Arrangement,
    tasks: Sequence[TaskSpec],
    inventory: Inventory,
    *,
    fleet: str | None = None,
    run_dir: str | None = None,
    on_done: Callable[[int], None] | None = None,
    warm_up_timeout_s: float = 300.0,
) -> ArrangementResult:
    """Run ``tasks`` under one arrangement through real Parsl and measure it.

    Args:
        arrangement: the plan and batching to use.
        tasks: the task list (the same for every arrangement of a comparison).
        inventory: the GPUs (NVML or an emulated fleet).
        fleet: the fleet file behind an emulated inventory.
        run_dir: Parsl's run directory (a temporary one by default).
        on_done: called with the number of tasks each finished call completed (progress).
        warm_up_timeout_s: how long the warm-up waits for every worker to start.

    Raises:
        WarmUpError: not every worker could be warmed before timing.
    """
    import parsl

    from gpuslice.parsl.app import gpu_app
    from gpuslice.parsl.config import parsl_config

    emulated = inventory.emulated
    if emulated:  # this process stops the emulated daemons the workers started
        os.environ.setdefault(CONTROL_ENV, EMULATED_PROGRAM)
    layout = resolve(json.dumps(arrangement.plan), inventory)
    workers = len(layout.slices)
    owned_run_dir = run_dir is None
    run_dir = run_dir or tempfile.mkdtemp(prefix="gpuslice-bench-")
    parsl.clear()
    dfk = parsl.load(parsl_config(layout, run_dir=run_dir))
    try:
        task_apps = {p: gpu_app(pool=p)(run_task) for p in layout.pool_names}
        warmed = _warm_all(
            arrangement, tasks, layout, emulated, Path(run_dir) / "warm-up", warm_up_timeout_s
        )

        calls = _batches(tasks, arrangement.batch)
        completions = Completions(on_done)
        done_at = completions.done_at
        submitted: list[float] = [0.0] * len(tasks)
        futures: list[tuple[Future[Any], list[int]]] = []

        sampler = (
            _NvmlSampler(sorted({s.gpu_uuid for s in layout.slices})) if not emulated else None
        )
        host_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        wall_start_epoch = time.time()
        start = time.perf_counter()
        if sampler is not None:
            sampler.__enter__()
        try:
            for spec, indices in calls:
                now = time.perf_counter()
                for i in indices:
                    submitted[i] = now
                app = task_apps[arrangement.pool_for(spec.workload)]
                submitted_future = app(spec.workload, spec.params, emulated, len(indices))
                completions.track(submitted_future, indices)
                futures.append((submitted_future, indices))
            completions.wait()  # every completion is recorded before any result is read
            results: list[dict[str, Any]] = []
            errors: list[str] = []
            failed = 0
            for future, indices in futures:
                try:
                    results.append(future.result())
                except Exception as err:  # a failed task is a measurement, not a crash
                    failed += len(indices)
                    errors.append(f"{type(err).__name__}: {err}")
        finally:
            if sampler is not None:
                sampler.__exit__()
        end = max(done_at.values())
        wall = end - start
    finally:
        dfk.cleanup()
        parsl.clear()
        _stop_daemons(layout)
        if owned_run_dir:  # Parsl's logs of a throw-away run; pass run_dir to keep them
            shutil.rmtree(run_dir, ignore_errors=True)

    tct = [done_at[i] - submitted[i] for i in range(len(tasks)) if i in done_at]
    per_device = Counter(r["device"] for r in results for _ in range(r["batch"]))
    per_pool = Counter(r["pool"] or "?" for r in results for _ in range(r["batch"]))
    cold = {r["worker"] for r in results} - warmed
    lags = [r["lag_ms"] for r in results if "lag_ms" in r]
    if sampler is not None:
        busy = statistics.fmean(sampler.samples) if sampler.samples else None
        source = "nvml"
    else:
        wall_end_epoch = wall_start_epoch + wall
        devices = sorted({s.gpu_uuid for s in layout.slices})
        shares = [
            _union_busy(
                [(r["start"], r["end"]) for r in results if r["device"] == d],
                wall_start_epoch,
                wall_end_epoch,
            )
            / wall
            for d in devices
        ]
        busy = 100 * statistics.fmean(shares) if shares else None
        source = "emulated kernels"
    completed = len(tasks) - failed
    return ArrangementResult(
        name=arrangement.name,
        label=arrangement.label,
        family=arrangement.family,
        workers=workers,
        tasks=completed,
        failed=failed,
        wall_s=wall,
        throughput=completed / wall if wall > 0 else 0.0,
        mean_tct_s=statistics.fmean(tct) if tct else float("nan"),
        p95_tct_s=_p95(tct),
        gpu_busy_pct=busy,
        busy_source=source,
        per_device=dict(per_device),
        per_pool=dict(per_pool),
        errors=errors[:5],
        warmed_workers=len(warmed),
        cold_workers=len(cold),
        host_load=host_load,
        emulator_lag_ms=statistics.fmean(lags) if lags else None,
    )


def result_dict(result: ArrangementResult) -> dict[str, Any]:
    """Plain-JSON form of one arrangement's result."""
    return asdict(result)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON with a trailing newline, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
