"""Where each MPS daemon keeps its pipes and logs.

gpuslice runs one control daemon per device (GPU or MIG instance), each with its own pipe
directory, because after a fatal fault an MPS server refuses new clients until its clients
exit; with one server over several GPUs that blocks the healthy GPUs too (REFERENCE.md).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: Environment variable that overrides the root of all gpuslice MPS directories.
ROOT_ENV = "GPUSLICE_MPS_ROOT"


def default_root() -> Path:
    """``$GPUSLICE_MPS_ROOT``, else ``<tmp>/gpuslice-<uid>/mps`` (private to the user)."""
    override = os.environ.get(ROOT_ENV)
    if override:
        return Path(override)
    return Path(tempfile.gettempdir()) / f"gpuslice-{os.getuid()}" / "mps"


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
    longest = pipe_dir(root, LONGEST_DEVICE) + "/" + LONGEST_PIPE_ENTRY
    if len(longest.encode()) > SOCKET_PATH_MAX:
        spare = len(root.encode()) - (len(longest.encode()) - SOCKET_PATH_MAX)
        problems.append(
            f"{root!r} is too long: its daemons' sockets ({longest}) would exceed the "
            f"{SOCKET_PATH_MAX}-byte unix socket path limit; use a root of at most {spare} bytes"
        )
    return problems


def pipe_dir(root: Path | str, device: str) -> str:
    """Pipe directory of the daemon serving ``device`` (a ``GPU-…`` or ``MIG-…`` UUID)."""
    return str(Path(root) / device / "pipe")


def log_dir(root: Path | str, device: str) -> str:
    """Log directory of the daemon serving ``device``."""
    return str(Path(root) / device / "log")
