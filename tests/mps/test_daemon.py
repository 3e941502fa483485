"""The daemon lifecycle, run through the emulated control program with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gpuslice.emulate.mps_control import register_client
from gpuslice.errors import MpsError
from gpuslice.mps import daemon
from gpuslice.mps.control import CONTROL_ENV, EMULATED_PROGRAM

from .conftest import DeviceDirs


def _daemons_serving(pipe: str) -> list[int]:
    """PIDs of live control daemons whose CUDA_MPS_PIPE_DIRECTORY is ``pipe``."""
    found = []
    wanted = f"CUDA_MPS_PIPE_DIRECTORY={pipe}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        is_daemon = b"mps-control" in cmdline and b"-d" in cmdline.split(b"\0")
        if is_daemon and wanted in environ and daemon.process_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _wait_dead(pid: int) -> None:
    deadline = time.monotonic() + 5
    while daemon.process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not daemon.process_alive(pid)


def test_ensure_starts_a_daemon_that_answers(gpu_a: DeviceDirs) -> None:
    status = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)

    assert status.started
    assert status.running
    assert not status.restarted
    assert status.pid is not None
    assert daemon.process_alive(status.pid)


def test_ensure_twice_reuses_the_running_daemon(gpu_a: DeviceDirs) -> None:
    first = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)
    second = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)

    assert not second.started
    assert second.pid == first.pid


def test_daemon_gets_its_device_in_cuda_visible_devices(gpu_a: DeviceDirs) -> None:
    status = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)

    environ = Path(f"/proc/{status.pid}/environ").read_bytes().split(b"\0")
    assert f"CUDA_VISIBLE_DEVICES={gpu_a.device}".encode() in environ
    assert f"CUDA_MPS_LOG_DIRECTORY={gpu_a.log}".encode() in environ


def test_ensure_creates_private_directories(gpu_a: DeviceDirs) -> None:
    daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)

    for path in (gpu_a.pipe, gpu_a.log, str(Path(gpu_a.pipe).parent)):
        assert os.stat(path).st_mode & 0o777 == 0o700, path


@pytest.mark.slow
def test_twenty_concurrent_ensures_start_exactly_one_daemon(gpu_a: DeviceDirs) -> None:
    script = (
        "import sys; from gpuslice.mps import daemon; "
        "s = daemon.ensure(sys.argv[1], sys.argv[2], sys.argv[3], timeout=60); "
        "print(s.pid, int(s.started))"
    )
    env = {**os.environ, CONTROL_ENV: EMULATED_PROGRAM}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, gpu_a.pipe, gpu_a.log, gpu_a.device],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(20)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        pid, started = out.split()
        results.append((int(pid), started == "1"))

    assert sum(started for _, started in results) == 1
    assert len({pid for pid, _ in results}) == 1
    assert _daemons_serving(gpu_a.pipe) == [results[0][0]]


def test_sigkilled_daemon_is_restarted_by_next_ensure_which_says_so(gpu_a: DeviceDirs) -> None:
    old = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device).pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    _wait_dead(old)

    status = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)

    assert status.started
    assert status.restarted
    assert status.dead_pid == old
    assert status.pid not in (None, old)
    assert status.running
    note = Path(gpu_a.log, daemon.GPUSLICE_LOG).read_text()
    assert f"MPS control daemon {old}" in note
    assert "is dead" in note


def test_stop_leaves_no_process_behind(gpu_a: DeviceDirs) -> None:
    started = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)
    assert register_client(
        gpu_a.pipe, os.getpid(), active_thread_percentage=50, pinned_mem_limit=None
    )
    servers = daemon.status(gpu_a.pipe).servers
    assert len(servers) == 1

    report = daemon.stop(gpu_a.pipe, timeout=5)

    assert report.was_running
    assert report.quit_accepted
    assert report.clean
    assert report.daemon_pid == started.pid
    assert report.server_pids == (servers[0].pid,)
    for pid in (started.pid, servers[0].pid):
        assert pid is not None
        assert not daemon.process_alive(pid)
    assert not daemon.status(gpu_a.pipe).running


def test_stop_without_a_daemon_reports_nothing_running(gpu_a: DeviceDirs) -> None:
    report = daemon.stop(gpu_a.pipe, timeout=1)

    assert not report.was_running
    assert report.killed == ()


def test_stop_kills_servers_left_by_a_daemon_that_no_longer_answers(gpu_a: DeviceDirs) -> None:
    started = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)
    assert started.pid is not None
    register_client(gpu_a.pipe, os.getpid(), active_thread_percentage=None, pinned_mem_limit=None)
    server = daemon.status(gpu_a.pipe).servers[0].pid
    os.kill(started.pid, signal.SIGSTOP)  # alive, but answers nothing
    try:
        os.unlink(Path(gpu_a.pipe, "control"))  # so clients fail fast instead of blocking
        report = daemon.stop(gpu_a.pipe, timeout=1)
    finally:
        if daemon.process_alive(started.pid):
            os.kill(started.pid, signal.SIGKILL)

    assert not report.quit_accepted
    assert set(report.killed) == {started.pid, server}
    assert not daemon.process_alive(server)


def test_status_reports_servers_and_clients_after_register_client(gpu_a: DeviceDirs) -> None:
    daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)
    client = subprocess.Popen(["sleep", "30"])
    try:
        assert register_client(
            gpu_a.pipe, client.pid, active_thread_percentage=25, pinned_mem_limit="0=1024M"
        )
        status = daemon.status(gpu_a.pipe)
    finally:
        client.kill()
        client.wait()

    assert status.running
    assert len(status.servers) == 1
    assert status.servers[0].uid == os.getuid()
    assert status.servers[0].clients == (client.pid,)
    assert status.clients == (client.pid,)


def test_status_without_a_daemon_is_not_running(gpu_a: DeviceDirs) -> None:
    status = daemon.status(gpu_a.pipe)

    assert not status.running
    assert status.servers == ()


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o720])
def test_pipe_dir_writable_by_others_is_refused(gpu_a: DeviceDirs, mode: int) -> None:
    os.makedirs(gpu_a.pipe, mode=0o700)
    os.chmod(gpu_a.pipe, mode)

    with pytest.raises(MpsError, match=rf"{gpu_a.pipe} is writable by group or others") as err:
        daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)
    assert f"chmod 700 {gpu_a.pipe}" in str(err.value)
    assert _daemons_serving(gpu_a.pipe) == []


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")
def test_pipe_dir_owned_by_another_user_is_refused(gpu_a: DeviceDirs) -> None:
    os.makedirs(gpu_a.pipe, mode=0o700)
    os.chown(gpu_a.pipe, 12345, 12345)

    with pytest.raises(MpsError, match=rf"{gpu_a.pipe} is owned by uid 12345"):
        daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)


def test_start_refuses_when_a_daemon_already_answers(gpu_a: DeviceDirs) -> None:
    daemon.start(gpu_a.pipe, gpu_a.log, gpu_a.device)

    with pytest.raises(MpsError, match="already answers"):
        daemon.start(gpu_a.pipe, gpu_a.log, gpu_a.device)


def test_pipe_dir_too_long_for_a_socket_is_reported(
    device_dirs: Callable[[str], DeviceDirs],
) -> None:
    dirs = device_dirs("GPU-" + "b" * 120)

    with pytest.raises(MpsError, match="socket path limit"):
        daemon.ensure(dirs.pipe, dirs.log, dirs.device)


def test_missing_control_program_says_what_to_install_or_set(
    gpu_a: DeviceDirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.delenv(CONTROL_ENV)
        patch.setenv("PATH", "/nonexistent")

        with pytest.raises(MpsError, match=f"{CONTROL_ENV}={EMULATED_PROGRAM}"):
            daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)
