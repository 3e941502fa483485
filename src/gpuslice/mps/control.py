"""Talk to one MPS control daemon through NVIDIA's control program.

Every query runs the control program with commands on its stdin and the daemon's pipe
directory in ``CUDA_MPS_PIPE_DIRECTORY``, exactly as ``echo get_server_list |
nvidia-cuda-mps-control`` does by hand; replies are parsed into typed values. Commands
and their replies follow NVIDIA's "Legacy MPS v2 Interface" page:
https://docs.nvidia.com/deploy/mps/latest/mpsv2-interface.html

The program is ``$GPUSLICE_MPS_CONTROL`` when set (a command name or path, e.g.
``gpuslice-emulated-mps-control`` for the emulated GPU), else ``nvidia-cuda-mps-control``
on ``PATH``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gpuslice.errors import MpsError

#: Environment variable naming the control program to run instead of NVIDIA's.
CONTROL_ENV = "GPUSLICE_MPS_CONTROL"
#: NVIDIA's control program.
REAL_PROGRAM = "nvidia-cuda-mps-control"
#: gpuslice's emulated control program (console script).
EMULATED_PROGRAM = "gpuslice-emulated-mps-control"
#: What NVIDIA's program prints when no daemon runs on the pipe directory; reported by
#: users (NVIDIA's pages do not quote it), and printed by the emulated program too.
NO_DAEMON_MESSAGE = "Cannot find MPS control daemon process"
#: Seconds a control command may take before gpuslice gives up on the daemon.
DEFAULT_TIMEOUT_S = 10.0


class DaemonUnreachable(MpsError):
    """No MPS control daemon answered on a pipe directory."""

    def __init__(self, pipe_dir: str, detail: str = "") -> None:
        self.pipe_dir = pipe_dir
        self.detail = detail
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"no MPS control daemon answers on {self.pipe_dir}"
        if self.detail:
            text += f" ({self.detail})"
        return text + "; start one with `gpuslice mps ensure`"


@dataclass(frozen=True)
class ControlReply:
    """What one run of the control program returned.

    Attributes:
        commands: the lines written to its stdin.
        returncode: its exit status.
        stdout: what it printed on stdout.
        stderr: what it printed on stderr.
    """

    commands: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr together, stripped, for messages."""
        return "\n".join(t for t in (self.stdout.strip(), self.stderr.strip()) if t)

    @property
    def daemon_missing(self) -> bool:
        """True when the program said that no daemon runs."""
        return NO_DAEMON_MESSAGE in self.output


@dataclass(frozen=True)
class ServerInfo:
    """One MPS server (``nvidia-cuda-mps-server``) of a control daemon.

    Attributes:
        pid: the server's PID (``get_server_list``).
        uid: the user the server runs as (from ``/proc``), None when it cannot be read.
        clients: PIDs of its client processes (``get_client_list <pid>``).
    """

    pid: int
    uid: int | None
    clients: tuple[int, ...]


def control_program() -> list[str]:
    """The argv prefix that runs the control program.

    Raises:
        MpsError: neither ``$GPUSLICE_MPS_CONTROL`` nor ``nvidia-cuda-mps-control`` on PATH
            names a program; the message says what to install or set.
    """
    override = os.environ.get(CONTROL_ENV, "").strip()
    if override:
        argv = shlex.split(override)
        found = _which(argv[0])
        if found is None:
            raise MpsError(
                f"{CONTROL_ENV}={override!r} names no program that can be run; set it to a "
                f"command on PATH or a path (e.g. {EMULATED_PROGRAM} for the emulated GPU)"
            )
        return [found, *argv[1:]]
    found = _which(REAL_PROGRAM)
    if found is None:
        raise MpsError(
            f"{REAL_PROGRAM} is not on PATH: install the NVIDIA driver's MPS tools "
            "(e.g. the nvidia-compute-utils package), or to run on the emulated GPU set "
            f"{CONTROL_ENV}={EMULATED_PROGRAM}"
        )
    return [found]


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found is None and os.sep not in name:
        # Console scripts live beside the interpreter even when its bin/ is not on PATH.
        beside = Path(sys.executable).parent / name
        if beside.is_file() and os.access(beside, os.X_OK):
            found = str(beside)
    return found


def run_commands(
    pipe_dir: str,
    commands: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    extra_env: dict[str, str] | None = None,
) -> ControlReply:
    """Run the control program once with ``commands`` on its stdin, one per line.

    Args:
        pipe_dir: the daemon's pipe directory (``CUDA_MPS_PIPE_DIRECTORY``).
        commands: control commands, e.g. ``["get_server_list"]``.
        timeout: seconds before the run is abandoned.
        extra_env: more environment variables for the program.

    Raises:
        MpsError: the program is missing, cannot run, or did not finish in time.
    """
    argv = control_program()
    env = {**os.environ, **(extra_env or {}), "CUDA_MPS_PIPE_DIRECTORY": pipe_dir}
    stdin = "".join(f"{c}\n" for c in commands)
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise MpsError(
            f"`{shlex.join(argv)}` did not finish {list(commands)} within {timeout:g}s on "
            f"{pipe_dir}; the daemon may be hung: run `gpuslice mps stop` and retry"
        ) from err
    except OSError as err:
        raise MpsError(f"cannot run `{shlex.join(argv)}`: {err}") from err
    return ControlReply(tuple(commands), done.returncode, done.stdout, done.stderr)


def command(pipe_dir: str, line: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Run one control command and return what it printed.

    Raises:
        DaemonUnreachable: no daemon runs on ``pipe_dir``.
        MpsError: the daemon refused the command.
    """
    reply = run_commands(pipe_dir, [line], timeout=timeout)
    if reply.daemon_missing:
        raise DaemonUnreachable(pipe_dir)
    if reply.returncode != 0:
        raise MpsError(
            f"the MPS control daemon of {pipe_dir} refused `{line}` "
            f"(exit {reply.returncode}): {reply.output or 'no message'}"
        )
    return reply.stdout


def _pids(text: str, what: str) -> tuple[int, ...]:
    pids: list[int] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        try:
            pids.append(int(line))
        except ValueError:
            raise MpsError(f"unexpected line in the reply to {what}: {line!r}") from None
    return tuple(pids)


def get_server_list(pipe_dir: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[int, ...]:
    """PIDs of the daemon's MPS servers (``get_server_list``: one PID per line)."""
    return _pids(command(pipe_dir, "get_server_list", timeout=timeout), "get_server_list")


def get_client_list(
    pipe_dir: str, server_pid: int, *, timeout: float = DEFAULT_TIMEOUT_S
) -> tuple[int, ...]:
    """PIDs of the clients of one server (``get_client_list <PID>``: one PID per line)."""
    what = f"get_client_list {server_pid}"
    return _pids(command(pipe_dir, what, timeout=timeout), what)


def _uid_of(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def servers(pipe_dir: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> tuple[ServerInfo, ...]:
    """Every server of the daemon with its user and clients."""
    return tuple(
        ServerInfo(pid, _uid_of(pid), get_client_list(pipe_dir, pid, timeout=timeout))
        for pid in get_server_list(pipe_dir, timeout=timeout)
    )


def get_default_active_thread_percentage(
    pipe_dir: str, *, timeout: float = DEFAULT_TIMEOUT_S
) -> float:
    """The daemon's default active thread percentage (100 unless set)."""
    text = command(pipe_dir, "get_default_active_thread_percentage", timeout=timeout).strip()
    try:
        return float(text)
    except ValueError:
        raise MpsError(
            f"unexpected reply to get_default_active_thread_percentage: {text!r}"
        ) from None


def set_default_active_thread_percentage(
    pipe_dir: str, percentage: float, *, timeout: float = DEFAULT_TIMEOUT_S
) -> None:
    """Set the default percentage for servers started from now on (existing ones keep theirs)."""
    command(pipe_dir, f"set_default_active_thread_percentage {percentage:g}", timeout=timeout)


def set_default_device_pinned_mem_limit(
    pipe_dir: str, device: str | int, mib: int, *, timeout: float = DEFAULT_TIMEOUT_S
) -> None:
    """Cap each client's pinned device memory on ``device`` (ordinal or UUID) to ``mib`` MiB.

    NVIDIA's value is an integer followed by ``G`` or ``M``; gpuslice always writes an
    exact ``<n>M``.
    """
    command(pipe_dir, f"set_default_device_pinned_mem_limit {device} {mib}M", timeout=timeout)


def start_server(pipe_dir: str, uid: int, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Start a server for ``uid`` now rather than at its first client (``start_server -uid``)."""
    command(pipe_dir, f"start_server -uid {uid}", timeout=timeout)


def shutdown_server(
    pipe_dir: str, server_pid: int, *, force: bool = False, timeout: float = DEFAULT_TIMEOUT_S
) -> None:
    """Shut one server down (``shutdown_server <PID> [-f]``)."""
    suffix = " -f" if force else ""
    command(pipe_dir, f"shutdown_server {server_pid}{suffix}", timeout=timeout)


def terminate_client(
    pipe_dir: str, server_pid: int, client_pid: int, *, timeout: float = DEFAULT_TIMEOUT_S
) -> None:
    """End a client's outstanding GPU work, the clean way before killing it."""
    command(pipe_dir, f"terminate_client {server_pid} {client_pid}", timeout=timeout)


def quit_daemon(pipe_dir: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
    """Ask the daemon to exit (``quit``); it takes its servers down with it."""
    command(pipe_dir, "quit", timeout=timeout)


def ping(pipe_dir: str, *, timeout: float = 5.0) -> bool:
    """True when a daemon really answers on ``pipe_dir`` (``get_server_list`` succeeds).

    Raises:
        MpsError: the control program itself is missing (that is not a "no").
    """
    control_program()  # a missing program is an error to report, not a "no"
    try:
        get_server_list(pipe_dir, timeout=timeout)
    except MpsError:
        return False
    return True
