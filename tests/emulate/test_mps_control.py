"""The emulated nvidia-cuda-mps-control: NVIDIA's 535 behaviour, and its emulated CUDA clients.

What NVIDIA's program prints is pinned down side by side with the real one in
tests/conformance/test_differential.py; these tests run without it (a few of its answers are
repeated here so that a machine without apt still checks them) and cover what only the
emulated GPU has: servers that stay up, and clients with the limits they were granted.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpuslice.emulate import mps_control
from gpuslice.errors import MpsError
from gpuslice.mps import daemon

PROGRAM = [sys.executable, "-m", "gpuslice.emulate.mps_control"]


@dataclass(frozen=True)
class Dirs:
    pipe: str
    log: str

    @property
    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CUDA_")}
        return {**base, "CUDA_MPS_PIPE_DIRECTORY": self.pipe, "CUDA_MPS_LOG_DIRECTORY": self.log}


@pytest.fixture
def dirs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dirs]:
    """Short private directories (sockets need short paths); the daemon is stopped after."""
    monkeypatch.setenv("GPUSLICE_MPS_CONTROL", "gpuslice-emulated-mps-control")
    monkeypatch.delenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", raising=False)
    root = tempfile.mkdtemp(dir="/tmp", prefix="gs-")
    made = Dirs(os.path.join(root, "pipe"), os.path.join(root, "log"))
    os.mkdir(made.pipe, 0o700)
    os.mkdir(made.log, 0o700)
    try:
        yield made
    finally:
        daemon.stop(made.pipe, timeout=5)
        shutil.rmtree(root, ignore_errors=True)


def control(
    dirs: Dirs, *lines: str, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        PROGRAM,
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        env={**dirs.env, **(extra or {})},
        timeout=30,
        check=False,
    )


def start(dirs: Dirs, extra: dict[str, str] | None = None) -> int:
    done = subprocess.run(
        [*PROGRAM, "-d"], env={**dirs.env, **(extra or {})}, timeout=30, check=False
    )
    assert done.returncode == 0
    pid = daemon.daemon_pid(dirs.pipe)
    assert pid is not None
    return pid


def test_without_a_daemon_it_says_so_on_stderr_and_exits_1(dirs: Dirs) -> None:
    done = control(dirs, "get_server_list")

    assert done.returncode == 1
    assert done.stderr == "Cannot find MPS control daemon process\n"
    assert done.stdout == ""


def test_d_daemonizes_and_makes_nvidias_pipe_files_without_a_pid_file(dirs: Dirs) -> None:
    pid = start(dirs)

    assert daemon.process_alive(pid)
    ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    assert int(ppid) != os.getpid()  # double fork: not our child
    kinds = {entry.name: stat.S_IFMT(entry.lstat().st_mode) for entry in Path(dirs.pipe).iterdir()}
    assert kinds == {
        "control": stat.S_IFSOCK,
        "control_privileged": stat.S_IFSOCK,
        "control_lock": stat.S_IFREG,
        "log": stat.S_IFIFO,
    }
    assert "Starting control daemon using socket" in Path(dirs.log, "control.log").read_text()


def test_a_second_d_on_the_same_pipe_dir_is_refused_on_stdout(dirs: Dirs) -> None:
    start(dirs)

    done = subprocess.run(
        [*PROGRAM, "-d"], env=dirs.env, capture_output=True, text=True, check=False
    )

    assert done.returncode == 1
    assert done.stdout == "An instance of this daemon is already running\n"


def test_quit_stops_the_daemon_and_its_servers_and_leaves_the_sockets(dirs: Dirs) -> None:
    pid = start(dirs)
    control(dirs, f"start_server -uid {os.getuid()}")
    (server,) = map(int, control(dirs, "get_server_list").stdout.split())

    assert control(dirs, "quit").returncode == 0

    assert daemon.wait_gone((pid, server), 5) == ()
    assert sorted(os.listdir(dirs.pipe)) == ["control", "control_lock", "control_privileged"]


def test_quit_exits_1_after_a_server_that_could_not_start(dirs: Dirs) -> None:
    start(dirs, extra={"CUDA_VISIBLE_DEVICES": ""})  # no device: servers exit 1 at once
    control(dirs, f"start_server -uid {os.getuid()}")
    daemon.wait_gone([int(p) for p in control(dirs, "get_server_list").stdout.split()], 10)

    done = control(dirs, "quit")

    assert done.returncode == 1
    assert "Exit with status 1" in Path(dirs.log, "control.log").read_text()


def test_replies_are_printed_one_per_line_like_the_real_program(dirs: Dirs) -> None:
    start(dirs)

    done = control(
        dirs,
        "get_default_active_thread_percentage",
        "set_default_active_thread_percentage 30",
        "set_default_device_pinned_mem_limit 0 3000M",
        "get_default_device_pinned_mem_limit 0",
        "x",
        "get_client_list 1234",
    )

    assert done.returncode == 0
    assert done.stdout.splitlines() == [
        "100.0",
        "30.0",
        "2G",
        'Unknown command "x"',
        "Server 1234 not found",
    ]


@pytest.mark.parametrize("value", ["0", "101", "-1", "abc"])
def test_an_invalid_percentage_is_logged_and_the_old_value_printed(dirs: Dirs, value: str) -> None:
    start(dirs)

    done = control(dirs, f"set_default_active_thread_percentage {value}")

    assert (done.returncode, done.stdout, done.stderr) == (0, "100.0\n", "")
    log = Path(dirs.log, "control.log").read_text()
    assert "Invalid percentage, expected between (0.0, 100.0]" in log


def test_a_uuid_where_an_ordinal_belongs_sets_nothing_for_it(dirs: Dirs) -> None:
    start(dirs)

    done = control(
        dirs,
        "set_default_device_pinned_mem_limit GPU-f1164376-cdca-5af5-8c30-751d35ce99e8 4G",
        "get_default_device_pinned_mem_limit GPU-f1164376-cdca-5af5-8c30-751d35ce99e8",
        "get_default_device_pinned_mem_limit 1",
    )

    assert (done.returncode, done.stdout) == (0, "")


def test_daemon_environment_sets_the_default_percentage(dirs: Dirs) -> None:
    start(dirs, extra={"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "40"})

    assert control(dirs, "get_default_active_thread_percentage").stdout == "40.0\n"


def test_first_client_starts_a_real_server_that_lists_it(dirs: Dirs) -> None:
    start(dirs)
    client = subprocess.Popen(["sleep", "30"])
    try:
        assert mps_control.register_client(
            dirs.pipe, client.pid, active_thread_percentage=25, pinned_mem_limit="0=512M"
        )
        (server,) = map(int, control(dirs, "get_server_list").stdout.split())
        clients = control(dirs, f"get_client_list {server}").stdout.split()
    finally:
        client.kill()
        client.wait()

    assert daemon.process_alive(server)
    assert clients == [str(client.pid)]


def test_a_client_gets_the_lower_of_its_and_its_servers_limits(dirs: Dirs) -> None:
    start(dirs)
    control(
        dirs,
        "set_default_active_thread_percentage 40",
        "set_default_device_pinned_mem_limit 0 4G",
    )
    me = os.getpid()

    above = mps_control.register_client(
        dirs.pipe, me, active_thread_percentage=60, pinned_mem_limit="0=8G"
    )
    below = mps_control.register_client(
        dirs.pipe, me, active_thread_percentage=25, pinned_mem_limit="0=1024M"
    )
    unset = mps_control.register_client(
        dirs.pipe, me, active_thread_percentage=None, pinned_mem_limit=None
    )

    assert above is not None
    assert below is not None
    assert unset is not None
    assert (above.active_thread_percentage, above.pinned_mem_limit) == (40.0, "0=4096M")
    assert (below.active_thread_percentage, below.pinned_mem_limit) == (25.0, "0=1024M")
    assert (unset.active_thread_percentage, unset.pinned_mem_limit) == (40.0, "0=4096M")
    assert above.server_pid == below.server_pid == unset.server_pid
    assert above.daemon_pid == daemon.daemon_pid(dirs.pipe)


def test_a_client_limit_on_a_device_without_a_server_limit_is_its_own(dirs: Dirs) -> None:
    start(dirs)

    grant = mps_control.register_client(
        dirs.pipe, os.getpid(), active_thread_percentage=None, pinned_mem_limit="0=2G"
    )

    assert grant is not None
    assert (grant.active_thread_percentage, grant.pinned_mem_limit) == (100.0, "0=2048M")


def test_a_client_of_a_daemon_without_a_device_is_refused(dirs: Dirs) -> None:
    start(dirs, extra={"CUDA_VISIBLE_DEVICES": ""})

    with pytest.raises(MpsError, match="exited with status 1"):
        mps_control.register_client(
            dirs.pipe, os.getpid(), active_thread_percentage=None, pinned_mem_limit=None
        )


def test_a_client_that_exits_leaves_the_client_list(dirs: Dirs) -> None:
    start(dirs)
    client = subprocess.Popen(["sleep", "30"])
    mps_control.register_client(
        dirs.pipe, client.pid, active_thread_percentage=None, pinned_mem_limit=None
    )
    client.kill()
    client.wait()

    (server,) = control(dirs, "get_server_list").stdout.split()
    assert control(dirs, f"get_client_list {server}").stdout.split() == []


def test_unregister_and_terminate_client_remove_the_client(dirs: Dirs) -> None:
    start(dirs)
    me = os.getpid()
    mps_control.register_client(dirs.pipe, me, active_thread_percentage=None, pinned_mem_limit=None)
    (server,) = control(dirs, "get_server_list").stdout.split()

    assert control(dirs, f"terminate_client {server} {me}").returncode == 0
    assert control(dirs, f"get_client_list {server}").stdout.split() == []
    mps_control.register_client(dirs.pipe, me, active_thread_percentage=None, pinned_mem_limit=None)
    mps_control.unregister_client(dirs.pipe, me)
    assert control(dirs, f"get_client_list {server}").stdout.split() == []


def test_clients_beyond_48_per_device_are_refused(dirs: Dirs) -> None:
    start(dirs)
    clients = [
        subprocess.Popen(["sleep", "60"]) for _ in range(mps_control.MAX_CLIENTS_PER_DEVICE + 1)
    ]
    try:
        for client in clients[:-1]:
            assert mps_control.register_client(
                dirs.pipe, client.pid, active_thread_percentage=None, pinned_mem_limit=None
            )
        with pytest.raises(MpsError, match="48 MPS clients"):
            mps_control.register_client(
                dirs.pipe, clients[-1].pid, active_thread_percentage=None, pinned_mem_limit=None
            )
    finally:
        for client in clients:
            client.kill()
            client.wait()


def test_a_client_of_a_daemon_that_never_answers_fails_rather_than_runs_unlimited(
    dirs: Dirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A busy daemon (starting a server on a loaded machine) once made a client give up after
    # 5 s and report "no daemon": the client then ran outside MPS, with no limit at all.
    pid = start(dirs)
    monkeypatch.setattr(mps_control, "_CLIENT_TIMEOUT_S", 1.0)
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(MpsError, match="gave no answer"):
            mps_control.register_client(
                dirs.pipe, os.getpid(), active_thread_percentage=50, pinned_mem_limit="0=1G"
            )
    finally:
        os.kill(pid, signal.SIGCONT)


def test_register_without_a_daemon_returns_none(dirs: Dirs) -> None:
    assert (
        mps_control.register_client(
            dirs.pipe, os.getpid(), active_thread_percentage=50, pinned_mem_limit=None
        )
        is None
    )


def test_shutdown_server_force_kills_the_server(dirs: Dirs) -> None:
    start(dirs)
    control(dirs, f"start_server -uid {os.getuid()}")
    (server,) = control(dirs, "get_server_list").stdout.split()

    assert control(dirs, f"shutdown_server {server} -f").returncode == 0
    assert not daemon.process_alive(int(server))
    assert control(dirs, "get_server_list").stdout.split() == []
