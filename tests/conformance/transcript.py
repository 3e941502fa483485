"""Run one script of control-program calls and record everything a user could see.

The same :class:`Script` runs against NVIDIA's program and the emulated one, each time in the
same (emptied) directories, so paths in messages match; the two :class:`Transcript` objects
must then be equal: every call's exit status, stdout and stderr, the pipe directory's files
(name, type, mode) while the daemon runs and after it quits, and control.log with times and
PIDs taken out.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: Log lines whose place among the others depends on timing (NVIDIA's daemon writes them from
#: its own thread or when a connection closes): compared as a multiset, not in order.
ASYNC_LINES = re.compile(
    r"^Control: (Accepting connection\.\.\.|UI closed|Server <\w+> exited with status \d+"
    r"|Removed Shm file at .*)$"
)
_LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (\w+) +(\d+)\] (.*)$")
_SERVER_PID = re.compile(r"Starting new server (\d+) for user")


@dataclass(frozen=True)
class Call:
    """One run of the control program.

    Attributes:
        stdin: what it reads.
        args: its arguments (``("-d",)`` starts a daemon).
        env: extra environment for this run.
        settle: a control.log text to wait for afterwards (servers that exit on their own).
        kill: instead of running the program, send this signal to the daemon and wait (10 s
            at most) until it is gone.
    """

    stdin: str = ""
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    settle: str | None = None
    kill: int | None = None


@dataclass(frozen=True)
class Script:
    """A differential test case: calls made in order, with the directories prepared first."""

    name: str
    calls: tuple[Call, ...]
    start: bool = True
    daemon_env: tuple[tuple[str, str], ...] = ()
    pipe_dir: bool = True
    log_dir: bool = True
    pipe_name: str = "p"


@dataclass(frozen=True)
class Result:
    """What one call showed."""

    returncode: int
    stdout: str
    stderr: str


@dataclass
class Transcript:
    """Everything a script showed; equal transcripts mean indistinguishable programs."""

    results: list[Result] = field(default_factory=list)
    pipe_running: list[str] = field(default_factory=list)
    pipe_after: list[str] = field(default_factory=list)
    log_ordered: list[str] = field(default_factory=list)
    log_async: Counter[str] = field(default_factory=Counter)


def _listing(pipe: Path) -> list[str]:
    if not pipe.is_dir():
        return ["<no pipe directory>"]
    entries = []
    for entry in sorted(pipe.iterdir()):
        mode = entry.lstat().st_mode
        kind = (
            "socket"
            if stat.S_ISSOCK(mode)
            else "fifo"
            if stat.S_ISFIFO(mode)
            else "dir"
            if stat.S_ISDIR(mode)
            else "file"
        )
        entries.append(f"{entry.name} {kind} {stat.S_IMODE(mode):04o}")
    return entries


def _normalised_log(path: Path) -> tuple[list[str], Counter[str]]:
    if not path.exists():
        return ["<no control.log>"], Counter()
    names: dict[str, str] = {}
    ordered: list[str] = []
    unordered: Counter[str] = Counter()
    for raw in path.read_text(errors="replace").splitlines():
        match = _LOG_LINE.match(raw)
        if match is None:
            ordered.append(f"<unparsed> {raw}")
            continue
        role, pid, message = match.groups()
        names.setdefault(pid, f"<{role.lower()}{len(names)}>")
        server = _SERVER_PID.search(message)
        if server is not None:
            names.setdefault(server.group(1), f"<server{len(names)}>")
        for number, name in names.items():
            message = re.sub(rf"\b{number}\b", name, message)
        line = f"{role}: {message}"
        if ASYNC_LINES.match(line):
            unordered[line] += 1
        else:
            ordered.append(line)
    return ordered, unordered


def _wait_for_log(path: Path, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} never appeared in {path}")


def _daemons(pipe: str) -> list[int]:
    """PIDs of live control daemons started with CUDA_MPS_PIPE_DIRECTORY=pipe."""
    wanted = f"CUDA_MPS_PIPE_DIRECTORY={pipe}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except (OSError, IndexError):
            continue
        daemon = b"mps" in cmdline and b"-d" in cmdline.split(b"\0")
        if daemon and wanted in environ and state != "Z":
            found.append(int(entry.name))
    return found


def _wait_gone(pipe: str, pid: int | None = None, timeout: float = 10.0) -> list[int]:
    """Wait until daemon ``pid`` (default: every daemon) of ``pipe`` is gone; those still there."""
    deadline = time.monotonic() + timeout
    left = _daemons(pipe)
    while (pid in left if pid is not None else left) and time.monotonic() < deadline:
        time.sleep(0.02)
        left = _daemons(pipe)
    return left


def run_script(program: list[str], script: Script, root: str) -> Transcript:
    """Run ``script`` with ``program`` in ``root`` (emptied first) and record what it showed."""
    base = Path(root)
    for child in base.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    pipe, logs = base / script.pipe_name, base / "l"
    if script.pipe_dir:
        pipe.mkdir(mode=0o700)
    if script.log_dir:
        logs.mkdir(mode=0o700)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CUDA_MPS_", "CUDA_VISIBLE_DEVICES"))
    }
    env.update(CUDA_MPS_PIPE_DIRECTORY=str(pipe), CUDA_MPS_LOG_DIRECTORY=str(logs))
    transcript = Transcript()

    def call(one: Call) -> Result:
        if one.kill is not None:
            signalled = _daemons(str(pipe))
            for pid in signalled:
                os.kill(pid, one.kill)
            left = _wait_gone(str(pipe))
            return Result(0, f"signalled {len(signalled)}, {len(left)} still running", "")
        done = subprocess.run(
            [*program, *one.args],
            input=one.stdin,
            capture_output=True,
            text=True,
            env={**env, **dict(one.env)},
            timeout=60,
            check=False,
        )
        if one.settle is not None:
            _wait_for_log(logs / "control.log", one.settle)
        return Result(done.returncode, done.stdout, done.stderr)

    try:
        if script.start:
            started = call(Call(args=("-d",), env=script.daemon_env))
            assert started.returncode == 0, f"{program} -d failed: {started}"
        transcript.results = [call(one) for one in script.calls]
        if any(line.split()[:1] == ["quit"] for c in script.calls for line in c.stdin.splitlines()):
            # The daemon is on its way out: let it finish rather than race it.
            _wait_gone(str(pipe))
            transcript.pipe_running = ["<quit by the script>"]
        else:
            transcript.pipe_running = _listing(pipe)
    finally:
        for pid in _daemons(str(pipe)):
            subprocess.run(program, input="quit\n", text=True, env=env, timeout=60, check=False)
            _wait_gone(str(pipe), pid)
        for pid in _daemons(str(pipe)):  # one that would not quit must not outlive the test
            os.kill(pid, signal.SIGKILL)
    transcript.pipe_after = _listing(pipe)
    transcript.log_ordered, transcript.log_async = _normalised_log(logs / "control.log")
    return transcript
