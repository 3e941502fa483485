"""Options shared by CLI verbs and the helpers that read them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from gpuslice.cli.console import console
from gpuslice.hardware.inventory import Inventory, discover

F = TypeVar("F", bound=Callable[..., Any])


def fleet_option_with(help_text: str) -> Callable[[F], F]:
    """The --fleet option (env GPUSLICE_FLEET) with a command's own description of its default."""
    return click.option(
        "--fleet",
        type=click.Path(dir_okay=False),
        envvar="GPUSLICE_FLEET",
        default=None,
        help=f"Fleet YAML describing GPUs that are not here (emulated GPU); {help_text} "
        "Env: GPUSLICE_FLEET.",
    )


fleet_option = fleet_option_with("default: the real GPUs through NVML.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def inventory(fleet: str | None) -> Inventory:
    """The inventory a command works on: the fleet file, or NVML."""
    return discover(fleet)


def print_json(data: Any) -> None:
    """Print JSON on stdout, unstyled, so scripts can parse it."""
    click.echo(json.dumps(data, indent=2, sort_keys=False))


__all__ = ["console", "fleet_option", "fleet_option_with", "inventory", "json_option", "print_json"]
