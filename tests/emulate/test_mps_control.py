"""The emulated nvidia-cuda-mps-control behaves like NVIDIA's documented program."""

from __future__ import annotations

import os
import shutil
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
        return {
            **os.environ,
            "CUDA_MPS_PIPE_DIRECTORY": self.pipe,
            "CUDA_MPS_LOG_DIRECTORY": self.log,
        }


@pytest.fixture
def dirs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Dirs]:
    """Short private directories (sockets need short paths); the daemon is stopped after."""
    monkeypatch.setenv("GPUSLICE_MPS_CONTROL", "gpuslice-emulated-mps-control")
    monkeypatch.delenv("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", raising=False)
    root = tempfile.mkdtemp(dir="/tmp", prefix="gs-")
    made = Dirs(os.path.join(root, "pipe"), os.path.join(root, "log"))
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
    for _ in range(200):
        if control(dirs, "get_server_list").returncode == 0:
            pid = daemon.read_pid(dirs.pipe)
            assert pid is not None
            return pid
    raise AssertionError("the emulated daemon never answered")


def test_without_a_daemon_it_says_so_and_exits_1(dirs: Dirs) -> None:
    done = control(dirs, "get_server_list")

    assert done.returncode == 1
    assert mps_control.NO_DAEMON_MESSAGE in done.stderr


def test_d_daemonizes_and_writes_its_pid_file_in_the_pipe_dir(dirs: Dirs) -> None:
    pid = start(dirs)

    assert daemon.process_alive(pid)
    assert Path(dirs.pipe, "nvidia-cuda-mps-control.pid").read_text().strip() == str(pid)
    ppid = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    assert int(ppid) != os.getpid()  # double fork: not our child
    assert "Control daemon started" in Path(dirs.log, "control.log").read_text()


def test_a_second_d_on_the_same_pipe_dir_is_refused(dirs: Dirs) -> None:
    start(dirs)

    done = subprocess.run(
        [*PROGRAM, "-d"], env=dirs.env, capture_output=True, text=True, check=False
    )

    assert done.returncode == 1
    assert "already running" in done.stderr


def test_quit_stops_the_daemon_and_its_servers(dirs: Dirs) -> None:
    pid = start(dirs)
    control(dirs, "start_server -uid 1000")
    (server,) = map(int, control(dirs, "get_server_list").stdout.split())

    assert control(dirs, "quit").returncode == 0

    daemon.wait_gone((pid, server), 5)
    assert not daemon.process_alive(pid)
    assert not daemon.process_alive(server)
    assert not Path(dirs.pipe, "nvidia-cuda-mps-control.pid").exists()
    assert "Server started" in Path(dirs.log, "server.log").read_text()


def test_quit_accepts_a_timeout(dirs: Dirs) -> None:
    pid = start(dirs)

    assert control(dirs, "quit -t 2").returncode == 0
    assert daemon.wait_gone((pid,), 5) == ()


def test_replies_are_printed_one_per_line_like_the_real_program(dirs: Dirs) -> None:
    start(dirs)

    done = control(
        dirs,
        "get_default_active_thread_percentage",
        "set_default_active_thread_percentage 30",
        "get_default_active_thread_percentage",
        "set_default_device_pinned_mem_limit 0 2G",
        "get_default_device_pinned_mem_limit 0",
    )

    assert done.returncode == 0
    assert done.stdout.splitlines() == ["100.0", "30.0", "2G"]


def test_daemon_environment_sets_the_default_percentage(dirs: Dirs) -> None:
    start(dirs, extra={"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "40"})

    assert control(dirs, "get_default_active_thread_percentage").stdout.strip() == "40.0"


@pytest.mark.parametrize(
    "line",
    [
        "set_default_active_thread_percentage 0",
        "set_default_active_thread_percentage 101",
        "set_default_device_pinned_mem_limit 0 10GiB",
        "get_client_list 424242",
        "no_such_command",
    ],
)
def test_a_refused_command_exits_1_with_a_message(dirs: Dirs, line: str) -> None:
    start(dirs)

    done = control(dirs, line)

    assert done.returncode == 1
    assert done.stdout.strip()


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


def test_register_without_a_daemon_returns_none(dirs: Dirs) -> None:
    assert (
        mps_control.register_client(
            dirs.pipe, os.getpid(), active_thread_percentage=50, pinned_mem_limit=None
        )
        is None
    )


def test_shutdown_server_force_kills_the_server(dirs: Dirs) -> None:
    start(dirs)
    control(dirs, "start_server -uid 1000")
    (server,) = control(dirs, "get_server_list").stdout.split()

    assert control(dirs, f"shutdown_server {server} -f").returncode == 0
    assert not daemon.process_alive(int(server))
    assert control(dirs, "get_server_list").stdout.split() == []
