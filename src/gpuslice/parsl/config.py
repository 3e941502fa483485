"""A Parsl configuration for a partition plan: one executor per pool, one job per node for all.

Each pool becomes a :class:`~gpuslice.parsl.executor.SliceExecutor` (Parsl's
HighThroughputExecutor, every task guarded) labelled with the pool's name, whose workers are the
pool's slices. All pools share one :class:`~gpuslice.parsl.group.NodeGroup` wrapping the user's
provider (default: one block on this machine, ``LocalProvider(init_blocks=1, min_blocks=1,
max_blocks=1)``): a block is a node that runs every pool's workers, so each node's GPUs are cut
exactly as the plan says, and scaling adds and removes whole nodes.

On each node, ``gpuslice node-run`` (:mod:`gpuslice.parsl.node`) resolves the plan against that
node's GPUs, starts the MPS daemons, and starts one Parsl worker pool per (pool, device) with the
slice's environment already exported, so every kind of task (gpu_app, python_app, bash_app) runs
in its slice. Here, the plan is resolved only to size each pool (its slices per node), against
``fleet`` (GPUs described in a file: the emulated GPU, or a cluster's compute node seen from a login
node) or this machine's GPUs: nodes must have the GPUs the plan was sized for, and node-run refuses
a node that gives a pool another number of slices.

The user's provider is deep-copied, and its own ``worker_init`` (activating the Python
environment, loading modules) runs in every job before node-run. With ``nodes_per_block > 1`` the
provider's launcher must start one node-run per node (SrunLauncher, MpiExecLauncher, …): each node
sets itself up. An emulated layout (GPUs described by a fleet file) runs on the emulated GPU:
node-run points every worker at the emulated MPS control program and the emulator's state.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

from parsl.config import Config
from parsl.launchers import SimpleLauncher, SingleNodeLauncher
from parsl.providers import LocalProvider
from parsl.providers.base import ExecutionProvider

from gpuslice.errors import PlanError, UsageError
from gpuslice.hardware.inventory import discover
from gpuslice.parsl.elastic import ElasticController, ElasticPolicy
from gpuslice.parsl.executor import SliceExecutor, worker_pool_command
from gpuslice.parsl.group import NodeGroup
from gpuslice.parsl.node import NodeSpec, register_emulated_devices
from gpuslice.plan.layout import Layout, PoolLayout, layout_problems
from gpuslice.plan.load import load_plan
from gpuslice.plan.resolve import resolve
from gpuslice.plan.schema import Plan

__all__ = [
    "LOCAL_ADDRESS",
    "STRATEGY_PERIOD_S",
    "gpuslice_command",
    "layout_of",
    "node_spec",
    "parsl_config",
    "pool_executor",
    "register_emulated_devices",
]

#: Executor options gpuslice sets from the layout; a caller may not override them.
_RESERVED = (
    "label",
    "provider",
    "available_accelerators",
    "max_workers_per_node",
    "launch_cmd",
)
#: Default ``cores_per_worker``: tiny, so the slices and not the CPU count decide how many
#: workers a node runs (Parsl caps workers at ``cores / cores_per_worker``).
_CORES_PER_WORKER = 0.001
#: Accelerator names the executors are sized with; node-run gives workers the node's UUIDs.
SLOT_PREFIX = "gpuslice-slot-"
#: Launchers that run the command once, on the batch script's node only.
_ONE_NODE_LAUNCHERS = (SingleNodeLauncher, SimpleLauncher)


def layout_of(
    plan_or_layout: Layout | Plan | str | Path, fleet: str | Path | None = None
) -> Layout:
    """The layout to configure: a :class:`Layout` as is, else the plan resolved here.

    Args:
        plan_or_layout: a resolved layout, a :class:`Plan`, a plan file path, YAML text or the
            compact form (``"small=2x mps:25%/10GiB"``).
        fleet: fleet file describing the GPUs (emulated); None reads them through NVML.

    Raises:
        UsageError: a layout was given together with ``fleet``.
        PlanError: the plan does not fit the GPUs, or a layout breaks the rules a resolved
            plan keeps (a Layout built by hand is checked as one loaded from JSON is).
        NvmlUnavailable: no fleet and no usable NVIDIA driver.
    """
    if isinstance(plan_or_layout, Layout):
        if fleet is not None:
            raise UsageError(
                "a resolved Layout already names its GPUs; pass the plan instead of the "
                "layout to use a fleet file, or leave fleet out"
            )
        problems = layout_problems(plan_or_layout)
        if problems:
            raise PlanError(problems, source="layout")
        return plan_or_layout
    return resolve(plan_or_layout, discover(fleet))


def gpuslice_command() -> str:
    """How a job runs ``gpuslice``: the console script beside this interpreter.

    The job's shell may not have this environment's ``bin`` on ``PATH`` (a virtualenv that
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


def node_spec(
    plan_or_layout: Layout | Plan | str | Path,
    layout: Layout,
    *,
    group: str,
    fleet: str | Path | None = None,
    node_fleet: str | Path | None = None,
    emulated: bool | None = None,
    keep_daemons: bool = False,
) -> NodeSpec:
    """What every node is told: the plan to resolve there (or the layout), and each pool's size.

    Args:
        plan_or_layout: what the user gave :func:`parsl_config`.
        layout: its resolution here (sizes the pools).
        group: the node group's id.
        fleet: the fleet file that sized the pools, if any.
        node_fleet: the fleet file emulated nodes resolve against; default ``fleet``.
        emulated: whether the nodes run on the emulated GPU; default: when the layout is
            emulated (its GPUs came from a fleet file). False: the nodes read their own GPUs
            through NVML even though a fleet file sized the pools.
        keep_daemons: leave the MPS daemons running after the run.
    """
    sizes = {pool.name: len(pool.slices) for pool in layout.pools}
    if emulated is None:
        emulated = layout.emulated
    nodes_fleet = None
    if emulated:
        nodes_fleet = _fleet_path(layout, node_fleet if node_fleet is not None else fleet)
        if nodes_fleet is None:
            raise UsageError(
                "emulated nodes need a fleet file describing their GPUs: pass fleet= or node_fleet="
            )
    emulate_dir = None
    if emulated:
        from gpuslice.emulate.kernel import emulate_dir as state_dir

        emulate_dir = str(state_dir())
    if isinstance(plan_or_layout, Layout):
        return NodeSpec(
            group=group,
            pools=sizes,
            layout=plan_or_layout.to_dict(),
            fleet=nodes_fleet,
            emulate_dir=emulate_dir,
            keep_daemons=keep_daemons,
        )
    plan = load_plan(plan_or_layout)
    return NodeSpec(
        group=group,
        pools=sizes,
        plan=plan.model_dump(mode="json", exclude_none=True),
        fleet=nodes_fleet,
        emulate_dir=emulate_dir,
        keep_daemons=keep_daemons,
    )


def _copied(provider: ExecutionProvider) -> ExecutionProvider:
    try:
        return copy.deepcopy(provider)
    except Exception as err:
        raise UsageError(
            f"cannot copy the provider {type(provider).__name__} ({err}); "
            "pass a provider that can be deep-copied"
        ) from err


def _check_provider(provider: ExecutionProvider) -> None:
    """Refuse providers that would put two node runs on one host, or none on some nodes."""
    if isinstance(provider, LocalProvider) and getattr(provider, "max_blocks", 1) > 1:
        raise UsageError(
            "a LocalProvider block is this whole machine, and gpuslice runs one block per node "
            f"(every pool's slices in it); set max_blocks=1 (got {provider.max_blocks})"
        )
    nodes = getattr(provider, "nodes_per_block", 1) or 1
    launcher = getattr(provider, "launcher", None)
    if nodes > 1 and isinstance(launcher, _ONE_NODE_LAUNCHERS):
        raise UsageError(
            f"nodes_per_block={nodes} with {type(launcher).__name__} starts gpuslice only on the "
            "batch script's node, so the other nodes would get no slices; use a launcher that "
            "starts one copy per node (SrunLauncher on Slurm, MpiExecLauncher or "
            "GnuParallelLauncher on PBS), or nodes_per_block=1"
        )


#: Where workers started by a LocalProvider (on this host) reach the interchange: loopback, as
#: Parsl's own local configs set it. Without an address HTEX probes every way to name this
#: host, one of them an HTTPS query to api.ipify.org with a 30 s timeout (parsl/addresses.py,
#: ``address_by_query``; Parsl PR #1715 added that timeout for firewalled networks), once per
#: executor: on a firewalled cluster node every pool, and every profiled size, would wait on it.
#: Batch providers' workers run on other nodes, so they keep Parsl's probe.
LOCAL_ADDRESS = "127.0.0.1"


def _default_provider() -> ExecutionProvider:
    # min_blocks=1: the strategy must not scale an idle configuration's only block away.
    return LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1)  # type: ignore[no-untyped-call]


def pool_executor(
    pool: PoolLayout, group: NodeGroup, layout: Layout | None = None, **htex_options: Any
) -> SliceExecutor:
    """The executor of one pool, its blocks submitted through ``group``.

    ``layout`` (the resolved layout the pool belongs to) is kept on the executor for
    ``gpu_app(pool="auto")``.

    Raises:
        UsageError: ``htex_options`` sets what the layout decides.
    """
    clash = sorted(set(htex_options) & set(_RESERVED))
    if clash:
        raise UsageError(
            f"parsl_config sets {', '.join(clash)} from the plan (one worker per slice, "
            "device UUIDs as accelerators, pool names as labels); remove "
            f"{'it' if len(clash) == 1 else 'them'} from the executor options"
        )
    options: dict[str, Any] = {"cores_per_worker": _CORES_PER_WORKER}
    if isinstance(group.provider, LocalProvider):
        options["address"] = LOCAL_ADDRESS
    interchange = Path(sys.executable).parent / "interchange.py"
    if interchange.is_file():
        # Parsl starts ``interchange.py`` from PATH, which lacks a virtualenv never activated.
        options["interchange_launch_cmd"] = [str(interchange)]
    options.update(htex_options)
    executor = SliceExecutor(
        pool=pool.name,
        layout=layout,
        label=pool.name,
        provider=group.view(pool.name),
        available_accelerators=[f"{SLOT_PREFIX}{s.rank}" for s in pool.slices],
        max_workers_per_node=len(pool.slices),
        launch_cmd=worker_pool_command(),
        **options,
    )
    group.executors[pool.name] = executor
    return executor


#: Seconds between Parsl's strategy runs (``Config.strategy_period``). Parsl launches the initial
#: blocks at the first run (parsl/jobs/strategy.py, ``_strategy_init_only`` and
#: ``_general_strategy``: "Scaling out %d initial blocks"), so its default of 5 s kept every
#: workflow's first node waiting 5 s after ``parsl.load``; one second is cheap, since a provider's
#: own ``status_polling_interval`` spaces the scheduler queries (parsl/jobs/job_status_poller.py).
STRATEGY_PERIOD_S = 1.0

#: ``parsl_config``'s strategy when none is given: Parsl's ``simple``, or ``none`` when elastic.
_DEFAULT_STRATEGY = "default"


def parsl_config(
    plan_or_layout: Layout | Plan | str | Path,
    *,
    provider: ExecutionProvider | None = None,
    fleet: str | Path | None = None,
    retries: int = 0,
    run_dir: str | None = None,
    node_fleet: str | Path | None = None,
    emulated: bool | None = None,
    keep_daemons: bool = False,
    strategy: str | None = _DEFAULT_STRATEGY,
    strategy_period: float = STRATEGY_PERIOD_S,
    elastic: ElasticPolicy | None = None,
    **htex_options: Any,
) -> Config:
    """A Parsl configuration with one executor per pool of the plan and one job per node.

    Args:
        plan_or_layout: a :class:`Plan`, a plan file, YAML text or the compact form
            (``"small=2x mps:25%/10GiB, large=1x mps:50%"``), resolved on each node; or a
            resolved :class:`Layout`, used as is (it names this machine's devices).
        provider: where blocks run (LocalProvider, SlurmProvider, PBSProProvider, …). It is
            deep-copied once and shared by every pool: each of its jobs is a node running all
            pools' workers. Its ``worker_init`` runs in every job before gpuslice starts the
            workers. Default: one block on this machine.
        fleet: fleet file describing the GPUs (the emulated GPU, or the compute nodes seen from
            a login node without GPUs); default: this machine's GPUs (NVML) to size the pools
            and each node's own GPUs to run them.
        retries: how often Parsl retries a failed task (a lost worker counts as a failure).
        run_dir: Parsl's run directory (default ``runinfo``).
        node_fleet: the fleet file emulated nodes resolve against, when it differs from
            ``fleet`` (e.g. a fleet with ``node:`` names, whose UUIDs differ per node).
        emulated: whether the nodes run on the emulated GPU. Default: when the GPUs come from a
            fleet file (described, not present). Pass False to size the pools with a fleet file
            describing the compute nodes (from a login node without GPUs) while the nodes use
            their own GPUs through NVML.
        keep_daemons: leave the MPS daemons running when the run ends (default: every node
            stops the daemons it started once its block ends).
        strategy: Parsl's scaling strategy (``simple``, ``htex_auto_scale`` or ``none``);
            scaling adds and removes whole nodes. Default ``simple``, and ``none`` with
            ``elastic`` (the only strategy allowed then: Parsl's would fight the controller).
        strategy_period: seconds between two runs of Parsl's job status poller and strategy
            (:data:`STRATEGY_PERIOD_S`; Parsl's own default is 5). Parsl requests the
            ``init_blocks`` at the poller's first run, so this is also how long after
            ``parsl.load`` the first node is asked for. Batch schedulers are not queried more
            often: each provider's ``status_polling_interval`` still spaces its status calls.
        elastic: resize the pools while the workflow runs
            (:class:`~gpuslice.parsl.elastic.ElasticPolicy`): each node runs one worker pool
            per slice and a controller in this process moves capacity between pools, within
            each device's compute and memory (:mod:`gpuslice.parsl.elastic`). Needs MPS pools
            with compute and memory limits; nodes connect back to this process over TCP.
        **htex_options: passed to every HighThroughputExecutor (e.g. ``heartbeat_period``).

    Returns:
        The configuration; load it with ``parsl.load(config)``, then use
        ``@gpuslice.gpu_app(pool="…")`` (or python_app/bash_app with ``executors=["…"]``).

    Raises:
        PlanError: the plan does not fit the GPUs.
        UsageError: executor options that clash with the plan, an unusable provider, or an
            elastic policy the plan cannot follow.
    """
    layout = layout_of(plan_or_layout, fleet)
    base = _copied(provider) if provider is not None else _default_provider()
    _check_provider(base)
    if strategy == _DEFAULT_STRATEGY:
        strategy = "none" if elastic is not None else "simple"
    if elastic is not None:
        if strategy not in ("none", None):
            raise UsageError(
                f"strategy={strategy!r} would let Parsl add and remove nodes while the elastic "
                "controller resizes pools; leave strategy out (it becomes 'none') or drop elastic="
            )
        elastic.check(layout)
    group_id = NodeGroup.new_id()
    spec = node_spec(
        plan_or_layout,
        layout,
        group=group_id,
        fleet=fleet,
        node_fleet=node_fleet,
        emulated=emulated,
        keep_daemons=keep_daemons,
    )
    controller = ElasticController(elastic, group_id) if elastic is not None else None
    group = NodeGroup(base, spec, [gpuslice_command(), "node-run"], elastic=controller)
    executors = [pool_executor(pool, group, layout, **htex_options) for pool in layout.pools]
    if spec.emulated:
        register_emulated_devices(layout)
    return Config(
        executors=executors,
        retries=retries,
        run_dir=run_dir or "runinfo",
        strategy=strategy,
        strategy_period=strategy_period,
    )
