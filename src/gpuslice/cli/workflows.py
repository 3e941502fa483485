"""``gpuslice demo`` and ``gpuslice bench``: real Parsl runs that compare arrangements."""

from __future__ import annotations

from pathlib import Path

import click

from gpuslice.cli.console import err_console
from gpuslice.cli.options import console, fleet_option_with, json_option, print_json
from gpuslice.errors import UsageError


@click.command()
@fleet_option_with("default: the real GPUs, else two emulated H100s.")
@click.option(
    "--plan",
    "plan_source",
    default=None,
    help="Plan file or compact form (default: the packaged plan-demo.yaml, pools llm, surrogate).",
)
@click.option(
    "--tasks",
    type=click.IntRange(3, 100_000),
    default=48,
    show_default=True,
    help="Tasks in the workflow (two thirds LLM requests, one third surrogate retraining).",
)
@json_option
def demo(fleet: str | None, plan_source: str | None, tasks: int, as_json: bool) -> None:
    """Run a small workflow through Parsl twice: one task per GPU, then the plan.

    LLM-style inference and surrogate-model retraining, routed to their pools with
    @gpu_app; prints per-pool task counts, throughput, task completion time and the ratio.
    On a machine without a GPU it runs on the emulated GPU and says so.
    """
    from gpuslice.demo import print_demo, run_demo

    # With --json, stdout carries only the JSON; notices and progress go to stderr.
    result = run_demo(
        fleet=fleet, plan=plan_source, tasks=tasks, console=err_console if as_json else console
    )
    if as_json:
        print_json(result.to_dict())
    else:
        print_demo(result, console)


@click.command()
@click.option(
    "--workload",
    type=click.Choice(["llm", "surrogate", "science", "stencil", "llm-stencil", "phased"]),
    default="llm",
    show_default=True,
    help="Task mix: LLM inference, surrogate infer+train, dense or stencil kernels, LLM "
    "decoding beside a stencil (80/20, the right-sizing mix); or "
    "`phased`, a workflow in phases (inference burst, retraining, both) run under fixed plans "
    "and an elastic configuration.",
)
@click.option(
    "--plans",
    "plans",
    default=None,
    help="Comma-separated arrangements, e.g. one-per-gpu,timeshare-4,mps-unlimited-4,gpuslice-4,"
    "batched-4 (default: all of them for N in 2,3,4,7).",
)
@click.option(
    "--tasks",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Tasks per arrangement (default 200; 24 with --smoke).",
)
@click.option(
    "--size", default=None, help="Workload size preset: tiny, small, medium, large, full."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="benchmarks/results",
    show_default=True,
    help="Folder for the JSON, PNG and markdown results.",
)
@fleet_option_with("default: the real GPUs through NVML.")
@click.option(
    "--smoke",
    is_flag=True,
    help="Quick check of the harness: 5 arrangements, few tasks; one emulated H100 without a GPU.",
)
@json_option
def bench(
    workload: str,
    plans: str | None,
    tasks: int | None,
    size: str | None,
    out: str,
    fleet: str | None,
    smoke: bool,
    as_json: bool,
) -> None:
    """Compare arrangements side by side on the same task list, through real Parsl.

    \b
    (a) one-per-gpu       one worker per GPU, today's FaaS default
    (b) timeshare-N       N workers per GPU, time-sliced (no MPS)
    (c) mps-unlimited-N   N workers per GPU under MPS without limits
    (d) gpuslice-N        N MPS slices per GPU with compute and memory limits
    (e) batched-N         one worker per GPU, N tasks batched per call (the ceiling)

    With --workload phased: fixed plans against elastic pools (gpuslice.parsl.elastic) on a
    workflow whose phases follow each other; --tasks scales the phases (in percent of the
    default 900 + 30 + 42 tasks), and the JSON holds each run's phases, capacity check and,
    for elastic, the controller's decision log.

    Writes <workload>-<device>.json/.png/.md under --out, with device, driver, CUDA, torch and
    package versions and the date.
    """
    notices = err_console if as_json else console  # stdout carries only the JSON
    from gpuslice.bench.arrangements import by_name, standard
    from gpuslice.bench.compare import run_comparison, write_outputs
    from gpuslice.bench.harness import task_list
    from gpuslice.demo import example_path
    from gpuslice.errors import NvmlUnavailable
    from gpuslice.hardware.inventory import discover

    if fleet is None:
        try:
            inventory = discover()
        except NvmlUnavailable as err:
            if not smoke:
                raise UsageError(f"{err}; or use --smoke for the emulated quick check") from err
            fleet = example_path("fleet-1xh100.yaml")
            notices.print(
                f"[yellow]No GPU here[/]: smoke run on the emulated GPU ({fleet}); "
                "timings follow the emulation model, not real hardware."
            )
            inventory = discover(fleet)
    else:
        inventory = discover(fleet)
    if workload == "phased":
        from gpuslice.bench.phased import bench_phased

        bench_phased(inventory, plans, tasks, Path(out), smoke, as_json, notices)
        return
    memory = min(g.memory_mib for g in inventory.gpus)
    if plans:
        try:
            arrangements = [
                by_name(name.strip(), memory) for name in plans.split(",") if name.strip()
            ]
        except ValueError as err:
            raise UsageError(str(err)) from err
    elif smoke:
        arrangements = [
            by_name(n, memory)
            for n in ("one-per-gpu", "timeshare-4", "mps-unlimited-4", "gpuslice-4", "batched-4")
        ]
    else:
        arrangements = standard(memory)
    count = tasks or (24 if smoke else 200)
    task_specs = task_list(workload, count, size)
    device = "emulated" if inventory.emulated else inventory.gpus[0].name.replace(" ", "-")
    stem = f"{workload}-{device}{'-smoke' if smoke else ''}"
    results = run_comparison(arrangements, task_specs, inventory, fleet=fleet, console=notices)
    title = f"{workload}: {count} tasks on {len(inventory.gpus)}x {inventory.gpus[0].name}" + (
        " (emulated)" if inventory.emulated else ""
    )
    paths = write_outputs(
        Path(out),
        stem,
        title,
        results,
        inventory,
        {"workload": workload, "tasks": count, "size": size},
    )
    if as_json:
        print_json({k: str(v) for k, v in paths.items()})
        return
    console.print(paths["md"].read_text())
    console.print(f"results: {paths['json']}, {paths['png']}")


commands = [demo, bench]
