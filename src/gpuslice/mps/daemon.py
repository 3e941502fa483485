"""The lifecycle of one MPS control daemon per device: ensure, start, stop, status.

Each device (a ``GPU-…`` or ``MIG-…`` UUID) gets its own daemon, pipe directory and log
directory (see :mod:`gpuslice.mps.paths`). A daemon is started as NVIDIA describes it,
with ``CUDA_VISIBLE_DEVICES``, ``CUDA_MPS_PIPE_DIRECTORY`` and ``CUDA_MPS_LOG_DIRECTORY``
set and ``nvidia-cuda-mps-control -d``:
https://docs.nvidia.com/deploy/topics/topic_6_1_2_1.html ; NVIDIA recommends UUIDs in
``CUDA_VISIBLE_DEVICES`` because indices are remapped by the MPS server:
https://docs.nvidia.com/deploy/mps/latest/appendix-environment-variables.html

:func:`ensure` is idempotent and safe when many processes on one node call it at once
(every Parsl block's ``worker_init`` does): an fcntl lock beside the pipe directory
serialises them, and the daemon must really answer before anyone goes on.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import os
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gpuslice.errors import MpsError
from gpuslice.mps import control

#: NVIDIA's PID file of the control daemon, inside the pipe directory:
#: https://docs.nvidia.com/deploy/mps/appendix-tools-and-interface-reference.html
PID_FILE = "nvidia-cuda-mps-control.pid"
#: The daemon's own log in the log directory:
#: https://docs.nvidia.com/deploy/mps/latest/appendix-logging.html
CONTROL_LOG = "control.log"
#: gpuslice's notes about the daemon (restarts, kills), beside NVIDIA's logs.
GPUSLICE_LOG = "gpuslice.log"
#: Seconds :func:`ensure` waits for the lock and then for a new daemon to answer.
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class DaemonStatus:
    """The state of the daemon of one pipe directory.

    Attributes:
        pipe_dir: the daemon's ``CUDA_MPS_PIPE_DIRECTORY``.
        log_dir: its ``CUDA_MPS_LOG_DIRECTORY``, when known.
        running: a daemon answers on the pipe directory.
        pid: PID from ``nvidia-cuda-mps-control.pid``, when the file exists.
        servers: its MPS servers and their clients (empty when not running).
        started: this call started the daemon.
        restarted: the PID file named a dead daemon, which this call replaced.
        dead_pid: that dead daemon's PID.
    """

    pipe_dir: str
    log_dir: str | None
    running: bool
    pid: int | None
    servers: tuple[control.ServerInfo, ...] = ()
    started: bool = False
    restarted: bool = False
    dead_pid: int | None = None

    @property
    def clients(self) -> tuple[int, ...]:
        """PIDs of every client of every server."""
        return tuple(c for s in self.servers for c in s.clients)


@dataclass(frozen=True)
class StopReport:
    """What :func:`stop` did.

    Attributes:
        pipe_dir: the daemon's pipe directory.
        was_running: a daemon answered, or its PID was alive, before the stop.
        daemon_pid: the daemon's PID, when known.
        quit_accepted: the daemon accepted ``quit``.
        server_pids: the MPS servers it had.
        killed: PIDs that did not exit in time and were killed with SIGKILL.
    """

    pipe_dir: str
    was_running: bool
    daemon_pid: int | None
    quit_accepted: bool
    server_pids: tuple[int, ...]
    killed: tuple[int, ...]

    @property
    def clean(self) -> bool:
        """True when everything exited on ``quit`` and nothing had to be killed."""
        return not self.killed


def process_alive(pid: int) -> bool:
    """True when ``pid`` names a running process (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists; it is just not ours
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state follows the parenthesised command name, which may itself hold spaces.
    return text.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def read_pid(pipe_dir: str) -> int | None:
    """The PID in the pipe directory's ``nvidia-cuda-mps-control.pid``, if any."""
    try:
        return int(Path(pipe_dir, PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def lock_path(pipe_dir: str) -> str:
    """The lock file :func:`ensure` holds, beside the pipe directory: ``<device>/pipe.lock``."""
    pipe = Path(pipe_dir)
    return str(pipe.with_name(pipe.name + ".lock"))


def _make_dirs(path: str) -> None:
    """Create ``path`` and any missing parent with mode 0700 (makedirs would not for parents)."""
    missing = [p for p in (Path(path), *Path(path).parents) if not p.exists()]
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass  # another process made it first; it is checked below
        except OSError as err:
            raise MpsError(f"cannot create MPS directory {directory}: {err}") from err


def check_private_dir(path: str, what: str) -> None:
    """Refuse a directory that someone else owns or that group/others can write.

    Raises:
        MpsError: naming the path and the fix.
    """
    try:
        info = os.stat(path)
    except OSError as err:
        raise MpsError(f"cannot inspect MPS {what} directory {path}: {err}") from err
    if not stat.S_ISDIR(info.st_mode):
        raise MpsError(f"MPS {what} directory {path} is not a directory; remove it and retry")
    uid = os.getuid()
    if info.st_uid != uid:
        raise MpsError(
            f"MPS {what} directory {path} is owned by uid {info.st_uid}, not by you "
            f"(uid {uid}): its daemon is not yours to use. Remove it or point "
            "GPUSLICE_MPS_ROOT at a directory of your own"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise MpsError(
            f"MPS {what} directory {path} is writable by group or others (mode {mode:04o}): "
            f"anyone could hijack the daemon's pipes. Run `chmod 700 {path}` and retry"
        )


def prepare_directories(pipe_dir: str, log_dir: str) -> None:
    """Create the pipe and log directories (mode 0700) and check that they are private.

    Raises:
        MpsError: a directory cannot be created, or is not private to this user.
    """
    for path, what in ((pipe_dir, "pipe"), (log_dir, "log")):
        _make_dirs(path)
        check_private_dir(path, what)


@contextlib.contextmanager
def _locked(pipe_dir: str, timeout: float) -> Iterator[None]:
    path = lock_path(pipe_dir)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES):
                    raise MpsError(f"cannot lock {path}: {err}") from err
                if time.monotonic() > deadline:
                    raise MpsError(
                        f"another process held {path} for more than {timeout:g}s while "
                        "starting the MPS daemon; check it with `gpuslice mps status`"
                    ) from err
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def note(log_dir: str | None, message: str) -> None:
    """Append a line to ``<log_dir>/gpuslice.log`` (never fails the caller)."""
    if not log_dir:
        return
    stamp = _dt.datetime.now().isoformat(timespec="milliseconds")
    with contextlib.suppress(OSError), open(Path(log_dir, GPUSLICE_LOG), "a") as log:
        log.write(f"[{stamp} gpuslice {os.getpid()}] {message}\n")


def log_tail(log_dir: str, lines: int = 20) -> str:
    """The last lines of the daemon's ``control.log``, for error messages."""
    try:
        text = Path(log_dir, CONTROL_LOG).read_text(errors="replace")
    except OSError:
        return f"(no {CONTROL_LOG} in {log_dir})"
    return "\n".join(text.splitlines()[-lines:]) or f"({CONTROL_LOG} is empty)"


def _looks_like_control(pid: int) -> bool:
    """Guard against PID reuse: does ``pid`` run an MPS control program?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return True  # cannot tell; assume the PID file is right
    return b"mps-control" in cmdline or b"mps_control" in cmdline


def ensure(
    pipe_dir: str,
    log_dir: str,
    device: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    holder: str | None = None,
) -> DaemonStatus:
    """Make sure exactly one daemon answers on ``pipe_dir``, starting it if needed.

    Safe to call from many processes at once: they serialise on a file lock and all but
    the first find the daemon answering. With ``holder``, the caller also takes a lease on
    the daemon (:func:`release` stops it once the last live lease is gone).

    Args:
        pipe_dir: the daemon's pipe directory (created 0700 if missing).
        log_dir: its log directory (created 0700 if missing).
        device: the ``GPU-…``/``MIG-…`` UUID the daemon serves (its ``CUDA_VISIBLE_DEVICES``).
        timeout: seconds to wait for the lock, and then for a new daemon to answer.
        holder: a name for the caller's lease (e.g. ``node-run.<group>.<pid>``); the lease
            lives as long as the process that took it.

    Returns:
        The status; ``started`` tells whether this call started the daemon, ``restarted``
        whether it replaced a dead one (also noted in ``<log_dir>/gpuslice.log``).

    Raises:
        MpsError: unsafe directories, no control program, or a daemon that does not answer.
    """
    prepare_directories(pipe_dir, log_dir)
    with _locked(pipe_dir, timeout):
        if control.ping(pipe_dir):
            found = status(pipe_dir, log_dir)
            if holder is not None and not _lease_files(pipe_dir):
                # Started by hand (or by an older gpuslice): its owner is not a lease holder,
                # so the holders' release must never stop it.
                _write_lease(pipe_dir, EXTERNAL_LEASE, pid=0)
        else:
            found = _start_locked(pipe_dir, log_dir, device, timeout)
        if holder is not None:
            _write_lease(pipe_dir, holder)
        return found


def _lease_dir(pipe_dir: str) -> Path:
    """Leases on the daemon of ``pipe_dir``: ``<device>/pipe.leases/<holder>`` (holder's PID)."""
    pipe = Path(pipe_dir)
    return pipe.with_name(pipe.name + ".leases")


#: The lease that stands for a daemon's owner outside gpuslice's leases (started by hand).
EXTERNAL_LEASE = "external"


def _lease_files(pipe_dir: str) -> list[Path]:
    try:
        return list(_lease_dir(pipe_dir).iterdir())
    except OSError:
        return []


def _write_lease(pipe_dir: str, holder: str, pid: int | None = None) -> None:
    """Record ``holder``'s lease with its PID; an existing live lease of that holder is kept.

    Keeping it matters: a worker that restarts a daemon re-leases it for its node run, whose
    PID (not the worker's) must stay in the lease.
    """
    if not holder or "/" in holder or holder in (".", ".."):
        raise MpsError(f"a lease holder is a plain name, not {holder!r}")
    directory = _lease_dir(pipe_dir)
    _make_dirs(str(directory))
    check_private_dir(str(directory), "lease")
    path = directory / holder
    if holder in _live_leases(pipe_dir):
        return
    path.write_text(f"{os.getpid() if pid is None else pid}\n")


def _live_leases(pipe_dir: str) -> dict[str, int]:
    """Holder -> PID of every lease whose process is alive (dead holders' leases are removed)."""
    live: dict[str, int] = {}
    directory = _lease_dir(pipe_dir)
    try:
        entries = list(directory.iterdir())
    except OSError:
        return live
    for entry in entries:
        try:
            pid = int(entry.read_text().strip())
        except (OSError, ValueError):
            continue
        if entry.name == EXTERNAL_LEASE or process_alive(pid):
            live[entry.name] = pid
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
    return live


def leases(pipe_dir: str) -> tuple[str, ...]:
    """Holders with a live lease on the daemon of ``pipe_dir``, sorted."""
    return tuple(sorted(_live_leases(pipe_dir)))


def release(
    pipe_dir: str, log_dir: str, holder: str, *, timeout: float = DEFAULT_TIMEOUT_S
) -> StopReport | None:
    """Give up ``holder``'s lease; stop the daemon when no live lease is left.

    Lock-safe against concurrent :func:`ensure` and :func:`release` calls: a process that
    leases the daemon while it is being released either keeps it running or finds it gone
    and starts a new one.

    Returns:
        What :func:`stop` did, or None when other holders keep the daemon running.
    """
    with _locked(pipe_dir, timeout):
        with contextlib.suppress(OSError):
            (_lease_dir(pipe_dir) / holder).unlink()
        others = _live_leases(pipe_dir)
        if others:
            note(
                log_dir, f"{holder} released the daemon; still held by {', '.join(sorted(others))}"
            )
            return None
        note(log_dir, f"{holder} released the daemon, its last lease: stopping it")
        return stop(pipe_dir, timeout, log_dir)


def start(
    pipe_dir: str,
    log_dir: str,
    device: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> DaemonStatus:
    """Start the daemon of ``pipe_dir``; unlike :func:`ensure`, refuse if one already answers.

    Raises:
        MpsError: a daemon already runs there, or it could not be started.
    """
    prepare_directories(pipe_dir, log_dir)
    with _locked(pipe_dir, timeout):
        if control.ping(pipe_dir):
            raise MpsError(
                f"an MPS control daemon already answers on {pipe_dir}; use `gpuslice mps "
                "ensure` to reuse it or `gpuslice mps stop` first"
            )
        return _start_locked(pipe_dir, log_dir, device, timeout)


def _start_locked(pipe_dir: str, log_dir: str, device: str | None, timeout: float) -> DaemonStatus:
    dead = read_pid(pipe_dir)
    if dead is not None:
        if process_alive(dead) and _looks_like_control(dead):
            raise MpsError(
                f"MPS control daemon {dead} of {pipe_dir} is running but does not answer; "
                f"stop it with `gpuslice mps stop` (it kills what does not quit) and retry"
            )
        note(
            log_dir,
            f"MPS control daemon {dead} named by {Path(pipe_dir, PID_FILE)} is dead; "
            "starting a new one",
        )
        with contextlib.suppress(FileNotFoundError):
            Path(pipe_dir, PID_FILE).unlink()
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": pipe_dir, "CUDA_MPS_LOG_DIRECTORY": log_dir}
    if device:
        env["CUDA_VISIBLE_DEVICES"] = device
    argv = [*control.control_program(), "-d"]
    # A file, not a pipe, takes the output: a daemon that kept the pipe open would hang us.
    with tempfile.TemporaryFile(mode="w+") as out:
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise MpsError(f"cannot start the MPS control daemon for {pipe_dir}: {err}") from err
        out.seek(0)
        printed = out.read().strip()
    if done.returncode != 0:
        raise MpsError(
            f"`{' '.join(argv)}` failed for {pipe_dir} (exit {done.returncode}): "
            f"{printed or 'no message'}\nlast lines of {Path(log_dir, CONTROL_LOG)}:\n"
            f"{log_tail(log_dir)}"
        )
    deadline = time.monotonic() + timeout
    while not control.ping(pipe_dir):
        if time.monotonic() > deadline:
            raise MpsError(
                f"the MPS control daemon for {pipe_dir} did not answer within {timeout:g}s "
                f"of starting; last lines of {Path(log_dir, CONTROL_LOG)}:\n{log_tail(log_dir)}"
            )
        time.sleep(0.05)
    pid = read_pid(pipe_dir)
    note(log_dir, f"started MPS control daemon {pid} for {device or 'all visible devices'}")
    return DaemonStatus(
        pipe_dir=pipe_dir,
        log_dir=log_dir,
        running=True,
        pid=pid,
        servers=control.servers(pipe_dir),
        started=True,
        restarted=dead is not None,
        dead_pid=dead,
    )


def status(pipe_dir: str, log_dir: str | None = None) -> DaemonStatus:
    """The daemon of ``pipe_dir``: whether it answers, its PID, servers and their clients."""
    pid = read_pid(pipe_dir)
    if not control.ping(pipe_dir):
        return DaemonStatus(pipe_dir=pipe_dir, log_dir=log_dir, running=False, pid=pid)
    return DaemonStatus(
        pipe_dir=pipe_dir,
        log_dir=log_dir,
        running=True,
        pid=pid,
        servers=control.servers(pipe_dir),
    )


def children(pid: int) -> tuple[int, ...]:
    """PIDs whose parent is ``pid`` (a daemon's servers, found without asking the daemon)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return tuple(found)


def wait_gone(pids: Iterable[int], timeout: float) -> tuple[int, ...]:
    """Wait until every PID has exited; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    alive = tuple(p for p in pids if process_alive(p))
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = tuple(p for p in alive if process_alive(p))
    return alive


def stop(
    pipe_dir: str, timeout: float = DEFAULT_TIMEOUT_S, log_dir: str | None = None
) -> StopReport:
    """Stop the daemon of ``pipe_dir`` and its servers; kill what does not exit in time.

    Sends ``quit`` (``echo quit | nvidia-cuda-mps-control``), waits up to ``timeout``
    seconds for the daemon and its servers to exit, then kills what is left with SIGKILL
    and reports it.

    Args:
        pipe_dir: the daemon's pipe directory.
        timeout: seconds to wait after ``quit`` before killing.
        log_dir: where to note kills (``gpuslice.log``), if given.
    """
    pid = read_pid(pipe_dir)
    daemon_pid = (
        pid if pid is not None and process_alive(pid) and _looks_like_control(pid) else None
    )
    answering = control.ping(pipe_dir)
    server_pids: tuple[int, ...] = ()
    if answering:
        with contextlib.suppress(MpsError):
            server_pids = control.get_server_list(pipe_dir)
    if daemon_pid is not None:
        server_pids = tuple(dict.fromkeys((*server_pids, *children(daemon_pid))))
    quit_accepted = False
    if answering:
        try:
            control.quit_daemon(pipe_dir, timeout=timeout)
            quit_accepted = True
        except MpsError:
            quit_accepted = False
    watched = tuple(p for p in (daemon_pid, *server_pids) if p is not None)
    left = wait_gone(watched, timeout if quit_accepted else 0.0)
    killed: list[int] = []
    for victim in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
    if killed:
        note(log_dir, f"stop {pipe_dir}: killed {killed} after they did not exit on quit")
        still = wait_gone(killed, 5.0)
        if still:
            raise MpsError(f"processes {list(still)} of {pipe_dir} survived SIGKILL")
    for lease in _lease_files(pipe_dir):  # a stopped daemon is nobody's any more
        with contextlib.suppress(OSError):
            lease.unlink()
    return StopReport(
        pipe_dir=pipe_dir,
        was_running=answering or daemon_pid is not None,
        daemon_pid=daemon_pid if daemon_pid is not None else pid,
        quit_accepted=quit_accepted,
        server_pids=server_pids,
        killed=tuple(killed),
    )
