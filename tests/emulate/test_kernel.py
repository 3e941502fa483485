"""Emulated kernels in real time: separate processes on one device slow each other as modelled."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuslice.emulate import kernel as kernel_module
from gpuslice.emulate.kernel import (
    CudaError,
    CudaOutOfMemoryError,
    EmulatedDevice,
    check_context,
    current_slice,
    device_info,
    kernel,
    mps_connection,
    parse_pinned_mem_limit,
    register_devices,
    visible_sm_count,
)
from gpuslice.emulate.model import TIMESLICE_EFFICIENCY
from gpuslice.emulate.mps_control import ClientGrant
from gpuslice.errors import UsageError
from gpuslice.mps.daemon import process_alive

GPU_A = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
GPU_B = "GPU-bbbbbbbb-0000-0000-0000-000000000002"
MIG_1 = "MIG-cccccccc-0000-0000-0000-000000000003"
TASK_KEYS = ("WORK", "PAR", "DUTY", "BW")
RUNS = itertools.count()
SLICE_VARIABLES = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_MPS_PIPE_DIRECTORY",
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
)

# A child process: optionally a stand-in MPS daemon that grants the client its own percentage,
# with the test process as server and daemon (the real gpuslice.emulate.mps_control is another
# module's job), then wait for "go" and run one kernel.
CHILD = textwrap.dedent(
    """
    import dataclasses, json, os, sys, time, types
    if os.environ.get("TEST_FAKE_MPS"):
        from gpuslice.emulate.mps_control import ClientGrant
        fake = types.ModuleType("gpuslice.emulate.mps_control")
        fake.register_client = lambda pipe_dir, pid, **limits: ClientGrant(
            server_pid=os.getppid(),
            daemon_pid=os.getppid(),
            active_thread_percentage=float(limits["active_thread_percentage"] or 100),
            pinned_mem_limit=limits["pinned_mem_limit"],
        )
        fake.unregister_client = lambda pipe_dir, pid: None
        sys.modules["gpuslice.emulate.mps_control"] = fake
    from gpuslice.emulate.kernel import kernel
    print("ready", flush=True)
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.002)
    duty = float(sys.argv[4]) if sys.argv[4] else None
    bandwidth = float(sys.argv[5]) if sys.argv[5] else 0.0
    result = kernel(
        float(sys.argv[2]), duty=duty, occupancy=float(sys.argv[3]), bandwidth=bandwidth
    )
    print(json.dumps(dataclasses.asdict(result)), flush=True)
    """
)


@pytest.fixture(autouse=True)
def emulate_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "emulate"
    monkeypatch.setenv("GPUSLICE_EMULATE_DIR", str(state))
    for name in SLICE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(kernel_module, "_GRANTS", {})
    monkeypatch.setattr(kernel_module, "_LOST", {})
    register_devices(
        {
            GPU_A: EmulatedDevice(GPU_A, sm_count=100, memory_mib=1000, name="test GPU A"),
            GPU_B: EmulatedDevice(GPU_B, sm_count=100, memory_mib=1000, name="test GPU B"),
            MIG_1: EmulatedDevice(MIG_1, sm_count=16, memory_mib=9856, name="test MIG 1g"),
        }
    )
    return state


def fake_mps_daemon(
    monkeypatch: pytest.MonkeyPatch,
    answers: bool,
    *,
    granted_percentage: float | None = None,
    granted_pinned: str | None = None,
    server_pid: int | None = None,
    daemon_pid: int | None = None,
) -> list[dict[str, Any]]:
    """Stand in for gpuslice.emulate.mps_control; returns the registrations it saw.

    When it answers, it grants ``granted_percentage`` (default: the client's own, else 100) and
    ``granted_pinned`` (default: the client's own), with this test process as server and daemon
    unless other PIDs are given.
    """
    seen: list[dict[str, Any]] = []

    def register_client(pipe_dir: str, pid: int, **limits: Any) -> ClientGrant | None:
        seen.append({"pipe_dir": pipe_dir, "pid": pid, **limits})
        if not answers:
            return None
        own = limits["active_thread_percentage"]
        return ClientGrant(
            server_pid=os.getpid() if server_pid is None else server_pid,
            daemon_pid=os.getpid() if daemon_pid is None else daemon_pid,
            active_thread_percentage=float(
                granted_percentage if granted_percentage is not None else (own or 100)
            ),
            pinned_mem_limit=granted_pinned or limits["pinned_mem_limit"],
        )

    fake = types.ModuleType("gpuslice.emulate.mps_control")
    fake.register_client = register_client  # type: ignore[attr-defined]
    fake.unregister_client = lambda pipe_dir, pid: None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "gpuslice.emulate.mps_control", fake)
    return seen


def run_together(tmp_path: Path, jobs: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Start one child per job (its extra environment and WORK/PAR/DUTY), release them at once.

    PAR is the occupancy; without DUTY the kernel runs all the time (duty 1).
    """
    go = tmp_path / f"go-{next(RUNS)}"
    children = []
    for job in jobs:
        env = {**os.environ, **{k: v for k, v in job.items() if k not in TASK_KEYS}}
        task = [job["WORK"], job.get("PAR", "1.0"), job.get("DUTY", ""), job.get("BW", "")]
        command = [sys.executable, "-c", CHILD, str(go), *task]
        children.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True))
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    go.touch()
    results = []
    for child in children:
        out, _ = child.communicate(timeout=30)
        assert child.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_kernel_alone_takes_its_work_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    result = kernel(150)
    assert result.mode == "exclusive"
    assert result.device == GPU_A
    assert 150 <= result.duration_ms < 150 * 1.4
    assert result.share == pytest.approx(1.0, rel=0.3)


def test_kernel_reports_how_late_the_host_woke_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Whatever the host's load, the model's part of the duration is exactly work_ms here.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    result = kernel(150)
    assert result.lag_ms >= -1e-6
    assert result.duration_ms - result.lag_ms == pytest.approx(150, abs=0.5)


def test_two_processes_time_sharing_a_device_each_take_twice_as_long(tmp_path: Path) -> None:
    work = 200.0
    results = run_together(
        tmp_path, [{"CUDA_VISIBLE_DEVICES": GPU_A, "WORK": str(work)} for _ in range(2)]
    )
    expected = work * 2 / TIMESLICE_EFFICIENCY
    for result in results:
        assert result["mode"] == "timeshare"
        assert expected * 0.8 < result["duration_ms"] < expected * 1.35


def test_time_shared_launch_bound_kernels_overlap_while_compute_bound_ones_take_turns(
    tmp_path: Path,
) -> None:
    work = 300.0
    # Kernels running 20% of the time (the rest is host launch overhead): duties sum to 0.4,
    # so each fills the other's gaps and both finish in about work_ms.
    launch_bound = run_together(
        tmp_path,
        [{"CUDA_VISIBLE_DEVICES": GPU_A, "WORK": str(work), "DUTY": "0.2"} for _ in range(2)],
    )
    # Kernels running all the time: they take turns, about 2 x work_ms / 0.95 each.
    compute_bound = run_together(
        tmp_path,
        [{"CUDA_VISIBLE_DEVICES": GPU_A, "WORK": str(work), "DUTY": "1.0"} for _ in range(2)],
    )
    for result in launch_bound:
        assert result["mode"] == "timeshare"
        assert result["duty"] == 0.2
        assert work <= result["duration_ms"] < work * 1.4
    for result in compute_bound:
        assert result["mode"] == "timeshare"
        assert work * 1.7 < result["duration_ms"] < work * 2 / TIMESLICE_EFFICIENCY * 1.35


def test_kernel_record_tells_other_processes_its_duty_and_occupancy(
    emulate_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    worker = threading.Thread(target=kernel, args=(300,), kwargs={"duty": 0.25, "occupancy": 0.4})
    worker.start()
    records: list[Path] = []
    deadline = time.monotonic() + 2
    while not records and time.monotonic() < deadline:
        records = list((emulate_dir / GPU_A).glob("*.json"))
        time.sleep(0.005)
    data = json.loads(records[0].read_text())
    worker.join()
    assert (data["duty"], data["occupancy"]) == (0.25, 0.4)
    assert data["parallelism"] == pytest.approx(0.1)


def test_parallelism_alone_is_a_kernel_running_all_the_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    result = kernel(20, parallelism=0.3)
    assert (result.duty, result.occupancy, result.parallelism) == (1.0, 0.3, 0.3)


def test_kernel_refuses_parallelism_that_disagrees_with_duty_and_occupancy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    with pytest.raises(UsageError, match="duty"):
        kernel(10, parallelism=0.5, duty=0.2, occupancy=0.4)


def test_two_processes_on_different_devices_do_not_slow_each_other(tmp_path: Path) -> None:
    work = 200.0
    results = run_together(
        tmp_path,
        [
            {"CUDA_VISIBLE_DEVICES": GPU_A, "WORK": str(work)},
            {"CUDA_VISIBLE_DEVICES": GPU_B, "WORK": str(work)},
        ],
    )
    for result in results:
        assert result["mode"] == "exclusive"
        assert work <= result["duration_ms"] < work * 1.4


def test_mps_clients_of_30_and_70_percent_run_concurrently(tmp_path: Path) -> None:
    work = 100.0
    base = {"CUDA_VISIBLE_DEVICES": GPU_A, "CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "pipe")}
    small, large = run_together(
        tmp_path,
        [
            {
                **base,
                "TEST_FAKE_MPS": "1",
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "30",
                "WORK": "100",
            },
            {
                **base,
                "TEST_FAKE_MPS": "1",
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "70",
                "WORK": "100",
            },
        ],
    )
    assert small["mode"] == large["mode"] == "mps"
    # Concurrent, not time-sliced: each runs at its own SM share, 30/100 and 70/100 SMs.
    assert work / 0.3 * 0.9 < small["duration_ms"] < work / 0.3 * 1.35
    assert work / 0.7 * 0.9 < large["duration_ms"] < work / 0.7 * 1.35


def test_record_of_a_dead_process_is_ignored_and_removed(
    emulate_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    device_dir = emulate_dir / GPU_A
    device_dir.mkdir()
    stale = device_dir / f"{dead.stdout.strip()}-1-0.json"
    record = {"pid": int(dead.stdout), "mps": False, "sm_limit": 1.0, "parallelism": 1.0}
    stale.write_text(json.dumps({**record, "memory_mib": 900}))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    result = kernel(100, memory=500)  # would not fit beside the dead record's 900 MiB
    assert result.mode == "exclusive"
    assert result.duration_ms < 100 * 1.4
    assert not stale.exists()


def test_record_without_recent_heartbeat_is_ignored(
    emulate_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    device_dir = emulate_dir / GPU_A
    device_dir.mkdir()
    hung = device_dir / "1-1-0.json"  # pid 1 is alive, but its record went quiet
    hung.write_text(
        json.dumps({"pid": 1, "mps": False, "sm_limit": 1.0, "parallelism": 1.0, "memory_mib": 0})
    )
    old = time.time() - 60
    os.utime(hung, (old, old))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    assert kernel(50).mode == "exclusive"


def test_out_of_memory_fails_only_the_task_that_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    holder: dict[str, Any] = {}
    big = threading.Thread(target=lambda: holder.update(result=kernel(300, memory=800)))
    big.start()
    time.sleep(0.1)
    with pytest.raises(CudaOutOfMemoryError, match=r"CUDA out of memory\. Tried to allocate 400"):
        kernel(10, memory="400MiB")
    big.join()
    assert holder["result"].memory_mib == 800
    assert kernel(10, memory=400).memory_mib == 400  # freed once the big task ended


def test_allocation_over_the_mps_pinned_limit_is_out_of_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = fake_mps_daemon(monkeypatch, answers=True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG_1)
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "pipe"))
    monkeypatch.setenv("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "0=1G")
    with pytest.raises(CudaOutOfMemoryError, match="CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"):
        kernel(10, memory="2GiB")
    assert kernel(10, memory=512).mode == "mps"
    assert seen[0]["pinned_mem_limit"] == "0=1G"


def test_without_an_answering_daemon_the_slice_runs_unlimited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_mps_daemon(monkeypatch, answers=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "pipe"))
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "25")
    result = kernel(100)
    assert result.mode == "exclusive"
    assert result.duration_ms < 100 * 1.4  # not 400 ms: CUDA silently ignores the limit
    assert visible_sm_count() == 100


def test_visible_sm_count_follows_the_mps_percentage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = fake_mps_daemon(monkeypatch, answers=True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-unregistered")
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "pipe"))
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "30")
    assert visible_sm_count() == 38  # 30% of the default H100's 132 SMs, rounded down to pairs
    assert seen[0]["active_thread_percentage"] == 30
    assert seen[0]["pid"] == os.getpid()


def test_mig_instance_is_its_own_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG_1)
    assert visible_sm_count() == 16
    assert current_slice().device.memory_mib == 9856


def test_unknown_device_falls_back_to_an_h100() -> None:
    device = device_info("GPU-nobody-registered-this")
    assert (device.sm_count, device.memory_mib) == (132, 81559)


def test_leading_part_of_a_uuid_names_the_device() -> None:
    assert device_info("GPU-bbbbbbbb").uuid == GPU_B


def test_missing_visible_devices_gives_the_default_device() -> None:
    assert current_slice().device.uuid == kernel_module.DEFAULT_DEVICE_UUID


def test_empty_visible_devices_means_no_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(UsageError, match="no CUDA device is visible"):
        kernel(1)


@pytest.mark.parametrize(
    ("text", "mib"),
    [("0=10240M", 10240), ("0=10G", 10240), ("1=1G,0=512M", 512), ("1=1G", None), (None, None)],
)
def test_pinned_mem_limit_is_read_for_device_zero(text: str | None, mib: int | None) -> None:
    assert parse_pinned_mem_limit(text) == mib


def test_malformed_pinned_mem_limit_is_refused() -> None:
    with pytest.raises(UsageError, match="CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"):
        parse_pinned_mem_limit("10G")


def test_kernel_under_the_emulated_mps_daemon_gets_its_percentage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe, log = tmp_path / "pipe", tmp_path / "log"
    pipe.mkdir(mode=0o700)
    log.mkdir(mode=0o700)
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(pipe))
    monkeypatch.setenv("CUDA_MPS_LOG_DIRECTORY", str(log))
    control = [sys.executable, "-m", "gpuslice.emulate.mps_control"]
    subprocess.run([*control, "-d"], check=True, timeout=20)
    try:
        code = (
            "from gpuslice.emulate.kernel import kernel, visible_sm_count; "
            "r = kernel(60); print(visible_sm_count(), r.mode, r.duration_ms)"
        )
        env = {
            **os.environ,
            "CUDA_VISIBLE_DEVICES": GPU_A,
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50",
        }
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
    finally:
        subprocess.run([*control], input="quit\n", text=True, timeout=20, check=False)
    sms, mode, duration_ms = done.stdout.split()
    assert (sms, mode) == ("50", "mps")
    assert 60 / 0.5 <= float(duration_ms) < 60 / 0.5 * 1.4


# --- the daemon's grant, not the client's own variables (issue 9) ----------------------------


def test_the_slice_uses_the_percentage_the_daemon_granted_not_the_clients_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client asks for 50%; its server's default is 20%, and NVIDIA obeys the lower one.
    fake_mps_daemon(monkeypatch, answers=True, granted_percentage=20)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)  # 100 SMs
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "pipe"))
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "50")
    assert current_slice().active_thread_percentage == 20
    assert visible_sm_count() == 20
    result = kernel(60)  # a full task on 20 of 100 SMs: 60 / 0.2 = 300 ms
    assert 300 * 0.95 <= result.duration_ms < 300 * 1.4


def test_a_memory_cap_the_daemon_grants_binds_a_client_that_set_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_mps_daemon(monkeypatch, answers=True, granted_pinned="0=1G")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", MIG_1)  # 9856 MiB: 2 GiB fits the device
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "pipe"))
    with pytest.raises(CudaOutOfMemoryError, match=r"PINNED_DEVICE_MEM_LIMIT of 1\.00 GiB"):
        kernel(10, memory="2GiB")


def test_a_client_without_a_pipe_directory_is_not_an_mps_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = fake_mps_daemon(monkeypatch, answers=True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "25")  # ignored without a daemon
    assert mps_connection() is None
    check_context()  # nothing to check: no error
    result = kernel(100)
    assert result.mode == "exclusive"
    assert result.duration_ms < 100 * 1.4
    assert seen == []


def test_a_client_whose_daemon_does_not_answer_stays_outside_mps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = fake_mps_daemon(monkeypatch, answers=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "pipe"))
    assert mps_connection() is None
    assert mps_connection() is None
    assert kernel(10).mode == "exclusive"
    assert len(seen) == 1  # asked once, at context creation, as CUDA does


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_client_whose_server_is_gone_gets_a_sticky_mps_rpc_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        seen = fake_mps_daemon(monkeypatch, answers=True, server_pid=server.pid)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
        monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "pipe"))
        assert kernel(10).mode == "mps"
    finally:
        server.kill()
        server.wait()
    with pytest.raises(CudaError, match=rf"MPS server {server.pid} .* is gone") as first:
        kernel(10)
    assert (first.value.name, first.value.code) == ("cudaErrorMpsRpcFailure", 806)
    assert str(first.value).startswith("cudaErrorMpsRpcFailure (806): ")
    # Sticky, as a lost CUDA context is: every later kernel and check fails the same way.
    with pytest.raises(CudaError, match="cudaErrorMpsRpcFailure"):
        kernel(10)
    with pytest.raises(CudaError, match="cudaErrorMpsRpcFailure"):
        check_context()
    assert len(seen) == 1  # liveness is read from the PIDs, never from the daemon


def test_a_client_whose_control_daemon_is_gone_gets_an_mps_connection_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_mps_daemon(monkeypatch, answers=True, daemon_pid=dead_pid())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "pipe"))
    with pytest.raises(CudaError) as caught:
        kernel(10)
    assert (caught.value.name, caught.value.code) == ("cudaErrorMpsConnectionFailed", 805)
    assert "control daemon" in str(caught.value)


def test_a_kernel_in_flight_fails_when_its_server_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    fake_mps_daemon(monkeypatch, answers=True, server_pid=server.pid)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "pipe"))
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            kernel(5000)
        except CudaError as err:
            outcome["error"] = err

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.2)
    server.kill()
    server.wait()
    worker.join(timeout=3)
    assert not worker.is_alive(), "the kernel ran on after its server died"
    assert isinstance(outcome.get("error"), CudaError)


def test_check_context_is_free_for_a_live_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = fake_mps_daemon(monkeypatch, answers=True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "pipe"))
    grant = mps_connection()
    assert grant is not None
    assert grant.server_pid == grant.daemon_pid == os.getpid()
    for _ in range(100):
        check_context()
    assert len(seen) == 1


def control(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuslice.emulate.mps_control", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


@pytest.fixture
def emulated_daemon(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The emulated MPS control daemon on a short private pipe directory."""
    root = Path(tempfile.mkdtemp(prefix="gsk-", dir="/tmp"))
    pipe, log = root / "pipe", root / "log"
    pipe.mkdir(mode=0o700)
    log.mkdir(mode=0o700)
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(pipe))
    monkeypatch.setenv("CUDA_MPS_LOG_DIRECTORY", str(log))
    monkeypatch.delenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", raising=False)
    assert control("-d").returncode == 0
    try:
        yield pipe
    finally:
        control(stdin="quit\n")
        shutil.rmtree(root, ignore_errors=True)


def test_under_the_emulated_daemon_the_lower_of_client_and_server_percentage_applies(
    emulated_daemon: Path,
) -> None:
    assert control(stdin="set_default_active_thread_percentage 20\n").returncode == 0
    code = (
        "from gpuslice.emulate.kernel import current_slice, visible_sm_count; "
        "print(visible_sm_count(), current_slice().active_thread_percentage)"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": GPU_A, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["20", "20.0"]


def test_killing_the_emulated_mps_server_fails_the_clients_next_kernels(
    emulated_daemon: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    assert kernel(10).mode == "mps"
    grant = mps_connection()
    assert grant is not None
    os.kill(grant.server_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while process_alive(grant.server_pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(CudaError, match="cudaErrorMpsRpcFailure"):
        kernel(10)
    with pytest.raises(CudaError, match="cudaErrorMpsRpcFailure"):
        kernel(10)


# --- memory bandwidth, shared inside a context ------------------------------------------------


def test_mps_clients_streaming_memory_share_the_bandwidth(tmp_path: Path) -> None:
    work = 150.0
    # Each kernel keeps 30% of the SMs busy (room for both) but moves all the bandwidth:
    # together they need twice the bandwidth there is, so each runs at half speed.
    base = {
        "CUDA_VISIBLE_DEVICES": GPU_A,
        "CUDA_MPS_PIPE_DIRECTORY": str(tmp_path / "pipe"),
        "TEST_FAKE_MPS": "1",
        "WORK": str(work),
        "PAR": "0.3",
    }
    results = run_together(tmp_path, [{**base, "BW": "1.0"}, {**base, "BW": "1.0"}])
    for result in results:
        assert result["mode"] == "mps"
        assert result["bandwidth"] == 1.0
        assert 2 * work * 0.85 < result["duration_ms"] < 2 * work * 1.35


def test_kernel_record_tells_other_processes_its_bandwidth(
    emulate_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    worker = threading.Thread(target=kernel, args=(300,), kwargs={"bandwidth": 0.7})
    worker.start()
    records: list[Path] = []
    deadline = time.monotonic() + 2
    while not records and time.monotonic() < deadline:
        records = list((emulate_dir / GPU_A).glob("*.json"))
        time.sleep(0.005)
    data = json.loads(records[0].read_text())
    worker.join()
    assert data["bandwidth"] == 0.7


def test_bandwidth_outside_zero_to_one_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", GPU_A)
    with pytest.raises(UsageError, match="bandwidth"):
        kernel(10, bandwidth=1.5)
