"""``gpuslice mps ensure|start|stop|status|release``: the MPS control daemon of a device."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from gpuslice.cli.options import console, fleet_option, inventory, json_option, print_json
from gpuslice.errors import UsageError


def _targets(
    pipe_dir: str | None,
    log_dir: str | None,
    device: str | None,
    plan: str | None,
    fleet: str | None,
) -> list[tuple[str, str, str | None]]:
    """(pipe dir, log dir, device) of each daemon the command acts on."""
    if plan is not None:
        from gpuslice.plan.resolve import resolve

        layout = resolve(plan, inventory(fleet))
        if not layout.daemons:
            raise UsageError("the plan has no MPS slices, so it needs no MPS daemon")
        return [(d.pipe_dir, d.log_dir, d.device) for d in layout.daemons]
    pipe_dir = pipe_dir or os.environ.get("CUDA_MPS_PIPE_DIRECTORY")
    if not pipe_dir:
        raise UsageError(
            "say which daemon: --pipe-dir DIR (or CUDA_MPS_PIPE_DIRECTORY), or --plan PLAN"
        )
    log_dir = (
        log_dir or os.environ.get("CUDA_MPS_LOG_DIRECTORY") or str(Path(pipe_dir).parent / "log")
    )
    return [(pipe_dir, log_dir, device)]


def _daemon_options(func: Any) -> Any:
    func = click.option(
        "--pipe-dir", help="The daemon's CUDA_MPS_PIPE_DIRECTORY (default: that variable)."
    )(func)
    func = click.option(
        "--log-dir",
        help="Its CUDA_MPS_LOG_DIRECTORY (default: that variable, else `log` beside the pipe dir).",
    )(func)
    func = click.option(
        "--plan", help="Act on every MPS daemon a plan needs instead (with --fleet)."
    )(func)
    return fleet_option(func)


@click.group()
def mps() -> None:
    """Start, check and stop MPS control daemons (one per device, each with its own pipe dir).

    Set GPUSLICE_MPS_CONTROL=gpuslice-emulated-mps-control to use the emulated daemon.
    """


def _status_rows(statuses: list[Any]) -> None:
    table = Table(title="MPS control daemons", title_justify="left")
    for column in ("pipe dir", "daemon", "servers", "clients", "leases", "note"):
        table.add_column(column, overflow="fold")
    for st in statuses:
        notes = ["started"] if st.started else []
        if st.restarted:
            notes = [f"restarted (daemon {st.dead_pid} had died)"]
        if st.replaced:
            notes.append(f"replaced a daemon that would cap clients ({'; '.join(st.replaced)})")
        table.add_row(
            st.pipe_dir,
            f"pid {st.pid}" if st.running else "[red]not running[/]",
            ", ".join(str(s.pid) for s in st.servers) or "-",
            str(len(st.clients)),
            ", ".join(st.leases) or "-",
            "; ".join(notes),
        )
    console.print(table)


def _holder_options(func: Any) -> Any:
    func = click.option(
        "--holder-pid",
        type=click.IntRange(1),
        help="The process the lease lives with (default: the process that runs this command's "
        "shell, e.g. the job script); the lease counts only while it runs.",
    )(func)
    return click.option(
        "--holder",
        help="Take a lease on the daemon under this name; `gpuslice mps release --holder NAME` "
        "stops the daemon when it drops the last live lease.",
    )(func)


@mps.command()
@click.option("--device", help="GPU-/MIG- UUID the daemon serves (its CUDA_VISIBLE_DEVICES).")
@_daemon_options
@_holder_options
@json_option
def ensure(
    pipe_dir: str | None,
    log_dir: str | None,
    device: str | None,
    plan: str | None,
    fleet: str | None,
    holder: str | None,
    holder_pid: int | None,
    as_json: bool,
) -> None:
    """Make sure exactly one daemon answers on the pipe dir; start it if needed.

    Safe to run from many workers at once: a file lock, then a real check that the daemon
    answers. A daemon that died is replaced, and the log says so; so is a daemon whose
    defaults would cap every client, unless it has clients (then this refuses). Daemons start
    with a clean environment: no MPS limit of this shell reaches them.
    """
    from gpuslice.mps.daemon import ensure as ensure_daemon

    if holder_pid is not None and holder is None:
        raise UsageError("--holder-pid needs --holder NAME")
    owner = holder_pid if holder_pid is not None else os.getppid()
    statuses = [
        ensure_daemon(p, lg, d, holder=holder, holder_pid=owner if holder else None)
        for p, lg, d in _targets(pipe_dir, log_dir, device, plan, fleet)
    ]
    _report(statuses, as_json)


@mps.command()
@_daemon_options
@click.option("--holder", required=True, help="The lease to drop (as given to `ensure`).")
@click.option(
    "--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait after `quit`."
)
@json_option
def release(
    pipe_dir: str | None,
    log_dir: str | None,
    plan: str | None,
    fleet: str | None,
    holder: str,
    timeout: float,
    as_json: bool,
) -> None:
    """Drop a lease; stop the daemon when no live lease is left on it.

    A daemon nobody leased (started by `ensure` without --holder) is never stopped here.
    """
    from gpuslice.mps.daemon import release as release_lease

    reports = [
        (p, release_lease(p, lg, holder, timeout=timeout))
        for p, lg, _ in _targets(pipe_dir, log_dir, None, plan, fleet)
    ]
    if as_json:
        print_json([{"pipe_dir": p, "stopped": asdict(r) if r else None} for p, r in reports])
        return
    for p, r in reports:
        if r is None:
            console.print(
                f"{p}: no lease {holder!r} is left; the daemon keeps running "
                "(other leases hold it, or it was never leased)"
            )
        else:
            console.print(f"{p}: last lease {holder!r} dropped; stopped daemon {r.daemon_pid}")


@mps.command()
@click.option("--device", help="GPU-/MIG- UUID the daemon serves (its CUDA_VISIBLE_DEVICES).")
@_daemon_options
@json_option
def start(
    pipe_dir: str | None,
    log_dir: str | None,
    device: str | None,
    plan: str | None,
    fleet: str | None,
    as_json: bool,
) -> None:
    """Start a daemon; refuse if one already answers on the pipe dir."""
    from gpuslice.mps.daemon import start as start_daemon

    statuses = [
        start_daemon(p, lg, d) for p, lg, d in _targets(pipe_dir, log_dir, device, plan, fleet)
    ]
    _report(statuses, as_json)


@mps.command()
@_daemon_options
@json_option
def status(
    pipe_dir: str | None, log_dir: str | None, plan: str | None, fleet: str | None, as_json: bool
) -> None:
    """Ask each daemon for its servers and their clients (get_server_list, get_client_list)."""
    from gpuslice.mps.daemon import status as daemon_status

    statuses = [daemon_status(p, lg) for p, lg, _ in _targets(pipe_dir, log_dir, None, plan, fleet)]
    _report(statuses, as_json)


@mps.command()
@_daemon_options
@click.option(
    "--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait after `quit`."
)
@json_option
def stop(
    pipe_dir: str | None,
    log_dir: str | None,
    plan: str | None,
    fleet: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Send `quit`, wait, then kill what is left and report it."""
    from gpuslice.mps.daemon import stop as stop_daemon

    reports = [
        stop_daemon(p, timeout, lg) for p, lg, _ in _targets(pipe_dir, log_dir, None, plan, fleet)
    ]
    if as_json:
        print_json([asdict(r) for r in reports])
        return
    for r in reports:
        if not r.was_running:
            console.print(f"{r.pipe_dir}: no daemon was running")
        elif r.killed:
            console.print(f"{r.pipe_dir}: stopped; had to kill {', '.join(map(str, r.killed))}")
        else:
            console.print(f"{r.pipe_dir}: stopped cleanly (daemon {r.daemon_pid})")


def _report(statuses: list[Any], as_json: bool) -> None:
    if as_json:
        print_json([{**asdict(s), "clients": list(s.clients)} for s in statuses])
    else:
        _status_rows(statuses)


commands = [mps]
