"""gpuslice's MPS lifecycle run against NVIDIA's own control daemon (no GPU needed).

``GPUSLICE_MPS_CONTROL`` points at NVIDIA's ``nvidia-cuda-mps-control`` from Debian's
``nvidia-cuda-mps`` package (see conftest.py): ensure, concurrency, restart after SIGKILL,
status, stop, pipe-directory safety, a clean environment for the daemon, and leases.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpuslice.errors import MpsError
from gpuslice.mps import control, daemon, paths
from gpuslice.mps.control import CONTROL_ENV

from .conftest import NvidiaMps
from .transcript import _daemons as daemons_serving


@dataclass(frozen=True)
class Dirs:
    device: str
    pipe: str
    log: str


@pytest.fixture
def nvidia(nvidia_control: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """gpuslice drives NVIDIA's control program from here on."""
    monkeypatch.setenv(CONTROL_ENV, nvidia_control)
    for key in [k for k in os.environ if k.startswith("CUDA_")]:
        monkeypatch.delenv(key)
    return nvidia_control


@pytest.fixture
def device_dirs(nvidia: str, short_root: str) -> Iterator[Callable[[str], Dirs]]:
    made: list[Dirs] = []

    def make(device: str) -> Dirs:
        dirs = Dirs(device, paths.pipe_dir(short_root, device), paths.log_dir(short_root, device))
        made.append(dirs)
        return dirs

    yield make
    for dirs in made:
        daemon.stop(dirs.pipe, timeout=5)
        for pid in daemons_serving(dirs.pipe):  # one started by hand, no record
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def gpu(device_dirs: Callable[[str], Dirs]) -> Dirs:
    return device_dirs("GPU-aaaa")


def _start_by_hand(nvidia: str, dirs: Dirs, **extra: str) -> int:
    os.makedirs(dirs.pipe, mode=0o700, exist_ok=True)
    os.makedirs(dirs.log, mode=0o700, exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CUDA_")},
        "CUDA_MPS_PIPE_DIRECTORY": dirs.pipe,
        "CUDA_MPS_LOG_DIRECTORY": dirs.log,
        **extra,
    }
    subprocess.run([nvidia, "-d"], env=env, check=True, timeout=30)
    pid = control.listener_pid(dirs.pipe)
    assert pid is not None
    return pid


def test_ensure_starts_nvidias_daemon_and_finds_its_pid(gpu: Dirs, nvidia_mps: NvidiaMps) -> None:
    status = daemon.ensure(gpu.pipe, gpu.log, gpu.device)

    assert status.started
    assert status.running
    assert status.pid is not None
    assert daemons_serving(gpu.pipe) == [status.pid]
    nvidias = Path(gpu.pipe, daemon.PID_FILE)
    if nvidia_mps.version.startswith("535."):
        assert not nvidias.exists()  # driver 535 writes none
    else:
        assert nvidias.read_text() == str(status.pid)  # 550: its PID, no newline
    assert daemon.ensure(gpu.pipe, gpu.log, gpu.device).pid == status.pid


@pytest.mark.slow
def test_twenty_concurrent_ensures_start_one_daemon_per_device(
    device_dirs: Callable[[str], Dirs], nvidia: str
) -> None:
    devices = [device_dirs("GPU-aaaa"), device_dirs("GPU-bbbb")]
    script = (
        "import sys; from gpuslice.mps import daemon; "
        "s = daemon.ensure(sys.argv[1], sys.argv[2], sys.argv[3], timeout=120); "
        "print(s.pid, int(s.started))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, d.pipe, d.log, d.device],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for d in devices * 10
    ]
    results: dict[str, set[int]] = {d.pipe: set() for d in devices}
    started = 0
    for proc, dirs in zip(procs, devices * 10, strict=True):
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
        pid, was_started = out.split()
        results[dirs.pipe].add(int(pid))
        started += int(was_started)

    assert started == 2
    for dirs in devices:
        (pid,) = results[dirs.pipe]
        assert daemons_serving(dirs.pipe) == [pid]


def test_a_sigkilled_daemon_is_replaced_and_the_dead_one_named(gpu: Dirs) -> None:
    old = daemon.ensure(gpu.pipe, gpu.log, gpu.device).pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    assert daemon.wait_gone([old], 5) == ()

    status = daemon.ensure(gpu.pipe, gpu.log, gpu.device)

    assert status.restarted
    assert status.dead_pid == old
    assert status.pid not in (None, old)
    assert daemons_serving(gpu.pipe) == [status.pid]
    assert f"MPS control daemon {old}" in Path(gpu.log, daemon.GPUSLICE_LOG).read_text()


def test_status_of_nvidias_daemon(gpu: Dirs) -> None:
    started = daemon.ensure(gpu.pipe, gpu.log, gpu.device, holder="wf")

    status = daemon.status(gpu.pipe, gpu.log)

    assert status.running
    assert status.pid == started.pid
    assert status.servers == ()
    assert status.leases == ("wf",)


def test_stop_leaves_no_process_and_only_nvidias_socket_files(gpu: Dirs) -> None:
    started = daemon.ensure(gpu.pipe, gpu.log, gpu.device)

    report = daemon.stop(gpu.pipe, timeout=5, log_dir=gpu.log)

    assert report.was_running
    assert report.quit_accepted
    assert report.quit_status == 0
    assert report.clean
    assert report.daemon_pid == started.pid
    assert daemons_serving(gpu.pipe) == []
    assert sorted(os.listdir(gpu.pipe)) == ["control", "control_lock", "control_privileged"]
    assert not daemon.status(gpu.pipe).running


def test_stop_after_a_server_that_could_not_start_quits_without_killing(
    gpu: Dirs, nvidia: str
) -> None:
    # Without a GPU NVIDIA's server exits with status 1 at once; quit then reports 1 in the
    # log (the front end's exit status races), and nothing needs killing.
    daemon.ensure(gpu.pipe, gpu.log, gpu.device)
    control.start_server(gpu.pipe, os.getuid())
    deadline = time.monotonic() + 10
    while "exited with status 1" not in Path(gpu.log, "control.log").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)

    report = daemon.stop(gpu.pipe, timeout=5, log_dir=gpu.log)

    assert report.quit_accepted
    assert report.quit_status in (0, 1)
    assert report.clean
    assert "Exit with status 1" in Path(gpu.log, "control.log").read_text()


def test_the_pipe_directory_is_private_though_nvidia_would_make_it_0777(gpu: Dirs) -> None:
    daemon.ensure(gpu.pipe, gpu.log, gpu.device)

    assert os.stat(gpu.pipe).st_mode & 0o777 == 0o700
    assert os.stat(gpu.log).st_mode & 0o777 == 0o700


def test_a_pipe_directory_others_can_write_is_refused(gpu: Dirs) -> None:
    os.makedirs(gpu.pipe, mode=0o700)
    os.chmod(gpu.pipe, 0o777)

    with pytest.raises(MpsError, match=rf"{gpu.pipe} is writable by group or others"):
        daemon.ensure(gpu.pipe, gpu.log, gpu.device)
    assert daemons_serving(gpu.pipe) == []


def test_nvidias_daemon_does_not_inherit_a_pools_percentage(
    gpu: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "15")
    monkeypatch.setenv("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "0=8192M")

    daemon.ensure(gpu.pipe, gpu.log, gpu.device)

    assert control.get_default_active_thread_percentage(gpu.pipe) == 100.0
    assert control.get_default_device_pinned_mem_limit(gpu.pipe, 0) is None


def test_an_idle_nvidia_daemon_started_with_a_percentage_is_replaced(
    gpu: Dirs, nvidia: str
) -> None:
    old = _start_by_hand(nvidia, gpu, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE="15")

    status = daemon.ensure(gpu.pipe, gpu.log, gpu.device)

    assert status.replaced == ("default active thread percentage 15%",)
    assert status.pid not in (None, old)
    assert control.get_default_active_thread_percentage(gpu.pipe) == 100.0


def test_an_idle_nvidia_daemon_with_a_default_pinned_limit_is_replaced(
    gpu: Dirs, nvidia: str
) -> None:
    old = _start_by_hand(nvidia, gpu)
    control.set_default_device_pinned_mem_limit(gpu.pipe, 0, 3000)

    status = daemon.ensure(gpu.pipe, gpu.log, gpu.device)

    assert status.replaced == ("default pinned memory limit 2G on device 0",)
    assert status.pid != old


def test_refusals_that_exit_0_are_errors(gpu: Dirs) -> None:
    daemon.ensure(gpu.pipe, gpu.log, gpu.device)

    with pytest.raises(MpsError, match="Server 424242 not found"):
        control.get_client_list(gpu.pipe, 424242)
    with pytest.raises(MpsError, match=r"\(0, 100\]"):
        control.set_default_active_thread_percentage(gpu.pipe, 130)
    with pytest.raises(MpsError, match="ordinal"):
        control.set_default_device_pinned_mem_limit(gpu.pipe, "GPU-aaaa", 4096)  # type: ignore[arg-type]


def test_the_last_lease_released_stops_nvidias_daemon(gpu: Dirs) -> None:
    first = daemon.ensure(gpu.pipe, gpu.log, gpu.device, holder="wf-1")
    daemon.ensure(gpu.pipe, gpu.log, gpu.device, holder="wf-2")

    assert daemon.release(gpu.pipe, gpu.log, "wf-1") is None
    assert daemons_serving(gpu.pipe) == [first.pid]
    report = daemon.release(gpu.pipe, gpu.log, "wf-2")

    assert report is not None
    assert report.clean
    assert daemons_serving(gpu.pipe) == []
