"""``@gpu_app(pool="auto")``: send a function to the loaded pool its profile recommends.

At a ``gpu_app``'s first call on a DataFlowKernel, :func:`auto_pool` looks the function up in
the profile store (:class:`~gpuslice.rightsize.store.ProfileStore`: ``$GPUSLICE_PROFILE_STORE``
or the user's cache) for the GPU model of each loaded gpuslice pool, and picks among the pools
whose slices hold the function's memory (memory cap at least its measured peak):

1. the pool whose slices see the fewest SMs that are still at least the recommended slice's
   (a bigger slice keeps the profile's latency; a smaller one would not);
2. else, every pool's slices being smaller than recommended, the pool with the largest slices.

Ties go to the pool with more slices. A function with no profile for the loaded GPUs (never
profiled, or its code changed since, or profiled on another model) goes to the pool with the
largest slices, with a warning, once per function. The choice is made once per app and
DataFlowKernel (``GpuApp`` keeps it), so routing costs nothing per call after the first.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpuslice.errors import UsageError
from gpuslice.rightsize.identity import FunctionId, function_id
from gpuslice.rightsize.profile import Profile
from gpuslice.rightsize.store import ProfileStore

__all__ = ["AUTO", "PoolFacts", "auto_pool", "choose_pool", "loaded_pools"]

logger = logging.getLogger(__name__)

#: The pool name that asks for routing by profile.
AUTO = "auto"

_WARNED: set[str] = set()
_WARNED_LOCK = threading.Lock()


@dataclass(frozen=True)
class PoolFacts:
    """What routing needs to know of a loaded pool.

    Attributes:
        label: executor label (the pool's name).
        kind: ``mps``, ``mig`` or ``share``.
        sms: SMs each slice sees (a time-shared slice sees the whole device).
        memory_mib: each slice's memory cap, or the device's memory when uncapped.
        slices: number of slices.
        gpu_model: GPU model of its devices (catalog name), or None when unknown.
    """

    label: str
    kind: str
    sms: int
    memory_mib: int
    slices: int
    gpu_model: str | None


def _model_of(source: str, gpu_uuid: str, cache: dict[str, Any]) -> str | None:
    from gpuslice.errors import GpusliceError
    from gpuslice.hardware.inventory import discover
    from gpuslice.rightsize.profiler import gpu_model_name

    if source not in cache:
        fleet = source.removeprefix("fleet:") if source.startswith("fleet:") else None
        try:
            cache[source] = discover(fleet)
        except GpusliceError:
            cache[source] = None
    inventory = cache[source]
    gpu = inventory.find(gpu_uuid) if inventory is not None else None
    return gpu_model_name(gpu) if gpu is not None else None


def loaded_pools(dfk: Any) -> list[PoolFacts]:
    """The gpuslice pools of a loaded DataFlowKernel, with their slices' size."""
    from gpuslice.parsl.executor import SliceExecutor

    facts: list[PoolFacts] = []
    inventories: dict[str, Any] = {}
    for label, executor in dfk.executors.items():
        if not isinstance(executor, SliceExecutor) or executor.layout is None:
            continue
        layout = executor.layout
        pool = layout.pool(executor.pool)
        first = pool.slices[0]
        sms = first.expected_sms if first.expected_sms is not None else first.sm_count
        facts.append(
            PoolFacts(
                label=label,
                kind=pool.kind,
                sms=sms,
                memory_mib=first.memory_mib or first.memory_total_mib,
                slices=len(pool.slices),
                gpu_model=_model_of(layout.inventory_source, first.gpu_uuid, inventories),
            )
        )
    return facts


def choose_pool(profile: Profile | None, pools: list[PoolFacts]) -> PoolFacts:
    """The pool for a function with this profile (None: unprofiled), by the rules above.

    Raises:
        UsageError: no pools, or none whose slices hold the function's memory.
    """
    if not pools:
        raise UsageError(
            'gpu_app(pool="auto") found no gpuslice pool in the loaded Parsl config; load '
            "gpuslice.parsl_config(plan) first"
        )

    def largest(candidates: list[PoolFacts]) -> PoolFacts:
        return max(candidates, key=lambda p: (p.sms, p.slices))

    if profile is None:
        return largest(pools)
    peak = profile.peak_memory_mib or 0
    fitting = [p for p in pools if p.memory_mib >= peak]
    if not fitting:
        caps = ", ".join(f"{p.label} {p.memory_mib} MiB" for p in pools)
        raise UsageError(
            f"{profile.function} needs {peak} MiB (measured peak) and no loaded pool's slices "
            f"hold that ({caps}); add a pool with a larger memory cap, e.g. from "
            "`gpuslice plan suggest`"
        )
    wanted = profile.recommended.sms
    big_enough = [p for p in fitting if p.sms >= wanted]
    if big_enough:
        return min(big_enough, key=lambda p: (p.sms, -p.slices))
    return largest(fitting)


def _warn_once(key: str, message: str) -> None:
    with _WARNED_LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    warnings.warn(message, stacklevel=4)
    logger.warning(message)


def auto_pool(func: Callable[..., Any], dfk: Any, store: ProfileStore | None = None) -> str:
    """The label of the loaded pool ``func`` should run in (``@gpu_app(pool="auto")``).

    Args:
        func: the user's function.
        dfk: the loaded DataFlowKernel.
        store: the profile store (default: ``$GPUSLICE_PROFILE_STORE`` or the user's cache).

    Raises:
        UsageError: no gpuslice pool is loaded, or none holds the function's memory.
    """
    pools = loaded_pools(dfk)
    fid: FunctionId = function_id(func)
    profiles = (store or ProfileStore()).for_code(fid)
    models = {p.gpu_model for p in pools if p.gpu_model is not None}
    chosen_profile = next((p for p in profiles if p.gpu_model in models), None)
    if chosen_profile is not None:
        on_model = [p for p in pools if p.gpu_model == chosen_profile.gpu_model] or pools
        pool = choose_pool(chosen_profile, on_model)
        rec = chosen_profile.recommended
        logger.info(
            "gpu_app %s: pool %s (%d SMs per slice; profile recommends %d x %d%%, %d SMs, on %s)",
            fid.name,
            pool.label,
            pool.sms,
            rec.per_gpu,
            rec.compute,
            rec.sms,
            chosen_profile.gpu_model,
        )
        return pool.label
    pool = choose_pool(None, pools)
    where = ", ".join(sorted(models)) or "the loaded GPUs"
    _warn_once(
        fid.name,
        f'gpu_app(pool="auto"): {fid.name} has no profile for {where} (code {fid.code_hash}); '
        f"its calls go to the pool with the largest slices, {pool.label!r}. Run "
        f"`gpuslice profile {fid.name}` to right-size it",
    )
    return pool.label
