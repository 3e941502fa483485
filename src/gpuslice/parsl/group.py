"""One batch job per node hosts every pool: a provider that Parsl's executors share.

Parsl gives each executor (here, each pool) its own provider and its own blocks, so a plan with
two pools would become two batch jobs on two nodes, each running only its pool's share of every
GPU: a plan that splits each GPU 60/40 would leave 40% of one node's GPUs and 60% of the other's
idle. gpuslice keeps Parsl's providers and launchers doing the submitting and builds on Parsl's
provider interface instead:

- :class:`NodeGroup` wraps the user's provider (LocalProvider, SlurmProvider, PBSProProvider, …).
  A *node* of the group is one job of that provider (with ``nodes_per_block > 1``, one job of
  several nodes), hosting one block of every pool.
- Each pool's executor gets a :class:`PoolProvider`, a view of the group. When the executor
  launches a block, Parsl hands the view the block's worker-pool command; the group keeps it
  for the next node that lacks this pool, and once every pool has given its command for that
  node it submits ONE job, through the user's provider and launcher, whose command is
  ``gpuslice node-run`` with every pool's command (:mod:`gpuslice.parsl.node` runs them on the
  node, each device's slices in their environment).
- Scaling adds and removes whole nodes. A pool that scales out alone (Parsl's strategy, per
  executor) pulls the other pools along after :data:`PULL_AFTER_S`, so the node is complete.
  A pool that scales a block in holds its managers (Parsl's scale_in does so before it cancels)
  and lets go of the node; the job is cancelled once every pool has let go of it.
- Each pool's block on a node reports the job's status, so a node that cannot start fails the
  blocks of every pool with node-run's message (Parsl's error handler puts it in the tasks'
  error).
"""

from __future__ import annotations

import shlex
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from parsl.jobs.states import JobState, JobStatus
from parsl.providers.base import ExecutionProvider

from gpuslice.parsl.node import NodeSpec, encode_spec

if TYPE_CHECKING:
    from gpuslice.parsl.elastic import ElasticController
    from gpuslice.parsl.executor import SliceExecutor

__all__ = ["PULL_AFTER_S", "NodeGroup", "PoolProvider"]

#: Seconds a node may wait for the other pools' blocks before the group asks them for one.
PULL_AFTER_S = 2.0
#: Seconds the group reuses its provider's answer to a status query (every pool polls).
_STATUS_TTL_S = 1.0
_JOB_PREFIX = "gpuslice-node-"


@dataclass
class _Node:
    """One job of the group: a block of every pool."""

    index: int
    created: float
    commands: dict[str, str] = field(default_factory=dict)
    job_id: Any = None
    released: set[str] = field(default_factory=set)
    cancelled: bool = False
    failed: JobStatus | None = None

    @property
    def name(self) -> str:
        return f"{_JOB_PREFIX}{self.index}"


class NodeGroup:
    """The user's provider, shared by every pool's executor (see the module's description).

    Args:
        provider: the user's provider; it submits, polls and cancels the group's jobs, and its
            launcher and ``worker_init`` wrap every job's command.
        spec: what every node is told (plan, fleet, slices per pool).
        node_run: the argv prefix that runs ``gpuslice node-run`` on a node.
        elastic: the elastic controller of an elastic configuration: its hub's address goes
            into every node's spec, it starts once every pool's executor has started, and it
            stops before the group's nodes are cancelled.
    """

    def __init__(
        self,
        provider: ExecutionProvider,
        spec: NodeSpec,
        node_run: list[str],
        elastic: ElasticController | None = None,
    ) -> None:
        self.provider = provider
        self.spec = spec
        self.node_run = node_run
        self.elastic = elastic
        self.pools = list(spec.pools)
        self.executors: dict[str, SliceExecutor] = {}
        self.nodes: list[_Node] = []
        self.lock = threading.RLock()
        self._status_cache: tuple[float, dict[Any, JobStatus]] = (0.0, {})
        self.id = spec.group

    @staticmethod
    def new_id() -> str:
        """A fresh group id (names leases and the node lock)."""
        return uuid.uuid4().hex[:12]

    def view(self, pool: str) -> PoolProvider:
        """The provider a pool's executor uses."""
        return PoolProvider(self, pool)

    # -- the elastic controller's lifecycle ------------------------------------------------

    def executor_started(self, executor: SliceExecutor) -> None:
        """An executor has started; the elastic controller starts once all of them have."""
        if self.elastic is None:
            return
        with self.lock:
            ready = len(self.executors) == len(self.pools) and all(
                e.started for e in self.executors.values()
            )
        if ready:
            self.elastic.start(self.executors)

    def executor_stopping(self, executor: SliceExecutor) -> None:
        """An executor shuts down: the elastic controller stops before it uses it again."""
        if self.elastic is not None:
            self.elastic.stop()

    # -- submit ---------------------------------------------------------------------------

    def node_command(self, node: _Node) -> str:
        """The command a node's job runs: node-run with every pool's worker-pool command."""
        spec = self.spec
        if self.elastic is not None:
            spec = replace(spec, elastic={"hub": self.elastic.hub_address().to_dict()})
        words = [*self.node_run, "--spec", encode_spec(spec)]
        for pool in self.pools:
            words += ["--pool", f"{pool}={node.commands[pool]}"]
        return shlex.join(words)

    def submit(self, pool: str, command: str) -> str:
        """Take a pool's block command; submit the node's job once every pool gave one."""
        with self.lock:
            node = next((n for n in self.nodes if pool not in n.commands and not n.cancelled), None)
            if node is None:
                node = _Node(index=len(self.nodes), created=time.monotonic())
                self.nodes.append(node)
            node.commands[pool] = command
            if len(node.commands) == len(self.pools):
                self._launch(node)
            return node.name

    def _launch(self, node: _Node) -> None:
        job_name = f"gpuslice.{self.id}.node-{node.index}"
        try:
            node.job_id = self.provider.submit(self.node_command(node), 1, job_name)
        except Exception as err:
            node.failed = JobStatus(JobState.FAILED, f"submitting node {node.index} failed: {err}")
            return
        if node.job_id is None:
            node.failed = JobStatus(
                JobState.FAILED, f"the provider did not submit node {node.index} (at capacity?)"
            )

    def _pull(self) -> None:
        """Ask pools missing from a waiting node for a block, so nodes are whole."""
        now = time.monotonic()
        for node in self.nodes:
            if node.job_id is not None or node.failed or node.cancelled:
                continue
            if now - node.created < PULL_AFTER_S:
                continue
            for pool in self.pools:
                executor = self.executors.get(pool)
                if pool in node.commands or executor is None or not executor.started:
                    continue
                executor.scale_out_facade(1)

    # -- status and cancel ----------------------------------------------------------------

    def _node(self, job_id: str) -> _Node | None:
        if not job_id.startswith(_JOB_PREFIX):
            return None
        index = int(job_id[len(_JOB_PREFIX) :])
        return self.nodes[index] if 0 <= index < len(self.nodes) else None

    def _provider_status(self) -> dict[Any, JobStatus]:
        stamp, cached = self._status_cache
        if time.monotonic() - stamp < _STATUS_TTL_S:
            return cached
        jobs = [n.job_id for n in self.nodes if n.job_id is not None]
        answers = self.provider.status(jobs) if jobs else []
        fresh = dict(zip(jobs, answers, strict=True))
        self._status_cache = (time.monotonic(), fresh)
        return fresh

    def status(self, job_ids: list[str]) -> list[JobStatus]:
        """The status of each node named (PENDING until its job is submitted)."""
        with self.lock:
            self._pull()
            known = self._provider_status()
            result = []
            for job_id in job_ids:
                node = self._node(job_id)
                if node is None:
                    result.append(JobStatus(JobState.MISSING, f"no node {job_id} in the group"))
                elif node.failed is not None:
                    result.append(node.failed)
                elif node.job_id is None:
                    result.append(JobStatus(JobState.PENDING))
                else:
                    result.append(known.get(node.job_id, JobStatus(JobState.UNKNOWN)))
            return result

    def cancel(self, pool: str, job_ids: list[str]) -> list[bool]:
        """A pool lets go of nodes; a node's job is cancelled once every pool let go of it.

        With strategy ``none`` (elastic mode) only the DataFlowKernel's cleanup cancels blocks,
        so the elastic controller stops first: it must not start slices on a node going away.
        """
        if self.elastic is not None:
            self.elastic.stop()
        with self.lock:
            done = []
            to_cancel = []
            for job_id in job_ids:
                node = self._node(job_id)
                if node is None:
                    done.append(False)
                    continue
                node.released.add(pool)
                if node.released >= set(self.pools) and not node.cancelled:
                    node.cancelled = True
                    if node.job_id is not None:
                        to_cancel.append(node.job_id)
                done.append(True)
            if to_cancel:
                self.provider.cancel(to_cancel)
                self._status_cache = (0.0, {})
            return done


class PoolProvider(ExecutionProvider):
    """One pool's view of a :class:`NodeGroup`: what the pool's executor sees as its provider.

    Scaling limits (``init_blocks``, ``min_blocks``, ``max_blocks``, ``nodes_per_block``,
    ``parallelism``), ``cores_per_node`` and ``mem_per_node`` are the user's provider's, so a
    block of every pool is a node of the user's provider.
    """

    def __init__(self, group: NodeGroup, pool: str) -> None:
        theirs = group.provider
        self.group = group
        self.pool = pool
        self.init_blocks = getattr(theirs, "init_blocks", 1)
        self.min_blocks = getattr(theirs, "min_blocks", 0)
        self.max_blocks = getattr(theirs, "max_blocks", 1)
        self.nodes_per_block = getattr(theirs, "nodes_per_block", 1)
        self.parallelism = getattr(theirs, "parallelism", 1)
        self.cores_per_node = getattr(theirs, "cores_per_node", None)
        self.mem_per_node = getattr(theirs, "mem_per_node", None)
        self.resources = getattr(theirs, "resources", {})
        self._label = f"{theirs.label}+gpuslice"

    @property
    def script_dir(self) -> str | None:
        """The user's provider's submit-script directory (Parsl sets it per run)."""
        return getattr(self.group.provider, "script_dir", None)

    @script_dir.setter
    def script_dir(self, value: str | None) -> None:
        self.group.provider.script_dir = value

    def submit(self, command: str, tasks_per_node: int, job_name: str = "parsl.auto") -> str:
        """Give this pool's block command to the group; returns the node's job id."""
        return self.group.submit(self.pool, command)

    def status(self, job_ids: Sequence[object]) -> list[JobStatus]:
        """Status of the nodes this pool has blocks on."""
        return self.group.status([str(j) for j in job_ids])

    def cancel(self, job_ids: Sequence[object]) -> list[bool]:
        """This pool lets go of those nodes."""
        return self.group.cancel(self.pool, [str(j) for j in job_ids])

    @property
    def label(self) -> str:
        """The user's provider's label, marked as shared through gpuslice."""
        return self._label

    @property
    def status_polling_interval(self) -> int:
        """The user's provider's polling interval."""
        interval: int = self.group.provider.status_polling_interval
        return interval

    def __repr__(self) -> str:
        return f"PoolProvider(pool={self.pool!r}, provider={self.group.provider!r})"
