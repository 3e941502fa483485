"""The MIG instances a plan needs on each GPU, and the ones an inventory has.

Which GPUs a ``mig:`` pool targets (the same choice as :func:`gpuslice.plan.resolve.resolve`):

- ``pools.<name>.gpus: [..]`` names them explicitly. Every GPU named must support MIG and
  have the pool's profile; otherwise the plan is refused (:class:`PlanError`).
- Otherwise the candidates are the plan's ``gpus:`` (``all`` by default). Among them the pool
  targets the GPUs that can hold its profile: MIG-capable models that have the profile, plus
  GPUs of unknown model that are already in MIG mode. A top-level ``gpus:`` list only narrows
  the candidates, as in ``resolve`` (it often lists whole GPUs for ``mps:`` pools too).
  If no candidate can hold the profile, the plan is refused.

How many instances of the profile a pool needs on each targeted GPU:

- ``count: N`` — N instances on every targeted GPU.
- no ``count`` ("every instance there is") — at least one. With explicit ``gpus:`` that is one
  on each named GPU. Without, it is one on each targeted GPU that is already in MIG mode
  (GPUs left out of MIG mode are taken to serve whole-GPU pools); when none of them is in MIG
  mode yet, one on each targeted (MIG-capable) GPU.

Pools asking for the same profile on the same GPU add up: two pools of ``count: 2`` need four.
The result lists GPU-instance profile names as the catalog spells them (``3g.20gb``).
"""

from __future__ import annotations

import re
from pathlib import Path

from gpuslice.errors import PlanError, Problem
from gpuslice.hardware.inventory import Gpu, Inventory
from gpuslice.plan.load import load_plan

# The same GPU-reference check resolve() uses, so both name a missing GPU the same way.
from gpuslice.plan.resolve import _select
from gpuslice.plan.schema import Plan, PoolSpec

# A compute instance smaller than its GPU instance is named ``<ci>c.<gi profile>``
# (MIG user guide, "MIG Device Names":
# https://docs.nvidia.com/datacenter/tesla/mig-user-guide/mig-device-names.html).
_CI_PREFIX = re.compile(r"^\d+c\.")


def gi_profile(device_profile: str) -> str:
    """The GPU-instance profile of a MIG device name: ``1c.3g.20gb`` -> ``3g.20gb``."""
    return _CI_PREFIX.sub("", device_profile.strip().lower())


def _can_hold(gpu: Gpu, profile: str) -> bool:
    if gpu.model is None:
        # Unknown model: only a GPU already in MIG mode is known to do MIG.
        return gpu.mig_enabled
    return gpu.model.mig and gpu.model.profile(profile) is not None


def _explicit_problem(gpu: Gpu, profile: str) -> str | None:
    model = gpu.model
    if model is None:
        return None if gpu.mig_enabled else f"GPU {gpu.index} ({gpu.name}) is not known to do MIG"
    if not model.mig:
        return f"GPU {gpu.index} ({model.name}) has no MIG"
    if model.profile(profile) is None:
        known = ", ".join(p.name for p in model.mig_profiles)
        return (
            f"{model.name} (GPU {gpu.index}) has no MIG profile {profile!r} (its profiles: {known})"
        )
    return None


def pool_targets(
    plan: Plan, name: str, pool: PoolSpec, inventory: Inventory, problems: list[Problem]
) -> tuple[list[Gpu], bool]:
    """The GPUs a ``mig:`` pool targets, and whether ``pools.<name>.gpus`` named them.

    Problems (unknown GPUs, GPUs that cannot hold the profile) are appended to ``problems``.
    """
    spec = pool.mig
    assert spec is not None  # only called for mig pools
    where = f"pools.{name}"
    if isinstance(pool.gpus, list):
        chosen = _select(pool.gpus, inventory, f"{where}.gpus", problems)
        targets: list[Gpu] = []
        for gpu in chosen:
            reason = _explicit_problem(gpu, spec.profile)
            if reason is None:
                targets.append(gpu)
            else:
                problems.append(
                    Problem(
                        f"{where}.gpus",
                        reason,
                        "name only MIG-capable GPUs with this profile (see `gpuslice gpus`)",
                    )
                )
        return targets, True
    if isinstance(plan.gpus, list):
        candidates = _select(plan.gpus, inventory, "gpus", problems)
    else:
        candidates = list(inventory.gpus)
    targets = [gpu for gpu in candidates if _can_hold(gpu, spec.profile)]
    if not targets and candidates:
        problems.append(
            Problem(
                f"{where}.mig.profile",
                f"no GPU here can hold a {spec.profile} MIG instance",
                "use a profile of a MIG-capable GPU listed by `gpuslice gpus`",
            )
        )
    return targets, False


def _needs(pool: PoolSpec, targets: list[Gpu], explicit: bool) -> dict[int, int]:
    spec = pool.mig
    assert spec is not None
    if spec.count is not None:
        return {gpu.index: spec.count for gpu in targets}
    if explicit:
        return {gpu.index: 1 for gpu in targets}
    in_mig_mode = [gpu for gpu in targets if gpu.mig_enabled]
    return {gpu.index: 1 for gpu in (in_mig_mode or targets)}


def required_instances(plan: Plan | str | Path, inventory: Inventory) -> dict[int, list[str]]:
    """The MIG GPU instances the plan's ``mig:`` pools need, per GPU index.

    See the module docstring for the targeting and counting rules.

    Args:
        plan: a :class:`Plan`, or anything :func:`gpuslice.load_plan` reads.
        inventory: the GPUs (from NVML or a fleet file).

    Returns:
        ``{gpu_index: [profile, ...]}`` for every GPU that needs at least one instance, in
        index order; each list is a multiset, sorted. A plan without ``mig:`` pools gives ``{}``.

    Raises:
        PlanError: a pool names a GPU that is not there or cannot hold its profile, or no GPU
            can hold a pool's profile; every problem is listed.
    """
    loaded = load_plan(plan)
    problems: list[Problem] = []
    needs: dict[int, list[str]] = {}
    for name, pool in loaded.pools.items():
        if pool.mig is None:
            continue
        targets, explicit = pool_targets(loaded, name, pool, inventory, problems)
        for index, count in _needs(pool, targets, explicit).items():
            needs.setdefault(index, []).extend([pool.mig.profile] * count)
    if problems:
        raise PlanError(problems, source="plan's MIG pools on this hardware")
    return {index: sorted(needs[index]) for index in sorted(needs)}


def current_instances(inventory: Inventory) -> dict[int, list[str]]:
    """The MIG devices present, per GPU index, as profile names (``nvidia-smi -L`` names).

    Every GPU of the inventory appears, with ``[]`` when it has no MIG device (or MIG is off).
    A GPU instance split into several compute instances appears once per compute instance,
    named ``<n>c.<profile>`` as NVML reports it.
    """
    return {gpu.index: sorted(d.profile for d in gpu.mig_devices) for gpu in inventory.gpus}
