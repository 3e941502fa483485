"""The environment a worker needs to run inside its slice.

A CUDA client reads its MPS settings from the environment when it creates its first
context, so everything here must be in place before a task touches CUDA. Variables
(NVIDIA, "Appendix: Environment Variables",
https://docs.nvidia.com/deploy/mps/latest/appendix-environment-variables.html):

- ``CUDA_VISIBLE_DEVICES``: the slice's ``GPU-…``/``MIG-…`` UUID (UUIDs are what NVIDIA
  recommends with MPS, since indices are remapped by the server).
- ``CUDA_MPS_PIPE_DIRECTORY`` / ``CUDA_MPS_LOG_DIRECTORY``: must match the daemon's.
- ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``: the client's share of the device's threads; it
  only narrows the daemon's own limit.
- ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``: ``<device>=<value>[,…]`` with the same device
  semantics as ``CUDA_VISIBLE_DEVICES`` (NVIDIA's example: ``0=1G,1=512MB``). With exactly
  one visible device the ordinal is ``0``; gpuslice writes an exact integer in ``M``
  (the unit letter NVIDIA's control commands document beside ``G``).

On a node, ``gpuslice node-run`` starts one Parsl worker pool per (pool, device) with its
slice's environment (:func:`slice_environment`) exported, so every worker of that worker pool,
and every task it runs, is inside the slice before CUDA starts.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from gpuslice.errors import MpsError
from gpuslice.plan.layout import Slice

VISIBLE = "CUDA_VISIBLE_DEVICES"
PIPE = "CUDA_MPS_PIPE_DIRECTORY"
LOG = "CUDA_MPS_LOG_DIRECTORY"
COMPUTE = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
MEMORY = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
POOL = "GPUSLICE_POOL"


def memory_limit(mib: int) -> str:
    """``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` for the one visible device: ``0=<mib>M``."""
    if mib <= 0:
        raise MpsError(f"an MPS memory cap must be positive, not {mib} MiB")
    return f"0={mib}M"


def _limits(compute: int | None, memory_mib: int | None) -> dict[str, str]:
    env: dict[str, str] = {}
    if compute is not None:
        env[COMPUTE] = str(compute)
    if memory_mib is not None:
        env[MEMORY] = memory_limit(memory_mib)
    return env


def _require_mps(slice_: Slice) -> None:
    # A limit without a daemon is no limit at all: refuse rather than run unlimited.
    if not slice_.uses_mps and (
        slice_.kind == "mps" or slice_.compute is not None or slice_.memory_mib is not None
    ):
        raise MpsError(
            f"slice {slice_.pool}[{slice_.rank}] on {slice_.device} has MPS limits but no MPS "
            "pipe directory; resolve the plan again so it gets one"
        )


def slice_environment(slice: Slice) -> dict[str, str]:
    """The exact client environment of one slice.

    ``CUDA_VISIBLE_DEVICES`` always; for slices served by MPS also the pipe and log
    directories and, where the slice has them, the compute and memory limits. Share and
    MIG slices without MPS get nothing MPS-related.

    Raises:
        MpsError: the slice has limits but no daemon to enforce them.
    """
    _require_mps(slice)
    env = {VISIBLE: slice.device}
    if slice.mps_pipe_dir is None:
        return env
    env[PIPE] = slice.mps_pipe_dir
    if slice.mps_log_dir is not None:
        env[LOG] = slice.mps_log_dir
    env.update(_limits(slice.compute, slice.memory_mib))
    return env


def export_lines(env: Mapping[str, str]) -> str:
    """Shell ``export K=V`` lines, values quoted with :func:`shlex.quote`, sorted by name."""
    return "".join(f"export {key}={shlex.quote(env[key])}\n" for key in sorted(env))
