"""Read a plan from a path, YAML text or the compact form; report every problem at once."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from gpuslice.errors import PlanError, Problem
from gpuslice.plan import limits
from gpuslice.plan.compact import looks_compact, parse_compact
from gpuslice.plan.schema import POOL_NAME, MigSpec, MpsSpec, Plan, PoolSpec, ShareSpec
from gpuslice.plan.source import Marks, check_length, read_text, read_yaml

__all__ = ["Marks", "load_plan", "plan_from_data", "problems_from_validation", "read_yaml"]


def _model_at(path: tuple[str, ...]) -> type[BaseModel] | None:
    """The schema model of the mapping at ``path`` (for suggesting valid keys)."""
    if path == ():
        return Plan
    if len(path) == 2 and path[0] == "pools":
        return PoolSpec
    if len(path) == 3 and path[0] == "pools":
        nested: dict[str, type[BaseModel]] = {"mps": MpsSpec, "mig": MigSpec, "share": ShareSpec}
        return nested.get(path[2])
    if len(path) == 4 and path[0] == "pools" and path[2:] == ("mig", "mps"):
        return MpsSpec
    return None


#: pydantic's own names in error locations: validators and union members
#: (``function-before[...]``, ``list[...]``, ``literal['all']``, ``[key]``).
_INTERNAL = re.compile(r"^([a-z][a-z0-9_-]*)?\[.*\]$")


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    # Users only need the keys they wrote; a key of theirs such as "0[" stays.
    return tuple(str(part) for part in loc if not _INTERNAL.match(str(part)))


def _where(path: tuple[str, ...], marks: Marks) -> str:
    location = ".".join(path) if path else "<plan>"
    for end in range(len(path), -1, -1):
        if path[:end] in marks:
            line, column = marks[path[:end]]
            return f"{location} (line {line}, column {column})" if marks else location
    return location


def shown(value: object, limit: int = 60) -> str:
    """A short ``repr`` of a user's value for messages (huge values are cut, never expanded)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return "<an integer of more than 60 digits>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


ModelAt = Callable[[tuple[str, ...]], "type[BaseModel] | None"]
_QUOTED = {"int_type": "number", "bool_type": "true or false"}


def problems_from_validation(
    err: ValidationError, marks: Marks, *, model_at: ModelAt | None = None, plan: bool = True
) -> list[Problem]:
    """Translate pydantic's errors into located problems with hints, one per cause.

    Args:
        err: the validation error.
        marks: line and column of each path, from :func:`read_yaml`.
        model_at: the schema model of the mapping at a path (to suggest valid keys);
            the plan schema's by default.
        plan: whether the errors are a plan's (its ``gpus:`` key has its own message).
    """
    model_at = model_at or _model_at
    problems: list[Problem] = []
    seen: set[tuple[tuple[str, ...], str]] = set()
    for item in err.errors():
        path = _clean_loc(item["loc"]) or tuple(str(p) for p in item["loc"][-1:])
        kind = item["type"]
        value = item.get("input")
        if plan and "gpus" in path:
            # ``all`` or a list of int|str: pydantic reports every union member; say it once.
            path = path[: path.index("gpus") + 1]
            problem = Problem(
                _where(path, marks),
                "gpus must be `all` or a list of GPU indices or UUIDs",
                "e.g. `gpus: all`, `gpus: [0, 1]` or `gpus: [GPU-8f6c…]`",
            )
        elif not plan and path == ("gpus",) and kind != "missing":
            problem = Problem(
                _where(path, marks),
                "the fleet lists no GPU" if kind == "too_short" else "gpus must be a list",
                "list GPU entries, e.g. `gpus: [{model: H100-80GB, count: 2}]`",
            )
        elif kind == "extra_forbidden":
            model = model_at(path[:-1])
            valid = sorted(model.model_fields) if model else []
            close = difflib.get_close_matches(path[-1], valid, n=1)
            hint = f"did you mean {close[0]!r}?" if close else ""
            if valid:
                hint = (hint + " " if hint else "") + f"valid keys here: {', '.join(valid)}"
            problem = Problem(_where(path, marks), f"unknown key {shown(path[-1])}", hint)
        elif kind == "missing":
            hint = "add `version: 1` at the top" if path == ("version",) else f"add `{path[-1]}:`"
            problem = Problem(_where(path, marks), "required key is missing", hint)
        else:
            message = item["msg"].removeprefix("Value error, ")
            if isinstance(value, (int, float, str)) and not kind.startswith("value_error"):
                message = f"{message} (got {shown(value)})"
            hint = _hint_for(path, kind) if plan else _other_hint(path)
            if kind in _QUOTED and isinstance(value, str):
                hint = (hint + "; " if hint else "") + (
                    f"write a {_QUOTED[kind]} without quotes"
                    if kind == "int_type"
                    else "write true or false without quotes"
                )
            problem = Problem(_where(path, marks), message, hint)
        key = (path, problem.message)
        if key not in seen:
            seen.add(key)
            problems.append(problem)
    return problems


def _hint_for(path: tuple[str, ...], kind: str) -> str:
    leaf = path[-1] if path else ""
    if leaf == "compute":
        return "a whole percentage of the GPU's SMs from 1 to 100"
    if leaf in ("per_gpu", "per_instance"):
        return f"a whole number from 1 to {limits.MAX_SLICES_PER_GPU}"
    if leaf == "count":
        return f"a whole number from 1 to {limits.MAX_MIG_INSTANCES}"
    if leaf == "pools" and kind == "too_short":
        return "declare at least one pool, e.g. `small: {mps: {compute: 25}, per_gpu: 2}`"
    return ""


def _other_hint(path: tuple[str, ...]) -> str:
    """Hints for fleet files (the layout schema's messages need none)."""
    if path[-1:] == ("count",) and path[:1] == ("gpus",):
        return f"GPUs of this model, a whole number from 1 to {limits.MAX_FLEET_GPUS}"
    return ""


def plan_from_data(data: Any, source: str, marks: Marks | None = None) -> Plan:
    """Validate an already-parsed plan mapping.

    Raises:
        PlanError: every problem found, each with location (and line, for YAML) and a fix.
    """
    marks = marks or {}
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise PlanError(
            [
                Problem(
                    "<plan>",
                    f"a plan is a mapping with version and pools, not {kind}",
                    "start the file with `version: 1` and a `pools:` mapping",
                )
            ],
            source=source,
        )
    pools = data.get("pools")
    if isinstance(pools, dict) and len(pools) > limits.MAX_POOLS:
        raise PlanError(
            [
                Problem(
                    _where(("pools",), marks),
                    f"{len(pools)} pools, more than the {limits.MAX_POOLS} a plan may have "
                    "(each pool is a Parsl executor)",
                    "merge pools that have the same slice shape; use per_gpu for more workers",
                )
            ],
            source=source,
        )
    problems = _pool_name_problems(pools, marks)
    try:
        plan = Plan.model_validate(data)
    except ValidationError as err:
        found = problems_from_validation(err, marks)
        if problems:  # already reported one by one, with their lines
            found = [p for p in found if not p.message.startswith("invalid pool name")]
        raise PlanError(problems + found, source=source) from err
    if problems:
        raise PlanError(problems, source=source)
    return plan


def _pool_name_problems(pools: Any, marks: Marks) -> list[Problem]:
    if not isinstance(pools, dict):
        return []
    return [
        Problem(
            _where(("pools", str(name)), marks),
            f"invalid pool name {shown(name)}",
            "start with a letter, then letters, digits, '_' or '-', at most 40 characters "
            "(a pool name becomes a Parsl executor label)",
        )
        for name in pools
        if not POOL_NAME.match(str(name))
    ]


def _looks_like_path(text: str) -> bool:
    """A one-line source that names a file rather than holding a plan."""
    line = text.strip()
    if "\n" in line or looks_compact(line) or line.startswith(("{", "[")):
        return False
    # os.path.exists, not Path.exists: it answers False for names too long or with NUL bytes.
    return line.endswith((".yaml", ".yml", ".json")) or "/" in line or os.path.exists(line)


def load_plan(source: str | Path | Plan) -> Plan:
    """Load a plan from a path, YAML text, or the compact form.

    Input is read within the bounds of :mod:`gpuslice.plan.limits` (size, nesting, aliases,
    pools, slices per GPU): a plan beyond them is refused before anything large is built.

    Args:
        source: a :class:`Plan` (returned as is), a path to a YAML file, YAML text, or the
            compact form such as ``"small=2x mps:25%/10GiB, large=1x mps:50%"``.

    Raises:
        PlanError: every problem in the plan, each with its location and a fix.
        UsageError: a path that cannot be read, is not a regular file or is too large.
    """
    if isinstance(source, Plan):
        return source
    if isinstance(source, Path) or _looks_like_path(source):
        text = read_text(source, "plan file")
        data, marks = read_yaml(text, source=f"plan file {source}")
        return plan_from_data(data, source=f"plan file {source}", marks=marks)
    check_length(source, "plan")
    if looks_compact(source):
        return plan_from_data(parse_compact(source), source="compact plan")
    data, marks = read_yaml(source, source="plan")
    return plan_from_data(data, source="plan", marks=marks)
