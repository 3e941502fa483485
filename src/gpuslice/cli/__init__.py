"""The ``gpuslice`` command: one module per group of verbs, all sharing error handling.

User errors (bad plans, bad arguments) exit with code 2 and a message naming the field and
the fix; environment errors (no GPU, no MPS daemon) exit with 1. Never a traceback for input.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from gpuslice.errors import GpusliceError


class _Group(click.Group):
    """A click group that turns gpuslice errors into clean messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GpusliceError as err:
            click.echo(click.style("error: ", fg="red", bold=True) + str(err), err=True)
            sys.exit(err.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gpuslice")
def cli() -> None:
    """Cut NVIDIA GPUs into MPS, MIG and time-shared slices for Parsl workflows.

    \b
    Typical use:
      gpuslice gpus                         what GPUs are here (or --fleet FILE)
      gpuslice plan check plan.yaml         validate a plan against the GPUs
      gpuslice plan show plan.yaml          every slice with its device and limits
      gpuslice env plan.yaml small          the environment of one slice
      gpuslice mps ensure                   start the MPS daemon of a device
      gpuslice demo                         a Parsl run, one task per GPU vs the plan

    Without a GPU, describe one in a fleet file (or set GPUSLICE_FLEET):
    gpuslice gpus --fleet examples/fleet-h100.yaml
    """


def _register() -> None:
    from gpuslice.cli import hardware, plans

    cli.add_command(hardware.gpus)
    cli.add_command(plans.plan)
    cli.add_command(plans.env)
    from gpuslice.cli.suggest import suggest

    plans.plan.add_command(suggest)
    for module_name in ("mps", "mig", "run", "workflows", "node", "profile"):
        try:
            module = __import__(f"gpuslice.cli.{module_name}", fromlist=["commands"])
        except ImportError:  # pragma: no cover - a verb group under construction
            continue
        for command in module.commands:
            cli.add_command(command)


_register()


def main() -> None:
    """Entry point of the ``gpuslice`` console script."""
    cli(prog_name="gpuslice")
