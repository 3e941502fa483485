"""Bind a plan to the GPUs of an inventory, checking everything that needs the hardware.

Every problem is collected before anything is raised, so a user fixes a plan in one pass.
Rules (each tested in ``tests/plan/test_resolve.py``):

- ``gpus:`` (plan or pool) must name GPUs that are there.
- ``mps`` and ``share`` pools need whole GPUs, so they skip GPUs in MIG mode (or are refused
  where a pool names such a GPU); ``mig`` pools need MIG instances of their profile.
- Per device, MPS compute percentages sum to at most 100 unless ``oversubscribe: true``,
  memory caps plus the device memory every CUDA context needs
  (:data:`~gpuslice.hardware.catalog.CUDA_CONTEXT_RESERVE_MIB` for each worker and for the
  MPS server) fit in the device's memory, and MPS clients stay within the hardware's
  client limit.
- A GPU without MPS support gets no MPS pool; a MIG profile must exist on the GPU model
  (models whose profile table gpuslice lacks take the instances NVML reports).
- Compute mode: ``Prohibited`` GPUs get nothing; ``Exclusive_Process`` allows one CUDA
  context, so only one worker per GPU without MPS, and MPS slices (whose server is that one
  context) cannot share a GPU with a time-shared worker.
- A slice whose device's SM count is unknown (a GPU model the catalog lacks) gets
  ``expected_sms=None``: percentages and memory caps need no catalog.
- The MPS root (``mps_dir``, else ``$GPUSLICE_MPS_ROOT`` or the default) passes
  :func:`gpuslice.mps.paths.root_problems`, the rule ``parsl_config``, ``mps ensure`` and the
  workers apply; the layout built passes :func:`gpuslice.plan.layout.layout_problems`, the
  check a layout loaded from JSON gets.
- At most :data:`~gpuslice.plan.limits.MAX_SLICES` slices, counted before any is built.
"""

from __future__ import annotations

import difflib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from gpuslice.errors import PlanError, Problem
from gpuslice.hardware.catalog import CUDA_CONTEXT_RESERVE_MIB
from gpuslice.hardware.inventory import Gpu, Inventory, MigDevice
from gpuslice.mps import paths
from gpuslice.mps.limits import visible_sm_count
from gpuslice.plan import limits
from gpuslice.plan.compact import to_compact
from gpuslice.plan.layout import Layout, PoolLayout, Slice, layout_problems
from gpuslice.plan.load import load_plan
from gpuslice.plan.schema import GpuRef, MpsSpec, Plan, PoolSpec
from gpuslice.sizes import format_mib


def contexts_reserve_mib(contexts: int) -> int:
    """Device memory to keep free for ``contexts`` CUDA contexts (workers and MPS servers)."""
    return CUDA_CONTEXT_RESERVE_MIB * contexts


def mps_reserve_mib(clients: int) -> int:
    """Device memory to keep free for ``clients`` MPS clients and the MPS server they share."""
    return contexts_reserve_mib(clients + 1)


def slices_that_fit(device_memory_mib: int, cap_mib: int) -> int:
    """How many MPS slices with memory cap ``cap_mib`` one device holds (0 when none).

    The planner's rule: the caps plus one context reserve for each slice and one for the MPS
    server fit in the device's memory, ``n * cap + (n + 1) * reserve <= memory``.
    """
    if cap_mib < 1:
        raise ValueError(f"cap_mib must be at least 1, not {cap_mib}")
    free = device_memory_mib - contexts_reserve_mib(1)
    return max(0, free // (cap_mib + contexts_reserve_mib(1)))


def equal_memory_cap_mib(device_memory_mib: int, slices: int) -> int:
    """The largest memory cap ``slices`` equal MPS slices of one device may each have.

    What is left of the device's memory after one context reserve for each slice and one for
    the MPS server, divided equally (at least 1 MiB).
    """
    if slices < 1:
        raise ValueError(f"slices must be at least 1, not {slices}")
    free = device_memory_mib - mps_reserve_mib(slices)
    return max(1, free // slices)


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
    exclusive: bool = False
    mps_pools: list[str] = field(default_factory=list)
    timeshared_pools: list[str] = field(default_factory=list)

    @property
    def contexts(self) -> int:
        """CUDA contexts on the device: every worker, and the MPS server when there is one."""
        return self.clients + self.timeshared + (1 if self.clients else 0)


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
        self._dirs: dict[str, tuple[str, str]] = {}
        self.root = Path(plan.mps_dir) if plan.mps_dir else paths.default_root()
        if not plan.mps_dir and any(_uses_mps(p) for p in plan.pools.values()):
            for reason in paths.root_problems(str(self.root)):
                self.problems.append(
                    Problem(
                        paths.ROOT_ENV if os.environ.get(paths.ROOT_ENV) else "mps_dir",
                        f"the MPS root {reason}",
                        f"set {paths.ROOT_ENV} (or the plan's mps_dir) to a short absolute "
                        "path on a local disk, e.g. /tmp/gs-mps",
                    )
                )
        if plan.gpus == "all":
            self.allowed = list(inventory.gpus)
        else:
            self.allowed = _select(plan.gpus, inventory, "gpus", self.problems)

    def device(
        self, key: str, label: str, memory_mib: int, max_clients: int, exclusive: bool = False
    ) -> _DeviceUse:
        if key not in self.devices:
            self.devices[key] = _DeviceUse(label, memory_mib, max_clients, exclusive=exclusive)
        return self.devices[key]

    def dirs(self, device: str) -> tuple[str, str]:
        """The pipe and log directories of ``device``'s daemon (computed once per device)."""
        if device not in self._dirs:
            self._dirs[device] = (
                paths.pipe_dir(self.root, device),
                paths.log_dir(self.root, device),
            )
        return self._dirs[device]

    def slice_count_problem(self) -> Problem | None:
        """The layout's slice count, bounded before any slice is built (an upper bound)."""
        total = 0
        for name, pool in self.plan.pools.items():
            if pool.gpus is None or pool.gpus == "all":
                gpus = self.allowed
            else:
                gpus = [g for g in map(self.inventory.find, pool.gpus) if g is not None]
            if pool.mig is not None:
                wanted = pool.mig.count or limits.MAX_MIG_INSTANCES
                instances = sum(min(wanted, len(g.mig_devices)) for g in gpus)
                total += instances * pool.mig.per_instance
            else:
                total += pool.workers_per_gpu * len(gpus)
            if total > limits.MAX_SLICES:
                return Problem(
                    f"pools.{name}",
                    f"the plan makes more than {limits.MAX_SLICES} slices on these GPUs",
                    "lower per_gpu (or mig.per_instance), or give pools fewer GPUs with `gpus:`",
                )
        return None

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
        too_many = self.slice_count_problem()
        if too_many is not None:
            raise PlanError([*self.problems, too_many], source="plan on this hardware")
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
        layout = Layout(
            pools=tuple(pools),
            inventory_source=self.inventory.source,
            emulated=self.inventory.emulated,
            plan_text=to_compact(self.plan),
        )
        # The check a layout loaded from JSON gets: whatever resolve returns passes it, so
        # what `plan check` accepts, parsl_config and the workers accept too.
        problems = layout_problems(layout)
        if problems:
            raise PlanError(problems, source="layout")
        return layout

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
                gpu.uuid,
                f"GPU {gpu.index} ({gpu.name})",
                gpu.memory_mib,
                gpu.max_mps_clients,
                exclusive=gpu.compute_mode.lower().startswith("exclusive"),
            )
            per = pool.workers_per_gpu
            if pool.mps is not None:
                self.account_mps(name, pool, pool.mps, use, per)
            else:
                use.timeshared += per
                use.timeshared_pools.append(name)
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
        use.mps_pools.append(name)
        use.oversubscribe_ok &= pool.oversubscribe or self.plan.oversubscribe

    def mig_pool(self, name: str, pool: PoolSpec, gpus: list[Gpu], explicit: bool) -> list[Slice]:
        spec = pool.mig
        assert spec is not None
        where = f"pools.{name}.mig"
        slices: list[Slice] = []
        lacking: dict[str, list[str]] = {}
        no_mig: list[Gpu] = []
        mig_off: list[Gpu] = []
        for gpu in gpus:
            model = gpu.model
            if model is not None and not model.mig:
                no_mig.append(gpu)
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
                mig_off.append(gpu)
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
            # A model whose profile table gpuslice lacks takes the instances NVML reports.
            if model is not None and model.mig_profiles and model.profile(spec.profile) is None:
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
        if lacking:
            return slices
        if gpus and len(no_mig) == len(gpus):
            models = ", ".join(sorted({g.name for g in no_mig}))
            self.problems.append(
                Problem(
                    where,
                    f"no GPU here supports MIG ({models})",
                    "use an `mps:` pool (compute and memory limits) or a `share:` pool instead",
                )
            )
        elif mig_off and len(no_mig) + len(mig_off) == len(gpus):
            indices = ", ".join(str(g.index) for g in mig_off)
            self.problems.append(
                Problem(
                    where,
                    f"no GPU here is in MIG mode (MIG-capable: GPU {indices})",
                    "an administrator enables it with `nvidia-smi -i N -mig 1`; then "
                    "`gpuslice mig apply PLAN` creates the instances. Or use an `mps:` pool",
                )
            )
        else:
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
        # An unknown SM count (a model the catalog lacks) gives no expectation: the worker
        # then skips its SM check with a logged reason; limits themselves need no catalog.
        if sm_count <= 0:
            expected: int | None = None
        elif mps is not None:
            expected = visible_sm_count(sm_count, mps.compute)
        else:
            expected = sm_count
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
            expected_sms=expected,
            memory_total_mib=memory_total,
            mps_pipe_dir=self.dirs(device)[0] if mps else None,
            mps_log_dir=self.dirs(device)[1] if mps else None,
        )

    def memory_problem(self, use: _DeviceUse, memory: int, reserve: int) -> Problem:
        """Caps plus the context reserve do not fit in a device's memory."""
        contexts = (
            f"{format_mib(reserve)} kept for its {use.contexts} CUDA contexts "
            f"({CUDA_CONTEXT_RESERVE_MIB} MiB each: every worker and the MPS server)"
        )
        if not use.memory:
            names = list(dict.fromkeys(use.mps_pools + use.timeshared_pools))
            return Problem(
                "pools." + "+".join(names),
                f"{use.label} cannot hold {use.contexts} CUDA contexts: {contexts} is more than "
                f"its {format_mib(use.memory_mib)}",
                "lower per_gpu; at most "
                f"{use.memory_mib // CUDA_CONTEXT_RESERVE_MIB} contexts fit on this device",
            )
        fits = (use.memory_mib - reserve) // len(use.memory)
        return Problem(
            _pools_where(use.memory),
            f"memory caps on {use.label} sum to {format_mib(memory)} "
            f"({_summarise(use.memory, 'MiB')}); with {contexts} that is more than its "
            f"{format_mib(use.memory_mib)}",
            "lower memory or per_gpu; "
            + (
                f"equal caps of at most {format_mib(fits)} fit here"
                if fits > 0
                else "this device cannot hold that many workers"
            ),
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
            reserve = contexts_reserve_mib(use.contexts)
            if memory + reserve > use.memory_mib:
                self.problems.append(self.memory_problem(use, memory, reserve))
            if use.exclusive and use.clients and use.timeshared:
                # NVIDIA: "Exclusive-mode restrictions are applied to the MPS server, not MPS
                # clients" (https://docs.nvidia.com/deploy/mps/latest/when-to-use-mps.html):
                # the server is the GPU's one context, so a non-MPS worker cannot start.
                names = list(dict.fromkeys(use.mps_pools + use.timeshared_pools))
                self.problems.append(
                    Problem(
                        "pools." + "+".join(names),
                        f"{use.label} is in compute mode Exclusive_Process: the MPS server of "
                        f"pool {', '.join(dict.fromkeys(use.mps_pools))} is its one CUDA "
                        f"context, so the time-shared workers of pool "
                        f"{', '.join(dict.fromkeys(use.timeshared_pools))} cannot run beside it",
                        "put the share pool on other GPUs with `gpus:`, or make it an `mps:` "
                        "pool (MPS clients share the server's context)",
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


def _uses_mps(pool: PoolSpec) -> bool:
    return pool.mps is not None or (pool.mig is not None and pool.mig.mps is not None)


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
