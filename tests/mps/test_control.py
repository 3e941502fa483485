"""Talking to a daemon through the control program (the emulated one here).

NVIDIA's daemon refuses with exit status 0 and a message, and some refusals only reach its
log; the emulated program answers the same way (tests/conformance checks that against
NVIDIA's), so these tests pin how gpuslice reads replies.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gpuslice.errors import MpsError
from gpuslice.mps import control, daemon

from .conftest import DeviceDirs


@pytest.fixture
def running(gpu_a: DeviceDirs) -> DeviceDirs:
    daemon.ensure(gpu_a.pipe, gpu_a.log, gpu_a.device)
    return gpu_a


def test_ping_is_false_without_a_daemon(gpu_a: DeviceDirs) -> None:
    assert control.ping(gpu_a.pipe) is False


def test_ping_is_true_when_the_daemon_answers(running: DeviceDirs) -> None:
    assert control.ping(running.pipe) is True


def test_command_without_a_daemon_raises_daemon_unreachable(gpu_a: DeviceDirs) -> None:
    with pytest.raises(control.DaemonUnreachable, match=gpu_a.pipe):
        control.get_server_list(gpu_a.pipe)


def test_new_daemon_has_no_servers_and_full_default_percentage(running: DeviceDirs) -> None:
    assert control.get_server_list(running.pipe) == ()
    assert control.get_default_active_thread_percentage(running.pipe) == 100.0


def test_set_default_active_thread_percentage_is_read_back(running: DeviceDirs) -> None:
    control.set_default_active_thread_percentage(running.pipe, 37.5)

    assert control.get_default_active_thread_percentage(running.pipe) == 37.5


@pytest.mark.parametrize("percentage", [0, 130, -1])
def test_an_invalid_percentage_is_refused_though_the_daemon_exits_0(
    running: DeviceDirs, percentage: float
) -> None:
    with pytest.raises(MpsError, match=r"\(0, 100\]"):
        control.set_default_active_thread_percentage(running.pipe, percentage)

    assert control.get_default_active_thread_percentage(running.pipe) == 100.0


def test_pinned_mem_limit_is_written_in_mib_and_read_back_as_the_daemon_shows_it(
    running: DeviceDirs,
) -> None:
    control.set_default_device_pinned_mem_limit(running.pipe, 0, 10240)
    control.set_default_device_pinned_mem_limit(running.pipe, 1, 700)

    assert control.get_default_device_pinned_mem_limit(running.pipe, 0) == 10240
    assert control.get_default_device_pinned_mem_limit(running.pipe, 1) == 700
    assert control.get_default_device_pinned_mem_limit(running.pipe, 2) is None
    assert control.command(running.pipe, "get_default_device_pinned_mem_limit 0") == "10G\n"


def test_a_pinned_limit_not_a_multiple_of_a_gib_reads_back_truncated(running: DeviceDirs) -> None:
    control.set_default_device_pinned_mem_limit(running.pipe, 0, 3000)

    assert control.get_default_device_pinned_mem_limit(running.pipe, 0) == 2048


@pytest.mark.parametrize("device", ["GPU-f1164376-cdca-5af5-8c30-751d35ce99e8", 32, -1])
def test_a_pinned_limit_takes_only_an_ordinal_the_daemon_keeps(
    running: DeviceDirs, device: str | int
) -> None:
    with pytest.raises(MpsError, match="ordinal"):
        control.set_default_device_pinned_mem_limit(running.pipe, device, 1024)  # type: ignore[arg-type]

    assert control.get_default_device_pinned_mem_limit(running.pipe, 0) is None


def test_started_server_is_listed_with_its_user_and_no_clients(running: DeviceDirs) -> None:
    control.start_server(running.pipe, os.getuid())

    (server,) = control.servers(running.pipe)
    assert server.clients == ()
    assert server.uid == os.getuid()
    assert daemon.process_alive(server.pid)


def test_shutdown_server_ends_the_server_process(running: DeviceDirs) -> None:
    control.start_server(running.pipe, os.getuid())
    (pid,) = control.get_server_list(running.pipe)

    control.shutdown_server(running.pipe, pid)

    assert control.get_server_list(running.pipe) == ()
    assert not daemon.process_alive(pid)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("shutdown_server 999999", "Server 999999 not found"),
        ("get_client_list 999999", "Server 999999 not found"),
        ("no_such_command", 'Unknown command "no_such_command"'),
        ("set_default_client_priority 2", "Invalid priority value - must be 0 or 1!"),
        ("start_server 1000", r"A user id \(UID\) is required"),
    ],
)
def test_a_refusal_printed_with_exit_0_raises_with_the_daemons_message(
    running: DeviceDirs, line: str, message: str
) -> None:
    reply = control.run_commands(running.pipe, [line])
    assert reply.returncode == 0  # how NVIDIA's daemon refuses

    with pytest.raises(MpsError, match=message):
        control.command(running.pipe, line)


def test_get_client_list_of_an_unknown_server_raises(running: DeviceDirs) -> None:
    with pytest.raises(MpsError, match="Server 424242 not found"):
        control.get_client_list(running.pipe, 424242)


def test_quit_stops_the_daemon_and_reports_a_graceful_exit(running: DeviceDirs) -> None:
    assert control.quit_daemon(running.pipe) == 0

    assert daemon.status(running.pipe).running is False


def test_listener_pid_names_the_daemon(running: DeviceDirs) -> None:
    pid = control.listener_pid(running.pipe)

    assert pid is not None
    assert b"mps" in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert stat.S_ISSOCK(os.stat(os.path.join(running.pipe, "control")).st_mode)


def test_listener_pid_is_none_without_a_daemon(gpu_a: DeviceDirs) -> None:
    os.makedirs(gpu_a.pipe, mode=0o700)

    assert control.listener_pid(gpu_a.pipe) is None


def test_unknown_control_program_is_named_in_the_error(
    gpu_a: DeviceDirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(control.CONTROL_ENV, "no-such-mps-control")

    with pytest.raises(MpsError, match="no-such-mps-control"):
        control.ping(gpu_a.pipe)
    monkeypatch.setenv(control.CONTROL_ENV, control.EMULATED_PROGRAM)
