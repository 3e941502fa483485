"""An emulated ``nvidia-cuda-mps-control`` for machines without an NVIDIA GPU.

gpuslice drives MPS only through the control program's command line, so pointing
``GPUSLICE_MPS_CONTROL`` at this program (console script ``gpuslice-emulated-mps-control``)
runs the very same code path as on a GPU node. It follows NVIDIA's documented behaviour:

- ``-d`` starts the control daemon in the background, ``-f`` in the foreground; without
  either, the program reads commands from stdin, one per line, sends them to the daemon
  and prints the replies (``echo quit | nvidia-cuda-mps-control`` stops the daemon).
  https://docs.nvidia.com/deploy/mps/latest/mpsv2-interface.html
- The daemon writes ``nvidia-cuda-mps-control.pid`` (its PID) into
  ``CUDA_MPS_PIPE_DIRECTORY`` (default ``/tmp/nvidia-mps``).
  https://docs.nvidia.com/deploy/mps/appendix-tools-and-interface-reference.html
- It logs to ``control.log`` and each server to ``server.log`` in ``CUDA_MPS_LOG_DIRECTORY``
  (default ``/var/log/nvidia-mps``), in the documented line format
  ``[2013-08-05 12:50:23.347 Control 13894] Starting new server 13929 for user 500``.
  https://docs.nvidia.com/deploy/mps/latest/appendix-logging.html
- The daemon starts an MPS server for a user when that user's first client connects;
  a client of another user waits until the existing server has no clients left.
  https://manpages.ubuntu.com/manpages/noble/man1/nvidia-cuda-mps-control.1.html
- Volta and later MPS supports up to 48 client CUDA contexts per device; beyond that,
  context creation fails. https://docs.nvidia.com/deploy/mps/index.html
- ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` in the daemon's environment sets the default
  active thread percentage (100 otherwise).
  https://docs.nvidia.com/deploy/mps/latest/appendix-environment-variables.html

What is emulated rather than documented (say so when it matters):

- The daemon listens on a unix socket ``control`` in the pipe directory and answers one
  command per connection with a JSON line; NVIDIA does not document its pipe layout.
- With no daemon, the real program is reported (by users, not NVIDIA's pages) to print
  ``Cannot find MPS control daemon process`` and exit non-zero; this one prints that
  line to stderr and exits 1. A command the daemon refuses makes the program exit 1 too.
- Servers are real child processes (``python -m gpuslice.emulate.mps_control --server``)
  that do nothing but wait for the daemon to close their stdin, so PIDs are real and a
  test can check that nothing is left behind. With no GPU work to drain, ``quit`` ends
  them at once; ``quit -t <seconds>`` bounds how long it waits before killing them.
- CUDA clients are emulated by :func:`register_client` / :func:`unregister_client`
  (private commands that never clash with NVIDIA's).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

from gpuslice.errors import MpsError
from gpuslice.mps.daemon import process_alive

#: File holding the daemon's PID inside the pipe directory (NVIDIA's name).
PID_FILE = "nvidia-cuda-mps-control.pid"
#: The emulated daemon's socket inside the pipe directory.
SOCKET_NAME = "control"
#: Held (fcntl) by the running emulated daemon: at most one daemon per pipe directory.
LOCK_NAME = "control.lock"
#: Client CUDA contexts per device under Volta-and-later MPS (NVIDIA MPS docs).
MAX_CLIENTS_PER_DEVICE = 48
#: What the control program says when no daemon answers.
NO_DAEMON_MESSAGE = "Cannot find MPS control daemon process"
#: Documented defaults when the environment variables are unset.
DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"
DEFAULT_LOG_DIR = "/var/log/nvidia-mps"

# Private commands start with this prefix so they can never clash with NVIDIA's.
_PRIVATE = "__gpuslice_"
_REGISTER = _PRIVATE + "register_client"
_UNREGISTER = _PRIVATE + "unregister_client"
_PING = _PRIVATE + "ping"
# sun_path is 108 bytes on Linux, including the terminating NUL.
_SUN_PATH_MAX = 107
# A documented pinned-memory value: an integer and G or M (set_default_device_pinned_mem_limit).
_PINNED_VALUE = re.compile(r"^\d+[GM]$")
_REQUEST_TIMEOUT_S = 5.0


def pipe_directory(environ: dict[str, str] | None = None) -> str:
    """``CUDA_MPS_PIPE_DIRECTORY``, else NVIDIA's default ``/tmp/nvidia-mps``."""
    env = os.environ if environ is None else environ
    return env.get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIR


def log_directory(environ: dict[str, str] | None = None) -> str:
    """``CUDA_MPS_LOG_DIRECTORY``, else NVIDIA's default ``/var/log/nvidia-mps``."""
    env = os.environ if environ is None else environ
    return env.get("CUDA_MPS_LOG_DIRECTORY") or DEFAULT_LOG_DIR


def socket_path(pipe_dir: str) -> str:
    """Path of the emulated daemon's socket for ``pipe_dir``."""
    return os.path.join(pipe_dir, SOCKET_NAME)


# --- talking to the daemon ---------------------------------------------------------------


def _request(pipe_dir: str, line: str, timeout: float = _REQUEST_TIMEOUT_S) -> tuple[bool, str]:
    """Send one command; return (accepted, text to print). OSError when no daemon answers."""
    path = socket_path(pipe_dir)
    if len(path.encode()) > _SUN_PATH_MAX:
        raise OSError(f"socket path {path} is longer than {_SUN_PATH_MAX} bytes")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(line.encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    try:
        reply = json.loads(b"".join(chunks).decode())
        return bool(reply["ok"]), str(reply["out"])
    except (ValueError, KeyError, TypeError) as err:
        raise OSError(f"the daemon at {path} sent an unreadable reply") from err


@dataclass(frozen=True)
class ClientGrant:
    """What the daemon gave a client at context creation.

    Attributes:
        server_pid: the MPS server the client is attached to.
        daemon_pid: the control daemon that started that server.
        active_thread_percentage: the client's effective limit: the lower of its own
            ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` and its server's percentage (NVIDIA: a client
            value "cannot be higher" than the server's).
        pinned_mem_limit: the client's effective ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` value for
            its devices (``0=8192M``), or None for no cap.
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
            :data:`MAX_CLIENTS_PER_DEVICE` clients, or another user's server is busy), as
            CUDA context creation would fail.
    """
    percentage = "-" if active_thread_percentage is None else str(active_thread_percentage)
    pinned = "-" if pinned_mem_limit is None else pinned_mem_limit
    if not pinned or any(ch.isspace() for ch in pinned):
        raise MpsError(f"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT {pinned_mem_limit!r} is malformed")
    try:
        accepted, out = _request(pipe_dir, f"{_REGISTER} {pid} {percentage} {pinned}")
    except OSError:
        return None
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
    with contextlib.suppress(OSError):
        _request(pipe_dir, f"{_UNREGISTER} {pid}")


# --- the daemon ---------------------------------------------------------------------------


def _log_line(path: str, role: str, message: str) -> None:
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as log:
        log.write(f"[{stamp} {role} {os.getpid()}] {message}\n")


@dataclass
class _Client:
    pid: int
    active_thread_percentage: float
    pinned_mem_limit: str | None


@dataclass
class _Server:
    uid: int
    proc: subprocess.Popen[bytes]
    active_thread_percentage: float
    pinned_limits: dict[str, str]
    clients: dict[int, _Client] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid


class _Daemon:
    """State and command handling of one emulated control daemon."""

    def __init__(self, pipe_dir: str, log_dir: str) -> None:
        self.pipe_dir = pipe_dir
        self.log_dir = log_dir
        self.control_log = os.path.join(log_dir, "control.log")
        self.running = True
        self.default_atp = 100.0
        env_atp = os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
        if env_atp:
            with contextlib.suppress(ValueError):
                self.default_atp = _percentage(env_atp)
        self.default_pinned: dict[str, str] = {}
        self.servers: dict[int, _Server] = {}
        self.quit_timeout: float | None = None

    def log(self, message: str) -> None:
        _log_line(self.control_log, "Control", message)

    # servers --------------------------------------------------------------------------

    def start_server(self, uid: int) -> _Server:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gpuslice.emulate.mps_control", "--server"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "CUDA_MPS_LOG_DIRECTORY": self.log_dir},
        )
        server = _Server(uid, proc, self.default_atp, dict(self.default_pinned))
        self.servers[proc.pid] = server
        self.log(f"Starting new server {proc.pid} for user {uid}")
        self.log(f"NEW SERVER {proc.pid}: Ready")
        return server

    def stop_server(self, server: _Server, *, force: bool, timeout: float = 5.0) -> None:
        if force:
            server.proc.kill()
        elif server.proc.stdin is not None:
            with contextlib.suppress(OSError):
                server.proc.stdin.close()
        try:
            server.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
        self.servers.pop(server.pid, None)
        self.log(f"Server {server.pid} exited with status {server.proc.returncode}")

    def reap(self) -> None:
        """Forget servers that exited and clients whose process is gone."""
        for server in list(self.servers.values()):
            code = server.proc.poll()
            if code is not None:
                self.servers.pop(server.pid, None)
                self.log(f"Server {server.pid} exited with status {code}")
                continue
            for pid in [p for p in server.clients if not process_alive(p)]:
                del server.clients[pid]
                self.log(f"Client {pid} disconnected from server {server.pid}")

    def server(self, text: str) -> _Server:
        pid = _int(text, "server PID")
        if pid not in self.servers:
            raise _Refused(f"no MPS server with PID {pid}")
        return self.servers[pid]

    # commands ---------------------------------------------------------------------------

    def handle(self, line: str, peer_uid: int) -> tuple[bool, str]:
        words = line.split()
        if not words or words == [_PING]:
            return True, ""  # a connectivity probe, not a command worth logging
        self.reap()
        try:
            out = self.dispatch(words[0], words[1:], peer_uid)
        except _Refused as err:
            self.log(f"{line}: {err}")
            return False, str(err)
        self.log(f"{line}")
        return True, out

    def dispatch(self, verb: str, args: list[str], peer_uid: int) -> str:
        handler = _COMMANDS.get(verb)
        if handler is None:
            raise _Refused(f"unknown command {verb!r}")
        return handler(self, args, peer_uid)

    def cmd_get_server_list(self, args: list[str], _uid: int) -> str:
        _arity(args, 0, "get_server_list")
        return "\n".join(str(pid) for pid in self.servers)

    def cmd_get_client_list(self, args: list[str], _uid: int) -> str:
        _arity(args, 1, "get_client_list <PID>")
        return "\n".join(str(pid) for pid in self.server(args[0]).clients)

    def cmd_start_server(self, args: list[str], _uid: int) -> str:
        if len(args) != 2 or args[0] != "-uid":
            raise _Refused("usage: start_server -uid <user id>")
        uid = _int(args[1], "user id")
        if any(s.uid == uid for s in self.servers.values()):
            raise _Refused(f"a server for user {uid} is already running")
        if self.servers:
            raise _Refused("another user's MPS server is running; only one may be active")
        self.start_server(uid)
        return ""

    def cmd_shutdown_server(self, args: list[str], _uid: int) -> str:
        if len(args) not in (1, 2) or (len(args) == 2 and args[1] != "-f"):
            raise _Refused("usage: shutdown_server <PID> [-f]")
        self.stop_server(self.server(args[0]), force=len(args) == 2)
        return ""

    def cmd_terminate_client(self, args: list[str], _uid: int) -> str:
        _arity(args, 2, "terminate_client <server PID> <client PID>")
        server = self.server(args[0])
        client = _int(args[1], "client PID")
        if server.clients.pop(client, None) is None:
            raise _Refused(f"client {client} is not connected to server {server.pid}")
        return ""

    def cmd_set_default_atp(self, args: list[str], _uid: int) -> str:
        _arity(args, 1, "set_default_active_thread_percentage <percentage>")
        self.default_atp = _percentage(args[0])
        return ""

    def cmd_get_default_atp(self, args: list[str], _uid: int) -> str:
        _arity(args, 0, "get_default_active_thread_percentage")
        return f"{self.default_atp:.1f}"

    def cmd_set_atp(self, args: list[str], _uid: int) -> str:
        _arity(args, 2, "set_active_thread_percentage <PID> <percentage>")
        self.server(args[0]).active_thread_percentage = _percentage(args[1])
        return ""

    def cmd_get_atp(self, args: list[str], _uid: int) -> str:
        _arity(args, 1, "get_active_thread_percentage <PID>")
        return f"{self.server(args[0]).active_thread_percentage:.1f}"

    def cmd_set_default_pinned(self, args: list[str], _uid: int) -> str:
        _arity(args, 2, "set_default_device_pinned_mem_limit <dev> <value>")
        self.default_pinned[args[0]] = _pinned_value(args[1])
        return ""

    def cmd_get_default_pinned(self, args: list[str], _uid: int) -> str:
        _arity(args, 1, "get_default_device_pinned_mem_limit <dev>")
        return self.default_pinned.get(args[0], "")

    def cmd_set_pinned(self, args: list[str], _uid: int) -> str:
        _arity(args, 3, "set_device_pinned_mem_limit <PID> <dev> <value>")
        self.server(args[0]).pinned_limits[args[1]] = _pinned_value(args[2])
        return ""

    def cmd_get_pinned(self, args: list[str], _uid: int) -> str:
        _arity(args, 2, "get_device_pinned_mem_limit <PID> <dev>")
        return self.server(args[0]).pinned_limits.get(args[1], "")

    def cmd_quit(self, args: list[str], _uid: int) -> str:
        if args and (len(args) != 2 or args[0] != "-t"):
            raise _Refused("usage: quit [-t <seconds>]")
        self.quit_timeout = float(_int(args[1], "timeout")) if args else None
        self.running = False
        return ""

    def cmd_register(self, args: list[str], uid: int) -> str:
        _arity(args, 3, "register <pid> <percentage|-> <pinned|->")
        pid = _int(args[0], "client PID")
        client_atp = None if args[1] == "-" else _percentage(args[1])
        pinned = None if args[2] == "-" else args[2]
        total = sum(len(s.clients) for s in self.servers.values())
        if total >= MAX_CLIENTS_PER_DEVICE:
            raise _Refused(
                f"the device already has {MAX_CLIENTS_PER_DEVICE} MPS clients, the most "
                "Volta-and-later MPS supports; CUDA context creation fails"
            )
        server = next((s for s in self.servers.values() if s.uid == uid), None)
        if server is None:
            for other in list(self.servers.values()):
                if other.clients:
                    raise _Refused(
                        f"user {other.uid}'s MPS server {other.pid} still has clients; "
                        f"a client of user {uid} must wait until they exit"
                    )
                self.stop_server(other, force=False)
            server = self.start_server(uid)
        else:
            self.log(f"NEW CLIENT {pid} from user {uid}: Server already exists")
        # A client's percentage only narrows the server's (MPS docs, environment variables).
        atp = server.active_thread_percentage
        if client_atp is not None:
            atp = min(atp, client_atp)
        if pinned is None and "0" in server.pinned_limits:
            pinned = f"0={server.pinned_limits['0']}"
        server.clients[pid] = _Client(pid, atp, pinned)
        return f"server={server.pid} daemon={os.getpid()} atp={atp:g} pinned={pinned or '-'}"

    def cmd_unregister(self, args: list[str], _uid: int) -> str:
        _arity(args, 1, "unregister <pid>")
        pid = _int(args[0], "client PID")
        for server in self.servers.values():
            server.clients.pop(pid, None)
        return ""

    def shutdown(self) -> None:
        timeout = 5.0 if self.quit_timeout is None else self.quit_timeout
        for server in list(self.servers.values()):
            self.stop_server(server, force=False, timeout=timeout)
        self.log("Control daemon exiting")


class _Refused(Exception):
    """A command the daemon does not carry out; the message goes back to the user."""


_COMMANDS: dict[str, Callable[[_Daemon, list[str], int], str]] = {
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
    "quit": _Daemon.cmd_quit,
    _REGISTER: _Daemon.cmd_register,
    _UNREGISTER: _Daemon.cmd_unregister,
}


def _arity(args: Sequence[str], count: int, usage: str) -> None:
    if len(args) != count:
        raise _Refused(f"usage: {usage}")


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise _Refused(f"{what} must be an integer, not {text!r}") from None


def _percentage(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _Refused(f"percentage must be a number, not {text!r}") from None
    if not 0 < value <= 100:
        raise _Refused(f"percentage must be in (0, 100], not {text}")
    return value


def _pinned_value(text: str) -> str:
    if not _PINNED_VALUE.match(text):
        raise _Refused(f"memory limit must be an integer followed by G or M, not {text!r}")
    return text


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _serve_connection(daemon: _Daemon, conn: socket.socket) -> None:
    conn.settimeout(_REQUEST_TIMEOUT_S)
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    line = data.decode(errors="replace").strip()
    try:
        ok, out = daemon.handle(line, _peer_uid(conn))
    except Exception as err:  # a bug here must not take the daemon (and its servers) down
        daemon.log(f"{line}: internal error {err!r}")
        ok, out = False, f"internal error: {err!r}"
    conn.sendall(json.dumps({"ok": ok, "out": out}).encode() + b"\n")


def _run_daemon(pipe_dir: str, log_dir: str) -> int:
    """Serve until ``quit`` or SIGTERM; return the exit status."""
    daemon = _Daemon(pipe_dir, log_dir)
    lock = open(os.path.join(pipe_dir, LOCK_NAME), "a")  # noqa: SIM115 - held for life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        daemon.log(f"another control daemon already serves {pipe_dir}; exiting")
        return 1
    path = socket_path(pipe_dir)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(64)
    except OSError as err:
        daemon.log(f"cannot listen on {path}: {err}")
        return 1
    pid_path = os.path.join(pipe_dir, PID_FILE)
    tmp = f"{pid_path}.{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as handle:
        handle.write(f"{os.getpid()}\n")
    os.replace(tmp, pid_path)

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        daemon.running = False

    signal.signal(signal.SIGTERM, on_term)
    daemon.log(f"Control daemon started, pipe directory {pipe_dir}")
    listener.settimeout(0.2)
    try:
        while daemon.running:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                daemon.reap()
                continue
            with conn, contextlib.suppress(OSError):
                _serve_connection(daemon, conn)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        daemon.shutdown()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pid_path)
        lock.close()
    return 0


def _daemonize(pipe_dir: str, log_dir: str) -> int:
    """Double fork so the daemon is no child of the caller; the caller returns at once."""
    child = os.fork()
    if child > 0:
        _, status = os.waitpid(child, 0)
        return os.waitstatus_to_exitcode(status)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    code = 1
    try:
        code = _run_daemon(pipe_dir, log_dir)
    finally:
        os._exit(code)


def _prepare(pipe_dir: str, log_dir: str) -> str | None:
    """Create the directories; return why the daemon cannot start, or None."""
    for directory in (pipe_dir, log_dir):
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as err:
            return f"cannot create {directory}: {err}"
    path = socket_path(pipe_dir)
    if len(path.encode()) > _SUN_PATH_MAX:
        return f"pipe directory too long: {path} exceeds the {_SUN_PATH_MAX}-byte socket path limit"
    return None


def _answers(pipe_dir: str) -> bool:
    try:
        _request(pipe_dir, _PING, timeout=1.0)
    except OSError:
        return False
    return True


def _interactive(pipe_dir: str) -> int:
    if not _answers(pipe_dir):
        print(NO_DAEMON_MESSAGE, file=sys.stderr)
        return 1
    status = 0
    for raw in sys.stdin:
        line = raw.strip()
        if not line:
            continue
        try:
            accepted, out = _request(pipe_dir, line)
        except OSError:
            print(NO_DAEMON_MESSAGE, file=sys.stderr)
            return 1
        if out:
            print(out, flush=True)
        if not accepted:
            status = 1
        if line.split()[0] == "quit":
            break
    return status


def _run_server() -> int:
    """An emulated ``nvidia-cuda-mps-server``: lives until the daemon closes its stdin."""
    server_log = os.path.join(log_directory(), "server.log")
    _log_line(server_log, "Server", "Server started")
    with contextlib.suppress(OSError):
        while sys.stdin.buffer.read(4096):
            pass
    _log_line(server_log, "Server", "Server exiting")
    return 0


_USAGE = """usage: gpuslice-emulated-mps-control [-d | -f]
  -d   start the emulated MPS control daemon in the background
  -f   start it in the foreground
  (no option) read control commands from stdin and send them to the daemon
The daemon is found through CUDA_MPS_PIPE_DIRECTORY (default /tmp/nvidia-mps) and logs to
CUDA_MPS_LOG_DIRECTORY (default /var/log/nvidia-mps)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gpuslice-emulated-mps-control`` (same options as the real program)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--server"]:
        return _run_server()
    pipe_dir, log_dir = pipe_directory(), log_directory()
    if args in (["-d"], ["-f"]):
        if _answers(pipe_dir):
            print("An instance of this daemon is already running", file=sys.stderr)
            return 1
        problem = _prepare(pipe_dir, log_dir)
        if problem is not None:
            print(problem, file=sys.stderr)
            return 1
        if args == ["-d"]:
            return _daemonize(pipe_dir, log_dir)
        return _run_daemon(pipe_dir, log_dir)
    if args in (["-h"], ["--help"]):
        print(_USAGE)
        return 0
    if args:
        print(_USAGE, file=sys.stderr)
        return 2
    return _interactive(pipe_dir)


if __name__ == "__main__":
    sys.exit(main())
