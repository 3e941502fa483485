"""The client environment of each kind of slice, and a worker's activation."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gpuslice.errors import MpsError
from gpuslice.mps import daemon, env
from gpuslice.plan.layout import PoolLayout, Slice

from .conftest import DeviceDirs

GPU_A = "GPU-aaaa"
GPU_B = "GPU-bbbb"
MIG_A = "MIG-1111"


def _slice(**fields: object) -> Slice:
    base: dict[str, object] = {
        "pool": "small",
        "rank": 0,
        "kind": "mps",
        "gpu_index": 0,
        "gpu_uuid": GPU_A,
        "device": GPU_A,
    }
    base.update(fields)
    return Slice(**base)  # type: ignore[arg-type]


def test_mps_slice_with_memory_gets_every_variable() -> None:
    slice_ = _slice(compute=25, memory_mib=10240, mps_pipe_dir="/r/a/pipe", mps_log_dir="/r/a/log")

    assert env.slice_environment(slice_) == {
        "CUDA_VISIBLE_DEVICES": GPU_A,
        "CUDA_MPS_PIPE_DIRECTORY": "/r/a/pipe",
        "CUDA_MPS_LOG_DIRECTORY": "/r/a/log",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=10240M",
    }


def test_mps_slice_without_memory_gets_no_memory_cap() -> None:
    slice_ = _slice(compute=50, mps_pipe_dir="/r/a/pipe", mps_log_dir="/r/a/log")

    assert env.slice_environment(slice_) == {
        "CUDA_VISIBLE_DEVICES": GPU_A,
        "CUDA_MPS_PIPE_DIRECTORY": "/r/a/pipe",
        "CUDA_MPS_LOG_DIRECTORY": "/r/a/log",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50",
    }


def test_mig_slice_without_mps_gets_only_its_device() -> None:
    slice_ = _slice(kind="mig", device=MIG_A)

    assert env.slice_environment(slice_) == {"CUDA_VISIBLE_DEVICES": MIG_A}


def test_share_slice_gets_only_its_device() -> None:
    assert env.slice_environment(_slice(kind="share")) == {"CUDA_VISIBLE_DEVICES": GPU_A}


def test_mig_slice_with_mps_gets_its_instance_daemon() -> None:
    slice_ = _slice(
        kind="mig", device=MIG_A, memory_mib=4096, mps_pipe_dir="/r/m/pipe", mps_log_dir="/r/m/log"
    )

    assert env.slice_environment(slice_) == {
        "CUDA_VISIBLE_DEVICES": MIG_A,
        "CUDA_MPS_PIPE_DIRECTORY": "/r/m/pipe",
        "CUDA_MPS_LOG_DIRECTORY": "/r/m/log",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=4096M",
    }


def test_limits_without_a_daemon_are_refused_not_dropped() -> None:
    with pytest.raises(MpsError, match="no MPS pipe directory"):
        env.slice_environment(_slice(compute=25))


def _pool(*slices: Slice) -> PoolLayout:
    return PoolLayout(name="small", kind=slices[0].kind, slices=slices)


def test_pool_environment_maps_each_device_to_its_daemon() -> None:
    pool = _pool(
        _slice(compute=25, memory_mib=2048, mps_pipe_dir="/r/a/pipe", mps_log_dir="/r/a/log"),
        _slice(
            rank=1, compute=25, memory_mib=2048, mps_pipe_dir="/r/a/pipe", mps_log_dir="/r/a/log"
        ),
        _slice(
            rank=2,
            gpu_index=1,
            gpu_uuid=GPU_B,
            device=GPU_B,
            compute=25,
            memory_mib=2048,
            mps_pipe_dir="/r/b/pipe",
            mps_log_dir="/r/b/log",
        ),
    )

    assert env.pool_environment(pool) == {
        "GPUSLICE_POOL": "small",
        "GPUSLICE_MPS_PIPE_DIRS": f"{GPU_A}=/r/a/pipe;{GPU_B}=/r/b/pipe",
        "GPUSLICE_MPS_LOG_DIRS": f"{GPU_A}=/r/a/log;{GPU_B}=/r/b/log",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=2048M",
    }


def test_pool_environment_of_a_share_pool_names_only_the_pool() -> None:
    pool = PoolLayout(name="batch", kind="share", slices=(_slice(pool="batch", kind="share"),))

    assert env.pool_environment(pool) == {"GPUSLICE_POOL": "batch"}


def test_pool_with_mixed_limits_is_refused() -> None:
    pool = _pool(
        _slice(compute=25, mps_pipe_dir="/r/a/pipe"),
        _slice(rank=1, compute=50, mps_pipe_dir="/r/a/pipe"),
    )

    with pytest.raises(MpsError, match="mixes compute"):
        env.pool_environment(pool)


def test_device_map_reads_back() -> None:
    text = f"{GPU_A}=/r/a/pipe;{GPU_B}=/r/b p/pipe"

    assert env.parse_device_map(text) == {GPU_A: "/r/a/pipe", GPU_B: "/r/b p/pipe"}


def test_export_lines_are_sorted_and_quoted() -> None:
    lines = env.export_lines({"B": "two words", "A": "plain", "C": "it's"})

    assert lines == "export A=plain\nexport B='two words'\nexport C='it'\"'\"'s'\n"


def _worker_env(a: DeviceDirs, b: DeviceDirs, device: str) -> dict[str, str]:
    return {
        "CUDA_VISIBLE_DEVICES": device,
        "GPUSLICE_MPS_PIPE_DIRS": f"{a.device}={a.pipe};{b.device}={b.pipe}",
        "GPUSLICE_MPS_LOG_DIRS": f"{a.device}={a.log};{b.device}={b.log}",
    }


def test_activate_picks_the_pipe_dir_of_the_workers_device(
    device_dirs: Callable[[str], DeviceDirs],
) -> None:
    a, b = device_dirs(GPU_A), device_dirs(GPU_B)
    for dirs in (a, b):
        daemon.ensure(dirs.pipe, dirs.log, dirs.device)
    worker = _worker_env(a, b, GPU_B)

    chosen = env.activate(worker)

    assert chosen == {"CUDA_MPS_PIPE_DIRECTORY": b.pipe, "CUDA_MPS_LOG_DIRECTORY": b.log}
    assert worker["CUDA_MPS_PIPE_DIRECTORY"] == b.pipe
    assert worker["CUDA_MPS_LOG_DIRECTORY"] == b.log


def test_activate_refuses_when_the_daemon_is_down(
    device_dirs: Callable[[str], DeviceDirs],
) -> None:
    a, b = device_dirs(GPU_A), device_dirs(GPU_B)
    daemon.ensure(a.pipe, a.log, a.device)  # only A's daemon runs
    worker = _worker_env(a, b, GPU_B)

    with pytest.raises(MpsError, match="does not answer on"):
        env.activate(worker)
    assert "CUDA_MPS_PIPE_DIRECTORY" not in worker


def test_activate_refuses_a_device_outside_the_pool(
    device_dirs: Callable[[str], DeviceDirs],
) -> None:
    a, b = device_dirs(GPU_A), device_dirs(GPU_B)
    worker = _worker_env(a, b, "GPU-cccc")

    with pytest.raises(MpsError, match="GPU-cccc has no MPS daemon"):
        env.activate(worker)


def test_activate_leaves_a_pool_without_mps_alone() -> None:
    worker = {"CUDA_VISIBLE_DEVICES": GPU_A, "GPUSLICE_POOL": "batch"}

    assert env.activate(worker) == {}
    assert worker == {"CUDA_VISIBLE_DEVICES": GPU_A, "GPUSLICE_POOL": "batch"}
