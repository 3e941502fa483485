"""The JSON form of a :class:`~gpuslice.plan.layout.Layout` as a strict schema.

``gpuslice plan show --json`` prints this form and :meth:`Layout.from_dict` reads it back.
The schema checks the structure (no unknown or missing keys, numbers are numbers, flags are
booleans, bounded lengths); :func:`gpuslice.plan.layout.layout_problems` then checks the
contents. Kept apart from :mod:`gpuslice.plan.layout` so workers that only use layouts do
not import pydantic.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpuslice.errors import PlanError, Problem
from gpuslice.plan import limits
from gpuslice.plan.layout import Layout, PoolLayout, Slice

_Short = Annotated[str, Field(max_length=256)]
_Path = Annotated[str, Field(max_length=4096)]
_Count = Annotated[int, Field(ge=0, le=1 << 40)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SliceJson(_Strict):
    """One slice as ``to_dict`` writes it (the fields of :class:`Slice`)."""

    pool: _Short
    rank: _Count
    kind: Literal["mps", "mig", "share"]
    gpu_index: _Count
    gpu_uuid: _Short
    device: _Short
    compute: _Count | None = None
    memory_mib: _Count | None = None
    sm_count: _Count = 0
    expected_sms: _Count | None = None
    memory_total_mib: _Count = 0
    mps_pipe_dir: _Path | None = None
    mps_log_dir: _Path | None = None


class PoolJson(_Strict):
    """One pool: its name, kind, oversubscribe flag and slices."""

    name: _Short
    kind: Literal["mps", "mig", "share"]
    oversubscribe: bool = False
    slices: list[SliceJson] = Field(max_length=limits.MAX_SLICES)


class LayoutJson(_Strict):
    """The whole layout."""

    inventory_source: _Path
    emulated: bool = False
    plan: Annotated[str, Field(max_length=limits.MAX_SOURCE_BYTES)] = ""
    pools: list[PoolJson] = Field(min_length=1, max_length=limits.MAX_POOLS)


def layout_from_data(data: Any) -> Layout:
    """Build a :class:`Layout` from parsed JSON, checking its structure only.

    Raises:
        PlanError: every structural problem, located as ``pools.0.slices.3.device``.
    """
    from gpuslice.plan.load import problems_from_validation

    if not isinstance(data, dict):
        raise PlanError(
            [
                Problem(
                    "<layout>",
                    f"a layout is a JSON object, not {type(data).__name__}",
                    "give the output of `gpuslice plan show --json`",
                )
            ],
            source="layout",
        )
    try:
        spec = LayoutJson.model_validate(data)
    except ValidationError as err:
        raise PlanError(
            problems_from_validation(err, {}, model_at=_model_at, plan=False), source="layout"
        ) from err
    return Layout(
        pools=tuple(
            PoolLayout(
                name=p.name,
                kind=p.kind,
                oversubscribe=p.oversubscribe,
                slices=tuple(Slice(**s.model_dump()) for s in p.slices),
            )
            for p in spec.pools
        ),
        inventory_source=spec.inventory_source,
        emulated=spec.emulated,
        plan_text=spec.plan,
    )


def _model_at(path: tuple[str, ...]) -> type[BaseModel] | None:
    if path == ():
        return LayoutJson
    if len(path) == 2 and path[0] == "pools":
        return PoolJson
    if len(path) == 4 and path[0] == "pools" and path[2] == "slices":
        return SliceJson
    return None
