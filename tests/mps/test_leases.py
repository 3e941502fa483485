"""Daemon leases: a workflow's daemons stop when the last workflow holding them ends.

A holder is a process (gpuslice node-run); its lease lives as long as that process. A daemon
someone started by hand (no lease) is never stopped by a holder's release.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from gpuslice.mps import control, daemon
from tests.mps.conftest import DeviceDirs

GPU = "GPU-11111111-2222-3333-4444-555555555555"


def test_the_last_holders_release_stops_the_daemon(
    device_dirs: Callable[[str], DeviceDirs],
) -> None:
    d = device_dirs(GPU)
    daemon.ensure(d.pipe, d.log, GPU, holder="run-a")
    daemon.ensure(d.pipe, d.log, GPU, holder="run-b")
    assert daemon.leases(d.pipe) == ("run-a", "run-b")

    assert daemon.release(d.pipe, d.log, "run-a") is None
    assert control.ping(d.pipe)
    report = daemon.release(d.pipe, d.log, "run-b")
    assert report is not None
    assert report.was_running
    assert not control.ping(d.pipe)


def test_a_dead_holders_lease_does_not_keep_the_daemon(
    device_dirs: Callable[[str], DeviceDirs],
) -> None:
    d = device_dirs(GPU)
    # A holder that takes its lease and dies (a node run killed with SIGKILL).
    code = (
        "from gpuslice.mps import daemon; "
        f"daemon.ensure({d.pipe!r}, {d.log!r}, {GPU!r}, holder='dead-run')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    daemon.ensure(d.pipe, d.log, GPU, holder="live-run")
    assert daemon.leases(d.pipe) == ("live-run",)

    assert daemon.release(d.pipe, d.log, "live-run") is not None
    assert not control.ping(d.pipe)


def test_a_daemon_started_by_hand_is_never_stopped_by_a_release(
    device_dirs: Callable[[str], DeviceDirs],
) -> None:
    d = device_dirs(GPU)
    daemon.ensure(d.pipe, d.log, GPU)  # `gpuslice mps ensure`: no lease
    daemon.ensure(d.pipe, d.log, GPU, holder="run-a")

    assert daemon.release(d.pipe, d.log, "run-a") is None
    assert control.ping(d.pipe)
    assert daemon.leases(d.pipe) == (daemon.EXTERNAL_LEASE,)


def test_re_leasing_keeps_the_first_holders_pid(device_dirs: Callable[[str], DeviceDirs]) -> None:
    d = device_dirs(GPU)
    daemon.ensure(d.pipe, d.log, GPU, holder="run-a")
    # A worker of that run restarts nothing but re-leases under the run's name: when the
    # worker exits, the run's lease must stay alive.
    code = (
        "from gpuslice.mps import daemon; "
        f"daemon.ensure({d.pipe!r}, {d.log!r}, {GPU!r}, holder='run-a')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

    assert daemon.leases(d.pipe) == ("run-a",)


def test_stop_clears_the_leases(device_dirs: Callable[[str], DeviceDirs]) -> None:
    d = device_dirs(GPU)
    daemon.ensure(d.pipe, d.log, GPU)
    daemon.ensure(d.pipe, d.log, GPU, holder="run-a")
    daemon.stop(d.pipe, timeout=5)
    daemon.ensure(d.pipe, d.log, GPU, holder="run-b")

    assert daemon.leases(d.pipe) == ("run-b",)
    assert daemon.release(d.pipe, d.log, "run-b") is not None
