"""Bind a plan to the GPUs of an inventory, checking everything that needs the hardware.

Every problem is collected before anything is raised, so a user fixes a plan in one pass.
Rules (each tested in ``tests/plan/test_resolve.py``):

- ``gpus:`` (plan or pool) must name GPUs that are there.
- ``mps`` and ``share`` pools need whole GPUs, so they skip GPUs in MIG mode (or are refused
  where a pool names such a GPU); ``mig`` pools need MIG instances of their profile.
- Per device, MPS compute percentages sum to at most 100 unless ``oversubscribe: true``,
  memory caps sum to at most the device's memory, and MPS clients stay within the
  hardware's client limit.
- A GPU without MPS support gets no MPS pool; a MIG profile must exist on the GPU model.
- Compute mode: ``Prohibited`` GPUs get nothing; ``Exclusive_Process`` allows one CUDA
  context, so only one worker per GPU without MPS.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from gpuslice.errors import PlanError, Problem
from gpuslice.hardware.inventory import Gpu, Inventory, MigDevice
from gpuslice.mps import paths
from gpuslice.mps.limits import visible_sm_count
from gpuslice.plan.compact import to_compact
from gpuslice.plan.layout import Layout, PoolLayout, Slice
from gpuslice.plan.load import load_plan
from gpuslice.plan.schema import GpuRef, MpsSpec, Plan, PoolSpec
from gpuslice.sizes import format_mib


@dataclass
class _DeviceUse:
    """What the pools put on one device (a whole GPU or a MIG instance)."""

    label: str
    memory_mib: int
    max_clients: int
    compute: list[tuple[str, int]] = field(default_factory=list)
    memory: list[tuple[str, int]] = field(default_factory=list)
    clients: int = 0
    timeshared: int = 0
    oversubscribe_ok: bool = True


def _select(
    refs: list[GpuRef], inventory: Inventory, where: str, problems: list[Problem]
) -> list[Gpu]:
    chosen: list[Gpu] = []
    for position, ref in enumerate(refs):
        gpu = inventory.find(ref)
        if gpu is None:
            there = ", ".join(f"{g.index}" for g in inventory.gpus[:16]) or "none"
            more = " …" if len(inventory.gpus) > 16 else ""
            problems.append(
                Problem(
                    f"{where}.{position}",
                    f"no GPU {ref!r} here",
                    f"use an index or UUID from `gpuslice gpus` (indices: {there}{more})",
                )
            )
        elif gpu not in chosen:
            chosen.append(gpu)
    return chosen


class _Resolver:
    def __init__(self, plan: Plan, inventory: Inventory) -> None:
        self.plan = plan
        self.inventory = inventory
        self.problems: list[Problem] = []
        self.devices: dict[str, _DeviceUse] = {}
        self.claimed_mig: set[str] = set()
        self.root = Path(plan.mps_dir) if plan.mps_dir else paths.default_root()
        if plan.gpus == "all":
            self.allowed = list(inventory.gpus)
        else:
            self.allowed = _select(plan.gpus, inventory, "gpus", self.problems)

    def device(self, key: str, label: str, memory_mib: int, max_clients: int) -> _DeviceUse:
        if key not in self.devices:
            self.devices[key] = _DeviceUse(label, memory_mib, max_clients)
        return self.devices[key]

    def pool_gpus(self, name: str, pool: PoolSpec) -> tuple[list[Gpu], bool]:
        if pool.gpus is None or pool.gpus == "all":
            return self.allowed, False
        chosen = _select(pool.gpus, self.inventory, f"pools.{name}.gpus", self.problems)
        outside = [g for g in chosen if g not in self.allowed]
        for gpu in outside:
            self.problems.append(
                Problem(
                    f"pools.{name}.gpus",
                    f"GPU {gpu.index} is not among the plan's `gpus:`",
                    "add it to the top-level gpus list or remove it from this pool",
                )
            )
        return [g for g in chosen if g in self.allowed], True

    def resolve(self) -> Layout:
        pools: list[PoolLayout] = []
        # MIG pools with an explicit count claim their instances first, so a pool that takes
        # "every instance" gets what is left whatever the pools' order in the file.
        order = sorted(
            self.plan.pools,
            key=lambda n: 0 if (m := self.plan.pools[n].mig) is not None and m.count else 1,
        )
        built: dict[str, list[Slice]] = {}
        for name in order:
            pool = self.plan.pools[name]
            gpus, explicit = self.pool_gpus(name, pool)
            if pool.mig is not None:
                built[name] = self.mig_pool(name, pool, gpus, explicit)
            else:
                built[name] = self.whole_gpu_pool(name, pool, gpus, explicit)
        for name, pool in self.plan.pools.items():
            slices = built[name]
            if not slices and not any(
                p.location.startswith(f"pools.{name}") for p in self.problems
            ):
                self.problems.append(
                    Problem(
                        f"pools.{name}",
                        "the pool has no GPU it can run on",
                        "check `gpus:` and the GPUs' MIG mode with `gpuslice gpus`",
                    )
                )
            oversubscribe = pool.oversubscribe or self.plan.oversubscribe
            pools.append(PoolLayout(name, pool.kind, tuple(slices), oversubscribe))
        self.check_devices()
        if self.problems:
            raise PlanError(self.problems, source="plan on this hardware")
        return Layout(
            pools=tuple(pools),
            inventory_source=self.inventory.source,
            emulated=self.inventory.emulated,
            plan_text=to_compact(self.plan),
        )

    def usable(self, name: str, pool: PoolSpec, gpu: Gpu, explicit: bool) -> bool:
        where = f"pools.{name}"
        if gpu.compute_mode.lower() == "prohibited":
            if explicit:
                self.problems.append(
                    Problem(
                        where,
                        f"GPU {gpu.index} is in compute mode Prohibited: no CUDA context may run",
                        "ask the administrator to change the compute mode, or leave this GPU out",
                    )
                )
            return False
        if gpu.mig_enabled:
            if explicit:
                self.problems.append(
                    Problem(
                        where,
                        f"GPU {gpu.index} is in MIG mode, so CUDA sees only its MIG instances",
                        "use a `mig:` pool for this GPU (with `mps:` inside if you want limits)",
                    )
                )
            return False
        if pool.mps is not None and not gpu.supports_mps:
            self.problems.append(
                Problem(
                    f"{where}.mps",
                    f"GPU {gpu.index} ({gpu.name}) does not support MPS with limits",
                    "use `share: {}` on this GPU, or leave it out with `gpus:`",
                )
            )
            return False
        return True

    def whole_gpu_pool(
        self, name: str, pool: PoolSpec, gpus: list[Gpu], explicit: bool
    ) -> list[Slice]:
        slices: list[Slice] = []
        for gpu in gpus:
            if not self.usable(name, pool, gpu, explicit):
                continue
            use = self.device(
                gpu.uuid, f"GPU {gpu.index} ({gpu.name})", gpu.memory_mib, gpu.max_mps_clients
            )
            per = pool.workers_per_gpu
            if pool.mps is not None:
                self.account_mps(name, pool, pool.mps, use, per)
            else:
                use.timeshared += per
                if gpu.compute_mode.lower().startswith("exclusive") and use.timeshared > 1:
                    self.problems.append(
                        Problem(
                            f"pools.{name}.per_gpu",
                            f"GPU {gpu.index} is in compute mode {gpu.compute_mode}: "
                            "it takes one CUDA "
                            "context, so workers cannot time-share it",
                            "use an `mps:` pool (MPS clients share one server context) "
                            "or per_gpu: 1",
                        )
                    )
            for _ in range(per):
                slices.append(
                    self.make_slice(
                        name, len(slices), gpu, gpu.uuid, gpu.sm_count, gpu.memory_mib, pool.mps
                    )
                )
        return slices

    def account_mps(
        self, name: str, pool: PoolSpec, spec: MpsSpec, use: _DeviceUse, per: int
    ) -> None:
        use.compute.extend([(name, spec.compute if spec.compute is not None else 100)] * per)
        if spec.memory is not None:
            use.memory.extend([(name, spec.memory)] * per)
        use.clients += per
        use.oversubscribe_ok &= pool.oversubscribe or self.plan.oversubscribe

    def mig_pool(self, name: str, pool: PoolSpec, gpus: list[Gpu], explicit: bool) -> list[Slice]:
        spec = pool.mig
        assert spec is not None
        where = f"pools.{name}.mig"
        slices: list[Slice] = []
        lacking: dict[str, list[str]] = {}
        for gpu in gpus:
            model = gpu.model
            if model is not None and not model.mig:
                if explicit:
                    self.problems.append(
                        Problem(
                            where,
                            f"GPU {gpu.index} ({model.name}) has no MIG",
                            "use an `mps:` or `share:` pool on this GPU",
                        )
                    )
                continue
            if not gpu.mig_enabled:
                if explicit:
                    self.problems.append(
                        Problem(
                            where,
                            f"GPU {gpu.index} is not in MIG mode",
                            "an administrator enables it with `nvidia-smi -i N -mig 1`; "
                            "then `gpuslice mig apply PLAN` creates the instances",
                        )
                    )
                continue
            if model is not None and model.profile(spec.profile) is None:
                lacking[model.name] = [p.name for p in model.mig_profiles]
                continue
            free = [
                d
                for d in gpu.mig_devices
                if d.profile == spec.profile and d.uuid not in self.claimed_mig
            ]
            wanted = spec.count if spec.count is not None else len(free)
            if (explicit or spec.count is not None) and len(free) < wanted:
                have = len(free)
                self.problems.append(
                    Problem(
                        f"{where}.count" if spec.count else where,
                        f"GPU {gpu.index} has {have} unclaimed {spec.profile} instance"
                        f"{'s' if have != 1 else ''}, the pool needs {wanted}",
                        "create them with `gpuslice mig apply PLAN` (root, idle GPU) "
                        "or lower count",
                    )
                )
            for device in free[:wanted]:
                self.claimed_mig.add(device.uuid)
                slices.extend(self.mig_slices(name, pool, gpu, device, len(slices)))
        if slices or any(p.location.startswith(where) for p in self.problems):
            return slices
        for model_name, names in lacking.items():
            close = difflib.get_close_matches(spec.profile, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self.problems.append(
                Problem(
                    f"{where}.profile",
                    f"{model_name} has no MIG profile {spec.profile!r}",
                    hint + f"its profiles: {', '.join(names)}",
                )
            )
        if not lacking:
            self.problems.append(
                Problem(
                    where,
                    f"no GPU here has a {spec.profile} MIG instance for this pool",
                    "create the instances with `gpuslice mig apply PLAN` (root), "
                    "or see `gpuslice gpus`",
                )
            )
        return slices

    def mig_slices(
        self, name: str, pool: PoolSpec, gpu: Gpu, device: MigDevice, first: int
    ) -> list[Slice]:
        spec = pool.mig
        assert spec is not None
        if spec.mps is not None:
            use = self.device(
                device.uuid,
                f"MIG {device.profile} {device.uuid} on GPU {gpu.index}",
                device.memory_mib,
                gpu.max_mps_clients,
            )
            self.account_mps(name, pool, spec.mps, use, spec.per_instance)
        return [
            self.make_slice(
                name, first + i, gpu, device.uuid, device.sm_count, device.memory_mib, spec.mps
            )
            for i in range(spec.per_instance)
        ]

    def make_slice(
        self,
        pool: str,
        rank: int,
        gpu: Gpu,
        device: str,
        sm_count: int,
        memory_total: int,
        mps: MpsSpec | None,
    ) -> Slice:
        kind = self.plan.pools[pool].kind
        return Slice(
            pool=pool,
            rank=rank,
            kind=kind,
            gpu_index=gpu.index,
            gpu_uuid=gpu.uuid,
            device=device,
            compute=mps.compute if mps else None,
            memory_mib=mps.memory if mps else None,
            sm_count=sm_count,
            expected_sms=visible_sm_count(sm_count, mps.compute) if mps else sm_count,
            memory_total_mib=memory_total,
            mps_pipe_dir=paths.pipe_dir(self.root, device) if mps else None,
            mps_log_dir=paths.log_dir(self.root, device) if mps else None,
        )

    def check_devices(self) -> None:
        for use in self.devices.values():
            total = sum(c for _, c in use.compute)
            if total > 100 and not use.oversubscribe_ok:
                parts = _summarise(use.compute, "%")
                self.problems.append(
                    Problem(
                        _pools_where(use.compute),
                        f"MPS compute on {use.label} sums to {total}% ({parts})",
                        "lower compute or per_gpu so the sum is at most 100, or set "
                        "`oversubscribe: true` to let clients compete for SMs",
                    )
                )
            memory = sum(m for _, m in use.memory)
            if memory > use.memory_mib:
                parts = _summarise(use.memory, "MiB")
                self.problems.append(
                    Problem(
                        _pools_where(use.memory),
                        f"memory caps on {use.label} sum to {format_mib(memory)} ({parts}), "
                        f"more than its {format_mib(use.memory_mib)}",
                        "lower memory or per_gpu so the caps fit in the device's memory",
                    )
                )
            if use.clients > use.max_clients:
                self.problems.append(
                    Problem(
                        _pools_where(use.compute),
                        f"{use.clients} MPS clients on {use.label}, "
                        f"more than the {use.max_clients} "
                        "client contexts an MPS server accepts per device",
                        "lower per_gpu",
                    )
                )


def _summarise(items: list[tuple[str, int]], unit: str) -> str:
    totals: dict[str, list[int]] = defaultdict(list)
    for pool, value in items:
        totals[pool].append(value)
    render = format_mib if unit == "MiB" else (lambda v: f"{v}{unit}")
    return ", ".join(f"{pool}: {len(v)}x{render(v[0])}" for pool, v in totals.items())


def _pools_where(items: list[tuple[str, int]]) -> str:
    names = list(dict.fromkeys(p for p, _ in items))
    return "pools." + ("+".join(names) if len(names) > 1 else names[0])


def resolve(plan: Plan | str | Path, inventory: Inventory) -> Layout:
    """Bind every slice of ``plan`` to a device of ``inventory``.

    Args:
        plan: a :class:`Plan`, or anything :func:`gpuslice.load_plan` reads.
        inventory: from :func:`gpuslice.discover`.

    Returns:
        The :class:`Layout`: each slice's ``CUDA_VISIBLE_DEVICES`` UUID and MPS settings.

    Raises:
        PlanError: every problem found, each with its location and a fix.
    """
    return _Resolver(load_plan(plan), inventory).resolve()
