"""``gpuslice demo``: a real Parsl workflow, first one task per GPU, then on a gpuslice plan.

Two kinds of functions, as in an active-learning campaign: LLM-style inference requests and
surrogate-model retraining. Both arrangements run the same task list through real Parsl
(HighThroughputExecutor, LocalProvider); the demo prints per-pool task counts, throughput,
task completion time and the ratio between the runs. Without a GPU it runs on the emulated
GPU and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gpuslice.bench.arrangements import POOL, Arrangement, one_per_gpu
from gpuslice.bench.compare import run_comparison
from gpuslice.bench.harness import ArrangementResult, TaskSpec
from gpuslice.bench.workloads import WORKLOADS
from gpuslice.errors import NvmlUnavailable, UsageError
from gpuslice.hardware.inventory import Inventory, discover
from gpuslice.plan.load import load_plan

#: The demo's two functions: (workload, size preset, share of the tasks).
FUNCTIONS = (("llm", "medium", 2 / 3), ("surrogate_train", "medium", 1 / 3))


def example_path(name: str) -> str:
    """Path of a file shipped in gpuslice/examples."""
    return str(resources.files("gpuslice") / "examples" / name)


@dataclass(frozen=True)
class DemoResult:
    """Both runs of the demo and how they compare."""

    inventory: Inventory
    fleet: str | None
    plan: str
    routes: dict[str, str]
    baseline: ArrangementResult
    sliced: ArrangementResult

    @property
    def throughput_ratio(self) -> float:
        """Throughput of the plan over one task per GPU."""
        return self.sliced.throughput / self.baseline.throughput

    @property
    def tct_reduction(self) -> float:
        """Fractional reduction of mean task completion time (0.6 = 60% lower)."""
        return 1 - self.sliced.mean_tct_s / self.baseline.mean_tct_s

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (``gpuslice demo --json``)."""
        from gpuslice.bench.harness import result_dict

        return {
            "emulated": self.inventory.emulated,
            "inventory_source": self.inventory.source,
            "plan": self.plan,
            "routes": self.routes,
            "one_per_gpu": result_dict(self.baseline),
            "plan_run": result_dict(self.sliced),
            "throughput_ratio": self.throughput_ratio,
            "mean_tct_reduction": self.tct_reduction,
        }


def demo_inventory(fleet: str | None, console: Console) -> tuple[Inventory, str | None]:
    """The real GPUs, else the packaged emulated fleet (and say so plainly)."""
    if fleet is not None:
        return discover(fleet), fleet
    try:
        return discover(), None
    except NvmlUnavailable as err:
        fleet = example_path("fleet-2xh100.yaml")
        console.print(
            f"[yellow]No GPU here[/] ({err.reason}).\n"
            "Running on the [bold]emulated GPU[/]: two H100-80GB described by "
            f"{fleet};\ntask durations follow the emulation model (docs/emulation-model.md), "
            "not a measurement of real hardware.\n"
        )
        return discover(fleet), fleet


def routes_for(pools: tuple[str, ...]) -> dict[str, str]:
    """Which pool runs which function: by name when pools are called after them, else in order."""
    names = [w for w, _, _ in FUNCTIONS]
    if len(pools) == 1:
        return dict.fromkeys(names, pools[0])
    by_name = {"llm": "llm", "surrogate_train": "surrogate"}
    if all(by_name[n] in pools for n in names):
        return {n: by_name[n] for n in names}
    if len(pools) >= 2:
        return {names[0]: pools[0], names[1]: pools[1]}
    raise UsageError("the demo plan needs one or two pools")


def demo_tasks(count: int) -> list[TaskSpec]:
    """``count`` tasks, two thirds LLM requests and one third surrogate retraining, interleaved."""
    tasks = []
    for i in range(count):
        workload, preset, _ = FUNCTIONS[1] if i % 3 == 2 else FUNCTIONS[0]
        tasks.append(TaskSpec(workload, WORKLOADS[workload].params(preset)))
    return tasks


def run_demo(
    *, fleet: str | None, plan: str | None, tasks: int, console: Console, show_progress: bool = True
) -> DemoResult:
    """Run the demo and return both measurements."""
    inventory, fleet = demo_inventory(fleet, console)
    plan_source = plan or example_path("plan-demo.yaml")
    parsed = load_plan(plan_source)
    routes = routes_for(tuple(parsed.pools))
    sliced = Arrangement(
        name="plan",
        label=f"gpuslice plan {Path(plan_source).name if Path(plan_source).exists() else plan}",
        family="d",
        plan=parsed.model_dump(mode="json", exclude_none=True),
        routes=routes,
    )
    baseline = Arrangement(**{**one_per_gpu().__dict__, "routes": dict.fromkeys(routes, POOL)})
    task_list = demo_tasks(tasks)
    from gpuslice.cli.plans import layout_table
    from gpuslice.plan.resolve import resolve

    console.print(layout_table(resolve(parsed, inventory)))
    console.print(
        f"{len(task_list)} tasks ({', '.join(f'{w}: {p}' for w, p, _ in FUNCTIONS)}) on "
        f"{len(inventory.gpus)} GPU{'s' if len(inventory.gpus) != 1 else ''}; routes: "
        + ", ".join(f"{w} → pool {p}" for w, p in routes.items())
    )
    first, second = run_comparison(
        [baseline, sliced],
        task_list,
        inventory,
        fleet=fleet,
        console=console,
        show_progress=show_progress,
    )
    return DemoResult(inventory, fleet, str(plan_source), routes, first, second)


def print_demo(result: DemoResult, console: Console) -> None:
    """The comparison as a table and one line of ratios."""
    table = Table(title="one task per GPU vs the plan", title_justify="left")
    for column in (
        "run",
        "workers",
        "tasks per pool",
        "tasks/s",
        "mean TCT (s)",
        "p95 TCT (s)",
        "GPU busy",
    ):
        table.add_column(column)
    for label, r in (("one task per GPU", result.baseline), ("gpuslice plan", result.sliced)):
        pools = ", ".join(f"{p}: {n}" for p, n in sorted(r.per_pool.items()))
        busy = f"{r.gpu_busy_pct:.0f}%" if r.gpu_busy_pct is not None else "-"
        table.add_row(
            label,
            str(r.workers),
            pools,
            f"{r.throughput:.2f}",
            f"{r.mean_tct_s:.2f}",
            f"{r.p95_tct_s:.2f}",
            busy,
        )
    console.print(table)
    failed = result.baseline.failed + result.sliced.failed
    if failed:
        console.print(
            f"[red]{failed} tasks failed[/]: {result.baseline.errors + result.sliced.errors}"
        )
    where = "emulated GPU (model, not measurement)" if result.inventory.emulated else "GPUs here"
    change = result.tct_reduction
    tct = f"{100 * change:.0f}% lower" if change >= 0 else f"{-100 * change:.0f}% higher"
    console.print(
        f"plan vs one task per GPU on the {where}: throughput x{result.throughput_ratio:.2f}, "
        f"mean task completion time {tct}"
    )
