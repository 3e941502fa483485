"""Options shared by CLI verbs and the helpers that read them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from gpuslice.cli.console import console
from gpuslice.hardware.inventory import Inventory, discover

F = TypeVar("F", bound=Callable[..., Any])

fleet_option = click.option(
    "--fleet",
    type=click.Path(dir_okay=False),
    envvar="GPUSLICE_FLEET",
    default=None,
    help="Fleet YAML describing GPUs that are not here (emulated GPU); "
    "default: the real GPUs through NVML. Env: GPUSLICE_FLEET.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def inventory(fleet: str | None) -> Inventory:
    """The inventory a command works on: the fleet file, or NVML."""
    return discover(fleet)


def print_json(data: Any) -> None:
    """Print JSON on stdout, unstyled, so scripts can parse it."""
    click.echo(json.dumps(data, indent=2, sort_keys=False))


__all__ = ["console", "fleet_option", "inventory", "json_option", "print_json"]
