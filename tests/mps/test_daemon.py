"""The daemon lifecycle, run through the emulated control program with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gpuslice.emulate.mps_control import register_client
from gpuslice.errors import MpsError
from gpuslice.mps import control, daemon, paths
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


def test_a_daemon_emulating_driver_550_writes_nvidias_pid_file_and_removes_it_on_stop(
    gpu_a: DeviceDirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Driver 550's daemon writes its PID, no newline, in nvidia-cuda-mps-control.pid
    # (observed; tests/conformance holds the emulator to it); gpuslice passes the setting on.
    monkeypatch.setenv("GPUSLICE_EMULATED_MPS_VERSION", "550.163.01")
    status = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)
    pid_file = Path(gpu_a.pipe, "nvidia-cuda-mps-control.pid")

    assert status.pid is not None
    assert pid_file.read_text() == str(status.pid)
    assert oct(pid_file.stat().st_mode & 0o777) == "0o666"
    report = daemon.stop(gpu_a.pipe)
    assert report.quit_accepted
    assert report.clean
    assert not pid_file.exists()


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


# --- a clean environment for every daemon (issue 9, item 1) -----------------------------------

POOL_LIMITS = {
    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "15",
    "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=8192M",
    "CUDA_MPS_CLIENT_PRIORITY": "1",
    "CUDA_VISIBLE_DEVICES": "GPU-the-callers-own",
}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _start_by_hand(dirs: DeviceDirs, **extra: str) -> int:
    """Start a daemon the way a user (or an older gpuslice) would, with ``extra`` in its env."""
    os.makedirs(dirs.pipe, mode=0o700, exist_ok=True)
    os.makedirs(dirs.log, mode=0o700, exist_ok=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CUDA_")},
        "CUDA_MPS_PIPE_DIRECTORY": dirs.pipe,
        "CUDA_MPS_LOG_DIRECTORY": dirs.log,
        **extra,
    }
    subprocess.run([*control.control_program(), "-d"], env=env, check=True, timeout=30)
    pid = control.listener_pid(dirs.pipe)
    assert pid is not None
    return pid


def test_daemon_does_not_inherit_the_callers_mps_limits(
    gpu_a: DeviceDirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in POOL_LIMITS.items():
        monkeypatch.setenv(key, value)

    status = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)

    assert status.pid is not None
    environ = _environ(status.pid)
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in environ
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT" not in environ
    assert "CUDA_MPS_CLIENT_PRIORITY" not in environ
    assert environ["CUDA_VISIBLE_DEVICES"] == gpu_a.device
    assert control.get_default_active_thread_percentage(gpu_a.pipe) == 100.0


def test_a_pool_with_a_lower_limit_does_not_cap_the_next_pool(
    gpu_a: DeviceDirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The llm pool (15%) starts the daemon; the surrogate pool's client asks for 40%.
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "15")
    daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)
    monkeypatch.setenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "40")
    daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)

    grant = register_client(
        gpu_a.pipe, os.getpid(), active_thread_percentage=40, pinned_mem_limit=None
    )

    assert grant is not None
    assert grant.active_thread_percentage == 40.0


def test_daemon_environment_keeps_only_what_the_daemon_needs() -> None:
    caller = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LD_LIBRARY_PATH": "/opt/nvidia/lib",
        "SECRET_TOKEN": "x",
        **POOL_LIMITS,
    }

    env = daemon.daemon_environment("/r/GPU-a/pipe", "/r/GPU-a/log", "GPU-a", caller)

    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "LD_LIBRARY_PATH": "/opt/nvidia/lib",
        "CUDA_MPS_PIPE_DIRECTORY": "/r/GPU-a/pipe",
        "CUDA_MPS_LOG_DIRECTORY": "/r/GPU-a/log",
        "CUDA_VISIBLE_DEVICES": "GPU-a",
    }


def test_daemon_for_all_devices_gets_no_cuda_visible_devices() -> None:
    env = daemon.daemon_environment("/p", "/l", None, {"CUDA_VISIBLE_DEVICES": "3"})

    assert "CUDA_VISIBLE_DEVICES" not in env


def test_ensure_replaces_an_idle_daemon_started_with_a_percentage(gpu_a: DeviceDirs) -> None:
    old = _start_by_hand(gpu_a, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE="15")

    status = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)

    assert status.started
    assert status.pid not in (None, old)
    assert status.replaced == ("default active thread percentage 15%",)
    assert not daemon.process_alive(old)
    assert control.get_default_active_thread_percentage(gpu_a.pipe) == 100.0
    assert "would cap every client" in Path(gpu_a.log, daemon.GPUSLICE_LOG).read_text()


def test_ensure_replaces_an_idle_daemon_with_a_default_pinned_limit(gpu_a: DeviceDirs) -> None:
    old = _start_by_hand(gpu_a)
    control.command(gpu_a.pipe, "set_default_device_pinned_mem_limit 0 8G")

    status = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)

    assert status.pid != old
    assert status.replaced == ("default pinned memory limit 8G on device 0",)
    assert control.get_default_device_pinned_mem_limit(gpu_a.pipe, 0) is None


def test_ensure_replaces_an_idle_daemon_whose_servers_would_inherit_a_pinned_limit(
    gpu_a: DeviceDirs,
) -> None:
    old = _start_by_hand(gpu_a, CUDA_MPS_PINNED_DEVICE_MEM_LIMIT="0=2G")

    status = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)

    assert status.pid != old
    assert status.replaced == ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=2G in its environment",)


def test_ensure_refuses_to_replace_a_capping_daemon_that_has_clients(gpu_a: DeviceDirs) -> None:
    old = _start_by_hand(gpu_a, CUDA_MPS_ACTIVE_THREAD_PERCENTAGE="15")
    client = subprocess.Popen(["sleep", "30"])
    try:
        assert register_client(
            gpu_a.pipe, client.pid, active_thread_percentage=None, pinned_mem_limit=None
        )
        with pytest.raises(MpsError, match=rf"15%.*clients {client.pid}.*gpuslice mps stop"):
            daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)
        assert daemon.daemon_pid(gpu_a.pipe) == old
    finally:
        client.kill()
        client.wait()


def test_ensure_reuses_a_clean_daemon_it_did_not_start_and_finds_its_pid(
    gpu_a: DeviceDirs,
) -> None:
    old = _start_by_hand(gpu_a)

    status = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)

    assert not status.started
    assert status.replaced == ()
    assert status.pid == old


def test_stop_after_a_server_that_failed_to_start_quits_without_killing(
    gpu_a: DeviceDirs,
) -> None:
    pid = _start_by_hand(gpu_a, CUDA_VISIBLE_DEVICES="")  # no device: its servers exit 1
    control.start_server(gpu_a.pipe, os.getuid())
    deadline = time.monotonic() + 10
    while "exited with status 1" not in Path(gpu_a.log, "control.log").read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)

    report = daemon.stop(gpu_a.pipe, timeout=5)

    assert report.quit_accepted
    assert report.quit_status == 1
    assert report.killed == ()
    assert not daemon.process_alive(pid)


# --- directories no one else can meddle with (issue 9, item 7) -----------------------------------


def test_pipe_dir_open_to_others_is_refused(gpu_a: DeviceDirs) -> None:
    os.makedirs(gpu_a.pipe, mode=0o700)
    os.chmod(gpu_a.pipe, 0o755)  # others could reach the daemon's 0666 control socket

    with pytest.raises(MpsError, match=rf"{gpu_a.pipe} is open to group or others"):
        daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)


def test_a_world_writable_parent_without_the_sticky_bit_is_refused(gpu_a: DeviceDirs) -> None:
    parent = Path(gpu_a.pipe).parent.parent  # the MPS root
    os.chmod(parent, 0o777)

    with pytest.raises(MpsError, match=rf"{parent} is writable by group or others without"):
        daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)


def test_a_world_writable_parent_with_the_sticky_bit_is_accepted(gpu_a: DeviceDirs) -> None:
    parent = Path(gpu_a.pipe).parent.parent
    os.chmod(parent, 0o1777)  # like /tmp

    assert daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device).running


@pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")
def test_a_parent_owned_by_another_user_is_refused(gpu_a: DeviceDirs) -> None:
    parent = Path(gpu_a.pipe).parent.parent
    os.chown(parent, 12345, 12345)

    with pytest.raises(MpsError, match=rf"{parent} is owned by uid 12345, who could replace"):
        daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)


@pytest.fixture
def shared_tmp(monkeypatch: pytest.MonkeyPatch, mps_root: str) -> Path:
    """A stand-in for the shared /tmp (sticky, world-writable) with the default root in it."""
    tmp = Path(mps_root, "tmp")
    tmp.mkdir()
    tmp.chmod(0o1777)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.delenv(paths.ROOT_ENV, raising=False)
    monkeypatch.delenv(paths.RUNTIME_ENV, raising=False)
    return tmp


def _default_dirs(device: str) -> tuple[str, str]:
    root = paths.default_root()
    return paths.pipe_dir(root, device), paths.log_dir(root, device)


def test_the_default_root_in_a_shared_tmp_is_made_private_at_every_level(
    shared_tmp: Path, emulated: None
) -> None:
    pipe, log = _default_dirs("GPU-aaaa")
    try:
        daemon.ensure(pipe, log, "GPU-aaaa")
        top = shared_tmp / f"gpuslice-{os.getuid()}"
        for level in (top, top / "mps", top / "mps" / "GPU-aaaa", Path(pipe), Path(log)):
            assert level.stat().st_mode & 0o777 == 0o700, level
    finally:
        daemon.stop(pipe, timeout=5)


def test_a_default_root_someone_else_made_open_in_a_shared_tmp_is_refused(
    shared_tmp: Path, emulated: None
) -> None:
    top = shared_tmp / f"gpuslice-{os.getuid()}"
    top.mkdir(mode=0o755)  # predictable name, made first, left open
    pipe, log = _default_dirs("GPU-aaaa")

    with pytest.raises(MpsError, match=rf"{top} is open to group or others"):
        daemon.ensure(pipe, log, "GPU-aaaa")


def test_a_symlink_planted_at_the_default_root_is_refused(
    shared_tmp: Path, emulated: None, mps_root: str
) -> None:
    top = shared_tmp / f"gpuslice-{os.getuid()}"
    elsewhere = Path(mps_root, "elsewhere")
    elsewhere.mkdir(mode=0o700)
    top.symlink_to(elsewhere)
    pipe, log = _default_dirs("GPU-aaaa")

    with pytest.raises(MpsError, match=rf"{top} is a symbolic link"):
        daemon.ensure(pipe, log, "GPU-aaaa")


# --- leases: daemons started for a workflow stop when it ends ------------------------------------


def test_a_lease_is_listed_in_the_status(gpu_a: DeviceDirs) -> None:
    started = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device, holder="wf-1")

    assert started.leases == ("wf-1",)
    assert daemon.leases(gpu_a.pipe) == ("wf-1",)
    assert daemon.status(gpu_a.pipe).leases == ("wf-1",)


def test_releasing_the_last_lease_stops_the_daemon(gpu_a: DeviceDirs) -> None:
    started = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device, holder="wf-1")

    report = daemon.release(gpu_a.pipe, gpu_a.log, "wf-1")

    assert report is not None
    assert report.daemon_pid == started.pid
    assert report.clean
    assert started.pid is not None
    assert not daemon.process_alive(started.pid)
    assert daemon.leases(gpu_a.pipe) == ()


def test_another_live_lease_keeps_the_daemon_running(gpu_a: DeviceDirs) -> None:
    first = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device, holder="wf-1")
    daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device, holder="wf-2")

    assert daemon.release(gpu_a.pipe, gpu_a.log, "wf-1") is None

    assert daemon.status(gpu_a.pipe).pid == first.pid
    assert daemon.leases(gpu_a.pipe) == ("wf-2",)


def test_a_lease_of_a_dead_holder_does_not_keep_the_daemon(gpu_a: DeviceDirs) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    started = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device, holder="wf-live")
    os.makedirs(daemon.leases_path(gpu_a.pipe), exist_ok=True)
    Path(daemon.leases_path(gpu_a.pipe), "wf-dead").write_text(f"{gone.pid}\n")

    assert daemon.leases(gpu_a.pipe) == ("wf-live",)
    report = daemon.release(gpu_a.pipe, gpu_a.log, "wf-live")

    assert report is not None
    assert started.pid is not None
    assert not daemon.process_alive(started.pid)


def test_release_never_stops_a_daemon_nobody_leased(gpu_a: DeviceDirs) -> None:
    started = daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)

    assert daemon.release(gpu_a.pipe, gpu_a.log, "wf-1") is None

    assert daemon.status(gpu_a.pipe).pid == started.pid


def test_a_lease_lives_with_the_holder_process_given(gpu_a: DeviceDirs) -> None:
    holder = subprocess.Popen(["sleep", "30"])
    try:
        daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device, holder="job", holder_pid=holder.pid)
        assert daemon.leases(gpu_a.pipe) == ("job",)
    finally:
        holder.kill()
        holder.wait()

    assert daemon.leases(gpu_a.pipe) == ()


@pytest.mark.parametrize("holder", ["", "../x", "a/b", ".hidden", "x" * 200])
def test_a_holder_name_that_is_no_file_name_is_refused(gpu_a: DeviceDirs, holder: str) -> None:
    with pytest.raises(MpsError, match="lease holder"):
        daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device, holder=holder)


@pytest.mark.slow
def test_concurrent_ensures_and_releases_leave_a_daemon_exactly_when_a_lease_is_left(
    gpu_a: DeviceDirs,
) -> None:
    script = (
        "import os, sys; from gpuslice.mps import daemon; p, l, d, h = sys.argv[1:5]; "
        "daemon.ensure(p, l, d, holder=h, holder_pid=int(sys.argv[5]), timeout=60); "
        "daemon.release(p, l, h, timeout=60) if h.endswith('-go') else None"
    )
    keeper = subprocess.Popen(["sleep", "120"])
    env = {**os.environ, CONTROL_ENV: EMULATED_PROGRAM}
    try:
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    script,
                    gpu_a.pipe,
                    gpu_a.log,
                    gpu_a.device,
                    f"h{i}-go" if i else "h0-stay",
                    str(keeper.pid),
                ],
                env=env,
            )
            for i in range(8)
        ]
        for proc in procs:
            assert proc.wait(timeout=180) == 0

        assert daemon.leases(gpu_a.pipe) == ("h0-stay",)
        assert daemon.status(gpu_a.pipe).running
        assert len(_daemons_serving(gpu_a.pipe)) == 1
        assert daemon.release(gpu_a.pipe, gpu_a.log, "h0-stay") is not None
        assert _daemons_serving(gpu_a.pipe) == []
    finally:
        keeper.kill()
        keeper.wait()
