"""Talk to one MPS control daemon through NVIDIA's control program.

Every query runs the control program with commands on its stdin and the daemon's pipe
directory in ``CUDA_MPS_PIPE_DIRECTORY``, exactly as ``echo get_server_list |
nvidia-cuda-mps-control`` does by hand; replies are parsed into typed values. Commands
and their replies follow NVIDIA's "Legacy MPS v2 Interface" page:
https://docs.nvidia.com/deploy/mps/latest/mpsv2-interface.html

The program is ``$GPUSLICE_MPS_CONTROL`` when set (a command name or path, e.g.
``gpuslice-emulated-mps-control`` for the emulated GPU), else ``nvidia-cuda-mps-control``
on ``PATH``.

NVIDIA's daemon refuses most commands with **exit status 0** and a message on stdout
(``Server 1234 not found``, ``Unknown command "x"``), and some only in its log: an invalid
percentage leaves the default as it was and prints it, a pinned memory limit on a device
ordinal it does not know is dropped. So every reply is read, not only the exit status, and
a setting is read back after it is made. Observed with NVIDIA's 535.261.03 program
(``tests/conformance``), which the emulated program reproduces.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import socket
import struct
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
#: What NVIDIA's program prints (stderr, exit 1) when no daemon runs on the pipe directory.
NO_DAEMON_MESSAGE = "Cannot find MPS control daemon process"
#: What it prints when a daemon is there but will not talk to this user.
NO_ACCESS_MESSAGE = "Cannot authenticate or connect to MPS control daemon process"
#: Seconds a control command may take before gpuslice gives up on the daemon.
DEFAULT_TIMEOUT_S = 10.0
#: Device ordinals NVIDIA's daemon keeps pinned memory limits for (535: 0-31).
MAX_DEVICE_ORDINALS = 32
#: The daemon's socket in its pipe directory (NVIDIA 535: a SOCK_SEQPACKET unix socket).
CONTROL_SOCKET = "control"

#: Replies with which NVIDIA's 535 daemon refuses a command while exiting 0 (observed).
REFUSALS = re.compile(
    r"^(Server -?\d+ not found!?"
    r'|Unknown command ".*"'
    r"|Invalid priority value - must be 0 or 1!"
    r"|A user id \(UID\) is required to start a new server"
    r"|Insufficient privileges for UID \d+"
    r"|Not enough privilege to execute quit command"
    r"|The MPS control daemon is shutting down"
    r"|Cannot send command to MPS control daemon process)$"
)


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


class ControlTimeout(MpsError):
    """The control program did not finish in time: the daemon may be hung."""


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
        """True when the program said that no daemon runs (or that it may not reach it)."""
        return NO_DAEMON_MESSAGE in self.output or NO_ACCESS_MESSAGE in self.output

    @property
    def refusal(self) -> str | None:
        """The daemon's refusal, read from the reply text (NVIDIA refuses with exit 0)."""
        for line in (*self.stdout.splitlines(), *self.stderr.splitlines()):
            if REFUSALS.match(line.strip()):
                return line.strip()
        return None


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
        raise ControlTimeout(
            f"`{shlex.join(argv)}` did not finish {list(commands)} within {timeout:g}s on "
            f"{pipe_dir}; the daemon may be hung: run `gpuslice mps stop` and retry"
        ) from err
    except OSError as err:
        raise MpsError(f"cannot run `{shlex.join(argv)}`: {err}") from err
    return ControlReply(tuple(commands), done.returncode, done.stdout, done.stderr)


def command(pipe_dir: str, line: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Run one control command and return what it printed.

    A refusal is recognised by its text (:data:`REFUSALS`) as well as by the exit status.

    Raises:
        DaemonUnreachable: no daemon runs on ``pipe_dir``.
        MpsError: the daemon refused the command.
    """
    reply = run_commands(pipe_dir, [line], timeout=timeout)
    if reply.daemon_missing:
        raise DaemonUnreachable(pipe_dir, reply.output)
    refusal = reply.refusal
    if refusal is not None or reply.returncode != 0:
        raise MpsError(
            f"the MPS control daemon of {pipe_dir} refused `{line}` "
            f"(exit {reply.returncode}): {refusal or reply.output or 'no message'}"
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


def servers(
    pipe_dir: str,
    pids: Sequence[int] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> tuple[ServerInfo, ...]:
    """Every server of the daemon (or of ``pids``, already listed) with its user and clients."""
    listed = get_server_list(pipe_dir, timeout=timeout) if pids is None else pids
    return tuple(
        ServerInfo(pid, _uid_of(pid), get_client_list(pipe_dir, pid, timeout=timeout))
        for pid in listed
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
    """Set the default percentage for servers started from now on (existing ones keep theirs).

    NVIDIA's daemon prints the default it has afterwards (``%.1f``); an invalid value is
    refused only in its log and the old default printed, so the reply is checked.

    Raises:
        MpsError: the percentage is not in (0, 100], or the daemon kept another value.
    """
    if not 0 < percentage <= 100:
        raise MpsError(f"an MPS active thread percentage must be in (0, 100], not {percentage:g}")
    line = f"set_default_active_thread_percentage {percentage:g}"
    shown = command(pipe_dir, line, timeout=timeout).strip()
    if shown != f"{percentage:.1f}":
        raise MpsError(
            f"the MPS control daemon of {pipe_dir} did not take `{line}`: its default is "
            f"{shown or 'not shown'}; see its control.log"
        )


def _ordinal(device: int | str) -> int:
    if isinstance(device, int) and not isinstance(device, bool):
        ordinal = device
    elif isinstance(device, str) and device.isdigit():
        ordinal = int(device)
    else:
        raise MpsError(
            f"an MPS pinned memory limit is set per device ordinal (0 for a daemon that serves "
            f"one device), not {device!r}: NVIDIA's daemon silently ignores a UUID there "
            "(https://github.com/NVIDIA/k8s-device-plugin/pull/572)"
        )
    if not 0 <= ordinal < MAX_DEVICE_ORDINALS:
        raise MpsError(
            f"device ordinal {ordinal} is out of range: NVIDIA's daemon takes 0 to "
            f"{MAX_DEVICE_ORDINALS - 1}"
        )
    return ordinal


def pinned_limit_text(mib: int) -> str:
    """How NVIDIA's daemon shows a pinned limit of ``mib`` MiB (observed with driver 535).

    Whole ``G`` from 1 GiB on, truncated (``3000`` shows as ``2G``), else ``M``. Whether the
    daemon also enforces the truncated value is a check on a GPU still owed.
    """
    return f"{mib // 1024}G" if mib >= 1024 else f"{mib}M"


def get_default_device_pinned_mem_limit(
    pipe_dir: str, ordinal: int, *, timeout: float = DEFAULT_TIMEOUT_S
) -> int | None:
    """The daemon's default pinned memory limit of device ``ordinal`` in MiB, None if unset.

    The value is what the daemon shows: whole GiB once it is 1 GiB or more (truncated).
    """
    line = f"get_default_device_pinned_mem_limit {_ordinal(ordinal)}"
    text = command(pipe_dir, line, timeout=timeout).strip()
    return _pinned_mib(text, line) if text else None


def _pinned_mib(text: str, what: str) -> int:
    match = re.fullmatch(r"(\d+)([GM])", text)
    if match is None:
        raise MpsError(f"unexpected reply to {what}: {text!r}")
    number = int(match.group(1))
    return number * 1024 if match.group(2) == "G" else number


@dataclass(frozen=True)
class Snapshot:
    """A daemon's servers and defaults, read in one run of the control program.

    Attributes:
        server_pids: its MPS servers (``get_server_list``).
        active_thread_percentage: its default (``get_default_active_thread_percentage``).
        pinned_mib: the default pinned limit of the device asked about, in MiB as the daemon
            shows it, None when unset (``get_default_device_pinned_mem_limit``).
    """

    server_pids: tuple[int, ...]
    active_thread_percentage: float
    pinned_mib: int | None


_PID_LINE = re.compile(r"^\d+$")
_PERCENTAGE_LINE = re.compile(r"^\d+\.\d$")


def snapshot(pipe_dir: str, ordinal: int = 0, *, timeout: float = DEFAULT_TIMEOUT_S) -> Snapshot:
    """The daemon's servers and defaults for device ``ordinal``, in one run of the program.

    The replies cannot be confused: server PIDs are bare integers, the percentage always has
    one decimal (``%.1f``), and a pinned limit ends in ``G`` or ``M`` (and is a line only when
    set). One run instead of three matters where every worker's ``worker_init`` asks.

    Raises:
        DaemonUnreachable: no daemon answers.
        MpsError: the daemon refused, or answered something else.
    """
    lines = [
        "get_server_list",
        "get_default_active_thread_percentage",
        f"get_default_device_pinned_mem_limit {_ordinal(ordinal)}",
    ]
    reply = run_commands(pipe_dir, lines, timeout=timeout)
    if reply.daemon_missing:
        raise DaemonUnreachable(pipe_dir, reply.output)
    if reply.refusal is not None or reply.returncode != 0:
        raise MpsError(
            f"the MPS control daemon of {pipe_dir} refused {lines}: {reply.refusal or reply.output}"
        )
    shown = reply.stdout.split()
    pids = tuple(int(word) for word in shown if _PID_LINE.match(word))
    rest = [word for word in shown if not _PID_LINE.match(word)]
    if not rest or not _PERCENTAGE_LINE.match(rest[0]) or len(rest) > 2:
        raise MpsError(f"unexpected reply to {lines}: {reply.stdout!r}")
    pinned = _pinned_mib(rest[1], lines[2]) if len(rest) == 2 else None
    return Snapshot(pids, float(rest[0]), pinned)


def set_default_device_pinned_mem_limit(
    pipe_dir: str, ordinal: int, mib: int, *, timeout: float = DEFAULT_TIMEOUT_S
) -> None:
    """Cap each new client's pinned memory on device ``ordinal`` to ``mib`` MiB.

    NVIDIA's daemon takes a device ordinal as its clients see it (0 when it serves one
    device); gpuslice writes an exact ``<n>M`` and reads the limit back, because the daemon
    prints nothing either way.

    Raises:
        MpsError: a UUID or an ordinal out of 0-31 was given, ``mib`` is not positive, or
            the daemon does not show the limit afterwards.
    """
    device = _ordinal(ordinal)
    if mib <= 0:
        raise MpsError(f"an MPS pinned memory limit must be positive, not {mib} MiB")
    command(pipe_dir, f"set_default_device_pinned_mem_limit {device} {mib}M", timeout=timeout)
    shown = get_default_device_pinned_mem_limit(pipe_dir, device, timeout=timeout)
    if shown is None or pinned_limit_text(shown) != pinned_limit_text(mib):
        raise MpsError(
            f"the MPS control daemon of {pipe_dir} did not take a {mib} MiB pinned memory "
            f"limit for device {device}: it shows {shown if shown is not None else 'none'}"
        )


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


def quit_daemon(pipe_dir: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> int:
    """Ask the daemon to exit (``quit -t``); it takes its servers down with it.

    NVIDIA's daemon waits for its servers' clients, and forces the servers down after
    ``timeout`` seconds (``quit -t``, man page). The front end then exits with the daemon's
    status: 0 when every server exited gracefully, else non-zero (NVIDIA's 535 front end
    sometimes reports 0 even then: the daemon's control.log says "Exit with status 1").

    Returns:
        The daemon's exit status as the front end reported it.

    Raises:
        DaemonUnreachable: no daemon runs on ``pipe_dir``.
        MpsError: the daemon refused ``quit``, or did not exit in time.
    """
    seconds = max(1, math.ceil(timeout))
    reply = run_commands(pipe_dir, [f"quit -t {seconds}"], timeout=seconds + DEFAULT_TIMEOUT_S)
    if reply.daemon_missing:
        raise DaemonUnreachable(pipe_dir, reply.output)
    if reply.refusal is not None or reply.stdout.strip():
        raise MpsError(
            f"the MPS control daemon of {pipe_dir} refused `quit`: "
            f"{reply.refusal or reply.stdout.strip()}"
        )
    return reply.returncode


def listener_pid(pipe_dir: str, *, timeout: float = 2.0) -> int | None:
    """PID of the process listening on the pipe directory's control socket, None if none.

    The kernel records who called ``listen()`` (``SO_PEERCRED``), so this names the control
    daemon even when it writes no PID file (NVIDIA's 535 daemon writes none) or hangs. NVIDIA's
    daemon logs "Unable to accept connection" for the probe.
    """
    path = os.path.join(pipe_dir, CONTROL_SOCKET)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", creds)[0]
    return pid if pid > 0 else None


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
