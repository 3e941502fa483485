"""Read a plan from a path, YAML text or the compact form; report every problem at once."""

from __future__ import annotations

import difflib
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from gpuslice.errors import PlanError, Problem
from gpuslice.plan.compact import looks_compact, parse_compact
from gpuslice.plan.schema import POOL_NAME, MigSpec, MpsSpec, Plan, PoolSpec, ShareSpec

Marks = dict[tuple[str, ...], tuple[int, int]]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Hashable, Any]:
    seen: dict[Hashable, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(text: str, source: str) -> tuple[Any, Marks]:
    """Parse YAML, refusing duplicate keys; return the data and each path's line/column.

    Raises:
        PlanError: malformed YAML, with its line and column.
    """
    try:
        node = yaml.compose(text, Loader=_UniqueKeyLoader)
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"<yaml> line {mark.line + 1}, column {mark.column + 1}" if mark else "<yaml>"
        problem = " ".join(p for p in (err.context, err.problem) if p)
        raise PlanError(
            [Problem(where, f"malformed YAML: {problem}", "fix the YAML syntax at that place")],
            source=source,
        ) from err
    except yaml.YAMLError as err:
        raise PlanError([Problem("<yaml>", f"malformed YAML: {err}")], source=source) from err
    marks: Marks = {}
    if node is not None:
        _collect_marks(node, (), marks)
    return data, marks


def _collect_marks(node: yaml.Node, path: tuple[str, ...], marks: Marks) -> None:
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, str(key.value))
            marks[child] = (key.start_mark.line + 1, key.start_mark.column + 1)
            _collect_marks(value, child, marks)
            marks[child] = (key.start_mark.line + 1, key.start_mark.column + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_marks(item, (*path, str(index)), marks)


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


def _clean_loc(loc: tuple[int | str, ...]) -> tuple[str, ...]:
    # pydantic adds validator and union-member names (``function-before[...]``, ``list[...]``,
    # ``literal['all']``) to locations; users only need the keys they wrote.
    return tuple(str(part) for part in loc if not any(c in str(part) for c in "[]( "))


def _where(path: tuple[str, ...], marks: Marks) -> str:
    location = ".".join(path) if path else "<plan>"
    for end in range(len(path), -1, -1):
        if path[:end] in marks:
            line, column = marks[path[:end]]
            return f"{location} (line {line}, column {column})" if marks else location
    return location


def problems_from_validation(err: ValidationError, marks: Marks) -> list[Problem]:
    """Translate pydantic's errors into located problems with hints, one per cause."""
    problems: list[Problem] = []
    seen: set[tuple[tuple[str, ...], str]] = set()
    for item in err.errors():
        path = _clean_loc(item["loc"])
        kind = item["type"]
        if "gpus" in path:
            # ``all`` or a list of int|str: pydantic reports every union member; say it once.
            path = path[: path.index("gpus") + 1]
            problem = Problem(
                _where(path, marks),
                "gpus must be `all` or a list of GPU indices or UUIDs",
                "e.g. `gpus: all`, `gpus: [0, 1]` or `gpus: [GPU-8f6c…]`",
            )
        elif kind == "extra_forbidden":
            model = _model_at(path[:-1])
            valid = sorted(model.model_fields) if model else []
            close = difflib.get_close_matches(path[-1], valid, n=1)
            hint = f"did you mean {close[0]!r}?" if close else ""
            if valid:
                hint = (hint + " " if hint else "") + f"valid keys here: {', '.join(valid)}"
            problem = Problem(_where(path, marks), f"unknown key {path[-1]!r}", hint)
        elif kind == "missing":
            hint = "add `version: 1` at the top" if path == ("version",) else f"add `{path[-1]}:`"
            problem = Problem(_where(path, marks), "required key is missing", hint)
        else:
            message = item["msg"].removeprefix("Value error, ")
            value = item.get("input")
            if isinstance(value, (int, float, str)) and not kind.startswith("value_error"):
                message = f"{message} (got {value!r})"
            problem = Problem(_where(path, marks), message, _hint_for(path, kind))
        key = (path, problem.message)
        if key not in seen:
            seen.add(key)
            problems.append(problem)
    return problems


def _hint_for(path: tuple[str, ...], kind: str) -> str:
    leaf = path[-1] if path else ""
    if leaf == "compute":
        return "a whole percentage of the GPU's SMs from 1 to 100"
    if leaf in ("per_gpu", "count", "per_instance"):
        return "a whole number, 1 or more"
    if leaf == "pools" and kind == "too_short":
        return "declare at least one pool, e.g. `small: {mps: {compute: 25}, per_gpu: 2}`"
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
    problems = _pool_name_problems(data.get("pools"), marks)
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
            f"invalid pool name {name!r}",
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
    return line.endswith((".yaml", ".yml", ".json")) or "/" in line or Path(line).exists()


def load_plan(source: str | Path | Plan) -> Plan:
    """Load a plan from a path, YAML text, or the compact form.

    Args:
        source: a :class:`Plan` (returned as is), a path to a YAML file, YAML text, or the
            compact form such as ``"small=2x mps:25%/10GiB, large=1x mps:50%"``.

    Raises:
        PlanError: every problem in the plan, each with its location and a fix.
        UsageError: a path that does not exist.
    """
    if isinstance(source, Plan):
        return source
    if isinstance(source, Path) or _looks_like_path(source):
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as err:
            from gpuslice.errors import UsageError

            reason = "it is a directory" if path.is_dir() else err.strerror
            raise UsageError(f"cannot read plan file {str(path)!r}: {reason}") from err
        data, marks = read_yaml(text, source=str(path))
        return plan_from_data(data, source=str(path), marks=marks)
    if looks_compact(source):
        return plan_from_data(parse_compact(source), source="compact plan")
    data, marks = read_yaml(source, source="plan")
    return plan_from_data(data, source="plan", marks=marks)
