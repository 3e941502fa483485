"""The lifecycle of one MPS control daemon per device: ensure, start, stop, status, leases.

Each device (a ``GPU-…`` or ``MIG-…`` UUID) gets its own daemon, pipe directory and log
directory (see :mod:`gpuslice.mps.paths`). A daemon is started as NVIDIA describes it,
with ``CUDA_VISIBLE_DEVICES``, ``CUDA_MPS_PIPE_DIRECTORY`` and ``CUDA_MPS_LOG_DIRECTORY``
set and ``nvidia-cuda-mps-control -d``:
https://docs.nvidia.com/deploy/topics/topic_6_1_2_1.html ; NVIDIA recommends UUIDs in
``CUDA_VISIBLE_DEVICES`` because indices are remapped by the MPS server:
https://docs.nvidia.com/deploy/mps/latest/appendix-environment-variables.html

Nothing else of the caller's environment reaches a daemon: ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``
set for the control daemon "will set the default active thread percentage for all servers
spawned", and a client's own value "cannot be higher" (NVIDIA's nvidia-cuda-mps-control man
page, ENVIRONMENT), so one pool's limit exported by its ``worker_init`` would cap every other
pool on the GPU. For the same reason :func:`ensure` checks the defaults of a daemon it finds
running and replaces one that would cap clients (or refuses, if clients use it).

:func:`ensure` is idempotent and safe when many processes on one node call it at once
(every Parsl block's ``worker_init`` does): an fcntl lock beside the pipe directory
serialises them, and the daemon must really answer before anyone goes on. Callers that start
a daemon for a while (a workflow) take a lease (``holder``) and :func:`release` it; the daemon
stops when its last live lease is released.

Files gpuslice keeps beside each pipe directory ``<root>/<device>/pipe``: ``pipe.lock`` (the
lock), ``pipe.pid`` (the daemon's PID: NVIDIA's 535 daemon writes no PID file; newer ones
write ``nvidia-cuda-mps-control.pid`` in the pipe directory, which is read too) and
``pipe.leases/<holder>`` (one lease each).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import fcntl
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from gpuslice.errors import MpsError
from gpuslice.mps import control, paths

#: NVIDIA's PID file of the control daemon inside the pipe directory, written by newer
#: drivers (https://docs.nvidia.com/deploy/mps/appendix-tools-and-interface-reference.html);
#: driver 535's daemon writes none.
PID_FILE = "nvidia-cuda-mps-control.pid"
#: The daemon's own log in the log directory:
#: https://docs.nvidia.com/deploy/mps/latest/appendix-logging.html
CONTROL_LOG = "control.log"
#: gpuslice's notes about the daemon (restarts, kills, replacements), beside NVIDIA's logs.
GPUSLICE_LOG = "gpuslice.log"
#: Seconds :func:`ensure` waits for the lock and then for a new daemon to answer.
DEFAULT_TIMEOUT_S = 10.0
#: What of the caller's environment a daemon keeps: what finds programs and libraries, the
#: user and locale, and the emulated GPU's state directory. Never an MPS limit.
DAEMON_ENV_KEEP = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "PYTHONPATH",
    "GPUSLICE_EMULATE_DIR",
    "GPUSLICE_EMULATED_MPS_VERSION",
)
#: A daemon whose environment holds this passes it to the servers it starts.
INHERITED_LIMIT = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
_HOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,127}$")


@dataclass(frozen=True)
class DaemonStatus:
    """The state of the daemon of one pipe directory.

    Attributes:
        pipe_dir: the daemon's ``CUDA_MPS_PIPE_DIRECTORY``.
        log_dir: its ``CUDA_MPS_LOG_DIRECTORY``, when known.
        running: a daemon answers on the pipe directory.
        pid: the daemon's PID (from gpuslice's record, NVIDIA's PID file or its socket).
        servers: its MPS servers and their clients (empty when not running).
        started: this call started the daemon.
        restarted: the record named a dead daemon, which this call replaced.
        dead_pid: that dead daemon's PID.
        replaced: why this call replaced a running daemon (defaults that cap clients).
        leases: holders with a live lease on the daemon.
    """

    pipe_dir: str
    log_dir: str | None
    running: bool
    pid: int | None
    servers: tuple[control.ServerInfo, ...] = ()
    started: bool = False
    restarted: bool = False
    dead_pid: int | None = None
    replaced: tuple[str, ...] = ()
    leases: tuple[str, ...] = ()

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
        quit_status: the daemon's exit status on ``quit`` as NVIDIA's front end reported it
            (0: every server exited gracefully), None without a ``quit``.
    """

    pipe_dir: str
    was_running: bool
    daemon_pid: int | None
    quit_accepted: bool
    server_pids: tuple[int, ...]
    killed: tuple[int, ...]
    quit_status: int | None = None

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


def _start_time(pid: int) -> str | None:
    """When ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22): with the PID
    it names one process, even after the PID is reused."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return fields[19] if len(fields) > 19 else None


def _beside(pipe_dir: str, suffix: str) -> Path:
    pipe = Path(pipe_dir)
    return pipe.with_name(pipe.name + suffix)


def lock_path(pipe_dir: str) -> str:
    """The lock file :func:`ensure` holds, beside the pipe directory: ``<device>/pipe.lock``."""
    return str(_beside(pipe_dir, ".lock"))


def record_path(pipe_dir: str) -> str:
    """gpuslice's record of the daemon's PID, beside the pipe directory: ``pipe.pid``."""
    return str(_beside(pipe_dir, ".pid"))


def leases_path(pipe_dir: str) -> str:
    """The directory of the daemon's leases, beside the pipe directory: ``pipe.leases``."""
    return str(_beside(pipe_dir, ".leases"))


def read_pid(pipe_dir: str) -> int | None:
    """The daemon PID last recorded for ``pipe_dir`` (the process may have died since).

    gpuslice's ``pipe.pid`` first, else NVIDIA's ``nvidia-cuda-mps-control.pid`` (newer drivers).
    """
    for path in (Path(record_path(pipe_dir)), Path(pipe_dir, PID_FILE)):
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return None


def _looks_like_control(pid: int) -> bool:
    """Guard against PID reuse: does ``pid`` run an MPS control program?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return True  # cannot tell; assume the record is right
    return b"mps-control" in cmdline or b"mps_control" in cmdline


def daemon_pid(pipe_dir: str) -> int | None:
    """PID of the live control daemon of ``pipe_dir``, None when none runs.

    The recorded PID when it still runs a control program; else whoever listens on the
    daemon's control socket (``SO_PEERCRED``), which also finds daemons gpuslice did not start.
    """
    recorded = read_pid(pipe_dir)
    if recorded is not None and process_alive(recorded) and _looks_like_control(recorded):
        return recorded
    return control.listener_pid(pipe_dir)


def _write_record(pipe_dir: str, pid: int) -> None:
    path = Path(record_path(pipe_dir))
    tmp = path.with_name(f"{path.name}.{os.getpid()}")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def _forget_record(pipe_dir: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        Path(record_path(pipe_dir)).unlink()


def _missing_levels(path: str) -> list[Path]:
    """``path`` and its parents that do not exist yet, highest first."""
    return [p for p in reversed((Path(path), *Path(path).parents)) if not p.exists()]


def _make_dirs(path: str) -> None:
    """Create ``path`` and any missing parent with mode 0700 (makedirs would not for parents)."""
    for directory in _missing_levels(path):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass  # another process made it first; it is checked afterwards
        except OSError as err:
            raise MpsError(f"cannot create MPS directory {directory}: {err}") from err


def prepare_directories(pipe_dir: str, log_dir: str) -> None:
    """Create the pipe and log directories (mode 0700) and check that no one else can meddle.

    Every level gpuslice creates, and every level of the default root in the shared tmp
    directory, must be this user's and closed to others; the levels above must not let
    another user replace them (see :func:`gpuslice.mps.paths.unsafe_ancestors`). NVIDIA's
    daemon would create a missing pipe directory world-writable (mode 0777, observed with
    driver 535), so gpuslice always creates it first.

    Raises:
        MpsError: a directory cannot be created, or is not safe; the message says how to fix it.
    """
    too_long = paths.pipe_dir_problems(pipe_dir)
    if too_long:
        raise MpsError(too_long[0])
    top = paths.tmp_root_top()
    for path, what in ((pipe_dir, "pipe"), (log_dir, "log")):
        missing = _missing_levels(path)
        private_from = str(missing[0]) if missing else path
        if top == Path(path) or top in Path(path).parents:
            private_from = str(top)
        _make_dirs(path)
        problems = paths.unsafe_ancestors(path, private_from=private_from)
        if problems:
            raise MpsError(
                f"MPS {what} directory {path} is not safe to use:\n  - " + "\n  - ".join(problems)
            )


@contextlib.contextmanager
def _locked(pipe_dir: str, timeout: float) -> Iterator[None]:
    path = lock_path(pipe_dir)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        raise MpsError(f"cannot open the MPS lock file {path}: {err}") from err
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


def daemon_environment(
    pipe_dir: str,
    log_dir: str,
    device: str | None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment a control daemon starts with.

    What the daemon itself needs: its pipe and log directories, ``CUDA_VISIBLE_DEVICES`` for
    its device, and from ``environ`` only :data:`DAEMON_ENV_KEEP` (PATH, HOME, …). No MPS
    limit of the caller's, no ``CUDA_VISIBLE_DEVICES`` of the caller's when ``device`` is None.
    """
    source = os.environ if environ is None else environ
    env = {key: source[key] for key in DAEMON_ENV_KEEP if key in source}
    env["CUDA_MPS_PIPE_DIRECTORY"] = pipe_dir
    env["CUDA_MPS_LOG_DIRECTORY"] = log_dir
    if device:
        env["CUDA_VISIBLE_DEVICES"] = device
    return env


def _environ_of(pid: int | None) -> dict[str, str]:
    """The environment ``pid`` started with ({} when it cannot be read: not ours)."""
    if pid is None:
        return {}
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def _served_ordinals(device: str | None) -> tuple[int, ...]:
    # A daemon started with CUDA_VISIBLE_DEVICES=<uuid> sees one device, ordinal 0. For a
    # daemon over every visible device gpuslice cannot count them without NVML: 0 is checked.
    if device and "," in device:
        return tuple(range(len(device.split(","))))
    return (0,)


def capping_defaults(
    pipe_dir: str, device: str | None = None, seen: control.Snapshot | None = None
) -> list[str]:
    """What about a running daemon would cap every client below its own limits.

    A default active thread percentage below 100 (a client "cannot be higher"), a default
    pinned memory limit on a device it serves, and ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` in its
    environment (its servers inherit it; NVIDIA's 535 daemon does not show it as a default).

    Args:
        pipe_dir: the daemon's pipe directory.
        device: what it serves (its ``CUDA_VISIBLE_DEVICES``).
        seen: its snapshot for device ordinal 0, when already read.

    Raises:
        MpsError: the daemon does not answer.
    """
    first, *others = _served_ordinals(device)
    seen = seen if seen is not None else control.snapshot(pipe_dir, first)
    reasons: list[str] = []
    if seen.active_thread_percentage < 100:
        reasons.append(f"default active thread percentage {seen.active_thread_percentage:g}%")
    limits = [(first, seen.pinned_mib)]
    limits += [(o, control.get_default_device_pinned_mem_limit(pipe_dir, o)) for o in others]
    for ordinal, mib in limits:
        if mib is not None:
            reasons.append(
                f"default pinned memory limit {control.pinned_limit_text(mib)} on device {ordinal}"
            )
    inherited = _environ_of(daemon_pid(pipe_dir)).get(INHERITED_LIMIT)
    if inherited is not None:
        reasons.append(f"{INHERITED_LIMIT}={inherited} in its environment")
    return reasons


def _check_holder(holder: str) -> None:
    if not _HOLDER.match(holder):
        raise MpsError(
            f"lease holder {holder!r} is not a valid name: use letters, digits and . _ @ : + - "
            "(at most 128 characters, not starting with a punctuation mark)"
        )


def _lease_live(path: Path) -> bool:
    try:
        words = path.read_text().split()
        pid = int(words[0])
    except (OSError, ValueError, IndexError):
        return False
    started = words[1] if len(words) > 1 else None
    return process_alive(pid) and (started is None or _start_time(pid) in (None, started))


def leases(pipe_dir: str) -> tuple[str, ...]:
    """Holders with a live lease on the daemon of ``pipe_dir`` (a dead holder's lease is none)."""
    directory = Path(leases_path(pipe_dir))
    try:
        entries = sorted(directory.iterdir())
    except OSError:
        return ()
    return tuple(
        entry.name for entry in entries if _HOLDER.match(entry.name) and _lease_live(entry)
    )


def _add_lease(pipe_dir: str, holder: str, pid: int) -> None:
    directory = Path(leases_path(pipe_dir))
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    problems = paths.unsafe_ancestors(str(directory), private_from=str(directory))
    if problems:
        raise MpsError(f"MPS lease directory {directory} is not safe: {'; '.join(problems)}")
    if not process_alive(pid):
        raise MpsError(f"lease holder {holder!r}: process {pid} does not run")
    path = directory / holder
    tmp = directory / f".{holder}.{os.getpid()}"
    tmp.write_text(f"{pid} {_start_time(pid) or ''}\n".rstrip() + "\n")
    tmp.replace(path)


def ensure(
    pipe_dir: str,
    log_dir: str,
    device: str | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    holder: str | None = None,
    holder_pid: int | None = None,
) -> DaemonStatus:
    """Make sure exactly one daemon answers on ``pipe_dir``, starting it if needed.

    Safe to call from many processes at once: they serialise on a file lock and all but
    the first find the daemon answering. A running daemon whose defaults would cap clients
    (:func:`capping_defaults`: one started with a pool's limits in its environment, or
    reconfigured) is replaced when it has no clients, and refused when it has.

    Args:
        pipe_dir: the daemon's pipe directory (created 0700 if missing).
        log_dir: its log directory (created 0700 if missing).
        device: the ``GPU-…``/``MIG-…`` UUID the daemon serves (its ``CUDA_VISIBLE_DEVICES``).
        timeout: seconds to wait for the lock, and then for a new daemon to answer.
        holder: take a lease on the daemon under this name (see :func:`release`); a daemon
            nobody leases is never stopped by :func:`release`.
        holder_pid: the process the lease lives with (default: this one); the lease counts
            only while it runs.

    Returns:
        The status; ``started`` tells whether this call started the daemon, ``restarted``
        whether it replaced a dead one, ``replaced`` why it replaced a capping one (all
        also noted in ``<log_dir>/gpuslice.log``).

    Raises:
        MpsError: unsafe directories, no control program, a daemon that does not answer, or
            a capping daemon that serves clients.
    """
    if holder is not None:
        _check_holder(holder)
    prepare_directories(pipe_dir, log_dir)
    with _locked(pipe_dir, timeout):
        seen = _snapshot(pipe_dir, _served_ordinals(device)[0])
        if seen is None:
            result = _start_locked(pipe_dir, log_dir, device, timeout)
        else:
            caps = capping_defaults(pipe_dir, device, seen)
            result = DaemonStatus(
                pipe_dir=pipe_dir,
                log_dir=log_dir,
                running=True,
                pid=daemon_pid(pipe_dir),
                servers=control.servers(pipe_dir, seen.server_pids),
            )
            if caps:
                result = _replace_capping(result, caps, device, timeout)
        if holder is not None:
            _add_lease(pipe_dir, holder, os.getpid() if holder_pid is None else holder_pid)
            note(log_dir, f"lease {holder!r} taken on daemon {result.pid}")
        return dataclasses.replace(result, leases=leases(pipe_dir))


def _snapshot(pipe_dir: str, ordinal: int) -> control.Snapshot | None:
    """The daemon's snapshot, None when no daemon answers (as :func:`control.ping` says no)."""
    control.control_program()  # a missing program is an error to report, not a "no"
    try:
        return control.snapshot(pipe_dir, ordinal, timeout=5.0)
    except (control.DaemonUnreachable, control.ControlTimeout):
        return None  # a hung daemon is handled like a dead one: its PID record decides


def _replace_capping(
    current: DaemonStatus, caps: list[str], device: str | None, timeout: float
) -> DaemonStatus:
    pipe_dir, log_dir = current.pipe_dir, current.log_dir or ""
    listed = "; ".join(caps)
    if current.clients:
        raise MpsError(
            f"the MPS control daemon {current.pid} of {pipe_dir} would cap every client of "
            f"its device ({listed}), and clients {', '.join(map(str, current.clients))} use "
            "it, so gpuslice will not replace it: let them finish, then run `gpuslice mps stop "
            f"--pipe-dir {pipe_dir}` and ensure it again (gpuslice starts daemons with a clean "
            "environment)"
        )
    note(
        log_dir, f"MPS control daemon {current.pid} would cap every client ({listed}); replacing it"
    )
    stop(pipe_dir, timeout, log_dir)
    started = _start_locked(pipe_dir, log_dir, device, timeout)
    return dataclasses.replace(started, replaced=tuple(caps))


def release(
    pipe_dir: str, log_dir: str, holder: str, *, timeout: float = DEFAULT_TIMEOUT_S
) -> StopReport | None:
    """Drop ``holder``'s lease; stop the daemon when no live lease is left.

    Under the same lock as :func:`ensure`, so a concurrent ensure either sees the daemon
    stopped and starts a new one, or takes its lease first and keeps this one running.

    Returns:
        The stop report when this release stopped the daemon; None when other live leases
        keep it running, or when ``holder`` held no lease (a daemon nobody leased is never
        stopped here).

    Raises:
        MpsError: an invalid holder name, or the daemon could not be stopped.
    """
    _check_holder(holder)
    lease = Path(leases_path(pipe_dir), holder)
    if not lease.exists():
        return None
    with _locked(pipe_dir, timeout):
        try:
            lease.unlink()
        except FileNotFoundError:
            return None  # released by a concurrent call
        remaining = leases(pipe_dir)
        if remaining:
            note(log_dir, f"lease {holder!r} released; still held by {', '.join(remaining)}")
            return None
        report = stop(pipe_dir, timeout, log_dir)
        note(
            log_dir, f"lease {holder!r} released, the last one: stopped daemon {report.daemon_pid}"
        )
        return report


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
        note(log_dir, f"MPS control daemon {dead} of {pipe_dir} is dead; starting a new one")
        _forget_record(pipe_dir)
        with contextlib.suppress(FileNotFoundError):
            Path(pipe_dir, PID_FILE).unlink()
    argv = [*control.control_program(), "-d"]
    # A file, not a pipe, takes the output: a daemon that kept the pipe open would hang us.
    with tempfile.TemporaryFile(mode="w+") as out:
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=daemon_environment(pipe_dir, log_dir, device),
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise MpsError(f"cannot start the MPS control daemon for {pipe_dir}: {err}") from err
        out.seek(0)
        printed = out.read().strip()
    # NVIDIA's -d exits 0 even when it only warns (no log directory); what it printed says.
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
    pid = control.listener_pid(pipe_dir) or read_pid(pipe_dir)
    if pid is not None:
        _write_record(pipe_dir, pid)
    note(log_dir, f"started MPS control daemon {pid} for {device or 'all visible devices'}")
    return DaemonStatus(
        pipe_dir=pipe_dir,
        log_dir=log_dir,
        running=True,
        pid=pid,
        servers=(),  # a daemon starts its first server for its first client
        started=True,
        restarted=dead is not None,
        dead_pid=dead,
    )


def status(pipe_dir: str, log_dir: str | None = None) -> DaemonStatus:
    """The daemon of ``pipe_dir``: whether it answers, its PID, servers, clients and leases."""
    control.control_program()  # a missing program is an error to report, not "not running"
    try:
        pids: tuple[int, ...] | None = control.get_server_list(pipe_dir, timeout=5.0)
    except MpsError:
        pids = None
    if pids is None:
        return DaemonStatus(
            pipe_dir=pipe_dir,
            log_dir=log_dir,
            running=False,
            pid=read_pid(pipe_dir),
            leases=leases(pipe_dir),
        )
    return DaemonStatus(
        pipe_dir=pipe_dir,
        log_dir=log_dir,
        running=True,
        pid=daemon_pid(pipe_dir),
        servers=control.servers(pipe_dir, pids),
        leases=leases(pipe_dir),
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

    Sends ``quit -t <timeout>`` (NVIDIA's daemon then forces its servers down after that
    long), waits up to ``timeout`` seconds more for the daemon and its servers to exit, then
    kills what is left with SIGKILL and reports it. The daemon's leases end with it.

    Args:
        pipe_dir: the daemon's pipe directory.
        timeout: seconds to wait after ``quit`` before killing.
        log_dir: where to note kills (``gpuslice.log``), if given.
    """
    answering = control.ping(pipe_dir)
    pid = daemon_pid(pipe_dir)
    server_pids: tuple[int, ...] = ()
    if answering:
        with contextlib.suppress(MpsError):
            server_pids = control.get_server_list(pipe_dir)
    if pid is not None:
        server_pids = tuple(dict.fromkeys((*server_pids, *children(pid))))
    quit_status: int | None = None
    if answering:
        with contextlib.suppress(MpsError):
            quit_status = control.quit_daemon(pipe_dir, timeout=timeout)
    quit_accepted = quit_status is not None
    watched = tuple(p for p in (pid, *server_pids) if p is not None)
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
    _forget_record(pipe_dir)
    with contextlib.suppress(OSError):
        for lease in Path(leases_path(pipe_dir)).iterdir():
            lease.unlink()
    return StopReport(
        pipe_dir=pipe_dir,
        was_running=answering or pid is not None,
        daemon_pid=pid if pid is not None else read_pid(pipe_dir),
        quit_accepted=quit_accepted,
        server_pids=server_pids,
        killed=tuple(killed),
        quit_status=quit_status,
    )
