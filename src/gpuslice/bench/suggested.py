"""The ``suggested`` arrangement of ``gpuslice bench``: the plan ``plan suggest`` writes for a mix.

``suggested-<mix>`` (plain ``suggested`` is the two-function ``surrogate`` mix) takes each
workload of the mix (:data:`gpuslice.bench.harness.MIXES`) as its named function
(:mod:`gpuslice.bench.mixtasks`), reads their profiles from the profile store, and packs them
with :func:`gpuslice.rightsize.suggest.suggest_plan` in the mix's proportions; each workload's
tasks go to its own pool. The arrangement is built from stored profiles only (``bench`` names
arrangements before it knows more than the GPUs' memory, which picks the GPU model); a missing
profile is a usage error that names the ``plan suggest`` command which profiles the mix and
stores the profiles.
"""

from __future__ import annotations

from gpuslice.bench.arrangements import Arrangement
from gpuslice.bench.mixtasks import function_for
from gpuslice.errors import UsageError
from gpuslice.rightsize.identity import function_id
from gpuslice.rightsize.profile import Profile
from gpuslice.rightsize.store import ProfileStore
from gpuslice.rightsize.suggest import Suggestion, suggest_plan

__all__ = ["DEFAULT_MIX", "suggest_command", "suggested", "suggestion_for_mix"]

#: The mix plain ``suggested`` is for (the harness's two-function mix).
DEFAULT_MIX = "surrogate"


def _mix_of(name: str) -> str:
    from gpuslice.bench.harness import MIXES

    mix = name.removeprefix("suggested").removeprefix("-") or DEFAULT_MIX
    if mix not in MIXES:
        raise UsageError(
            f"arrangement {name!r}: no workload mix {mix!r}; write suggested-<mix> with one of "
            f"{', '.join(MIXES)} (plain `suggested` is suggested-{DEFAULT_MIX})"
        )
    return mix


def suggest_command(mix: str, fleet: str = "FLEET") -> str:
    """The ``gpuslice plan suggest`` command that profiles a mix's functions and stores them."""
    from gpuslice.bench.harness import MIXES

    names = [function_id(function_for(w, s)).name for w, s, _ in MIXES[mix]]
    shares = ",".join(
        f"{n.split(':')[-1]}={share:g}" for n, (_, _, share) in zip(names, MIXES[mix], strict=True)
    )
    return f"gpuslice plan suggest --functions {','.join(names)} --mix {shares} --fleet {fleet}"


def suggestion_for_mix(
    mix: str, memory_mib: int, store: ProfileStore | None = None
) -> tuple[Suggestion, dict[str, str]]:
    """The suggested plan for a mix from stored profiles, and workload -> pool.

    Args:
        mix: a name in :data:`gpuslice.bench.harness.MIXES`.
        memory_mib: the GPUs' memory (picks profiles measured on a GPU with that memory).
        store: the profile store (default ``$GPUSLICE_PROFILE_STORE`` or the user's cache).

    Raises:
        UsageError: a workload of the mix has no stored profile for its current code.
    """
    from gpuslice.bench.harness import MIXES

    the_store = store or ProfileStore()
    profiles: list[Profile] = []
    shares: dict[str, float] = {}
    workload_of: dict[str, str] = {}
    for workload, size, share in MIXES[mix]:
        fid = function_id(function_for(workload, size))
        found = [p for p in the_store.for_code(fid) if p.memory_mib == memory_mib]
        if not found:
            raise UsageError(
                f"the `suggested` arrangement needs a profile of {fid.name} (its current code) "
                f"on a GPU with {memory_mib} MiB in {the_store.path}; profile the mix first: "
                f"`{suggest_command(mix)}`"
            )
        profiles.append(found[0])
        shares[fid.name] = shares.get(fid.name, 0.0) + share
        workload_of[fid.name] = workload
    suggestion = suggest_plan(profiles, shares)
    routes = {workload_of[f]: pool for f, pool in suggestion.routes.items()}
    return suggestion, routes


def suggested(name: str, memory_mib: int, store: ProfileStore | None = None) -> Arrangement:
    """The ``suggested[-<mix>]`` arrangement (see the module docstring).

    Raises:
        UsageError: unknown mix, or a missing profile.
    """
    mix = _mix_of(name)
    suggestion, routes = suggestion_for_mix(mix, memory_mib, store)
    pools = ", ".join(f"{p.pool} {p.per_gpu}x{p.compute}%" for p in suggestion.pools)
    return Arrangement(
        name,
        f"gpuslice: right-sized by plan suggest ({pools})",
        "d",
        suggestion.plan,
        routes=routes,
    )
