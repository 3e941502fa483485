"""The compact one-line plan form used on the command line and in notebooks.

Grammar (entries separated by commas)::

    entry   := NAME "=" [COUNT "x"] kind ["@" GPUS]
    kind    := "mps" [":" LIMITS] | "share" | "mig:" PROFILE ["+mps" [":" LIMITS]]
    LIMITS  := [PCT "%"] ["/" SIZE]
    GPUS    := index or UUID, "+"-separated

Examples: ``small=2x mps:25%/10GiB, large=1x mps:50%``, ``tiny=mig:1g.10gb``,
``batch=4x share@0+1``. A count before a mig entry is the number of instances per GPU.
:func:`parse_compact` yields the same mapping the YAML form does, so both pass through one
schema and one set of error messages.
"""

from __future__ import annotations

import re
from typing import Any

from gpuslice.errors import PlanError, Problem
from gpuslice.plan import limits
from gpuslice.plan.schema import Plan

_ENTRY = re.compile(
    r"^\s*(?P<name>[^=\s]+)\s*=\s*(?:(?P<count>\d+)\s*x\s*)?(?P<kind>[a-zA-Z]+)"
    r"(?::(?P<args>[^@]*))?(?:@(?P<gpus>\S+))?\s*$"
)
_LIMITS = re.compile(r"^\s*(?:(?P<pct>\d+)\s*%)?\s*(?:/\s*(?P<mem>[\d.]+\s*[A-Za-z]*))?\s*$")
_EXAMPLE = "small=2x mps:25%/10GiB, large=1x mps:50%, tiny=mig:1g.10gb, batch=4x share"


def looks_compact(text: str) -> bool:
    """True when ``text`` is a one-line compact plan rather than YAML or a path."""
    return "\n" not in text.strip() and "=" in text and not text.lstrip().startswith("{")


#: Digits read as a number; longer runs stay text and fail validation with the field named
#: (Python refuses to convert numbers of more than 4300 digits at all).
_MAX_DIGITS = 9


def _number(digits: str, where: str, problems: list[Problem]) -> int | None:
    if len(digits) <= _MAX_DIGITS:
        return int(digits)
    problems.append(
        Problem(
            where,
            f"the number {_shown(digits)} is far too large ({len(digits)} digits)",
            "write an ordinary count, percentage or GPU index",
        )
    )
    return None


def _shown(text: str) -> str:
    text = text.strip()
    return repr(text) if len(text) <= 60 else repr(text[:59] + "…")


def _limits(args: str, where: str, problems: list[Problem]) -> dict[str, Any] | None:
    match = _LIMITS.match(args)
    if match is None:
        problems.append(
            Problem(
                where,
                f"cannot read MPS limits {_shown(args)}",
                "write PERCENT% and/or /SIZE, e.g. 25%/10GiB",
            )
        )
        return None
    found: dict[str, Any] = {}
    if match.group("pct") is not None:
        found["compute"] = _number(match.group("pct"), f"{where}.mps.compute", problems)
    if match.group("mem") is not None:
        found["memory"] = match.group("mem").replace(" ", "")
    return found


def _gpus(text: str, where: str, problems: list[Problem]) -> list[int | str | None]:
    return [_number(g, where, problems) if g.isdigit() else g for g in text.split("+") if g]


def parse_compact(text: str) -> dict[str, Any]:
    """Turn the compact form into the v1 plan mapping.

    Raises:
        PlanError: every entry that cannot be read, each with an example of the right form.
    """
    entries = [part for part in text.split(",") if part.strip()]
    if len(entries) > limits.MAX_POOLS:
        raise PlanError(
            [
                Problem(
                    "<plan>",
                    f"{len(entries)} entries, more than the {limits.MAX_POOLS} pools a plan "
                    "may have (each pool is a Parsl executor)",
                    "merge pools that have the same slice shape; use NNx for more workers",
                )
            ],
            source="compact plan",
        )
    problems: list[Problem] = []
    pools: dict[str, Any] = {}
    seen: set[str] = set()
    for position, raw in enumerate(entries):
        match = _ENTRY.match(raw)
        if match is None:
            problems.append(
                Problem(
                    f"entry {position + 1}",
                    f"cannot read {_shown(raw)}",
                    f"write e.g. {_EXAMPLE}",
                )
            )
            continue
        name, kind = match.group("name"), match.group("kind").lower()
        if len(name) > 64:
            name = name[:63] + "…"  # refused as a pool name; keep the message short
        where = f"pools.{name}"
        seen_before = name in seen
        seen.add(name)
        if seen_before:
            problems.append(
                Problem(where, f"pool {name!r} is defined twice", "give each pool its own name")
            )
            continue
        count = (
            _number(match.group("count"), f"{where}.count", problems)
            if match.group("count")
            else None
        )
        args = match.group("args") or ""
        pool: dict[str, Any] = {}
        if kind == "mps":
            caps = _limits(args, where, problems)
            if caps is None:
                continue
            pool["mps"] = caps
            if count is not None:
                pool["per_gpu"] = count
        elif kind == "share":
            pool["share"] = {}
            if count is not None:
                pool["per_gpu"] = count
        elif kind == "mig":
            profile, _, inner = args.partition("+mps")
            mig: dict[str, Any] = {"profile": profile.strip()}
            if count is not None:
                mig["count"] = count
            if _ or inner:
                caps = _limits(inner.lstrip(":"), where, problems)
                if caps is None:
                    continue
                mig["mps"] = caps
            pool["mig"] = mig
        else:
            problems.append(
                Problem(f"{where}", f"unknown slice kind {_shown(kind)}", "use mps, mig or share")
            )
            continue
        if match.group("gpus"):
            pool["gpus"] = _gpus(match.group("gpus"), f"{where}.gpus", problems)
        pools[name] = pool
    if not pools and not problems:
        problems.append(Problem("<plan>", "the plan names no pool", f"write e.g. {_EXAMPLE}"))
    if problems:
        raise PlanError(problems, source="compact plan")
    return {"version": 1, "pools": pools}


def to_compact(plan: Plan) -> str:
    """Render a plan in the compact form (``gpus``, ``mps_dir`` and flags are not carried)."""
    parts: list[str] = []
    for name, pool in plan.pools.items():
        gpus = ""
        if isinstance(pool.gpus, list):
            gpus = "@" + "+".join(str(g) for g in pool.gpus)
        if pool.mps is not None:
            parts.append(
                f"{name}={pool.workers_per_gpu}x mps"
                f"{_render_limits(pool.mps.compute, pool.mps.memory)}{gpus}"
            )
        elif pool.share is not None:
            parts.append(f"{name}={pool.workers_per_gpu}x share{gpus}")
        elif pool.mig is not None:
            count = f"{pool.mig.count}x " if pool.mig.count else ""
            inner = ""
            if pool.mig.mps is not None:
                inner = "+mps" + _render_limits(pool.mig.mps.compute, pool.mig.mps.memory)
            parts.append(f"{name}={count}mig:{pool.mig.profile}{inner}{gpus}")
    return ", ".join(parts)


def _render_limits(compute: int | None, memory: int | None) -> str:
    text = ""
    if compute is not None:
        text += f"{compute}%"
    if memory is not None:
        text += f"/{memory // 1024}GiB" if memory % 1024 == 0 else f"/{memory}MiB"
    return f":{text}" if text else ""
