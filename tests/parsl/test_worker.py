"""prepare_worker: a worker refuses to run a task outside the slice its plan gives it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuslice.emulate.kernel import EmulatedDevice, register_devices
from gpuslice.errors import MpsError
from gpuslice.parsl.worker import SliceCheckError, current_slice, in_slice, prepare_worker
from tests.parsl.conftest import emulated_environment

GPU = "GPU-aaaaaaaa-0000-0000-0000-000000000001"


@pytest.fixture(autouse=True)
def _device() -> Iterator[Path]:
    with emulated_environment() as root:
        register_devices({GPU: EmulatedDevice(GPU, 132, 81559, "emulated H100")})
        yield root


def worker_env(**extra: str) -> dict[str, str]:
    return {
        "GPUSLICE_POOL": "small",
        "CUDA_VISIBLE_DEVICES": GPU,
        "GPUSLICE_EMULATED": "1",
        **extra,
    }


def test_a_slice_whose_limit_did_not_apply_is_refused() -> None:
    # An MPS slice that sees the whole GPU: the limit was lost (no daemon reached).
    env = worker_env(GPUSLICE_EXPECTED_SMS=f"{GPU}=32", CUDA_MPS_ACTIVE_THREAD_PERCENTAGE="25")
    with pytest.raises(SliceCheckError, match=r"sees 132 SMs.*should see 32.*did not apply"):
        prepare_worker(env)


def test_a_slice_that_sees_its_planned_sms_passes() -> None:
    check = prepare_worker(worker_env(GPUSLICE_EXPECTED_SMS=f"{GPU}=132"))
    assert (check.pool, check.visible_sms, check.expected_sms, check.source) == (
        "small",
        132,
        132,
        "emulated",
    )


def test_an_mps_worker_whose_daemon_does_not_answer_is_refused(tmp_path: Path) -> None:
    env = worker_env(GPUSLICE_MPS_PIPE_DIRS=f"{GPU}=/tmp/gs-no-daemon-here/pipe")
    with pytest.raises(MpsError, match="does not answer"):
        prepare_worker(env)


def test_a_pool_worker_without_a_device_is_refused() -> None:
    env = worker_env()
    del env["CUDA_VISIBLE_DEVICES"]
    with pytest.raises(SliceCheckError, match="no CUDA_VISIBLE_DEVICES"):
        prepare_worker(env)


def test_outside_a_gpuslice_pool_nothing_is_checked() -> None:
    check = prepare_worker({"CUDA_VISIBLE_DEVICES": GPU})
    assert check.pool is None
    assert check.visible_sms is None


def test_the_wrapped_function_keeps_its_name_and_runs_after_the_check() -> None:
    def double(x: int) -> int:
        """Twice x."""
        return 2 * x

    wrapped = in_slice(double)
    assert (wrapped.__name__, wrapped.__doc__) == ("double", "Twice x.")
    assert wrapped(21) == 42


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
    env = worker_env(GPUSLICE_EXPECTED_SMS=f"{GPU}={expected}")
    if accepted:
        assert prepare_worker(env).visible_sms == 132
    else:
        with pytest.raises(SliceCheckError, match="fewer SMs than planned"):
            prepare_worker(env)


def test_the_wrapped_function_travels_by_reference_not_by_value() -> None:
    from parsl.serialize import serialize

    from gpuslice.bench.task import warm_up

    # A closure would be dill-pickled by value (kilobytes) and shipped with every task.
    assert len(serialize(in_slice(warm_up))) < 4 * len(serialize(warm_up)) + 100
