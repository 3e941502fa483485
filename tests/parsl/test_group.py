"""The node group: one job per node carries every pool, whatever order the pools ask in.

The provider here records what it is asked and never runs anything: these tests are about the
group's bookkeeping. Real jobs (LocalProvider, Slurm) run in test_run.py and tests/slurm.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Sequence
from typing import Any

import pytest
from parsl.jobs.states import JobState, JobStatus
from parsl.providers.base import ExecutionProvider

from gpuslice.parsl import group as group_module
from gpuslice.parsl.group import NodeGroup, PoolProvider
from gpuslice.parsl.node import NodeSpec, decode_spec


class Recorder(ExecutionProvider):
    """A provider that records submissions and cancellations; its jobs run forever."""

    def __init__(self, *, fail: bool = False) -> None:
        self.submitted: list[tuple[str, int, str]] = []
        self.cancelled: list[Any] = []
        self.fail = fail
        self.init_blocks = 1
        self.min_blocks = 0
        self.max_blocks = 4
        self.nodes_per_block = 1
        self.parallelism = 1.0
        self.resources: dict[object, Any] = {}
        self.script_dir: str | None = None
        self.cores_per_node = None
        self.mem_per_node = None

    def submit(self, command: str, tasks_per_node: int, job_name: str = "parsl.auto") -> object:
        if self.fail:
            raise RuntimeError("sbatch: error: invalid partition")
        self.submitted.append((command, tasks_per_node, job_name))
        return f"job{len(self.submitted)}"

    def status(self, job_ids: Sequence[object]) -> list[JobStatus]:
        return [
            JobStatus(JobState.CANCELLED if j in self.cancelled else JobState.RUNNING)
            for j in job_ids
        ]

    def cancel(self, job_ids: Sequence[object]) -> list[bool]:
        self.cancelled.extend(job_ids)
        return [True for _ in job_ids]

    @property
    def label(self) -> str:
        return "recorder"

    @property
    def status_polling_interval(self) -> int:
        return 1


class FakeExecutor:
    """Stands in for a started SliceExecutor: scale_out_facade submits through its view."""

    def __init__(self, view: PoolProvider) -> None:
        self.view = view
        self.started = True
        self.blocks = 0

    def scale_out_facade(self, n: int) -> list[str]:
        ids = []
        for _ in range(n):
            ids.append(
                self.view.submit(f"pwp --pool-of {self.view.pool} --block_id={self.blocks}", 1)
            )
            self.blocks += 1
        return ids


def make_group(provider: ExecutionProvider, pools: tuple[str, ...] = ("a", "b")) -> NodeGroup:
    spec = NodeSpec(group="g1", pools=dict.fromkeys(pools, 2), plan={"version": 1})
    return NodeGroup(provider, spec, ["/venv/bin/gpuslice", "node-run"])


def test_a_node_is_submitted_once_every_pool_gave_its_block() -> None:
    provider = Recorder()
    group = make_group(provider)

    first = group.view("a").submit("pwp-a --block_id=0", 1)
    assert provider.submitted == []
    second = group.view("b").submit("pwp-b --block_id=0", 1)

    assert first == second
    assert len(provider.submitted) == 1
    command, tasks_per_node, _ = provider.submitted[0]
    assert tasks_per_node == 1
    words = shlex.split(command)
    assert words[:2] == ["/venv/bin/gpuslice", "node-run"]
    assert decode_spec(words[words.index("--spec") + 1]).pools == {"a": 2, "b": 2}
    assert "a=pwp-a --block_id=0" in words
    assert "b=pwp-b --block_id=0" in words


def test_status_is_pending_until_the_node_is_submitted_then_the_jobs() -> None:
    provider = Recorder()
    group = make_group(provider)
    job = group.view("a").submit("pwp-a", 1)

    assert group.view("a").status([job])[0].state == JobState.PENDING
    group.view("b").submit("pwp-b", 1)
    group._status_cache = (0.0, {})
    assert group.view("b").status([job])[0].state == JobState.RUNNING


def test_the_job_is_cancelled_only_when_every_pool_let_go_of_the_node() -> None:
    provider = Recorder()
    group = make_group(provider)
    job = group.view("a").submit("pwp-a", 1)
    group.view("b").submit("pwp-b", 1)

    assert group.view("a").cancel([job]) == [True]
    assert provider.cancelled == []
    assert group.view("b").cancel([job]) == [True]
    assert provider.cancelled == ["job1"]


def test_a_pool_scaling_out_alone_pulls_the_other_pools_after_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(group_module, "PULL_AFTER_S", 0.05)
    provider = Recorder()
    group = make_group(provider)
    executors = {p: FakeExecutor(group.view(p)) for p in ("a", "b")}
    group.executors.update(executors)  # type: ignore[arg-type]
    job = executors["a"].scale_out_facade(1)[0]

    group.status([job])  # too early: the other pool may still be on its way
    assert provider.submitted == []
    time.sleep(0.1)
    group.status([job])

    assert executors["b"].blocks == 1
    assert len(provider.submitted) == 1


def test_pools_asking_for_blocks_in_turn_fill_one_node_each_round() -> None:
    provider = Recorder()
    group = make_group(provider, ("a", "b", "c"))
    jobs = {p: [group.view(p).submit(f"{p}{i}", 1) for i in range(2)] for p in ("a", "b", "c")}

    assert len(provider.submitted) == 2
    assert jobs["a"] == jobs["b"] == jobs["c"]
    first = shlex.split(provider.submitted[0][0])
    assert {"a=a0", "b=b0", "c=c0"} <= set(first)


def test_a_node_that_cannot_be_submitted_fails_every_pools_block_with_the_reason() -> None:
    group = make_group(Recorder(fail=True))
    job = group.view("a").submit("pwp-a", 1)
    group.view("b").submit("pwp-b", 1)

    for pool in ("a", "b"):
        (status,) = group.view(pool).status([job])
        assert status.state == JobState.FAILED
        assert "invalid partition" in str(status.message)


def test_the_views_take_the_providers_scaling_limits() -> None:
    provider = Recorder()
    view = make_group(provider).view("a")

    assert (view.init_blocks, view.min_blocks, view.max_blocks) == (1, 0, 4)
    assert view.nodes_per_block == 1
    view.script_dir = "/run/submit_scripts"
    assert provider.script_dir == "/run/submit_scripts"
    assert view.label == "recorder+gpuslice"
