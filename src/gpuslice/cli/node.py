"""``gpuslice node-run``: what every Parsl job of a gpuslice configuration runs on its node.

Written into jobs by :func:`gpuslice.parsl_config` (and into Globus Compute endpoint configs by
``gpuslice globus-compute``); see :mod:`gpuslice.parsl.node`. Not a command to type by hand, but
its messages are what a user reads when a pool cannot start on a node.
"""

from __future__ import annotations

import shlex
import sys

import click

from gpuslice.errors import UsageError


@click.command(
    "node-run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--spec", required=True, help="The node spec gpuslice wrote (b64:…).")
@click.option(
    "--pool",
    "pools",
    multiple=True,
    required=True,
    metavar="NAME=COMMAND",
    help="A pool and the Parsl worker-pool command its executor formatted for this block; "
    "repeat per pool. With a single --pool NAME, the command follows `--` instead.",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def node_run(spec: str, pools: tuple[str, ...], command: tuple[str, ...]) -> None:
    """Run this node's share of a gpuslice configuration until its block ends.

    Resolves the plan on this node's GPUs, starts the MPS daemons, starts one Parsl worker
    pool per (pool, device) inside its slice, restarts what dies, and stops everything when
    the block is cancelled. Exits 1, naming the node, the pool and the reason, when a pool
    cannot start here.
    """
    from gpuslice.parsl.node import decode_spec, run

    commands: dict[str, str] = {}
    if command:
        if len(pools) != 1 or "=" in pools[0]:
            raise UsageError("with a command after `--`, give exactly one --pool NAME")
        commands[pools[0]] = shlex.join(command)
    else:
        for entry in pools:
            name, sep, text = entry.partition("=")
            if not sep or not name or not text.strip():
                raise UsageError(f"--pool {entry!r} is not NAME=COMMAND")
            commands[name] = text
    sys.exit(run(decode_spec(spec), commands))


commands = [node_run]
