"""parsl_config without starting Parsl: executors, worker_init, providers, Slurm scripts."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import pytest
from parsl.providers import LocalProvider, SlurmProvider

from gpuslice.errors import UsageError
from gpuslice.parsl.config import (
    POOL_ATTR,
    gpuslice_command,
    layout_of,
    parsl_config,
    pool_worker_init,
)
from tests.parsl.conftest import FLEET_2XH100, emulated_environment

PLAN = "small=2x mps:25%/10GiB, large=1x mps:50%/20GiB, batch=1x share"


@pytest.fixture(autouse=True)
def _private_dirs() -> object:
    with emulated_environment() as root:
        yield root


def test_one_executor_per_pool_labelled_with_the_pools_name() -> None:
    config = parsl_config(PLAN, fleet=FLEET_2XH100)
    assert [e.label for e in config.executors] == ["small", "large", "batch"]
    assert [getattr(e, POOL_ATTR) for e in config.executors] == ["small", "large", "batch"]


def test_accelerators_are_the_slices_device_uuids_one_worker_each() -> None:
    layout = layout_of(PLAN, FLEET_2XH100)
    config = parsl_config(layout)
    for executor, pool in zip(config.executors, layout.pools, strict=True):
        assert executor.available_accelerators == list(pool.devices)
        assert all(a.startswith("GPU-") for a in executor.available_accelerators)
        assert executor.max_workers_per_node == len(pool.slices)


def test_mps_pools_ensure_each_of_their_daemons_and_stop_the_block_otherwise() -> None:
    layout = layout_of(PLAN, FLEET_2XH100)
    lines = pool_worker_init(layout, "small")
    ensures = [line for line in lines.splitlines() if " mps ensure " in line]
    assert len(ensures) == 2
    for line, (device, pipe_dir) in zip(
        ensures, [(s.device, s.mps_pipe_dir) for s in layout.pool("small").slices[::2]], strict=True
    ):
        assert f"--device {device}" in line
        assert f"--pipe-dir {pipe_dir}" in line
        assert line.startswith(gpuslice_command())
        assert line.endswith("exit 1; }")


def test_share_pools_start_no_daemon() -> None:
    lines = pool_worker_init(layout_of(PLAN, FLEET_2XH100), "batch")
    assert "mps ensure" not in lines
    assert "export GPUSLICE_POOL=batch" in lines
    assert "GPUSLICE_MPS_PIPE_DIRS" not in lines


def test_worker_init_exports_the_pools_limits_and_the_emulated_gpu() -> None:
    lines = pool_worker_init(layout_of(PLAN, FLEET_2XH100), "small")
    assert "export CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25\n" in lines
    assert "export CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=10240M\n" in lines
    assert "export GPUSLICE_MPS_CONTROL=gpuslice-emulated-mps-control\n" in lines
    assert f"export GPUSLICE_FLEET={Path(FLEET_2XH100).resolve()}\n" in lines
    assert "export GPUSLICE_EMULATED=1\n" in lines
    assert "GPUSLICE_EXPECTED_SMS=" in lines


def test_the_users_provider_and_worker_init_are_kept_and_extended() -> None:
    provider = LocalProvider(worker_init="module load cuda\nsource ~/env/bin/activate")
    config = parsl_config(PLAN, fleet=FLEET_2XH100, provider=provider)
    assert provider.worker_init == "module load cuda\nsource ~/env/bin/activate"
    for executor in config.executors:
        assert executor.provider is not provider
        assert isinstance(executor.provider, LocalProvider)
        mine = executor.provider.worker_init
        assert mine.startswith("module load cuda\nsource ~/env/bin/activate\n")
        assert f"export GPUSLICE_POOL={executor.label}\n" in mine


def test_the_default_provider_keeps_one_local_block() -> None:
    provider = parsl_config(PLAN, fleet=FLEET_2XH100).executors[0].provider
    assert isinstance(provider, LocalProvider)
    assert (provider.init_blocks, provider.min_blocks, provider.max_blocks) == (1, 1, 1)


def _render_slurm(executor: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    slurm = executor.provider
    slurm.script_dir = str(tmp_path)
    # Render the script through Parsl's own submit path; only sbatch itself is stood in for.
    monkeypatch.setattr(
        slurm, "execute_wait", lambda cmd, timeout=None: (0, "Submitted batch job 42", "")
    )
    assert slurm.submit("process_worker_pool.py --block_id=0", tasks_per_node=1) == "42"
    [script_path] = glob.glob(str(tmp_path / "parsl.slurm.*[0-9]"))
    return Path(script_path).read_text()


def test_the_slurm_submit_script_carries_the_pools_worker_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # node_local=False: the plan was resolved on the node itself (e.g. an interactive job).
    provider = SlurmProvider(partition="gpu", worker_init="source ~/env/bin/activate")
    executor = parsl_config(
        PLAN, fleet=FLEET_2XH100, provider=provider, node_local=False
    ).executors[0]
    script = _render_slurm(executor, tmp_path, monkeypatch)
    assert script.startswith("#!/bin/bash")
    assert "#SBATCH --partition=gpu" in script
    activate = script.index("source ~/env/bin/activate")
    pool = script.index("export GPUSLICE_POOL=small")
    ensure = script.index("gpuslice mps ensure --pipe-dir")
    worker = script.index("process_worker_pool.py")
    assert activate < pool < ensure < worker
    assert "export CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25" in script


def test_the_slurm_submit_script_resolves_the_plan_on_the_node_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = SlurmProvider(partition="gpu", worker_init="source ~/env/bin/activate")
    executor = parsl_config(PLAN, fleet=FLEET_2XH100, provider=provider).executors[0]
    script = _render_slurm(executor, tmp_path, monkeypatch)
    activate = script.index("source ~/env/bin/activate")
    resolve_on_node = script.index("worker-init --pool small --slots")
    exports = script.index('eval "$_gpuslice_env"')
    worker = script.index("process_worker_pool.py")
    assert activate < resolve_on_node < exports < worker
    assert executor.available_accelerators == [f"gpuslice-slot-{i}" for i in range(4)]


def test_executor_options_the_plan_decides_are_refused() -> None:
    with pytest.raises(UsageError, match="max_workers_per_node"):
        parsl_config(PLAN, fleet=FLEET_2XH100, max_workers_per_node=8)


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
