"""A Parsl configuration for a partition plan: one HighThroughputExecutor per pool.

Each pool becomes an executor labelled with the pool's name. Its workers are its slices:

- ``available_accelerators`` lists the slices' device UUIDs (``GPU-…``/``MIG-…``), one entry
  per worker, repeated where several slices share a GPU. Never indices: Parsl's worker remaps an
  integer entry (``int(acc) // (workers // n_gpus)``) when ``nvidia-smi`` works.
- ``max_workers_per_node`` is the number of the pool's slices, so each slice gets one worker.
- ``worker_init`` (run by the block's shell before the worker pool starts, so what it exports
  reaches every worker) exports the pool's environment (:func:`gpuslice.mps.env.pool_environment`:
  compute and memory limits, the pool name, the per-device MPS pipe and log directories), the SMs
  each device's slice should see (``GPUSLICE_EXPECTED_SMS``), and for MPS pools runs
  ``gpuslice mps ensure`` for every daemon the pool needs; a daemon that does not answer ends the
  block (``|| exit 1``), so no worker starts where its limits would not hold. Inside the worker,
  :func:`gpuslice.parsl.worker.prepare_worker` then picks its device's pipe directory and checks
  the limit it really got before the first task.

A user's provider (Slurm, PBS, Kubernetes, …) is deep-copied for each pool and its own
``worker_init`` is kept and runs first (it typically activates the Python environment), then
gpuslice's lines. The default provider runs one block on this machine
(``LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1)``).

An emulated layout (GPUs described by a fleet file) additionally exports
``GPUSLICE_MPS_CONTROL=gpuslice-emulated-mps-control``, ``GPUSLICE_FLEET``,
``GPUSLICE_EMULATE_DIR`` and ``GPUSLICE_EMULATED=1``, and registers the emulated devices
(:func:`gpuslice.emulate.kernel.register_devices`) so emulated kernels know each device's SMs and
memory.

Clusters (node-local pools): device UUIDs belong to one node, so for a provider other than
LocalProvider (``node_local`` defaults on) the plan is resolved here only to size each pool,
against ``fleet`` (describing a compute node) or this machine's GPUs. The executor's
accelerators are then slot names (``gpuslice-slot-<rank>``), and ``worker_init`` runs
``gpuslice worker-init`` on the node the block lands on: it resolves the plan against that
node's GPUs, refuses a node that gives the pool another number of slices, starts the node's
MPS daemons and exports ``GPUSLICE_SLOTS`` (slot -> UUID), which each worker applies to its
``CUDA_VISIBLE_DEVICES`` before CUDA starts. ``worker_init`` runs once per block, on the node
running the batch script, so use one node per block (``nodes_per_block=1``).
"""

from __future__ import annotations

import copy
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.providers import LocalProvider
from parsl.providers.base import ExecutionProvider

from gpuslice.errors import UsageError
from gpuslice.hardware.inventory import discover
from gpuslice.mps import control
from gpuslice.mps import env as mps_env
from gpuslice.parsl.worker import EMULATED_ENV, EXPECTED_SMS_ENV
from gpuslice.plan.layout import Layout, PoolLayout
from gpuslice.plan.load import load_plan
from gpuslice.plan.resolve import resolve
from gpuslice.plan.schema import Plan

__all__ = [
    "EMULATED_ENV",
    "EXPECTED_SMS_ENV",
    "LAYOUT_ATTR",
    "POOL_ATTR",
    "gpuslice_command",
    "layout_of",
    "node_worker_init",
    "parsl_config",
    "pool_executor",
    "pool_exports",
    "pool_worker_init",
    "register_emulated_devices",
    "slot_names",
]

#: Attribute set on each executor gpuslice builds: the pool's name (how gpu_app finds pools).
POOL_ATTR = "gpuslice_pool"
#: Attribute set on each executor gpuslice builds: its resolved Layout (slice sizes, GPUs), which
#: ``gpu_app(pool="auto")`` reads to match a function's profile to a pool.
LAYOUT_ATTR = "gpuslice_layout"
#: The fleet file of an emulated layout.
FLEET_ENV = "GPUSLICE_FLEET"
#: Accelerator names of node-local pools (not integers: Parsl would remap those).
SLOT_PREFIX = "gpuslice-slot-"

#: Executor options gpuslice sets from the layout; a caller may not override them.
_RESERVED = ("label", "provider", "available_accelerators", "max_workers_per_node")
#: Default ``cores_per_worker``: tiny, so the slices and not the CPU count decide how many
#: workers a node runs (Parsl caps workers at ``cores / cores_per_worker``).
_CORES_PER_WORKER = 0.001
#: MPS client variables cleared before a pool's own are exported, so nothing inherited from
#: the submitting shell leaks into a slice.
_MPS_CLIENT_VARS = (
    mps_env.PIPE,
    mps_env.LOG,
    mps_env.COMPUTE,
    mps_env.MEMORY,
)


def layout_of(
    plan_or_layout: Layout | Plan | str | Path, fleet: str | Path | None = None
) -> Layout:
    """The layout to configure: a :class:`Layout` as is, else the plan resolved on this node.

    Args:
        plan_or_layout: a resolved layout, a :class:`Plan`, a plan file path, YAML text or the
            compact form (``"small=2x mps:25%/10GiB"``).
        fleet: fleet file describing the GPUs (emulated); None reads them through NVML.

    Raises:
        UsageError: a layout was given together with ``fleet``.
        PlanError: the plan does not fit the GPUs.
        NvmlUnavailable: no fleet and no usable NVIDIA driver.
    """
    if isinstance(plan_or_layout, Layout):
        if fleet is not None:
            raise UsageError(
                "a resolved Layout already names its GPUs; pass the plan instead of the "
                "layout to use a fleet file, or leave fleet out"
            )
        return plan_or_layout
    return resolve(plan_or_layout, discover(fleet))


def gpuslice_command() -> str:
    """How the worker's shell runs ``gpuslice``: the console script beside this interpreter.

    The block's shell may not have this environment's ``bin`` on ``PATH`` (a virtualenv that
    was never activated), so the absolute path is used when it exists.
    """
    beside = Path(sys.executable).parent / "gpuslice"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return "gpuslice"


def _fleet_path(layout: Layout, fleet: str | Path | None) -> str | None:
    if fleet is not None:
        return str(Path(fleet).resolve())
    if layout.inventory_source.startswith("fleet:"):
        return str(Path(layout.inventory_source.removeprefix("fleet:")).resolve())
    return None


def _expected_sms(pool: PoolLayout) -> str:
    sms: dict[str, int] = {}
    for s in pool.slices:
        if s.expected_sms is not None:
            sms.setdefault(s.device, s.expected_sms)
    return ";".join(f"{device}={count}" for device, count in sms.items())


def pool_worker_init(
    layout: Layout, pool: PoolLayout | str, *, fleet: str | Path | None = None
) -> str:
    """The shell lines gpuslice adds to a pool's ``worker_init``.

    Args:
        layout: the resolved layout.
        pool: one of its pools, or its name.
        fleet: the fleet file of an emulated layout, when it is not in
            ``layout.inventory_source``.

    Returns:
        Lines that put the interpreter's ``bin`` on ``PATH``, clear inherited MPS client
        variables, export the pool's environment, and start (or find) each MPS daemon the pool
        needs, ending the block if one does not answer.

    Raises:
        UsageError: no such pool.
        MpsError: the pool's slices disagree on their limits.
    """
    pool = _pool(layout, pool)
    env = pool_exports(layout, pool, fleet=fleet)
    command = shlex.quote(gpuslice_command())
    lines = [*_preamble(pool, f"{len(pool.slices)} slices"), mps_env.export_lines(env).rstrip("\n")]
    for d in pool.daemons:
        lines.append(
            f"{command} mps ensure --pipe-dir {shlex.quote(d.pipe_dir)} "
            f"--log-dir {shlex.quote(d.log_dir)} --device {shlex.quote(d.device)} "
            f'|| {{ echo "gpuslice: no MPS daemon for {d.device}; '
            f'pool {pool.name} not started" >&2; '
            "exit 1; }"
        )
    return "\n".join(lines) + "\n"


def _pool(layout: Layout, pool: PoolLayout | str) -> PoolLayout:
    if isinstance(pool, PoolLayout):
        return pool
    try:
        return layout.pool(pool)
    except KeyError as err:
        raise UsageError(str(err.args[0])) from err


def _preamble(pool: PoolLayout, what: str) -> list[str]:
    bin_dir = shlex.quote(str(Path(sys.executable).parent))
    return [
        f"# gpuslice: pool {pool.name} ({pool.kind}, {what})",
        f'export PATH={bin_dir}:"$PATH"',
        f"unset {' '.join(_MPS_CLIENT_VARS)}",
    ]


def pool_exports(
    layout: Layout, pool: PoolLayout | str, *, fleet: str | Path | None = None
) -> dict[str, str]:
    """The variables a pool's ``worker_init`` exports (the limits, daemons, expected SMs).

    Raises:
        UsageError: no such pool.
        MpsError: the pool's slices disagree on their limits.
    """
    pool = _pool(layout, pool)
    env = mps_env.pool_environment(pool)
    expected = _expected_sms(pool)
    if expected:
        env[EXPECTED_SMS_ENV] = expected
    if layout.emulated:
        from gpuslice.emulate.kernel import STATE_DIR_ENV, emulate_dir

        env[EMULATED_ENV] = "1"
        env[control.CONTROL_ENV] = control.EMULATED_PROGRAM
        env[STATE_DIR_ENV] = str(emulate_dir())
        fleet_path = _fleet_path(layout, fleet)
        if fleet_path is not None:
            env[FLEET_ENV] = fleet_path
    return env


def node_worker_init(plan: Plan, pool: PoolLayout, *, node_fleet: str | Path | None = None) -> str:
    """``worker_init`` lines that resolve the plan on the node the block lands on.

    Device UUIDs belong to one node, so for blocks on other machines (Slurm, PBS, …) the
    executor's accelerators are slot names (``gpuslice-slot-<rank>``) and ``worker_init`` runs
    ``gpuslice worker-init``: it resolves the plan against that node's GPUs (NVML, or
    ``node_fleet`` for emulated nodes), checks the node gives the pool as many slices as
    planned, starts the MPS daemons, and exports the pool's variables plus
    ``GPUSLICE_SLOTS`` (slot -> device UUID), which each worker applies before CUDA starts.
    """
    command = [
        gpuslice_command(),
        "worker-init",
        "--pool",
        pool.name,
        "--slots",
        str(len(pool.slices)),
        "--plan",
        plan.model_dump_json(exclude_none=True),
    ]
    if node_fleet is not None:
        command += ["--fleet", str(Path(node_fleet).resolve())]
    lines = _preamble(pool, f"{len(pool.slices)} slices per node, resolved on the node")
    lines += [
        f"_gpuslice_env=$({shlex.join(command)}) || "
        f'{{ echo "gpuslice: pool {pool.name} cannot start on $(hostname)" >&2; exit 1; }}',
        'eval "$_gpuslice_env"',
    ]
    return "\n".join(lines) + "\n"


def slot_names(pool: PoolLayout) -> list[str]:
    """The accelerator names of a node-local pool: one slot per slice rank."""
    return [f"{SLOT_PREFIX}{s.rank}" for s in pool.slices]


def _with_worker_init(provider: ExecutionProvider, lines: str) -> ExecutionProvider:
    try:
        mine = copy.deepcopy(provider)
    except Exception as err:
        raise UsageError(
            f"cannot copy the provider {type(provider).__name__} for each pool ({err}); "
            "pass a provider that can be deep-copied"
        ) from err
    if not hasattr(mine, "worker_init"):
        raise UsageError(
            f"provider {type(provider).__name__} has no worker_init, which gpuslice needs to "
            "start MPS daemons and export each pool's limits; use a Parsl provider that has one"
        )
    theirs = str(mine.worker_init or "").rstrip("\n")
    mine.worker_init = f"{theirs}\n{lines}" if theirs else lines
    return mine


def _default_provider() -> ExecutionProvider:
    # min_blocks=1: the strategy must not scale an idle pool's only block away.
    return LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1)  # type: ignore[no-untyped-call]


def pool_executor(
    layout: Layout,
    pool: PoolLayout,
    *,
    provider: ExecutionProvider | None = None,
    fleet: str | Path | None = None,
    node_plan: Plan | None = None,
    node_fleet: str | Path | None = None,
    **htex_options: Any,
) -> HighThroughputExecutor:
    """The HighThroughputExecutor of one pool.

    Args:
        layout: the resolved layout the pool belongs to.
        pool: the pool.
        provider: the user's provider (copied, its ``worker_init`` kept first); default one
            local block.
        fleet: fleet file of an emulated layout, if not in ``layout.inventory_source``.
        node_plan: resolve this plan on the node each block lands on (see
            :func:`node_worker_init`) instead of using ``layout``'s device UUIDs.
        node_fleet: with ``node_plan``: the fleet file the nodes resolve against (emulated
            nodes); default NVML on the node.
        **htex_options: other HighThroughputExecutor arguments (``cores_per_worker`` defaults
            to a tiny value so slices, not CPUs, decide the worker count).

    Raises:
        UsageError: ``htex_options`` sets what the layout decides, or the provider is unusable.
    """
    clash = sorted(set(htex_options) & set(_RESERVED))
    if clash:
        raise UsageError(
            f"parsl_config sets {', '.join(clash)} from the plan (one worker per slice, "
            "device UUIDs as accelerators, pool names as labels); remove "
            f"{'it' if len(clash) == 1 else 'them'} from the executor options"
        )
    base = provider if provider is not None else _default_provider()
    options: dict[str, Any] = {"cores_per_worker": _CORES_PER_WORKER}
    interchange = Path(sys.executable).parent / "interchange.py"
    if interchange.is_file():
        # Parsl starts ``interchange.py`` from PATH, which lacks a virtualenv never activated.
        options["interchange_launch_cmd"] = [str(interchange)]
    options.update(htex_options)
    if node_plan is not None:
        init = node_worker_init(node_plan, pool, node_fleet=node_fleet)
        accelerators = slot_names(pool)
    else:
        init = pool_worker_init(layout, pool, fleet=fleet)
        accelerators = list(pool.devices)
    executor = HighThroughputExecutor(
        label=pool.name,
        provider=_with_worker_init(base, init),
        available_accelerators=accelerators,
        max_workers_per_node=len(pool.slices),
        **options,
    )
    setattr(executor, POOL_ATTR, pool.name)
    setattr(executor, LAYOUT_ATTR, layout)
    return executor


def register_emulated_devices(layout: Layout) -> None:
    """Tell the emulated GPU the SMs and memory of every device the layout's slices use."""
    from gpuslice.emulate.kernel import register_devices
    from gpuslice.emulate.model import EmulatedDevice

    devices: dict[str, EmulatedDevice] = {}
    for s in layout.slices:
        if s.device not in devices and s.sm_count > 0 and s.memory_total_mib > 0:
            devices[s.device] = EmulatedDevice(
                uuid=s.device,
                sm_count=s.sm_count,
                memory_mib=s.memory_total_mib,
                name=f"emulated {'MIG instance' if s.kind == 'mig' else 'GPU'} {s.gpu_index}",
            )
    register_devices(devices)


def parsl_config(
    plan_or_layout: Layout | Plan | str | Path,
    *,
    provider: ExecutionProvider | None = None,
    fleet: str | Path | None = None,
    retries: int = 0,
    run_dir: str | None = None,
    node_local: bool | None = None,
    node_fleet: str | Path | None = None,
    **htex_options: Any,
) -> Config:
    """A Parsl configuration with one HighThroughputExecutor per pool of the plan.

    Args:
        plan_or_layout: a resolved :class:`Layout`, a :class:`Plan`, a plan file, YAML text or
            the compact form (``"small=2x mps:25%/10GiB, large=1x mps:50%"``).
        provider: where blocks run (SlurmProvider, PBSProProvider, KubernetesProvider, …); it is
            deep-copied per pool and its ``worker_init`` runs before gpuslice's lines. Default:
            one block on this machine.
        fleet: fleet file describing the GPUs (emulated); default: the GPUs of this node (NVML).
        retries: how often Parsl retries a failed task (a lost worker counts as a failure).
        run_dir: Parsl's run directory (default ``runinfo``).
        node_local: resolve the plan again on each node a block lands on, so workers get that
            node's device UUIDs (default: on for providers other than LocalProvider). Here,
            the plan is resolved against ``fleet`` (or this machine's GPUs) only to size the
            pools: nodes must have the same GPUs. Needs a plan, not a Layout.
        node_fleet: with ``node_local``: the fleet file nodes resolve against instead of NVML
            (emulated nodes, for tests); default: the layout's own fleet when it is emulated.
        **htex_options: passed to every HighThroughputExecutor (e.g. ``heartbeat_period``).

    Returns:
        The configuration; load it with ``parsl.load(config)``, then use
        ``@gpuslice.gpu_app(pool="…")``.

    Raises:
        PlanError: the plan does not fit the GPUs.
        UsageError: executor options that clash with the plan, or an unusable provider.
        MpsError: a pool whose slices disagree on their limits.
    """
    layout = layout_of(plan_or_layout, fleet)
    if node_local is None:
        node_local = provider is not None and not isinstance(provider, LocalProvider)
    node_plan: Plan | None = None
    if node_local:
        if isinstance(plan_or_layout, Layout):
            raise UsageError(
                "node_local resolves the plan on each node, so it needs the plan rather than "
                "a resolved Layout; pass the plan (path, text or Plan), or node_local=False"
            )
        node_plan = load_plan(plan_or_layout)
        if node_fleet is None and layout.emulated:
            node_fleet = _fleet_path(layout, fleet)
    executors = [
        pool_executor(
            layout,
            pool,
            provider=provider,
            fleet=fleet,
            node_plan=node_plan,
            node_fleet=node_fleet,
            **htex_options,
        )
        for pool in layout.pools
    ]
    if layout.emulated:
        register_emulated_devices(layout)
    return Config(executors=executors, retries=retries, run_dir=run_dir or "runinfo")
