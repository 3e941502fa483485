"""``gpuslice plan check|show`` and ``gpuslice env``: plans bound to the GPUs."""

from __future__ import annotations

import click
from rich.table import Table

from gpuslice.cli.options import console, fleet_option, inventory, json_option, print_json
from gpuslice.errors import UsageError
from gpuslice.plan.layout import Layout
from gpuslice.plan.load import load_plan
from gpuslice.plan.resolve import resolve
from gpuslice.sizes import format_mib


@click.group()
def plan() -> None:
    """Validate and show partition plans."""


def _layout(plan_source: str, fleet: str | None) -> Layout:
    plan = load_plan(plan_source)  # a plan's own problems come before the hardware's
    return resolve(plan, inventory(fleet))


@plan.command()
@click.argument("plan_source", metavar="PLAN")
@fleet_option
def check(plan_source: str, fleet: str | None) -> None:
    """Check a plan against the GPUs; list every problem (exit 2) or say it is valid.

    PLAN is a YAML file, or the compact form: 'small=2x mps:25%/10GiB, large=1x mps:50%'.
    """
    layout = _layout(plan_source, fleet)
    slices = len(layout.slices)
    console.print(
        f"[green]ok[/]: {len(layout.pools)} pool{'s' if len(layout.pools) != 1 else ''}, "
        f"{slices} slice{'s' if slices != 1 else ''} on {layout.inventory_source}"
    )


@plan.command()
@click.argument("plan_source", metavar="PLAN")
@fleet_option
@json_option
def show(plan_source: str, fleet: str | None, as_json: bool) -> None:
    """Show every slice of a plan: its device UUID, compute share, memory cap and daemon.

    PLAN is a YAML file, or the compact form: 'small=2x mps:25%/10GiB, large=1x mps:50%'.
    The JSON form loads back with gpuslice.Layout.from_dict.
    """
    layout = _layout(plan_source, fleet)
    if as_json:
        print_json(layout.to_dict())
        return
    console.print(layout_table(layout))
    daemons = layout.daemons
    if daemons:
        console.print(
            f"MPS daemons: {len(daemons)} (one per device), "
            f"pipe dirs under {daemons[0].pipe_dir.rsplit('/', 2)[0]}"
        )


def layout_table(layout: Layout) -> Table:
    """Every slice of a layout: pool, device UUID, compute share, SMs, memory cap."""
    table = Table(title=f"{layout.plan_text}  on {layout.inventory_source}", title_justify="left")
    for column in ("pool", "#", "kind", "GPU", "CUDA_VISIBLE_DEVICES", "compute", "SMs", "memory"):
        table.add_column(column, overflow="fold")
    for s in layout.slices:
        compute = (
            f"{s.compute}%"
            if s.compute is not None
            else ("100%" if s.kind != "share" else "shared")
        )
        memory = format_mib(s.memory_mib) if s.memory_mib else f"≤{format_mib(s.memory_total_mib)}"
        table.add_row(
            s.pool,
            str(s.rank),
            s.kind,
            str(s.gpu_index),
            s.device,
            compute,
            f"{'?' if s.expected_sms is None else s.expected_sms}/{s.sm_count or '?'}",
            memory,
        )
    return table


@click.command()
@click.argument("plan_source", metavar="PLAN")
@click.argument("pool")
@click.option(
    "--slice", "rank", type=int, default=0, show_default=True, help="Slice number in the pool."
)
@fleet_option
def env(plan_source: str, pool: str, rank: int, fleet: str | None) -> None:
    """Print the environment of one slice of POOL as shell `export` lines.

    `eval "$(gpuslice env plan.yaml small)"` before starting a CUDA process puts it in that
    slice: CUDA_VISIBLE_DEVICES plus, for MPS slices, the daemon's pipe directory and the limits.
    """
    from gpuslice.mps.env import export_lines, slice_environment

    layout = _layout(plan_source, fleet)
    try:
        pool_layout = layout.pool(pool)
    except KeyError as err:
        raise UsageError(err.args[0]) from err
    if not 0 <= rank < len(pool_layout.slices):
        raise UsageError(
            f"pool {pool!r} has slices 0..{len(pool_layout.slices) - 1}; --slice {rank} is not one"
        )
    click.echo(export_lines(slice_environment(pool_layout.slices[rank])), nl=False)
