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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpuslice.errors import PlanError, Problem
from gpuslice.hardware.catalog import MODELS, GpuModel, get_model, place_mig, placement_problem
from gpuslice.hardware.inventory import COMPUTE_MODES, Gpu, Inventory, MigDevice, compute_mode
from gpuslice.plan import limits

_NAMESPACE = uuid.UUID("6d1c7e0a-3f0b-5b7e-9a57-6770752d736c")


class FleetEntry(BaseModel):
    """One line of a fleet file: ``count`` GPUs of ``model``, optionally in MIG mode."""

    # strict: `count: "2"` or `count: true` are refused rather than converted.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    model: str = Field(max_length=64)
    count: int = Field(default=1, ge=1, le=limits.MAX_FLEET_GPUS)
    mig: list[str] | None = Field(default=None, max_length=8)
    compute_mode: str = "Default"

    @field_validator("compute_mode")
    @classmethod
    def _mode(cls, value: str) -> str:
        known = compute_mode(value)
        if known is None:
            shown = repr(value) if len(value) <= 40 else repr(value[:39] + "…")
            raise ValueError(
                f"unknown compute mode {shown}; write one of {', '.join(COMPUTE_MODES)} "
                "(as `nvidia-smi -q` prints it under Compute Mode)"
            )
        return known


class FleetSpec(BaseModel):
    """A fleet file; ``node`` names the machine, so two nodes' GPUs get different UUIDs."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    gpus: list[FleetEntry] = Field(min_length=1, max_length=limits.MAX_FLEET_GPUS)
    node: str | None = Field(default=None, max_length=253)


def _fleet_model_at(path: tuple[str, ...]) -> type[BaseModel] | None:
    if path == ():
        return FleetSpec
    if len(path) == 2 and path[0] == "gpus":
        return FleetEntry
    return None


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
    if entry.mig is not None and model.mig and not model.mig_profiles:
        return [
            Problem(
                f"{where}.mig",
                f"gpuslice has no MIG profile table for {model.name}, so it cannot describe "
                "its MIG instances",
                "leave out `mig:` here; on the real GPU the instances are read through NVML",
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


def _too_many(count: int, what: str) -> Problem:
    return Problem(
        "gpus",
        f"{count} {what}, more than the {limits.MAX_FLEET_GPUS} GPUs a fleet file may describe",
        "describe the GPUs of the node(s) the plan runs on; one fleet file per node is usual",
    )


def fleet_from_data(
    data: Any, source: str, marks: dict[tuple[str, ...], tuple[int, int]] | None = None
) -> Inventory:
    """Build an emulated inventory from a parsed fleet mapping.

    Bounds (:mod:`gpuslice.plan.limits`) are checked before any GPU is built: at most
    :data:`~gpuslice.plan.limits.MAX_FLEET_GPUS` GPUs in all.

    Raises:
        PlanError: every problem of the fleet description, each with its location.
    """
    # Messages name the file as people say it; the inventory keeps ``fleet:<path>``.
    label = f"fleet file {source.removeprefix('fleet:')}" if source.startswith("fleet:") else source
    if not isinstance(data, dict):
        raise PlanError(
            [
                Problem(
                    "<fleet>",
                    "a fleet file is a mapping with a `gpus:` list",
                    "e.g. `gpus: [{model: H100-80GB, count: 2}]`",
                )
            ],
            source=label,
        )
    entries = data.get("gpus")
    if isinstance(entries, list) and len(entries) > limits.MAX_FLEET_GPUS:
        raise PlanError([_too_many(len(entries), "entries")], source=label)
    try:
        spec = FleetSpec.model_validate(data)
    except ValidationError as err:
        from gpuslice.plan.load import problems_from_validation

        raise PlanError(
            problems_from_validation(err, marks or {}, model_at=_fleet_model_at, plan=False),
            source=label,
        ) from err
    total = sum(entry.count for entry in spec.gpus)
    if total > limits.MAX_FLEET_GPUS:
        raise PlanError([_too_many(total, "GPUs")], source=label)
    problems = [p for i, entry in enumerate(spec.gpus) for p in _entry_problems(i, entry)]
    if problems:
        raise PlanError(problems, source=label)
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
    """Read a fleet file (within the bounds of :mod:`gpuslice.plan.limits`).

    Raises:
        UsageError: the file cannot be read, is not a regular file or is too large.
        PlanError: the file is malformed YAML or describes GPUs that cannot exist.
    """
    from gpuslice.plan.source import read_text, read_yaml

    text = read_text(path, "fleet file")
    data, marks = read_yaml(text, source=f"fleet file {path}")
    return fleet_from_data(data, source=f"fleet:{path}", marks=marks)
