"""Talking to a daemon through the control program (the emulated one here)."""

from __future__ import annotations

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


def test_pinned_mem_limit_is_written_as_exact_mib(running: DeviceDirs) -> None:
    control.set_default_device_pinned_mem_limit(running.pipe, 0, 10240)

    assert control.command(running.pipe, "get_default_device_pinned_mem_limit 0").strip() == (
        "10240M"
    )


def test_started_server_is_listed_with_its_user_and_no_clients(running: DeviceDirs) -> None:
    control.start_server(running.pipe, 4321)

    (server,) = control.servers(running.pipe)
    assert server.clients == ()
    assert control.get_client_list(running.pipe, server.pid) == ()
    assert daemon.process_alive(server.pid)


def test_shutdown_server_ends_the_server_process(running: DeviceDirs) -> None:
    control.start_server(running.pipe, 4321)
    (pid,) = control.get_server_list(running.pipe)

    control.shutdown_server(running.pipe, pid)

    assert control.get_server_list(running.pipe) == ()
    assert not daemon.process_alive(pid)


def test_refused_command_raises_with_the_daemons_message(running: DeviceDirs) -> None:
    with pytest.raises(MpsError, match="no MPS server with PID 999999"):
        control.shutdown_server(running.pipe, 999999)


def test_quit_stops_the_daemon(running: DeviceDirs) -> None:
    control.quit_daemon(running.pipe)

    assert daemon.status(running.pipe).running is False


def test_unknown_control_program_is_named_in_the_error(
    gpu_a: DeviceDirs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(control.CONTROL_ENV, "no-such-mps-control")

    with pytest.raises(MpsError, match="no-such-mps-control"):
        control.ping(gpu_a.pipe)
    monkeypatch.setenv(control.CONTROL_ENV, control.EMULATED_PROGRAM)
