"""``gpuslice worker-init``: what a node-local pool's ``worker_init`` runs on its node.

Parsl runs ``worker_init`` in the block's shell on the node the block landed on; there,
this verb resolves the plan against that node's GPUs and prints the ``export`` lines the
pool's workers need (see :func:`gpuslice.parsl.config.node_worker_init`).
"""

from __future__ import annotations

import click

from gpuslice.errors import UsageError


@click.command("worker-init")
@click.option(
    "--plan", "plan_text", required=True, help="The plan (YAML/JSON text, path or compact form)."
)
@click.option("--pool", required=True, help="The pool whose workers start on this node.")
@click.option(
    "--slots",
    type=click.IntRange(1),
    required=True,
    help="Workers the executor was configured with (the pool's slices per node).",
)
@click.option(
    "--fleet",
    type=click.Path(dir_okay=False),
    default=None,
    help="Resolve against a fleet file instead of this node's GPUs (emulated nodes).",
)
@click.option("--no-ensure", is_flag=True, help="Do not start the pool's MPS daemons.")
def worker_init(plan_text: str, pool: str, slots: int, fleet: str | None, no_ensure: bool) -> None:
    """Resolve PLAN on this node; start POOL's MPS daemons; print its workers' exports.

    Used inside Parsl's worker_init for pools on other machines (Slurm, PBS, …), where the
    device UUIDs are only known on the node: `eval "$(gpuslice worker-init ...)"`.
    """
    from gpuslice.hardware.inventory import discover
    from gpuslice.mps.daemon import ensure
    from gpuslice.mps.env import export_lines
    from gpuslice.parsl.config import pool_exports, register_emulated_devices, slot_names
    from gpuslice.parsl.worker import SLOTS_ENV
    from gpuslice.plan.resolve import resolve

    layout = resolve(plan_text, discover(fleet))
    try:
        here = layout.pool(pool)
    except KeyError as err:
        raise UsageError(str(err.args[0])) from err
    if len(here.slices) != slots:
        raise UsageError(
            f"on this node pool {pool!r} has {len(here.slices)} slices, but its executor was "
            f"configured for {slots}: the nodes must have the GPUs the plan was sized for"
        )
    if layout.emulated:
        register_emulated_devices(layout)
    if not no_ensure:
        for d in here.daemons:  # once per device, not once per slice
            ensure(d.pipe_dir, d.log_dir, d.device)
    env = pool_exports(layout, here, fleet=fleet)
    env[SLOTS_ENV] = ";".join(
        f"{slot}={s.device}" for slot, s in zip(slot_names(here), here.slices, strict=True)
    )
    click.echo(export_lines(env), nl=False)


commands = [worker_init]
