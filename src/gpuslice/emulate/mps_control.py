"""An emulated ``nvidia-cuda-mps-control`` that answers as NVIDIA's 535 program does.

gpuslice drives MPS only through the control program's command line, so pointing
``GPUSLICE_MPS_CONTROL`` at this program (console script ``gpuslice-emulated-mps-control``)
runs the very same code path as on a GPU node. What it prints, logs and leaves in the pipe
directory was copied from NVIDIA's own control program (driver 535.261.03, Debian's
``nvidia-cuda-mps`` package), run side by side with this one on a machine without a GPU;
``tests/conformance/test_differential.py`` keeps the two identical for every command that
needs no GPU. The observations, beyond NVIDIA's documentation
(https://docs.nvidia.com/deploy/mps/latest/mpsv2-interface.html and the 535 man page):

- ``-d`` forks a daemon that holds an fcntl lock on ``control_lock`` (a second ``-d`` prints
  "An instance of this daemon is already running" on stdout and exits 1), listens on two
  ``SOCK_SEQPACKET`` unix sockets, ``control`` (mode 0666) and ``control_privileged``, and
  makes a ``log`` FIFO, all in ``CUDA_MPS_PIPE_DIRECTORY``, which must already exist
  ("Cannot access CUDA_MPS_PIPE_DIRECTORY=…" otherwise). On exit it removes only ``log``.
  It writes no PID file (newer drivers write ``nvidia-cuda-mps-control.pid``; 535 does not).
- Driver 550 (Debian 13's ``nvidia-cuda-mps`` 550.163.01, run side by side the same way)
  differs in two things, which ``GPUSLICE_EMULATED_MPS_VERSION=550.163.01`` (any version from
  550 on) turns on: the daemon writes ``nvidia-cuda-mps-control.pid`` in the pipe directory
  (mode 0666, its PID in decimal with no newline; ``-f`` too), removes it on ``quit`` and
  leaves it when killed; and "Starting new server N for user U" is logged by the new server's
  process (the log line carries N's PID, not the daemon's). The default is 535's behaviour.
- It logs to ``control.log`` in ``CUDA_MPS_LOG_DIRECTORY`` (``-f``: to stdout instead), in
  the format ``[2026-11-29 19:25:07.446 Control  9143] Cmd:get_server_list``, every command
  and every reply, and some messages only there ("Invalid percentage, expected between
  (0.0, 100.0]", "Invalid device ordinal!", "No default pinned memory limit set for the
  device!").
- Without arguments (or with any it does not know) it is the front end: every stdin line is
  a command, answered in order; refusals are printed on **stdout with exit status 0**
  (``Server 1234 not found``, ``Unknown command "x"``). No daemon: "Cannot find MPS control
  daemon process" on stderr, exit 1. A command after ``quit``: "Cannot send command to MPS
  control daemon process", exit 1. ``quit`` exits with the daemon's status, 1 when a server
  did not exit gracefully (NVIDIA's front end sometimes reports 0 there: a race in it).
- Arguments are read as C's ``sscanf``/``strtod`` read them: a missing or unreadable number
  is 0, ``50abc`` is 50, PIDs wrap to 32 bits, a percentage is printed as ``%.1f``.
  ``set_default_device_pinned_mem_limit <dev> <value>`` takes an ordinal 0-31 (a UUID reads
  as ordinal 0 with no value, which clears device 0's limit), a value of an integer and
  ``G`` (GiB) or anything else (MiB), stored in bytes modulo 2**64, and shown as whole ``G``
  once it reaches 1 GiB (``3000M`` shows as ``2G``), else ``M``; 0 clears it.
- ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` and ``CUDA_MPS_CLIENT_PRIORITY`` in the daemon's
  environment set its defaults; ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` there does not change
  ``get_default_device_pinned_mem_limit``.

What is emulated rather than observed (a GPU is needed to observe it; say so when it matters):

- MPS servers are child processes (``python -m gpuslice.emulate.mps_control --server``) that
  wait for the daemon to close their stdin, so PIDs are real. A server whose daemon has an
  empty ``CUDA_VISIBLE_DEVICES`` sees no device and exits with status 1 at once, as NVIDIA's
  server does on a machine without a GPU.
- CUDA clients are emulated by :func:`register_client` / :func:`unregister_client`, private
  messages on the same socket that no NVIDIA command can produce. A client gets the lower of
  its own and its server's active thread percentage: NVIDIA, "This environment variable will
  only further constraint the limit set by the control daemon ... If the control daemon has a
  lower setting, the control daemon setting will be obeyed by the client instead"
  (https://docs.nvidia.com/deploy/topics/topic_5_2_5.html). Per device it gets the lower of
  its own ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` and its server's pinned limit
  (``set_default_device_pinned_mem_limit``/``set_device_pinned_mem_limit``), the same rule:
  NVIDIA's variable is per client and its commands set a limit "on all MPS clients"
  (https://docs.nvidia.com/deploy/mps/latest/appendix-environment-variables.html,
  https://docs.nvidia.com/deploy/mps/latest/mpsv2-interface.html); a client below its
  server's limit gets its own (as third parties measured), but whether a client may go
  *above* its server's pinned limit is not stated in the pages found: a check on a GPU is owed.
- Replies that only exist with a server (``ps`` rows, ``get_device_client_list`` rows, the
  reply to ``set_active_thread_percentage``) follow the patterns seen without one; they are
  unverified until run on a GPU.
- The messages between the front end and the daemon are JSON packets of gpuslice's own;
  NVIDIA does not document its protocol.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import fcntl
import functools
import json
import os
import select
import selectors
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuslice.errors import MpsError

#: The daemon's sockets, lock and log FIFO inside the pipe directory (NVIDIA 535's names).
SOCKET_NAME = "control"
PRIVILEGED_SOCKET_NAME = "control_privileged"
LOCK_NAME = "control_lock"
LOG_FIFO_NAME = "log"
#: The NVIDIA driver version whose daemon this program answers as (see the module docstring).
VERSION_ENV = "GPUSLICE_EMULATED_MPS_VERSION"
DEFAULT_VERSION = "535.261.03"
#: The PID file drivers from 550 on write in the pipe directory.
PID_FILE_NAME = "nvidia-cuda-mps-control.pid"


def _driver_major(environ: Mapping[str, str]) -> int:
    """Major driver version to answer as: ``GPUSLICE_EMULATED_MPS_VERSION``, else 535."""
    text = environ.get(VERSION_ENV) or DEFAULT_VERSION
    head = text.split(".", 1)[0]
    if not head.isdigit():
        raise SystemExit(f"{VERSION_ENV}={text!r} is not a driver version such as 550.163.01")
    return int(head)


#: Client CUDA contexts per device under Volta-and-later MPS (NVIDIA MPS docs, man page).
MAX_CLIENTS_PER_DEVICE = 48
#: Device ordinals the daemon keeps pinned memory limits for (observed: 0-31 accepted, 32 not).
MAX_DEVICE_ORDINALS = 32
#: What NVIDIA's front end prints (stderr, exit 1) when no daemon answers.
NO_DAEMON_MESSAGE = "Cannot find MPS control daemon process"
#: What it prints (stderr, exit 1) when the daemon went away during the session.
SEND_FAILED_MESSAGE = "Cannot send command to MPS control daemon process"
#: What ``-d``/``-f`` print (stdout, exit 1) when a daemon already holds the pipe directory.
ALREADY_RUNNING_MESSAGE = "An instance of this daemon is already running"
#: Documented defaults when the environment variables are unset.
DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"
DEFAULT_LOG_DIR = "/var/log/nvidia-mps"

_INVALID_PERCENTAGE = "Invalid percentage, expected between (0.0, 100.0]"
_INVALID_ORDINAL = "Invalid device ordinal!"
_NO_DEFAULT_PINNED = "No default pinned memory limit set for the device!"
_INVALID_PRIORITY = "Invalid priority value - must be 0 or 1!"
_UID_REQUIRED = "A user id (UID) is required to start a new server"
# First packet of a connection: which kind of peer is talking. A front end then sends each
# command line behind _LINE (so an empty line is not an empty packet, which reads as EOF).
_UI_HELLO = b"UI"
_CLIENT_HELLO = b"CLIENT"
_LINE = b">"
_REGISTER = "register"
_UNREGISTER = "unregister"
# sun_path is 108 bytes on Linux, including the terminating NUL.
_SUN_PATH_MAX = 107
_PACKET_MAX = 1 << 16
_REQUEST_TIMEOUT_S = 5.0
# A client waits this long for its server, as CUDA context creation waits for a starting one.
_CLIENT_TIMEOUT_S = 120.0
_GIB = 1 << 30
_MIB = 1 << 20
_U64 = (1 << 64) - 1


def pipe_directory(environ: dict[str, str] | None = None) -> str:
    """``CUDA_MPS_PIPE_DIRECTORY``, else NVIDIA's default ``/tmp/nvidia-mps``."""
    env = os.environ if environ is None else environ
    return env.get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIR


def log_directory(environ: dict[str, str] | None = None) -> str:
    """``CUDA_MPS_LOG_DIRECTORY``, else NVIDIA's default ``/var/log/nvidia-mps``."""
    env = os.environ if environ is None else environ
    return env.get("CUDA_MPS_LOG_DIRECTORY") or DEFAULT_LOG_DIR


def socket_path(pipe_dir: str) -> str:
    """Path of the daemon's ``control`` socket for ``pipe_dir``."""
    return os.path.join(pipe_dir, SOCKET_NAME)


# --- numbers as C reads them --------------------------------------------------------------


@functools.cache
def _libc() -> Any:
    """The C library, set up for the ``strto*`` functions (loaded when the daemon first parses)."""
    libc = ctypes.CDLL(None)
    libc.strtod.restype = ctypes.c_double
    libc.strtod.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
    for name, kind in (
        ("strtol", ctypes.c_long),
        ("strtoll", ctypes.c_longlong),
        ("strtoul", ctypes.c_ulong),
    ):
        func = getattr(libc, name)
        func.restype = kind
        func.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int]
    return libc


def _c_prefix(func: Any, data: bytes, *base: int) -> tuple[Any, int]:
    """Run a libc ``strto*`` on ``data``: its value and how many bytes it read (0: none)."""
    buf = ctypes.create_string_buffer(data)
    end = ctypes.c_char_p()
    value = func(buf, ctypes.byref(end), *base)
    used = (ctypes.cast(end, ctypes.c_void_p).value or 0) - ctypes.addressof(buf)
    return value, max(used, 0)


def _int32(value: int) -> int:
    """Wrap to a C ``int``, as ``sscanf("%d")`` stores a ``long`` into one."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


_WHITESPACE = b" \t\n\r\f\v"


def _scan(text: str, *directives: str) -> list[Any]:
    """The values ``sscanf(text, " ".join(directives))`` assigns, up to its first failure.

    Directives: ``%d`` (C int), ``%u`` (C unsigned int), ``%lf`` (double), ``%s`` (a word),
    or a literal word that must come next.
    """
    rest = text.encode(errors="replace")
    values: list[Any] = []
    for directive in directives:
        rest = rest.lstrip(_WHITESPACE)
        if directive == "%d":
            number, used = _c_prefix(_libc().strtol, rest, 10)
            value: Any = _int32(number)
        elif directive == "%u":
            number, used = _c_prefix(_libc().strtoul, rest, 10)
            value = number & 0xFFFFFFFF
        elif directive == "%lf":
            number, used = _c_prefix(_libc().strtod, rest)
            value = float(number)
        elif directive == "%s":
            used = len(rest.split(None, 1)[0]) if rest.split(None, 1) else 0
            value = rest[:used].decode(errors="replace")
        else:
            literal = directive.encode()
            used = len(literal) if rest.startswith(literal) else 0
            value = None
        if used == 0:
            break
        if value is not None:
            values.append(value)
        rest = rest[used:]
    return values


def _strtod(text: str) -> float:
    """``strtod(text, NULL)``: the number at the start of ``text``, 0.0 when there is none."""
    return float(_c_prefix(_libc().strtod, text.encode(errors="replace"))[0])


def _pinned_bytes(text: str) -> int:
    """A pinned memory value as NVIDIA's daemon reads it: bytes modulo 2**64 (0: no limit)."""
    data = text.encode(errors="replace")
    number, used = _c_prefix(_libc().strtoll, data, 10)
    unit = data[used : used + 1]
    return (int(number) * (_GIB if unit in (b"G", b"g") else _MIB)) & _U64


def _pinned_text(limit: int) -> str:
    """How NVIDIA's daemon shows a limit: whole ``G`` from 1 GiB on (truncated), else ``M``."""
    return f"{limit >> 30}G" if limit >= _GIB else f"{limit >> 20}M"


def _uid_text(uid: int) -> str:
    """A uid as the daemon prints it (``%d`` of an unsigned value)."""
    return str(_int32(uid))


# --- talking to the daemon ---------------------------------------------------------------


def _connect(pipe_dir: str, timeout: float | None = _REQUEST_TIMEOUT_S) -> socket.socket:
    """Connect to the daemon's ``control`` socket; OSError when no daemon listens."""
    path = socket_path(pipe_dir)
    if len(path.encode()) > _SUN_PATH_MAX:
        raise OSError(f"socket path {path} is longer than {_SUN_PATH_MAX} bytes")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _reply(sock: socket.socket) -> dict[str, Any]:
    data = sock.recv(_PACKET_MAX)
    if not data:
        raise ConnectionResetError("the daemon closed the connection")
    try:
        reply = json.loads(data.decode())
    except ValueError as err:
        raise OSError("the daemon sent an unreadable reply") from err
    if not isinstance(reply, dict):
        raise OSError("the daemon sent an unreadable reply")
    return reply


def _client_request(pipe_dir: str, line: str) -> tuple[bool, str] | None:
    """One private client message: (accepted, text), or None when no daemon listens.

    Once connected the client waits for its answer (the daemon may be starting its server,
    on a loaded machine for seconds); a daemon that then fails to answer is an error, never
    "no daemon", which would let the client run without limits.

    Raises:
        MpsError: the daemon accepted the connection but gave no answer.
    """
    try:
        sock = _connect(pipe_dir, timeout=_CLIENT_TIMEOUT_S)
    except OSError:
        return None
    with sock:
        try:
            sock.sendall(_CLIENT_HELLO)
            sock.sendall(line.encode())
            reply = _reply(sock)
        except OSError as err:
            raise MpsError(
                f"the MPS control daemon of {pipe_dir} took the client's connection but gave no "
                f"answer within {_CLIENT_TIMEOUT_S:g}s ({err}); CUDA context creation fails"
            ) from err
    return bool(reply.get("ok")), str(reply.get("out", ""))


@dataclass(frozen=True)
class ClientGrant:
    """What the daemon gave a client at context creation.

    Attributes:
        server_pid: the MPS server the client is attached to.
        daemon_pid: the control daemon that started that server.
        active_thread_percentage: the client's effective limit: the lower of its own
            ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` and its server's percentage (NVIDIA: a client
            value "cannot be higher" than the server's).
        pinned_mem_limit: the client's effective ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` for its
            devices, ``<ordinal>=<MiB>M`` entries joined by commas (``0=8192M``): per device
            the lower of its own value and its server's limit; None for no cap.
    """

    server_pid: int
    daemon_pid: int
    active_thread_percentage: float
    pinned_mem_limit: str | None

    def __bool__(self) -> bool:  # a grant is a "yes, connected"
        return True


def register_client(
    pipe_dir: str,
    pid: int,
    *,
    active_thread_percentage: int | float | None,
    pinned_mem_limit: str | None,
) -> ClientGrant | None:
    """Connect an emulated CUDA client to the daemon of ``pipe_dir``, as context creation does.

    Args:
        pipe_dir: the client's ``CUDA_MPS_PIPE_DIRECTORY``.
        pid: the client process.
        active_thread_percentage: the client's ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``, if set.
        pinned_mem_limit: the client's ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` value, if set.

    Returns:
        What the daemon granted, or None when no daemon answers: a real CUDA client then runs
        without MPS, silently.

    Raises:
        MpsError: the daemon refused the client (the device already has
            :data:`MAX_CLIENTS_PER_DEVICE` clients, another user's server is busy, or its
            server cannot start), or took the connection and never answered, as CUDA context
            creation would fail.
    """
    percentage = "-" if active_thread_percentage is None else str(active_thread_percentage)
    pinned = "-" if pinned_mem_limit is None else pinned_mem_limit
    if not pinned or any(ch.isspace() for ch in pinned):
        raise MpsError(f"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT {pinned_mem_limit!r} is malformed")
    answer = _client_request(pipe_dir, f"{_REGISTER} {pid} {percentage} {pinned}")
    if answer is None:
        return None
    accepted, out = answer
    if not accepted:
        raise MpsError(f"MPS client {pid} refused by the daemon of {pipe_dir}: {out}")
    fields = dict(item.split("=", 1) for item in out.split())
    return ClientGrant(
        server_pid=int(fields["server"]),
        daemon_pid=int(fields["daemon"]),
        active_thread_percentage=float(fields["atp"]),
        pinned_mem_limit=None if fields["pinned"] == "-" else fields["pinned"],
    )


def unregister_client(pipe_dir: str, pid: int) -> None:
    """Disconnect an emulated client (its process exits); nothing happens if no daemon answers."""
    with contextlib.suppress(MpsError):
        _client_request(pipe_dir, f"{_UNREGISTER} {pid}")


# --- the daemon ---------------------------------------------------------------------------


class _Log:
    """NVIDIA's log line format: ``[2026-11-29 19:25:07.446 Control  9143] message``."""

    def __init__(self, path: str | None, *, to_stdout: bool = False) -> None:
        self.path = path
        self.to_stdout = to_stdout

    def write(self, message: str, role: str = "Control", pid: int | None = None) -> None:
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        line = f"[{stamp} {role} {pid or os.getpid():5d}] {message}\n"
        if self.to_stdout:
            with contextlib.suppress(OSError):
                sys.stdout.write(line)
                sys.stdout.flush()
        elif self.path is not None:
            with contextlib.suppress(OSError), open(self.path, "a", encoding="utf-8") as log:
                log.write(line)


@dataclass(frozen=True)
class _Out:
    """One line of a reply: shown by the front end, written to control.log, or both."""

    text: str
    ui: bool = True
    log: bool = True


@dataclass
class _Client:
    pid: int
    active_thread_percentage: float
    pinned: dict[int, int]


@dataclass
class _Server:
    uid: int
    proc: subprocess.Popen[bytes]
    active_thread_percentage: float
    pinned: dict[int, int]
    clients: dict[int, _Client] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid


def _alive(pid: int) -> bool:
    """True when ``pid`` runs (a zombie counts as gone); as gpuslice.mps.daemon.process_alive,
    which this module does not import so that each front-end run starts fast."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[:1]
    except OSError:
        return True
    return state != ["Z"]


class _Daemon:
    """State and command handling of one emulated control daemon."""

    def __init__(self, pipe_dir: str, log: _Log, environ: dict[str, str]) -> None:
        self.pipe_dir = pipe_dir
        self.log = log
        self.environ = environ
        #: The driver whose daemon this one answers as (from its environment, read once).
        self.driver_major = _driver_major(environ)
        self.running = True
        self.failed = False  # a server exited with an error: quit then exits 1
        self.default_atp = 100.0
        self.default_priority = 0
        self.default_pinned: dict[int, int] = {}
        self.servers: dict[int, _Server] = {}

    def read_environment(self) -> None:
        """Defaults from the daemon's own environment, as NVIDIA's daemon reads them."""
        atp = self.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
        if atp is not None:
            value = _strtod(atp)
            if 0.0 < value <= 100.0:
                self.default_atp = value
            else:
                self.log.write("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE should be between (0.0, 100.0]")
        priority = self.environ.get("CUDA_MPS_CLIENT_PRIORITY")
        if priority is not None:
            scanned = _scan(priority, "%d")
            value_p = scanned[0] if scanned else 0
            if value_p in (0, 1):
                self.default_priority = value_p
            else:
                self.log.write("CUDA_MPS_CLIENT_PRIORITY should be between [0,1]")

    # servers --------------------------------------------------------------------------

    def start_server(self, uid: int) -> _Server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpuslice.emulate.mps_control", "--server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,  # one line, "ready", once it serves
            stderr=subprocess.DEVNULL,
            env=self.environ,
        )
        server = _Server(uid, proc, self.default_atp, dict(self.default_pinned))
        self.servers[proc.pid] = server
        # From 550 on, NVIDIA's forked server process writes this line itself.
        writer = proc.pid if self.driver_major >= 550 else None
        self.log.write(f"Starting new server {proc.pid} for user {_uid_text(uid)}", pid=writer)
        return server

    def server_exited(self, server: _Server, code: int) -> None:
        self.servers.pop(server.pid, None)
        if code != 0:
            self.failed = True
        self.log.write(f"Server {server.pid} exited with status {code}")
        self.log.write("Removed Shm file at ")

    def stop_server(self, server: _Server, *, force: bool, timeout: float = 5.0) -> None:
        if force:
            server.proc.kill()
        elif server.proc.stdin is not None:
            with contextlib.suppress(OSError):
                server.proc.stdin.close()
        try:
            code = server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
            code = 1  # did not exit gracefully
        self.server_exited(server, 0 if force and code < 0 else code)

    def reap(self) -> None:
        """Forget servers that exited and clients whose process is gone."""
        for server in list(self.servers.values()):
            code = server.proc.poll()
            if code is not None:
                self.server_exited(server, code)
                continue
            for pid in [p for p in server.clients if not _alive(p)]:
                del server.clients[pid]

    def find(self, pid: int) -> _Server | None:
        self.reap()
        return self.servers.get(pid)

    # the front end's commands -----------------------------------------------------------

    def handle(self, line: str, peer_uid: int) -> list[_Out]:
        """Carry out one front-end line; what to show and log (``Cmd:`` is logged first)."""
        self.log.write(f"Cmd:{line}")
        words = _scan(line, "%s")
        verb = words[0] if words else ""
        rest = line.lstrip(" \t\n\r\f\v")[len(verb) :]
        handler = _COMMANDS.get(verb)
        if handler is None:
            outs = [_Out(f'Unknown command "{verb}"')]
        else:
            outs = handler(self, rest, peer_uid)
        for out in outs:
            if out.log:
                self.log.write(out.text)
        return outs

    def not_found(self, pid: int) -> list[_Out]:
        return [_Out(f"Server {pid} not found")]

    def cmd_get_server_list(self, _rest: str, _uid: int) -> list[_Out]:
        self.reap()
        return [_Out(str(pid)) for pid in self.servers]

    def cmd_get_client_list(self, rest: str, _uid: int) -> list[_Out]:
        pid = next(iter(_scan(rest, "%d")), 0)
        server = self.find(pid)
        if server is None:
            return self.not_found(pid)
        return [_Out(str(client)) for client in server.clients]

    def cmd_start_server(self, rest: str, peer_uid: int) -> list[_Out]:
        scanned = _scan(rest, "-uid", "%u")
        if len(scanned) < 1:
            return [_Out(_UID_REQUIRED)]
        uid = int(scanned[0])
        if peer_uid not in (0, uid):
            return [_Out(f"Insufficient privileges for UID {uid}")]
        self.reap()
        if not any(s.uid == uid for s in self.servers.values()):
            self.start_server(uid)
        return []

    def cmd_shutdown_server(self, rest: str, _uid: int) -> list[_Out]:
        scanned = _scan(rest, "%d", "%s")
        pid = scanned[0] if scanned else 0
        server = self.find(pid)
        if server is None:
            return self.not_found(pid)
        self.stop_server(server, force=scanned[1:] == ["-f"])
        return []

    def cmd_terminate_client(self, rest: str, _uid: int) -> list[_Out]:
        scanned = _scan(rest, "%d", "%d")
        pid = scanned[0] if scanned else 0
        server = self.find(pid)
        if server is None:
            return [*self.not_found(pid), _Out(f"Server {pid} not found!"), _Out("1")]
        if len(scanned) > 1:
            server.clients.pop(scanned[1], None)
        return []

    def cmd_set_default_atp(self, rest: str, _uid: int) -> list[_Out]:
        outs: list[_Out] = []
        value = _strtod(rest)
        if 0.0 < value <= 100.0:
            self.default_atp = value
        else:
            outs.append(_Out(_INVALID_PERCENTAGE, ui=False))
        return [*outs, _Out(f"{self.default_atp:.1f}")]

    def cmd_get_default_atp(self, _rest: str, _uid: int) -> list[_Out]:
        return [_Out(f"{self.default_atp:.1f}")]

    def cmd_set_atp(self, rest: str, _uid: int) -> list[_Out]:
        scanned = _scan(rest, "%d", "%lf")
        pid = scanned[0] if scanned else 0
        server = self.find(pid)
        if server is None:
            return self.not_found(pid)
        value = scanned[1] if len(scanned) > 1 else 0.0
        if not 0.0 < value <= 100.0:
            return [
                _Out(_INVALID_PERCENTAGE, ui=False),
                _Out(f"{server.active_thread_percentage:.1f}"),
            ]
        server.active_thread_percentage = value
        return [_Out(f"{value:.1f}")]

    def cmd_get_atp(self, rest: str, _uid: int) -> list[_Out]:
        pid = next(iter(_scan(rest, "%d")), 0)
        server = self.find(pid)
        if server is None:
            return self.not_found(pid)
        return [_Out(f"{server.active_thread_percentage:.1f}")]

    def set_pinned(self, limits: dict[int, int], ordinal: int, value: str) -> list[_Out]:
        if not 0 <= ordinal < MAX_DEVICE_ORDINALS:
            return [_Out(_INVALID_ORDINAL, ui=False)]
        limit = _pinned_bytes(value)
        if limit:
            limits[ordinal] = limit
        else:
            limits.pop(ordinal, None)
        return []

    def show_pinned(self, limits: dict[int, int], ordinal: int) -> list[_Out]:
        if not 0 <= ordinal < MAX_DEVICE_ORDINALS:
            return [_Out(_INVALID_ORDINAL, ui=False)]
        if ordinal not in limits:
            return [_Out(_NO_DEFAULT_PINNED, ui=False)]
        return [_Out(_pinned_text(limits[ordinal]))]

    def cmd_set_default_pinned(self, rest: str, _uid: int) -> list[_Out]:
        scanned = _scan(rest, "%d", "%s")
        ordinal = scanned[0] if scanned else 0
        return self.set_pinned(self.default_pinned, ordinal, scanned[1] if len(scanned) > 1 else "")

    def cmd_get_default_pinned(self, rest: str, _uid: int) -> list[_Out]:
        return self.show_pinned(self.default_pinned, next(iter(_scan(rest, "%d")), 0))

    def cmd_set_pinned(self, rest: str, _uid: int) -> list[_Out]:
        scanned = _scan(rest, "%d", "%d", "%s")
        pid = scanned[0] if scanned else 0
        server = self.find(pid)
        if server is None:
            return self.not_found(pid)
        ordinal = scanned[1] if len(scanned) > 1 else 0
        return self.set_pinned(server.pinned, ordinal, scanned[2] if len(scanned) > 2 else "")

    def cmd_get_pinned(self, rest: str, _uid: int) -> list[_Out]:
        scanned = _scan(rest, "%d", "%d")
        pid = scanned[0] if scanned else 0
        server = self.find(pid)
        if server is None:
            return self.not_found(pid)
        return self.show_pinned(server.pinned, scanned[1] if len(scanned) > 1 else 0)

    def cmd_get_device_client_list(self, rest: str, _uid: int) -> list[_Out]:
        scanned = _scan(rest, "%d")
        self.reap()
        if scanned:
            server = self.find(scanned[0])
            if server is None:
                return self.not_found(scanned[0])
            chosen = [server]
        else:
            chosen = list(self.servers.values())
        return [_Out(f"{self.visible_device()} {client}") for s in chosen for client in s.clients]

    def visible_device(self) -> str:
        return (self.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]

    def cmd_ps(self, rest: str, _uid: int) -> list[_Out]:
        scanned = _scan(rest, "-p", "%d")
        self.reap()
        if len(scanned) == 1:
            pid = scanned[0]
            if pid not in self.servers:
                return [
                    _Out(f"Server {pid} not found"),
                    _Out(f"Server {pid} not found"),
                    _Out("", log=False),
                ]
            chosen = [self.servers[pid]]
        else:
            chosen = list(self.servers.values())
        if not chosen:
            return [_Out("Server not found")]
        rows = [_Out(f"{'PID':<10}{'ID':<10}{'SERVER':<15}{'DEVICE':<42}{'NAMESPACE':<15}COMMAND")]
        for server in chosen:
            for index, client in enumerate(server.clients, start=1):
                rows.append(
                    _Out(
                        f"{client:<10d}{index:<10d}{server.pid:<15d}"
                        f"{self.visible_device():<42}{'-':<15}{_command_of(client)}"
                    )
                )
        return rows

    def cmd_set_default_priority(self, rest: str, _uid: int) -> list[_Out]:
        value = next(iter(_scan(rest, "%d")), 0)
        if value not in (0, 1):
            return [_Out(_INVALID_PRIORITY)]
        self.default_priority = value
        return []

    def cmd_get_default_priority(self, _rest: str, _uid: int) -> list[_Out]:
        return [_Out(str(self.default_priority))]

    # quit is handled by the connection loop: it answers with the daemon's exit status.

    def quit(self, rest: str) -> int:
        """Stop every server and say how: 0 when all exited gracefully (NVIDIA's man page)."""
        scanned = _scan(rest, "-t", "%u")
        timeout = 5.0
        if scanned:
            self.log.write(f"quit command issued with timeout of {scanned[0]}")
            timeout = float(scanned[0])
        self.reap()
        for server in list(self.servers.values()):
            self.stop_server(server, force=False, timeout=timeout)
        status = 1 if self.failed else 0
        self.log.write(f"Exit with status {status}")
        self.running = False
        return status

    # emulated CUDA clients --------------------------------------------------------------

    def register(self, args: list[str], uid: int) -> tuple[bool, str]:
        if len(args) != 3:
            return False, "usage: register <pid> <percentage|-> <pinned|->"
        pid = int(args[0])
        client_atp = None if args[1] == "-" else _strtod(args[1])
        if client_atp is not None and not 0.0 < client_atp <= 100.0:
            return False, f"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={args[1]} is not in (0, 100]"
        client_pinned = {} if args[2] == "-" else self.client_limits(args[2])
        self.reap()
        total = sum(len(s.clients) for s in self.servers.values())
        if total >= MAX_CLIENTS_PER_DEVICE:
            return False, (
                f"the device already has {MAX_CLIENTS_PER_DEVICE} MPS clients, the most "
                "Volta-and-later MPS supports; CUDA context creation fails"
            )
        server = next((s for s in self.servers.values() if s.uid == uid), None)
        if server is None:
            for other in list(self.servers.values()):
                if other.clients:
                    return False, (
                        f"user {other.uid}'s MPS server {other.pid} still has clients; "
                        f"a client of user {uid} must wait until they exit"
                    )
                self.stop_server(other, force=False)
            server = self.start_server(uid)
            if not self.wait_ready(server):
                return False, (
                    f"MPS server {server.pid} exited with status {server.proc.returncode} "
                    "at start (no device visible to it); CUDA context creation fails"
                )
            self.log.write(f"NEW SERVER {server.pid}: Ready")
        else:
            self.log.write(f"NEW CLIENT {pid} from user {uid}: Server already exists")
        # A client's percentage only narrows its server's (NVIDIA, environment variables).
        atp = server.active_thread_percentage
        if client_atp is not None:
            atp = min(atp, client_atp)
        pinned = dict(server.pinned)
        for ordinal, limit in client_pinned.items():
            pinned[ordinal] = min(limit, pinned.get(ordinal, limit))
        server.clients[pid] = _Client(pid, atp, pinned)
        shown = ",".join(f"{o}={limit >> 20}M" for o, limit in sorted(pinned.items())) or "-"
        return True, f"server={server.pid} daemon={os.getpid()} atp={atp:g} pinned={shown}"

    def client_limits(self, text: str) -> dict[int, int]:
        """A client's ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` per visible device ordinal, in bytes.

        Entries are ``<device>=<value>``, the device an ordinal or a UUID with the semantics
        of ``CUDA_VISIBLE_DEVICES`` (NVIDIA, appendix "Environment Variables").
        """
        visible = [d.strip() for d in (self.environ.get("CUDA_VISIBLE_DEVICES") or "").split(",")]
        limits: dict[int, int] = {}
        for entry in text.split(","):
            device, _, value = entry.partition("=")
            device = device.strip()
            if device.isdigit():
                ordinal = int(device)
            elif device in visible:
                ordinal = visible.index(device)
            else:
                continue
            limit = _pinned_bytes(value.strip())
            if limit:
                limits[ordinal] = limit
        return limits

    def wait_ready(self, server: _Server, timeout: float = 30.0) -> bool:
        """Wait until a new server says it is ready, or exits (no device), as a real one may."""
        out = server.proc.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], timeout)
        if ready and out.readline():
            return True
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(timeout)
        code = server.proc.poll()
        if code is None:
            server.proc.kill()
            code = server.proc.wait()
        self.server_exited(server, code)
        return False

    def unregister(self, args: list[str]) -> tuple[bool, str]:
        if len(args) != 1:
            return False, "usage: unregister <pid>"
        pid = int(args[0])
        for server in self.servers.values():
            server.clients.pop(pid, None)
        return True, ""


def _command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return "-"


_COMMANDS: dict[str, Callable[[_Daemon, str, int], list[_Out]]] = {
    "get_server_list": _Daemon.cmd_get_server_list,
    "get_client_list": _Daemon.cmd_get_client_list,
    "start_server": _Daemon.cmd_start_server,
    "shutdown_server": _Daemon.cmd_shutdown_server,
    "terminate_client": _Daemon.cmd_terminate_client,
    "set_default_active_thread_percentage": _Daemon.cmd_set_default_atp,
    "get_default_active_thread_percentage": _Daemon.cmd_get_default_atp,
    "set_active_thread_percentage": _Daemon.cmd_set_atp,
    "get_active_thread_percentage": _Daemon.cmd_get_atp,
    "set_default_device_pinned_mem_limit": _Daemon.cmd_set_default_pinned,
    "get_default_device_pinned_mem_limit": _Daemon.cmd_get_default_pinned,
    "set_device_pinned_mem_limit": _Daemon.cmd_set_pinned,
    "get_device_pinned_mem_limit": _Daemon.cmd_get_pinned,
    "get_device_client_list": _Daemon.cmd_get_device_client_list,
    "ps": _Daemon.cmd_ps,
    "set_default_client_priority": _Daemon.cmd_set_default_priority,
    "get_default_client_priority": _Daemon.cmd_get_default_priority,
}


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _send(conn: socket.socket, reply: dict[str, Any]) -> None:
    conn.sendall(json.dumps(reply).encode())


@dataclass
class _Peer:
    """One connection: its kind once it said hello, and who is on the other end."""

    uid: int
    kind: bytes | None = None


def _ui_line(daemon: _Daemon, conn: socket.socket, peer: _Peer, data: bytes) -> bool:
    """Answer one front-end line; False when the connection is done."""
    if not data.startswith(_LINE):
        daemon.log.write("UI closed")
        return False
    line = data[len(_LINE) :].decode(errors="replace")
    verb = next(iter(_scan(line, "%s")), "")
    if verb == "quit":
        daemon.log.write(f"Cmd:{line}")
        status = daemon.quit(line.lstrip(" \t\n\r\f\v")[len(verb) :])
        _send(conn, {"exit": status})
        return False
    outs = daemon.handle(line, peer.uid)
    _send(conn, {"out": [o.text for o in outs if o.ui]})
    return True


def _client_request_served(daemon: _Daemon, conn: socket.socket, peer: _Peer, data: bytes) -> None:
    words = data.decode(errors="replace").split()
    if not words or words[0] not in (_REGISTER, _UNREGISTER):
        _send(conn, {"ok": False, "out": "unknown client request"})
        return
    try:
        if words[0] == _REGISTER:
            ok, out = daemon.register(words[1:], peer.uid)
        else:
            ok, out = daemon.unregister(words[1:])
    except ValueError as err:
        ok, out = False, f"malformed client request: {err}"
    _send(conn, {"ok": ok, "out": out})


def _on_packet(daemon: _Daemon, conn: socket.socket, peer: _Peer) -> bool:
    """Handle what one connection sent; False when it is to be closed."""
    data = conn.recv(_PACKET_MAX)
    if peer.kind is None:
        if data in (_UI_HELLO, _CLIENT_HELLO):
            peer.kind = data
            if data == _UI_HELLO:
                daemon.log.write("NEW UI")
            return True
        daemon.log.write("Unknown type of connection" if data else "Unable to accept connection")
        return False
    if peer.kind == _UI_HELLO:
        return _ui_line(daemon, conn, peer, data)
    if data:
        _client_request_served(daemon, conn, peer, data)
    return False


def _listen(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener.bind(path)
    listener.listen(128)
    return listener


@dataclass
class _Started:
    """What a starting daemon holds: its lock, listeners and log."""

    lock_fd: int
    listeners: list[socket.socket]
    log: _Log
    fifo: str | None


def _open_logs(log_dir: str) -> str | None:
    """Create control.log and server.log; the control log's path, or None when impossible."""
    with contextlib.suppress(OSError):
        os.mkdir(log_dir, 0o700)
    try:
        for name in ("control.log", "server.log"):
            os.close(
                os.open(os.path.join(log_dir, name), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)
            )
    except OSError:
        return None
    return os.path.join(log_dir, "control.log")


def _start(pipe_dir: str, log_dir: str, *, foreground: bool) -> _Started | str:
    """Take the lock, open the log, listen; the started daemon, or the message to print."""
    old = os.umask(0)
    try:
        # NVIDIA's daemon makes a missing pipe directory world-writable (0777), and a missing
        # log directory 0700; gpuslice makes both 0700 itself before starting a daemon.
        with contextlib.suppress(FileExistsError, OSError):
            os.mkdir(pipe_dir, 0o777)
        lock_fd = os.open(os.path.join(pipe_dir, LOCK_NAME), os.O_WRONLY | os.O_CREAT, 0o666)
    except OSError:
        return f"Cannot access CUDA_MPS_PIPE_DIRECTORY={pipe_dir}"
    finally:
        os.umask(old)
    try:
        fcntl.lockf(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(lock_fd)
        return ALREADY_RUNNING_MESSAGE
    control_log = None if foreground else _open_logs(log_dir)
    fifo = None
    if control_log is not None:
        fifo = os.path.join(pipe_dir, LOG_FIFO_NAME)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fifo)
        os.mkfifo(fifo, 0o777)
        os.chmod(fifo, 0o777)
    listeners = [_listen(os.path.join(pipe_dir, PRIVILEGED_SOCKET_NAME))]
    listeners.append(_listen(socket_path(pipe_dir)))
    os.chmod(socket_path(pipe_dir), 0o666)
    return _Started(lock_fd, listeners, _Log(control_log, to_stdout=foreground), fifo)


def _serve(started: _Started, pipe_dir: str) -> int:
    """Answer connections until ``quit``; the daemon's exit status.

    SIGTERM is left at its default action, as NVIDIA's daemon leaves it (535 and 550 catch only
    SIGCHLD and ignore SIGPIPE; /proc/PID/status): it dies at once, and its ``log`` FIFO, and
    from 550 its PID file, stay in the pipe directory. Its servers see their stdin close.
    """
    daemon = _Daemon(pipe_dir, started.log, dict(os.environ))
    pid_file = None
    if daemon.driver_major >= 550:
        pid_file = os.path.join(pipe_dir, PID_FILE_NAME)
        _write_pid_file(pid_file)
    started.log.write(f"Starting control daemon using socket {socket_path(pipe_dir)}")
    started.log.write(
        f"To connect CUDA applications to this daemon, set env CUDA_MPS_PIPE_DIRECTORY={pipe_dir}"
    )
    daemon.read_environment()
    selector = selectors.DefaultSelector()
    for listener in started.listeners:
        selector.register(listener, selectors.EVENT_READ, None)
    status = 0
    try:
        # One connection at a time is served a packet at a time, so a slow front end (a user
        # typing) never holds up the others.
        while daemon.running:
            events = selector.select(timeout=0.2)
            if not events:
                daemon.reap()
                continue
            for key, _ in events:
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                if key.data is None:
                    with contextlib.suppress(OSError):
                        conn, _addr = ready.accept()
                        daemon.log.write("Accepting connection...")
                        conn.settimeout(_REQUEST_TIMEOUT_S)
                        selector.register(conn, selectors.EVENT_READ, _Peer(_peer_uid(conn)))
                    continue
                keep = False
                with contextlib.suppress(OSError):
                    keep = _on_packet(daemon, ready, key.data)
                if not keep:
                    selector.unregister(ready)
                    ready.close()
                if not daemon.running:
                    break
        status = int(daemon.failed)
    finally:
        selector.close()
        for listener in started.listeners:
            listener.close()
        if started.fifo is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(started.fifo)
        if pid_file is not None:  # removed on quit; a killed daemon leaves it behind
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pid_file)
        os.close(started.lock_fd)
    return status


def _write_pid_file(path: str) -> None:
    """NVIDIA 550's PID file: the PID in decimal, no newline, mode 0666 whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        os.write(fd, str(os.getpid()).encode())
        os.fchmod(fd, 0o666)
    finally:
        os.close(fd)


_READY = b"\0ready"


def _daemonize(pipe_dir: str, log_dir: str) -> int:
    """Fork the daemon; return once it listens (0) or cannot (1, and why if it says), as ``-d``."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child > 0:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as report:
            said = report.read()
        os.waitpid(child, 0)
        if said == _READY:
            return 0
        if said:
            print(said.decode(errors="replace"), flush=True)
        return 1
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    code = 1
    try:
        started = _start(pipe_dir, log_dir, foreground=False)
        if isinstance(started, str):
            os.write(write_end, started.encode())
            os._exit(1)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.write(write_end, _READY)
        os.close(write_end)  # the caller returns now: the daemon listens
        code = _serve(started, pipe_dir)
    finally:
        os._exit(code)  # also when _start failed without a word (NVIDIA's -d: exit 1, silent)


def _foreground(pipe_dir: str, log_dir: str) -> int:
    started = _start(pipe_dir, log_dir, foreground=True)
    if isinstance(started, str):
        print(started, flush=True)
        return 1
    return _serve(started, pipe_dir)


def _interactive(pipe_dir: str) -> int:
    """The front end: send every stdin line, print what the daemon shows."""
    try:
        sock = _connect(pipe_dir, timeout=None)
    except OSError:
        print(NO_DAEMON_MESSAGE, file=sys.stderr)
        return 1
    with sock:
        try:
            sock.sendall(_UI_HELLO)
        except OSError:
            print(NO_DAEMON_MESSAGE, file=sys.stderr)
            return 1
        for raw in sys.stdin:
            line = raw[:-1] if raw.endswith("\n") else raw
            try:
                sock.sendall(_LINE + line.encode())
                reply = _reply(sock)
            except OSError:
                print(SEND_FAILED_MESSAGE, file=sys.stderr)
                return 1
            for out in reply.get("out", []):
                print(out, flush=True)
            if "exit" in reply:
                # Lines after quit go nowhere; NVIDIA's front end mostly exits 0 then, and
                # now and then says it cannot send them (a race in it).
                _wait_closed(sock)
                return int(reply["exit"])
    return 0


def _wait_closed(sock: socket.socket) -> None:
    """After ``quit`` the daemon closes the connection as it exits; wait for that."""
    with contextlib.suppress(OSError):
        select.select([sock], [], [], 10.0)


def _run_server() -> int:
    """An emulated ``nvidia-cuda-mps-server``: lives until the daemon closes its stdin.

    With ``CUDA_VISIBLE_DEVICES`` set and empty it sees no device and exits with status 1,
    as NVIDIA's server does where no GPU is usable.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 1
    with contextlib.suppress(OSError):
        sys.stdout.write("ready\n")
        sys.stdout.flush()
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(4096):
            pass
    return 0


_USAGE = """usage: gpuslice-emulated-mps-control [-d | -f]
  -d   start the emulated MPS control daemon in the background
  -f   start it in the foreground (its log goes to stdout)
  (anything else) read control commands from stdin and send them to the daemon
The daemon is found through CUDA_MPS_PIPE_DIRECTORY (default /tmp/nvidia-mps) and logs to
CUDA_MPS_LOG_DIRECTORY (default /var/log/nvidia-mps); the pipe directory must exist."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gpuslice-emulated-mps-control`` (same options as the real program)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--server"]:
        return _run_server()
    pipe_dir, log_dir = pipe_directory(), log_directory()
    if args == ["-d"]:
        return _daemonize(pipe_dir, log_dir)
    if args == ["-f"]:
        return _foreground(pipe_dir, log_dir)
    if args in (["-h"], ["--help"]):
        print(_USAGE)
        return 0
    return _interactive(pipe_dir)


if __name__ == "__main__":
    sys.exit(main())
