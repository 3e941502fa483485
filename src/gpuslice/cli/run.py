"""Verbs that run or hand work on: ``gpuslice globus-compute`` (``demo`` and ``bench`` later)."""

from __future__ import annotations

import click

from gpuslice.cli.options import fleet_option


@click.command("globus-compute")
@click.argument("plan_source", metavar="PLAN")
@click.argument("pool")
@fleet_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the endpoint's config.yaml here (e.g. ~/.globus_compute/NAME/config.yaml); "
    "default: print it.",
)
def globus_compute(plan_source: str, pool: str, fleet: str | None, out: str | None) -> None:
    """Write a Globus Compute endpoint config.yaml that runs POOL's slices.

    The engine (GlobusComputeEngine) gets the pool's device UUIDs as available_accelerators,
    one worker per slice, and a worker_init that starts the pool's MPS daemons and exports
    its limits. PLAN is a YAML file or the compact form: 'small=2x mps:25%/10GiB'.
    """
    from gpuslice.parsl.globus import write_endpoint_config

    text = write_endpoint_config(plan_source, pool, out, fleet=fleet)
    if out is None:
        click.echo(text, nl=False)
    else:
        click.echo(f"wrote {out}", err=True)


commands = [globus_compute]
