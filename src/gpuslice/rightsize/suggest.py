"""``plan suggest``: pack profiled functions onto GPUs in proportion to their share of calls.

Every GPU gets the same packing: one MPS pool per function, ``n_i`` slices of ``c_i`` percent.
A function's calls arrive at ``w_i`` of the total rate (its share, ``--mix``); its pool finishes
``n_i * r_i(c_i)`` calls per second per GPU, where ``r_i`` is the rate of one slice taken from
its profile. The mix then runs at ``X = min_i n_i r_i(c_i) / w_i`` tasks per second per GPU,
and the packing maximises ``X`` subject to: percentages summing to at most 100, memory caps
summing to at most the GPU's memory, at most the MPS client limit of slices, and every pool's
p95 within its function's bound.

``r_i(c)`` between measured sizes: the profile measured, at a few SM counts and with the GPU
filled with such slices, the calls one slice delivered through Parsl (``tasks_per_s_observed``
over the slices: the time from one call's end to the next call's start in a worker included,
because a pool's calls pay it; on a loaded host it is tens of milliseconds, and a pool of few,
large slices with short calls loses most to it). In between it is interpolated linearly in
``1 / sms`` (the Amdahl form, see :mod:`gpuslice.rightsize.search`); below the smallest
measured slice it is not extrapolated (such slices are not used). The p95 is the call's own,
inside the slice, as the bound is. It assumes a slice's rate
depends on its own size, not on which functions share the GPU: true of SMs under MPS
limits that sum to at most 100%, not of memory bandwidth or caches, which the profile measured
only among slices of the same function.

For a target ``X`` each function independently needs the packing of least compute that gives
it ``w_i X``, so the best ``X`` is found by bisection. Compute left over goes, one percent per
slice at a time, to the pool with the least spare capacity while that still speeds it up.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from gpuslice.errors import UsageError
from gpuslice.hardware.catalog import MODELS, MPS_MAX_CLIENTS
from gpuslice.mps.limits import visible_sm_count
from gpuslice.plan.resolve import mps_reserve_mib, slices_that_fit
from gpuslice.rightsize.choice import memory_cap_mib
from gpuslice.rightsize.measure import Point
from gpuslice.rightsize.profile import Profile
from gpuslice.sizes import format_mib

__all__ = ["PoolChoice", "Suggestion", "pool_name", "suggest_plan"]

_BISECTION_STEPS = 50
#: Percentage points of the GPU a packing may spend over the least to use fewer slices.
FEWER_SLICES_SLACK = 3


@dataclass(frozen=True)
class PoolChoice:
    """One function's pool in a suggested plan.

    Attributes:
        pool: the pool's name (an executor label).
        function: ``module:qualname``.
        share: its share of calls (normalised).
        per_gpu: slices per GPU.
        compute: MPS percentage of each slice.
        sms: SMs each slice sees.
        memory_mib: memory cap of each slice (peak with headroom), or None.
        tasks_per_s_per_slice: calls per second one slice finishes (from the profile).
        p95_ms: p95 latency expected in the slice (from the profile).
        p95_bound_ms: the function's latency bound, if any.
        basis: where the numbers come from, for the plan's comment.
    """

    pool: str
    function: str
    share: float
    per_gpu: int
    compute: int
    sms: int
    memory_mib: int | None
    tasks_per_s_per_slice: float
    p95_ms: float
    p95_bound_ms: float | None
    basis: str


@dataclass(frozen=True)
class Suggestion:
    """A suggested plan.

    Attributes:
        pools: one per function, in the order given.
        gpus: GPUs the plan uses (None: all).
        gpu_model: the GPU model the profiles were measured on.
        tasks_per_s_per_gpu: expected throughput of the mix per GPU (from the profiles).
        plan: the v1 plan as a mapping.
        yaml: the plan as YAML, with a comment per pool.
    """

    pools: tuple[PoolChoice, ...]
    gpus: int | None
    gpu_model: str
    tasks_per_s_per_gpu: float
    plan: dict[str, Any]
    yaml: str

    @property
    def routes(self) -> dict[str, str]:
        """Function -> pool."""
        return {p.function: p.pool for p in self.pools}


def pool_name(function: str, taken: set[str]) -> str:
    """A pool name (executor label) for a function: its short name, made valid and unique."""
    base = re.sub(
        r"[^A-Za-z0-9_-]", "_", function.rsplit(":", maxsplit=1)[-1].rsplit(".", maxsplit=1)[-1]
    )[:36]
    if not base or not base[0].isalpha():
        base = f"f{base}"[:36]
    name, k = base, 2
    while name in taken:
        name = f"{base}-{k}"
        k += 1
    taken.add(name)
    return name


@dataclass(frozen=True)
class _Model:
    """One function's per-slice rate and p95 by MPS percentage (index = percent)."""

    profile: Profile
    share: float
    bound: float | None
    cap: int | None
    rate: list[float | None]  # calls/s of one slice at c percent (monotone envelope)
    raw_rate: list[float | None]
    p95: list[float | None]
    basis: list[str]


def _interpolate(x: float, known: Sequence[tuple[float, float]]) -> float | None:
    for (x0, y0), (x1, y1) in itertools.pairwise(known):
        if x0 - 1e-12 <= x <= x1 + 1e-12:
            if x1 == x0:
                return y0
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if len(known) == 1 and abs(known[0][0] - x) < 1e-12:
        return known[0][1]
    return None


def _delivered(point: Point) -> float:
    """Calls per second per GPU a pool of this size delivered through Parsl (gaps included)."""
    return (
        point.tasks_per_s_observed if point.tasks_per_s_observed > 0 else point.tasks_per_s_per_gpu
    )


def _model(profile: Profile, share: float, bound: float | None) -> _Model:
    usable = [p for p in profile.points if p.samples and not p.failed]
    if not usable:
        raise UsageError(f"the profile of {profile.function} has no successful measurement")
    seconds = sorted((1.0 / p.sms, p.per_gpu / _delivered(p)) for p in usable)
    tails = sorted((1.0 / p.sms, p.p95_ms) for p in usable)
    by_sms = {p.sms: p for p in usable}
    rate: list[float | None] = [None] * 101
    raw: list[float | None] = [None] * 101
    p95: list[float | None] = [None] * 101
    basis = [""] * 101
    for c in range(1, 101):
        sms = visible_sm_count(profile.sm_count, c)
        t = _interpolate(1.0 / sms, seconds)
        tail = _interpolate(1.0 / sms, tails)
        if t is None or tail is None or t <= 0:
            continue
        raw[c] = 1.0 / t
        p95[c] = tail
        if sms in by_sms:
            p = by_sms[sms]
            basis[c] = f"measured at {p.per_gpu} x {p.compute}% ({sms} SMs)"
        else:
            lower = max((p for p in usable if p.sms < sms), key=lambda p: p.sms)
            upper = min((p for p in usable if p.sms > sms), key=lambda p: p.sms)
            basis[c] = (
                f"interpolated between measured {lower.compute}% ({lower.sms} SMs) and "
                f"{upper.compute}% ({upper.sms} SMs)"
            )
    best: float | None = None
    for c in range(1, 101):  # more compute is never slower: the monotone envelope
        value = raw[c]
        ok = value is not None and (bound is None or (p95[c] or math.inf) <= bound)
        if ok:
            best = value if best is None else max(best, value)  # type: ignore[type-var]
            rate[c] = best
    return _Model(
        profile, share, bound, memory_cap_mib(profile.peak_memory_mib), rate, raw, p95, basis
    )


def _cheapest(model: _Model, need: float, max_n: int) -> tuple[int, int] | None:
    """(slices, percent) giving ``need`` calls/s with the least compute, within a tolerance.

    Among packings whose total percentage is within :data:`FEWER_SLICES_SLACK` points of the
    least, the one with the fewest (so the largest) slices: equal throughput, lower latency,
    fewer MPS clients and less memory (the knee, again).
    """
    options: list[tuple[int, int]] = []
    known = [(c, r) for c, r in enumerate(model.rate) if r is not None]
    percents = [c for c, _ in known]
    rates = [r for _, r in known]
    for n in range(1, max_n + 1):
        i = bisect.bisect_left(rates, need / n)
        if i == len(rates):
            continue
        c = percents[i]
        if n * c <= 100:
            options.append((n, c))
    if not options:
        return None
    least = min(n * c for n, c in options)
    return min((n, c) for n, c in options if n * c <= least + FEWER_SLICES_SLACK)


def _pack(
    models: Sequence[_Model], target: float, memory_mib: int, clients: int
) -> list[tuple[int, int]] | None:
    choice = []
    for m in models:
        max_n = clients
        if m.cap:
            max_n = min(max_n, slices_that_fit(memory_mib, m.cap))
        got = _cheapest(m, target * m.share, max_n)
        if got is None:
            return None
        choice.append(got)
    if sum(n * c for n, c in choice) > 100 or sum(n for n, _ in choice) > clients:
        return None
    caps = sum(n * (m.cap or 0) for (n, _), m in zip(choice, models, strict=True))
    if caps + mps_reserve_mib(sum(n for n, _ in choice)) > memory_mib:  # the planner's rule
        return None
    return choice


def _spend_leftover(
    models: Sequence[_Model], packing: list[tuple[int, int]]
) -> list[tuple[int, int]]:
    packing = list(packing)
    while True:
        left = 100 - sum(n * c for n, c in packing)
        options = []
        for i, ((n, c), m) in enumerate(zip(packing, models, strict=True)):
            if n > left or c >= 100 or m.rate[c + 1] is None:
                continue
            now, then = m.rate[c], m.rate[c + 1]
            assert now is not None
            assert then is not None
            if then <= now * (1 + 1e-9):
                continue
            options.append((n * now / m.share, i))
        if not options:
            return packing
        _, i = min(options)
        n, c = packing[i]
        packing[i] = (n, c + 1)


def suggest_plan(
    profiles: Sequence[Profile],
    mix: Mapping[str, float] | None = None,
    *,
    gpus: int | None = None,
    p95_ms: Mapping[str, float] | None = None,
) -> Suggestion:
    """Pack the profiled functions onto each GPU in proportion to their share of calls.

    Args:
        profiles: one profile per function, all on the same GPU model.
        mix: function (``module:qualname`` or its short name) -> share of calls; default
            equal shares. Shares are normalised.
        gpus: use GPUs 0..gpus-1 (default: every GPU, ``gpus: all``).
        p95_ms: per-function latency bounds overriding the profiles' own.

    Raises:
        UsageError: no profiles, profiles of different GPU models, a mix naming other
            functions, or no packing that fits (the message says which constraint).
    """
    if not profiles:
        raise UsageError("plan suggest needs at least one profiled function")
    models_on = {p.gpu_model for p in profiles}
    if len(models_on) > 1:
        raise UsageError(
            f"the profiles are of different GPU models ({', '.join(sorted(models_on))}); "
            "profile every function on the GPU model the plan is for"
        )
    if gpus is not None and gpus < 1:
        raise UsageError(f"--gpus must be at least 1, got {gpus}")
    shares = _shares(profiles, mix)
    bounds = {p.function: p.p95_bound_ms for p in profiles}
    for key, value in (p95_ms or {}).items():
        bounds[_resolve(key, profiles, "--p95-ms")] = value
    models = [_model(p, shares[p.function], bounds[p.function]) for p in profiles]
    for m in models:
        if not any(r is not None for r in m.rate):
            fastest = min(
                (p.p95_ms for p in m.profile.points if p.samples and not p.failed), default=math.nan
            )
            raise UsageError(
                f"{m.profile.function}: no measured slice meets its p95 bound of {m.bound:g} ms "
                f"(the lowest measured p95 is {fastest:.1f} ms); raise the bound with "
                "--p95-ms or make the function faster"
            )
    first = profiles[0]
    memory = first.memory_mib
    known = MODELS.get(first.gpu_model)
    clients = known.max_mps_clients if known is not None else MPS_MAX_CLIENTS
    if _pack(models, 1e-9, memory, clients) is None:
        raise UsageError(
            "the functions do not fit on one GPU together: each needs at least one slice, and "
            f"their smallest usable slices need more than 100% of the SMs or "
            f"{format_mib(memory)} of memory; suggest a plan for fewer functions"
        )
    low, high = 0.0, sum(max(r for r in m.rate if r is not None) * 100 for m in models)
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if _pack(models, middle, memory, clients) is not None:
            low = middle
        else:
            high = middle
    packing = _pack(models, low, memory, clients)
    assert packing is not None
    packing = _spend_leftover(models, packing)
    taken: set[str] = set()
    pools: list[PoolChoice] = []
    for (n, c), m in zip(packing, models, strict=True):
        rate, tail = m.raw_rate[c], m.p95[c]
        assert rate is not None
        assert tail is not None
        pools.append(
            PoolChoice(
                pool=pool_name(m.profile.function, taken),
                function=m.profile.function,
                share=m.share,
                per_gpu=n,
                compute=c,
                sms=visible_sm_count(m.profile.sm_count, c),
                memory_mib=m.cap,
                tasks_per_s_per_slice=rate,
                p95_ms=tail,
                p95_bound_ms=m.bound,
                basis=m.basis[c],
            )
        )
    throughput = min(p.per_gpu * p.tasks_per_s_per_slice / p.share for p in pools)
    plan: dict[str, Any] = {
        "version": 1,
        "gpus": list(range(gpus)) if gpus is not None else "all",
        "pools": {
            p.pool: {
                "mps": {
                    "compute": p.compute,
                    **({"memory": f"{p.memory_mib}MiB"} if p.memory_mib else {}),
                },
                "per_gpu": p.per_gpu,
            }
            for p in pools
        },
    }
    return Suggestion(
        pools=tuple(pools),
        gpus=gpus,
        gpu_model=first.gpu_model,
        tasks_per_s_per_gpu=throughput,
        plan=plan,
        yaml=_yaml(pools, profiles, gpus, throughput),
    )


def _resolve(key: str, profiles: Sequence[Profile], option: str) -> str:
    for p in profiles:
        if key in (p.function, p.function.split(":")[-1], p.function.split(":")[-1].split(".")[-1]):
            return p.function
    names = ", ".join(p.function.split(":")[-1] for p in profiles)
    raise UsageError(f"{option} names {key!r}, which is not one of the functions ({names})")


def _shares(profiles: Sequence[Profile], mix: Mapping[str, float] | None) -> dict[str, float]:
    if not mix:
        return {p.function: 1.0 / len(profiles) for p in profiles}
    raw: dict[str, float] = {}
    for key, value in mix.items():
        if value <= 0:
            raise UsageError(f"--mix {key}={value}: a share must be above 0")
        raw[_resolve(key, profiles, "--mix")] = float(value)
    missing = [p.function for p in profiles if p.function not in raw]
    if missing:
        raise UsageError(
            f"--mix gives no share for {', '.join(missing)}; give every function a share "
            "(e.g. --mix f1=0.6,f2=0.4) or leave --mix out for equal shares"
        )
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


def _yaml(
    pools: Sequence[PoolChoice], profiles: Sequence[Profile], gpus: int | None, throughput: float
) -> str:
    by_function = {p.function: p for p in profiles}
    first = profiles[0]
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    mix = ", ".join(f"{p.pool} {p.share:.2f}" for p in pools)
    lines = [
        f"# Suggested by `gpuslice plan suggest` on {stamp} from profiles measured on",
        f"# {first.gpu_model}"
        + (" (emulated GPU: numbers follow the emulation model)." if first.emulated else "."),
        f"# Share of calls: {mix}. Expected {throughput:.1f} tasks/s per GPU for this mix",
        "# (from the profiles, each slice as measured with the GPU filled with its own kind).",
        "version: 1",
        f"gpus: {'all' if gpus is None else '[' + ', '.join(str(i) for i in range(gpus)) + ']'}",
        "pools:",
    ]
    for p in pools:
        prof = by_function[p.function]
        bound = f" (bound {p.p95_bound_ms:g} ms)" if p.p95_bound_ms is not None else ""
        cap = (
            f"memory cap = peak {format_mib(prof.peak_memory_mib or 0)} + 20% headroom"
            if p.memory_mib
            else "no memory cap (peak memory unknown)"
        )
        lines += [
            f"  # {p.pool}: {p.function} (code {prof.code_hash}), profiled {prof.created}",
            f"  #   on {prof.gpu_model}: {p.per_gpu} x {p.compute}% ({p.sms} SMs), "
            f"{p.tasks_per_s_per_slice:.1f} calls/s per slice, {p.basis};",
            f"  #   p95 {p.p95_ms:.1f} ms{bound}; {cap}.",
            f"  {p.pool}:",
            "    mps: {compute: "
            + str(p.compute)
            + (f", memory: {p.memory_mib}MiB" if p.memory_mib else "")
            + "}",
            f"    per_gpu: {p.per_gpu}",
        ]
    return "\n".join(lines) + "\n"
