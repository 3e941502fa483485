"""The client environment of each kind of slice, and a worker's activation."""

from __future__ import annotations

import pytest

from gpuslice.errors import MpsError
from gpuslice.mps import env
from gpuslice.plan.layout import Slice

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


def test_export_lines_are_sorted_and_quoted() -> None:
    lines = env.export_lines({"B": "two words", "A": "plain", "C": "it's"})

    assert lines == "export A=plain\nexport B='two words'\nexport C='it'\"'\"'s'\n"
