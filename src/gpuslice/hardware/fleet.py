"""Fleet files: GPUs described rather than present, for planning, tests and the demo.

Format (DESIGN.md, "Fleet file")::

    gpus:
      - {model: H100-80GB, count: 2}
      - {model: A100-40GB, count: 1, mig: [1g.5gb, 1g.5gb, 3g.20gb]}

Indices follow the file's order. UUIDs are made up but stable: the same file always gives
the same ``GPU-…`` and ``MIG-…`` strings (UUID5 of the model, index and instance), so plans,
tests and logs can refer to them. An optional top-level ``node: NAME`` salts them, so fleet
files of two nodes with the same GPUs describe different devices, as real nodes have.
"""

from __future__ import annotations

import difflib
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpuslice.errors import PlanError, Problem, UsageError
from gpuslice.hardware.catalog import MODELS, GpuModel, get_model, place_mig, placement_problem
from gpuslice.hardware.inventory import Gpu, Inventory, MigDevice

_NAMESPACE = uuid.UUID("6d1c7e0a-3f0b-5b7e-9a57-6770752d736c")


class FleetEntry(BaseModel):
    """One line of a fleet file: ``count`` GPUs of ``model``, optionally in MIG mode."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    count: int = Field(default=1, ge=1, le=100_000)
    mig: list[str] | None = None
    compute_mode: str = "Default"


class FleetSpec(BaseModel):
    """A fleet file; ``node`` names the machine, so two nodes' GPUs get different UUIDs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: list[FleetEntry] = Field(min_length=1)
    node: str | None = None


def gpu_uuid(model: str, index: int, node: str | None = None) -> str:
    """The stable made-up UUID of the ``index``-th GPU of a fleet (of ``node``, if named)."""
    key = f"{model}/{index}" if node is None else f"{node}/{model}/{index}"
    return f"GPU-{uuid.uuid5(_NAMESPACE, key)}"


def mig_uuid(parent: str, position: int, profile: str) -> str:
    """The stable made-up UUID of a MIG device of an emulated GPU."""
    return f"MIG-{uuid.uuid5(_NAMESPACE, f'{parent}/{position}/{profile}')}"


def _mig_devices(model: GpuModel, parent: str, profiles: list[str]) -> tuple[MigDevice, ...]:
    placement = place_mig(model, profiles) or ()
    devices = []
    for position, (name, start) in enumerate(placement):
        profile = model.profile(name)
        assert profile is not None  # place_mig only places known profiles
        devices.append(
            MigDevice(
                uuid=mig_uuid(parent, position, name),
                profile=profile.name,
                index=position,
                gpu_instance_id=position + 1,
                compute_instance_id=0,
                memory_mib=profile.memory_mib,
                sm_count=profile.sm_count,
                placement_start=start,
            )
        )
    return tuple(devices)


def _entry_problems(position: int, entry: FleetEntry) -> list[Problem]:
    where = f"gpus.{position}"
    try:
        model = get_model(entry.model)
    except KeyError:
        close = difflib.get_close_matches(entry.model, list(MODELS), n=1, cutoff=0.4)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return [
            Problem(
                f"{where}.model",
                f"unknown GPU model {entry.model!r}",
                hint + f"known models: {', '.join(MODELS)}",
            )
        ]
    if entry.mig is None:
        return []
    if not model.mig:
        return [Problem(f"{where}.mig", f"{model.name} has no MIG", "remove `mig:` for this GPU")]
    reason = placement_problem(model, entry.mig)
    return (
        [Problem(f"{where}.mig", reason, "list MIG profiles that fit on one GPU")] if reason else []
    )


def fleet_from_data(data: Any, source: str) -> Inventory:
    """Build an emulated inventory from a parsed fleet mapping.

    Raises:
        PlanError: every problem of the fleet description, each with its location.
    """
    if not isinstance(data, dict):
        raise PlanError(
            [
                Problem(
                    "<fleet>",
                    "a fleet file is a mapping with a `gpus:` list",
                    "e.g. `gpus: [{model: H100-80GB, count: 2}]`",
                )
            ],
            source=source,
        )
    try:
        spec = FleetSpec.model_validate(data)
    except ValidationError as err:
        from gpuslice.plan.load import problems_from_validation

        raise PlanError(problems_from_validation(err, {}), source=source) from err
    problems = [p for i, entry in enumerate(spec.gpus) for p in _entry_problems(i, entry)]
    if problems:
        raise PlanError(problems, source=source)
    gpus: list[Gpu] = []
    for entry in spec.gpus:
        model = get_model(entry.model)
        for _ in range(entry.count):
            index = len(gpus)
            parent = gpu_uuid(model.name, index, spec.node)
            gpus.append(
                Gpu(
                    index=index,
                    uuid=parent,
                    name=model.name,
                    model=model,
                    memory_mib=model.memory_mib,
                    sm_count=model.sm_count,
                    mig_enabled=entry.mig is not None,
                    mig_devices=_mig_devices(model, parent, entry.mig) if entry.mig else (),
                    compute_mode=entry.compute_mode,
                )
            )
    return Inventory(gpus=tuple(gpus), source=source, emulated=True)


def load_fleet(path: str | Path) -> Inventory:
    """Read a fleet file.

    Raises:
        UsageError: the file cannot be read.
        PlanError: the file is malformed YAML or describes GPUs that cannot exist.
    """
    from gpuslice.plan.load import read_yaml

    try:
        text = Path(path).read_text()
    except OSError as err:
        raise UsageError(f"cannot read fleet file {str(path)!r}: {err.strerror}") from err
    data, _ = read_yaml(text, source=f"fleet file {path}")
    return fleet_from_data(data, source=f"fleet:{path}")
