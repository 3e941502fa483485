"""``gpuslice mig assert|apply``: check, and create, the MIG instances a plan needs.

``assert`` exits 0 when the plan's ``mig:`` pools have their instances and 1 with the diff
on stdout when not (like ``nvidia-mig-parted assert``); ``apply`` creates what is missing
(root, idle GPUs), never destroys anything, and never runs anything for a fleet file.
"""

from __future__ import annotations

import click

from gpuslice.cli.console import err_console
from gpuslice.cli.options import console, fleet_option, inventory, json_option, print_json
from gpuslice.hardware.inventory import Inventory
from gpuslice.mig.apply import apply as apply_plan
from gpuslice.mig.check import assert_layout


@click.group()
def mig() -> None:
    """Assert and create the MIG instances a plan's mig: pools need."""


@mig.command("assert")
@click.argument("plan_source", metavar="PLAN")
@fleet_option
@json_option
@click.pass_context
def assert_cmd(ctx: click.Context, plan_source: str, fleet: str | None, as_json: bool) -> None:
    """Exit 0 when the MIG instances PLAN needs are present, 1 with the diff when not.

    Reads only. Instances the plan does not need may exist beside them.
    PLAN is a YAML file or the compact form, e.g. 'tiny=mig:1g.10gb'.
    """
    diff = assert_layout(plan_source, inventory(fleet))
    if as_json:
        print_json(diff.to_dict())
    else:
        click.echo(diff.describe())
    if not diff.satisfied:
        ctx.exit(1)


@mig.command("apply")
@click.argument("plan_source", metavar="PLAN")
@fleet_option
@click.option("--dry-run", is_flag=True, help="Print the commands without running them.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before creating instances.")
@json_option
def apply_cmd(plan_source: str, fleet: str | None, dry_run: bool, yes: bool, as_json: bool) -> None:
    """Create the MIG instances PLAN lacks: `nvidia-smi mig -i N -cgi … -C`, one per GPU.

    Needs root and idle GPUs; never destroys an instance and never turns MIG mode on (it
    prints that command for the administrator). Does nothing when `gpuslice mig assert`
    passes. With --fleet nothing is run: the commands are printed, as with --dry-run.
    """
    inv = inventory(fleet)

    def echo(text: str) -> None:
        # With --json, stdout carries the report only.
        if as_json:
            err_console.print(text, markup=False, highlight=False)
        else:
            console.print(text, markup=False, highlight=False)

    def reread() -> Inventory:
        return inventory(fleet)

    def ask(question: str) -> bool:
        return click.confirm(question, default=False, err=True)

    report = apply_plan(
        plan_source,
        inv,
        dry_run=dry_run,
        echo=echo,
        confirm=None if yes else ask,
        reread=reread,
    )
    if as_json:
        print_json(report.to_dict())
    elif report.after is not None:
        console.print(report.after.describe(), markup=False, highlight=False)


commands = [mig]
