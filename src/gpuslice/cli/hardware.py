"""``gpuslice gpus``: the GPUs of this node (or of a fleet file)."""

from __future__ import annotations

import click
from rich.table import Table

from gpuslice.cli.options import console, fleet_option, inventory, json_option, print_json
from gpuslice.sizes import format_mib


@click.command()
@fleet_option
@json_option
def gpus(fleet: str | None, as_json: bool) -> None:
    """Show the GPUs: model, memory, SMs, MPS/MIG support and MIG instances.

    Reads the real GPUs through NVML, or the GPUs a fleet file describes (--fleet).
    """
    inv = inventory(fleet)
    if as_json:
        print_json(inv.to_dict())
        return
    title = f"GPUs from {inv.source}" + (
        " (emulated: described, not present)" if inv.emulated else ""
    )
    table = Table(title=title, title_justify="left")
    for column in ("idx", "model", "uuid", "memory", "SMs", "MPS", "MIG", "mode"):
        table.add_column(column, overflow="fold")
    for gpu in inv.gpus:
        mig = "on" if gpu.mig_enabled else ("off" if gpu.model and gpu.model.mig else "-")
        table.add_row(
            str(gpu.index),
            gpu.name,
            gpu.uuid,
            format_mib(gpu.memory_mib),
            str(gpu.sm_count) if gpu.sm_count else "?",  # a model the catalog lacks
            "yes" if gpu.supports_mps else "no",
            mig,
            gpu.compute_mode,
        )
        for device in gpu.mig_devices:
            table.add_row(
                "",
                f"  └ {device.profile}",
                device.uuid,
                format_mib(device.memory_mib),
                str(device.sm_count),
                "",
                f"gi {device.gpu_instance_id}",
                "",
            )
    console.print(table)
    if inv.driver_version:
        console.print(f"driver {inv.driver_version}, CUDA {inv.cuda_version}")
