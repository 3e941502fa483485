"""The v1 plan format as a strict pydantic schema, and the frozen :class:`Plan` it yields.

The schema checks what can be checked without hardware (names, ranges, sizes, one kind per
pool, unknown keys); :func:`gpuslice.plan.resolve.resolve` checks the rest against the GPUs.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from gpuslice.mps.paths import root_problems
from gpuslice.plan import limits
from gpuslice.sizes import SIZE_RULE, parse_size_mib

SUPPORTED_VERSIONS = (1,)
POOL_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,39}$")
#: MIG profile names as NVIDIA prints them (``1g.10gb``, ``1g.10gb+me``, ``1c.3g.40gb``):
#: letters, digits, ``.``, ``+``, ``_`` and ``-`` only, so a name is never shell syntax.
MIG_PROFILE = re.compile(r"^[0-9a-z][0-9a-z.+_-]{0,31}$")
#: A GPU in a ``gpus:`` list: an index, or a ``GPU-…`` UUID (checked against the GPUs by
#: resolve; letters, digits and ``-`` only, so a reference is never shell syntax).
GPU_UUID_REF = re.compile(r"^GPU-[0-9A-Za-z-]{1,36}$")


def _size(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return parse_size_mib(value)  # its ValueError names the value and the rule
    raise ValueError(f"a {type(value).__name__} is not a memory size; {SIZE_RULE}")


MemoryMiB = Annotated[int, BeforeValidator(_size), Field(gt=0)]
GpuIndex = Annotated[int, Field(ge=0, lt=limits.MAX_FLEET_GPUS)]
GpuUuid = Annotated[str, Field(pattern=GPU_UUID_REF.pattern)]
GpuRef = GpuIndex | GpuUuid
PerGpu = Annotated[int, Field(ge=1, le=limits.MAX_SLICES_PER_GPU)]
GpuList = Annotated[list[GpuRef], Field(min_length=1, max_length=limits.MAX_FLEET_GPUS)]


class _Strict(BaseModel):
    # strict: `per_gpu: "2"`, `per_gpu: true` or `oversubscribe: "yes"` are refused rather
    # than converted; numbers are numbers and flags are booleans.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class MpsSpec(_Strict):
    """MPS client limits: ``compute`` % of SMs and a ``memory`` cap; both optional."""

    compute: int | None = Field(default=None, ge=1, le=100)
    memory: MemoryMiB | None = None

    @field_validator("compute", mode="before")
    @classmethod
    def _percent(cls, value: Any) -> Any:
        # `compute: 25%` is text in YAML; the digits before the `%` are the number.
        if isinstance(value, str) and value.strip().endswith("%"):
            digits = value.strip()[:-1].strip()
            if digits.isdigit() and len(digits) <= 3:
                return int(digits)
        return value


class ShareSpec(_Strict):
    """Plain time-sharing: no limits (Parsl's own oversubscription)."""


class MigSpec(_Strict):
    """MIG instances of one profile, optionally with MPS clients inside each instance."""

    profile: str
    count: int | None = Field(default=None, ge=1, le=limits.MAX_MIG_INSTANCES)
    mps: MpsSpec | None = None
    per_instance: PerGpu = 1

    @field_validator("profile")
    @classmethod
    def _lower(cls, value: str) -> str:
        name = value.strip().lower()
        if not MIG_PROFILE.match(name):
            raise ValueError(
                f"{value[:40]!r} is not a MIG profile name; write one as nvidia-smi prints it, "
                "e.g. 1g.10gb or 3g.40gb (see `gpuslice gpus`)"
            )
        return name

    @model_validator(mode="after")
    def _per_instance_needs_mps(self) -> MigSpec:
        if self.per_instance > 1 and self.mps is None:
            raise ValueError(
                "per_instance above 1 shares a MIG instance between workers; add `mps: {}` "
                "(MPS inside the instance) or keep per_instance: 1"
            )
        return self


def _mig(value: Any) -> Any:
    return {"profile": value} if isinstance(value, str) else value


class PoolSpec(_Strict):
    """One pool of identical slices; becomes one Parsl executor."""

    mps: MpsSpec | None = None
    mig: Annotated[MigSpec | None, BeforeValidator(_mig)] = None
    share: ShareSpec | None = None
    per_gpu: PerGpu | None = None
    gpus: Literal["all"] | GpuList | None = None
    oversubscribe: bool = False

    @model_validator(mode="before")
    @classmethod
    def _default_per_gpu(cls, data: Any) -> Any:
        # One worker per GPU unless told otherwise; kept explicit so equal plans compare equal.
        if isinstance(data, dict) and data.get("mig") is None and "per_gpu" not in data:
            return {**data, "per_gpu": 1}
        return data

    @model_validator(mode="after")
    def _one_kind(self) -> PoolSpec:
        kinds = [k for k in ("mps", "mig", "share") if getattr(self, k) is not None]
        if len(kinds) != 1:
            found = " and ".join(kinds) if kinds else "none"
            raise ValueError(
                f"a pool needs exactly one of mps, mig or share (found {found}); "
                "e.g. `mps: {compute: 25, memory: 10GiB}`, `mig: 1g.10gb` or `share: {}`"
            )
        if self.mig is not None and self.per_gpu is not None:
            raise ValueError(
                "per_gpu does not apply to a mig pool; use mig.count (instances per GPU) "
                "and mig.per_instance (workers per instance, with mps)"
            )
        return self

    @property
    def kind(self) -> Literal["mps", "mig", "share"]:
        """``mps``, ``mig`` or ``share``."""
        if self.mps is not None:
            return "mps"
        if self.mig is not None:
            return "mig"
        return "share"

    @property
    def workers_per_gpu(self) -> int:
        """Workers (slices) this pool puts on each of its GPUs (mps/share pools)."""
        return self.per_gpu if self.per_gpu is not None else 1


class Plan(_Strict):
    """A partition plan, format version 1 (see DESIGN.md, "Plan format, v1").

    Attributes:
        version: format version; only 1 exists.
        gpus: ``all`` or a list of GPU indices / UUIDs the plan may use.
        pools: pool name -> :class:`PoolSpec`, in file order.
        oversubscribe: allow MPS compute percentages on one GPU to sum above 100.
        mps_dir: root of the per-device MPS pipe and log directories (default: private tmp dir).
    """

    version: int
    gpus: Literal["all"] | GpuList = "all"
    pools: dict[str, PoolSpec] = Field(min_length=1, max_length=limits.MAX_POOLS)
    oversubscribe: bool = False
    mps_dir: str | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value not in SUPPORTED_VERSIONS:
            shown = repr(value) if isinstance(value, (int, float)) and abs(value) < 1e9 else ""
            raise ValueError(
                f"unsupported plan version{' ' + shown if shown else ''}; this gpuslice reads "
                "version 1 (write `version: 1`)"
            )
        return value

    @field_validator("mps_dir")
    @classmethod
    def _mps_dir(cls, value: str | None) -> str | None:
        # The same rule parsl_config, `gpuslice mps ensure` and the workers apply.
        if value is not None:
            problems = root_problems(value)
            if problems:
                raise ValueError(
                    "; ".join(problems) + " (mps_dir is the root of the MPS pipe and log "
                    "directories: an absolute path on a local disk, e.g. /tmp/gs-mps)"
                )
        return value

    @field_validator("pools", mode="after")
    @classmethod
    def _names(cls, pools: dict[str, PoolSpec]) -> dict[str, PoolSpec]:
        bad = [str(name) for name in pools if not POOL_NAME.match(str(name))]
        if bad:
            raise ValueError(
                f"invalid pool name{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}: "
                "start with a letter, then letters, digits, '_' or '-', at most 40 characters "
                "(a pool name becomes a Parsl executor label)"
            )
        return pools

    def __hash__(self) -> int:  # pools is a dict, so the generated hash would fail
        return hash(self.model_dump_json())
