"""parsl_config without starting Parsl: executors, the shared node group, providers, Slurm scripts."""

from __future__ import annotations

import glob
import shlex
from pathlib import Path
from typing import Any

import pytest
from parsl.launchers import SingleNodeLauncher, SrunLauncher
from parsl.providers import LocalProvider, SlurmProvider

from gpuslice.errors import UsageError
from gpuslice.parsl.config import gpuslice_command, layout_of, parsl_config
from gpuslice.parsl.executor import TASK_EXECUTOR, SliceExecutor
from gpuslice.parsl.group import NodeGroup, PoolProvider
from tests.parsl.conftest import FLEET_2XH100, emulated_environment

PLAN = "small=2x mps:25%/10GiB, large=1x mps:50%/20GiB, batch=1x share"


@pytest.fixture(autouse=True)
def _private_dirs() -> object:
    with emulated_environment() as root:
        yield root


def group_of(config: Any) -> NodeGroup:
    groups = {id(e.provider.group): e.provider.group for e in config.executors}
    assert len(groups) == 1
    return next(iter(groups.values()))


def test_one_slice_executor_per_pool_labelled_with_the_pools_name() -> None:
    config = parsl_config(PLAN, fleet=FLEET_2XH100)
    assert [e.label for e in config.executors] == ["small", "large", "batch"]
    assert all(isinstance(e, SliceExecutor) for e in config.executors)
    assert [e.pool for e in config.executors] == ["small", "large", "batch"]


def test_each_pool_gets_one_worker_per_slice_of_a_node() -> None:
    layout = layout_of(PLAN, FLEET_2XH100)
    config = parsl_config(layout)
    for executor, pool in zip(config.executors, layout.pools, strict=True):
        assert executor.max_workers_per_node == len(pool.slices)
        assert len(executor.available_accelerators) == len(pool.slices)
        assert executor.workers_per_node == len(pool.slices)


def test_every_pool_shares_one_node_group_around_one_copy_of_the_provider() -> None:
    provider = LocalProvider(worker_init="module load cuda\nsource ~/env/bin/activate")
    config = parsl_config(PLAN, fleet=FLEET_2XH100, provider=provider)
    group = group_of(config)

    assert all(isinstance(e.provider, PoolProvider) for e in config.executors)
    assert group.provider is not provider
    assert isinstance(group.provider, LocalProvider)
    # The user's worker_init is theirs alone: gpuslice adds nothing to it.
    assert group.provider.worker_init == provider.worker_init
    assert group.pools == ["small", "large", "batch"]


def test_the_launch_command_is_parsls_worker_pool_without_count_and_accelerators() -> None:
    executor = parsl_config(PLAN, fleet=FLEET_2XH100).executors[0]
    assert "process_worker_pool.py" in executor.launch_cmd
    assert "--block_id={{block_id}}" in executor.launch_cmd
    assert "{accelerators}" not in executor.launch_cmd
    assert "{max_workers_per_node}" not in executor.launch_cmd


def test_the_node_spec_carries_the_plan_the_pool_sizes_and_the_fleet() -> None:
    group = group_of(parsl_config(PLAN, fleet=FLEET_2XH100))
    spec = group.spec
    assert spec.pools == {"small": 4, "large": 2, "batch": 2}
    assert spec.plan is not None
    assert set(spec.plan["pools"]) == {"small", "large", "batch"}
    assert spec.fleet == str(Path(FLEET_2XH100).resolve())
    assert spec.emulated


def test_a_layout_travels_as_a_layout() -> None:
    layout = layout_of(PLAN, FLEET_2XH100)
    spec = group_of(parsl_config(layout)).spec
    assert spec.plan is None
    assert spec.layout == layout.to_dict()


def test_emulated_false_lets_a_fleet_size_pools_for_nodes_that_use_nvml() -> None:
    spec = group_of(parsl_config(PLAN, fleet=FLEET_2XH100, emulated=False)).spec
    assert spec.fleet is None
    assert not spec.emulated


def test_the_default_provider_keeps_one_local_block() -> None:
    provider = group_of(parsl_config(PLAN, fleet=FLEET_2XH100)).provider
    assert isinstance(provider, LocalProvider)
    assert (provider.init_blocks, provider.min_blocks, provider.max_blocks) == (1, 1, 1)


def test_local_workers_reach_the_interchange_over_loopback_without_probing() -> None:
    local = parsl_config(PLAN, fleet=FLEET_2XH100)
    assert [e.address for e in local.executors] == ["127.0.0.1"] * 3
    assert [e.all_addresses for e in local.executors] == [{"127.0.0.1"}] * 3
    # A user's address wins; a batch provider's workers are on other nodes: Parsl probes.
    chosen = parsl_config(PLAN, fleet=FLEET_2XH100, address="10.1.2.3")
    assert [e.address for e in chosen.executors] == ["10.1.2.3"] * 3
    slurm = parsl_config(PLAN, fleet=FLEET_2XH100, provider=SlurmProvider(partition="gpu"))
    assert [e.address for e in slurm.executors] == [None] * 3


def test_a_local_provider_with_several_blocks_is_refused() -> None:
    with pytest.raises(UsageError, match="max_blocks=1"):
        parsl_config(PLAN, fleet=FLEET_2XH100, provider=LocalProvider(max_blocks=2))


def test_multi_node_blocks_need_a_launcher_that_reaches_every_node() -> None:
    one_node = SlurmProvider(nodes_per_block=2, launcher=SingleNodeLauncher())
    with pytest.raises(UsageError, match="SrunLauncher"):
        parsl_config(PLAN, fleet=FLEET_2XH100, provider=one_node)
    every_node = SlurmProvider(nodes_per_block=2, launcher=SrunLauncher())
    assert len(parsl_config(PLAN, fleet=FLEET_2XH100, provider=every_node).executors) == 3


def _render_slurm(group: NodeGroup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    slurm = group.provider
    slurm.script_dir = str(tmp_path)
    # Render the script through Parsl's own submit path; only sbatch itself is stood in for.
    monkeypatch.setattr(
        slurm, "execute_wait", lambda cmd, timeout=None: (0, "Submitted batch job 42", "")
    )
    for pool in group.pools:
        group.view(pool).submit(f"/venv/bin/process_worker_pool.py --pool-of {pool}", 1)
    [script_path] = glob.glob(str(tmp_path / "gpuslice.*"))
    return Path(script_path).read_text()


def test_one_slurm_job_runs_node_run_with_every_pools_worker_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = SlurmProvider(partition="gpu", worker_init="source ~/env/bin/activate")
    group = group_of(parsl_config(PLAN, fleet=FLEET_2XH100, provider=provider))
    script = _render_slurm(group, tmp_path, monkeypatch)

    assert script.startswith("#!/bin/bash")
    assert "#SBATCH --partition=gpu" in script
    assert script.index("source ~/env/bin/activate") < script.index(" node-run ")
    line = next(x for x in script.splitlines() if " node-run " in x)
    words = shlex.split(line)
    assert words[0] == gpuslice_command()
    for pool in ("small", "large", "batch"):
        assert f"{pool}=/venv/bin/process_worker_pool.py --pool-of {pool}" in words


def test_executor_options_the_plan_decides_are_refused() -> None:
    with pytest.raises(UsageError, match="max_workers_per_node"):
        parsl_config(PLAN, fleet=FLEET_2XH100, max_workers_per_node=8)
    with pytest.raises(UsageError, match="launch_cmd"):
        parsl_config(PLAN, fleet=FLEET_2XH100, launch_cmd="x")


def test_other_executor_options_reach_every_executor() -> None:
    config = parsl_config(PLAN, fleet=FLEET_2XH100, heartbeat_period=3, retries=2)
    assert [e.heartbeat_period for e in config.executors] == [3, 3, 3]
    assert config.retries == 2


def test_a_layout_with_a_fleet_is_refused() -> None:
    with pytest.raises(UsageError, match="already names its GPUs"):
        parsl_config(layout_of(PLAN, FLEET_2XH100), fleet=FLEET_2XH100)


def test_the_emulated_devices_are_registered_for_the_workers() -> None:
    from gpuslice.emulate.kernel import registered_devices

    layout = layout_of(PLAN, FLEET_2XH100)
    parsl_config(layout)
    devices = {d.uuid: d for d in registered_devices()}
    assert set(devices) == {s.device for s in layout.slices}
    assert all(d.sm_count == 132 for d in devices.values())


def test_tasks_are_submitted_through_gpuslices_task_executor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    executor = parsl_config(PLAN, fleet=FLEET_2XH100).executors[0]
    sent: list[tuple[dict[str, Any], bytes]] = []
    monkeypatch.setattr(executor, "submit_payload", lambda ctx, buf: sent.append((ctx, buf)))

    executor.submit(print, {}, "hello")

    ((context, buffer),) = sent
    assert context == {"task_executor": {"f": TASK_EXECUTOR}}
    assert isinstance(buffer, bytes)


def test_the_first_node_is_asked_for_within_a_second_of_load() -> None:
    # Parsl requests init_blocks at its strategy's first run, strategy_period after load.
    config = parsl_config("a=1x mps:50%", fleet=FLEET_2XH100)
    assert config.strategy_period == 1.0
    assert parsl_config("a=1x mps:50%", fleet=FLEET_2XH100, strategy_period=5).strategy_period == 5
