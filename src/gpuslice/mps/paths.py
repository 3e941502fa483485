"""Where each MPS daemon keeps its pipes and logs.

gpuslice runs one control daemon per device (GPU or MIG instance), each with its own pipe
directory, because after a fatal fault an MPS server refuses new clients until its clients
exit; with one server over several GPUs that blocks the healthy GPUs too (REFERENCE.md).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

#: Environment variable that overrides the root of all gpuslice MPS directories.
ROOT_ENV = "GPUSLICE_MPS_ROOT"
#: The user's private runtime directory (freedesktop.org base directory specification).
RUNTIME_ENV = "XDG_RUNTIME_DIR"


def _private(path: str) -> bool:
    """A directory of this user's, closed to everyone else (what the XDG spec promises)."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and stat.S_IMODE(info.st_mode) & 0o077 == 0
    )


def tmp_root_top() -> Path:
    """The level of the default root that gpuslice makes in the shared tmp directory."""
    return Path(tempfile.gettempdir()) / f"gpuslice-{os.getuid()}"


def default_root() -> Path:
    """Where gpuslice keeps its MPS pipe and log directories when the plan names no place.

    ``$GPUSLICE_MPS_ROOT`` when set; else ``$XDG_RUNTIME_DIR/gpuslice/mps`` when that runtime
    directory exists, is the user's own and is mode 0700 (the freedesktop.org base directory
    specification requires exactly that: https://specifications.freedesktop.org/basedir-spec/latest/);
    else ``<tmp>/gpuslice-<uid>/mps``, whose every level gpuslice creates 0700 and checks
    (owner, mode, no symlink) before a daemon starts there, so a name another user can predict
    is refused rather than used when that user made it first.

    The runtime directory lives only while the user is logged in on the node and batch jobs
    often have none: every process of a workflow must see the same root, so set
    ``GPUSLICE_MPS_ROOT`` (or the plan's ``mps_dir``) where that matters.
    """
    override = os.environ.get(ROOT_ENV)
    if override:
        return Path(override)
    runtime = os.environ.get(RUNTIME_ENV, "")
    if runtime.startswith("/") and _private(runtime):
        candidate = Path(runtime) / "gpuslice" / "mps"
        if not root_problems(str(candidate)):
            return candidate
    return tmp_root_top() / "mps"


#: The longest name NVIDIA's control daemon creates in its pipe directory (observed with
#: driver 535: ``control``, ``control_lock``, ``control_privileged``, ``log``).
LONGEST_PIPE_ENTRY = "control_privileged"
#: Longest device name a pipe directory is keyed by: ``GPU-``/``MIG-`` and a 36-character UUID.
LONGEST_DEVICE = "MIG-" + "0" * 36
#: Bytes of a unix socket path, without its terminating NUL (``sun_path`` is 108 on Linux).
SOCKET_PATH_MAX = 107


def root_problems(root: str) -> list[str]:
    """Why ``root`` cannot hold gpuslice's MPS directories (empty when it can).

    The one place the rules for an MPS root live: plan validation, ``parsl_config``,
    ``gpuslice mps ensure`` and the workers all call it. A root must be absolute (every node
    and worker resolves it the same way), free of the ``;`` and ``=`` that separate gpuslice's
    device maps and of control characters, and short enough that the daemon's sockets fit the
    unix socket path limit.
    """
    problems: list[str] = []
    if not root.startswith("/"):
        problems.append(f"{root!r} is not an absolute path")
    bad = sorted({c for c in root if c in ";=" or ord(c) < 32 or ord(c) == 127})
    if bad:
        listed = ", ".join(map(repr, bad))
        problems.append(f"{root!r} contains {listed}, which gpuslice cannot pass")
    excess = _socket_excess(pipe_dir(root, LONGEST_DEVICE))
    if excess > 0:
        longest = pipe_dir(root, LONGEST_DEVICE) + "/" + LONGEST_PIPE_ENTRY
        problems.append(
            f"{root!r} is too long: its daemons' sockets ({longest}) would exceed the "
            f"{SOCKET_PATH_MAX}-byte unix socket path limit; use a root of at most "
            f"{len(root.encode()) - excess} bytes"
        )
    return problems


def _socket_excess(pipe: str) -> int:
    """Bytes by which the daemon's longest socket path in ``pipe`` exceeds the limit."""
    return len(f"{pipe}/{LONGEST_PIPE_ENTRY}".encode()) - SOCKET_PATH_MAX


def pipe_dir_problems(pipe: str) -> list[str]:
    """Why a daemon cannot listen in the pipe directory ``pipe`` (its sockets' path length).

    NVIDIA's daemon then exits 1 without a word (observed with driver 535), so gpuslice checks
    first; the same rule as :func:`root_problems`, for one pipe directory.
    """
    excess = _socket_excess(pipe)
    if excess <= 0:
        return []
    return [
        f"{pipe} is too long: the daemon's socket {pipe}/{LONGEST_PIPE_ENTRY} would exceed the "
        f"{SOCKET_PATH_MAX}-byte unix socket path limit by {excess} bytes; use a shorter MPS root "
        "(GPUSLICE_MPS_ROOT or the plan's mps_dir)"
    ]


def pipe_dir(root: Path | str, device: str) -> str:
    """Pipe directory of the daemon serving ``device`` (a ``GPU-…`` or ``MIG-…`` UUID)."""
    return str(Path(root) / device / "pipe")


def log_dir(root: Path | str, device: str) -> str:
    """Log directory of the daemon serving ``device``."""
    return str(Path(root) / device / "log")


def unsafe_ancestors(path: str, private_from: str | None = None) -> list[str]:
    """Why directories on the way to ``path`` let another user take over its daemon.

    Every existing directory from ``/`` down to ``path`` is checked:

    - at and below ``private_from`` (the levels gpuslice creates; ``path`` alone when None):
      it must be a real directory (not a symlink), owned by this user, closed to group and
      others (mode 0700);
    - above it: owned by this user or root, and not writable by group or others unless the
      sticky bit is set (``/tmp`` is fine: there others cannot rename what is ours).

    Args:
        path: the pipe or log directory.
        private_from: the highest level gpuslice creates itself (the MPS root).

    Returns:
        One message per problem, each naming the directory and the fix; empty when safe.
    """
    target = Path(os.path.abspath(path))
    boundary = Path(os.path.abspath(private_from)) if private_from else target
    uid = os.getuid()
    problems: list[str] = []
    for directory in reversed((target, *target.parents)):
        try:
            info = os.lstat(directory)
        except FileNotFoundError:
            continue
        except OSError as err:
            problems.append(f"cannot inspect {directory}: {err}")
            continue
        mode = stat.S_IMODE(info.st_mode)
        owned = info.st_uid == uid
        if directory == boundary or boundary in directory.parents:
            if stat.S_ISLNK(info.st_mode):
                problems.append(
                    f"{directory} is a symbolic link, not a directory gpuslice made: "
                    "remove it, or point GPUSLICE_MPS_ROOT at a directory of your own"
                )
            elif not owned:
                problems.append(
                    f"{directory} is owned by uid {info.st_uid}, not by you (uid {uid}): "
                    "its daemon is not yours to use. Remove it or point GPUSLICE_MPS_ROOT at "
                    "a directory of your own"
                )
            elif mode & 0o077:
                what = "writable by" if mode & 0o022 else "open to"
                problems.append(
                    f"{directory} is {what} group or others (mode {mode:04o}): anyone could "
                    f"reach or hijack the daemon's pipes. Run `chmod 700 {directory}` and retry"
                )
            continue
        # Above gpuslice's levels a symlink is the user's business: judge what it points to.
        try:
            with_target = os.stat(directory) if stat.S_ISLNK(info.st_mode) else info
        except OSError as err:
            problems.append(f"{directory} is a symbolic link that cannot be followed: {err}")
            continue
        mode = stat.S_IMODE(with_target.st_mode)
        if not stat.S_ISDIR(with_target.st_mode):
            problems.append(f"{directory} is not a directory")
        elif with_target.st_uid not in (uid, 0):
            problems.append(
                f"{directory} is owned by uid {with_target.st_uid}, who could replace everything "
                "below it: keep MPS directories under directories of your own (set "
                "GPUSLICE_MPS_ROOT)"
            )
        elif mode & 0o022 and not mode & stat.S_ISVTX:
            problems.append(
                f"{directory} is writable by group or others without the sticky bit (mode "
                f"{mode:04o}): anyone could replace the MPS directories below it. Run "
                f"`chmod go-w {directory}` or set GPUSLICE_MPS_ROOT elsewhere"
            )
    return problems
