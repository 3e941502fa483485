"""The worker guard: a worker refuses to run a task outside the slice its plan gives it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuslice.emulate.kernel import EmulatedDevice, register_devices
from gpuslice.errors import MpsError
from gpuslice.parsl.worker import SliceCheckError, current_slice, prepare_worker
from tests.parsl.conftest import emulated_environment

GPU = "GPU-aaaaaaaa-0000-0000-0000-000000000001"


@pytest.fixture(autouse=True)
def root() -> Iterator[Path]:
    with emulated_environment() as where:
        register_devices({GPU: EmulatedDevice(GPU, 132, 81559, "emulated H100")})
        yield where


def worker_env(**extra: str) -> dict[str, str]:
    return {
        "GPUSLICE_POOL": "small",
        "CUDA_VISIBLE_DEVICES": GPU,
        "GPUSLICE_DEVICE": GPU,
        "GPUSLICE_EMULATED": "1",
        **extra,
    }


def test_a_slice_whose_limit_did_not_apply_is_refused() -> None:
    # An MPS slice that sees the whole GPU: the limit was lost (no daemon reached).
    env = worker_env(GPUSLICE_EXPECTED_SMS="32", CUDA_MPS_ACTIVE_THREAD_PERCENTAGE="25")
    with pytest.raises(SliceCheckError, match=r"sees 132 SMs.*should see 32.*did not apply"):
        prepare_worker(env)


def test_a_slice_that_sees_its_planned_sms_passes() -> None:
    check = prepare_worker(worker_env(GPUSLICE_EXPECTED_SMS="132"))
    assert (check.pool, check.visible_sms, check.expected_sms, check.source) == (
        "small",
        132,
        132,
        "emulated",
    )


def test_an_mps_worker_whose_daemon_cannot_be_had_is_refused_naming_gpu_and_daemon(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gpuslice.parsl import worker

    monkeypatch.setattr(worker, "RECOVERY_WAIT_S", 0.5)
    # A pipe directory that cannot be created: ensure fails, the daemon cannot be had.
    pipe = "/proc/gpuslice-no-daemon/pipe"
    env = worker_env(CUDA_MPS_PIPE_DIRECTORY=pipe, GPUSLICE_NODE="node7")
    with pytest.raises(MpsError, match=rf"MPS daemon of {GPU} on node7 .*{pipe}.*not run"):
        prepare_worker(env)


def test_an_mps_worker_whose_daemon_is_gone_starts_it_again(root: Path) -> None:
    from gpuslice.mps import control, daemon

    pipe = str(root / "mps" / GPU / "pipe")
    env = worker_env(
        CUDA_MPS_PIPE_DIRECTORY=pipe,
        CUDA_MPS_LOG_DIRECTORY=str(root / "mps" / GPU / "log"),
        GPUSLICE_EXPECTED_SMS="132",
    )
    try:
        check = prepare_worker(env)
        assert control.ping(pipe)
        assert check.daemon_pid == daemon.read_pid(pipe)
    finally:
        daemon.stop(pipe, timeout=5)


def test_a_worker_on_another_device_than_its_slice_is_refused() -> None:
    env = worker_env(CUDA_VISIBLE_DEVICES="GPU-someone-else")
    with pytest.raises(SliceCheckError, match="not its slice's device"):
        prepare_worker(env)


def test_a_pool_worker_without_a_device_is_refused() -> None:
    env = worker_env()
    del env["CUDA_VISIBLE_DEVICES"]
    with pytest.raises(SliceCheckError, match="CUDA_VISIBLE_DEVICES=None"):
        prepare_worker(env)


def test_a_gpu_model_outside_the_catalog_skips_the_sm_check() -> None:
    # No GPUSLICE_EXPECTED_SMS: the plan could not know the SM count, so nothing is refused.
    check = prepare_worker(worker_env())
    assert (check.expected_sms, check.visible_sms, check.source) == (None, None, "none")


def test_outside_a_gpuslice_pool_nothing_is_checked() -> None:
    check = prepare_worker({"CUDA_VISIBLE_DEVICES": GPU})
    assert check.pool is None
    assert check.visible_sms is None


def test_current_slice_reports_the_slice_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU)
    monkeypatch.setenv("GPUSLICE_POOL", "small")
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    seen = current_slice()
    assert seen["CUDA_VISIBLE_DEVICES"] == GPU
    assert seen["GPUSLICE_POOL"] == "small"
    assert seen["CUDA_MPS_PIPE_DIRECTORY"] is None


@pytest.mark.parametrize(
    ("expected", "accepted"), [(132, True), (133, True), (134, True), (135, False)]
)
def test_one_sm_granule_below_the_plan_is_accepted_and_no_more(
    expected: int, accepted: bool
) -> None:
    # The emulated worker sees 132 SMs; the plan's figure may exceed it by one granule (2 SMs).
    env = worker_env(GPUSLICE_EXPECTED_SMS=str(expected))
    if accepted:
        assert prepare_worker(env).visible_sms == 132
    else:
        with pytest.raises(SliceCheckError, match="fewer SMs than planned"):
            prepare_worker(env)


LEAVER = """
import os, sys
from parsl.serialize import pack_apply_message
from gpuslice.parsl.worker import execute_task, prepare_worker
prepare_worker()  # the first task: this process becomes an MPS client of the daemon
print("ready", flush=True)
sys.stdin.readline()  # the test kills the daemon meanwhile
print(execute_task(pack_apply_message(os.getpid, (), {})), flush=True)
"""


def test_a_worker_whose_context_died_with_its_daemon_leaves_before_running_a_task(
    root: Path,
) -> None:
    import os
    import signal
    import subprocess
    import sys

    from gpuslice.mps import daemon
    from gpuslice.parsl.worker import SLICE_LOST_EXIT

    pipe = str(root / "mps" / GPU / "pipe")
    log = str(root / "mps" / GPU / "log")
    daemon.ensure(pipe, log, GPU)
    env = {
        **os.environ,
        **worker_env(
            CUDA_MPS_PIPE_DIRECTORY=pipe,
            CUDA_MPS_LOG_DIRECTORY=log,
            CUDA_MPS_ACTIVE_THREAD_PERCENTAGE="50",
            GPUSLICE_EXPECTED_SMS="66",
            GPUSLICE_NODE="node7",
        ),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", LEAVER],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        dead = daemon.read_pid(pipe)
        assert dead is not None
        os.kill(dead, signal.SIGKILL)
        daemon.wait_gone([dead], 5)
        out, err = child.communicate("go\n", timeout=30)
    finally:
        child.kill()
        daemon.stop(pipe, timeout=5)
    assert child.returncode == SLICE_LOST_EXIT
    assert out == ""  # the task did not run
    assert f"on {GPU} on node7 leaves: its CUDA context is lost" in err
    assert "cudaErrorMps" in err
