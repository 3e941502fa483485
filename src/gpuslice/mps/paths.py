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


def pipe_dir(root: Path | str, device: str) -> str:
    """Pipe directory of the daemon serving ``device`` (a ``GPU-…`` or ``MIG-…`` UUID)."""
    return str(Path(root) / device / "pipe")


def log_dir(root: Path | str, device: str) -> str:
    """Log directory of the daemon serving ``device``."""
    return str(Path(root) / device / "log")
