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

Pools: Parsl exports one ``worker_init`` per executor and gives each worker its own
``CUDA_VISIBLE_DEVICES``. A pool's slices may sit on several GPUs with one daemon each,
so :func:`pool_environment` exports the daemons as maps, and :func:`activate`, run in
the worker, picks its own daemon from its ``CUDA_VISIBLE_DEVICES``. Map format
(``GPUSLICE_MPS_PIPE_DIRS``, ``GPUSLICE_MPS_LOG_DIRS``): ``<device>=<dir>`` entries
joined by ``;``, e.g. ``GPU-a=/p/a/pipe;GPU-b=/p/b/pipe`` (UUIDs contain neither ``=``
nor ``;``; directories must not contain ``;``).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, MutableMapping

from gpuslice.errors import MpsError
from gpuslice.mps import control
from gpuslice.plan.layout import PoolLayout, Slice

VISIBLE = "CUDA_VISIBLE_DEVICES"
PIPE = "CUDA_MPS_PIPE_DIRECTORY"
LOG = "CUDA_MPS_LOG_DIRECTORY"
COMPUTE = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
MEMORY = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
POOL = "GPUSLICE_POOL"
PIPE_DIRS = "GPUSLICE_MPS_PIPE_DIRS"
LOG_DIRS = "GPUSLICE_MPS_LOG_DIRS"


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


def _device_map(pairs: Mapping[str, str]) -> str:
    for device, directory in pairs.items():
        if ";" in directory or "=" in device or ";" in device:
            raise MpsError(f"cannot export {device}={directory}: ';' and '=' are separators")
    return ";".join(f"{device}={directory}" for device, directory in pairs.items())


def parse_device_map(text: str) -> dict[str, str]:
    """Read a ``GPU-a=/p/a;GPU-b=/p/b`` map back into ``{device: directory}``."""
    result: dict[str, str] = {}
    for entry in text.split(";"):
        if not entry.strip():
            continue
        device, sep, directory = entry.partition("=")
        if not sep or not device.strip() or not directory:
            raise MpsError(f"malformed device map entry {entry!r} in {text!r}")
        result[device.strip()] = directory
    return result


def _one(values: set[int | None], what: str, pool: str) -> int | None:
    if len(values) > 1:
        raise MpsError(f"pool {pool!r} mixes {what} values {sorted(map(str, values))}")
    return next(iter(values), None)


def pool_environment(pool: PoolLayout) -> dict[str, str]:
    """Variables common to every worker of a pool (what ``worker_init`` exports).

    ``CUDA_VISIBLE_DEVICES`` is not among them: Parsl sets it per worker.

    Raises:
        MpsError: the pool's slices disagree on limits, or one device has two daemons.
    """
    for slice_ in pool.slices:
        _require_mps(slice_)
    env = {POOL: pool.name}
    mps = [s for s in pool.slices if s.uses_mps]
    if not mps:
        return env
    pipes: dict[str, str] = {}
    logs: dict[str, str] = {}
    for slice_ in mps:
        assert slice_.mps_pipe_dir is not None  # uses_mps
        if pipes.setdefault(slice_.device, slice_.mps_pipe_dir) != slice_.mps_pipe_dir:
            raise MpsError(
                f"pool {pool.name!r} gives device {slice_.device} two pipe directories: "
                f"{pipes[slice_.device]} and {slice_.mps_pipe_dir}"
            )
        if slice_.mps_log_dir is not None:
            logs.setdefault(slice_.device, slice_.mps_log_dir)
    env[PIPE_DIRS] = _device_map(pipes)
    if logs:
        env[LOG_DIRS] = _device_map(logs)
    compute = _one({s.compute for s in mps}, "compute", pool.name)
    memory = _one({s.memory_mib for s in mps}, "memory", pool.name)
    env.update(_limits(compute, memory))
    return env


def activate(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Point this worker at its device's MPS daemon and check that the daemon answers.

    Run inside a worker before the first task touches CUDA. It reads the worker's
    ``CUDA_VISIBLE_DEVICES`` and the pool's ``GPUSLICE_MPS_PIPE_DIRS``/``…_LOG_DIRS``
    maps, and sets ``CUDA_MPS_PIPE_DIRECTORY``/``CUDA_MPS_LOG_DIRECTORY``. A pool without
    MPS (no map) is left alone.

    Args:
        environ: the environment to read and update (this process's by default).

    Returns:
        The variables it set (empty for a pool without MPS).

    Raises:
        MpsError: the worker's device has no daemon in the map, or its daemon does not
            answer: a CUDA client that cannot reach its daemon runs with no limit at all,
            and a slice is never silently unlimited.
    """
    env = environ
    pipe_map = env.get(PIPE_DIRS, "")
    if not pipe_map:
        return {}
    device = env.get(VISIBLE, "").strip()
    if not device or "," in device:
        raise MpsError(
            f"this worker's {VISIBLE} is {device!r}; an MPS slice needs exactly one device "
            "UUID (pass UUIDs as Parsl's available_accelerators)"
        )
    pipes = parse_device_map(pipe_map)
    if device not in pipes:
        raise MpsError(
            f"device {device} has no MPS daemon in {PIPE_DIRS} ({', '.join(pipes)}); "
            "the worker's device is not one of its pool's"
        )
    chosen = {PIPE: pipes[device]}
    log_dir = parse_device_map(env.get(LOG_DIRS, "")).get(device)
    if log_dir is not None:
        chosen[LOG] = log_dir
    if not control.ping(chosen[PIPE]):
        raise MpsError(
            f"the MPS daemon for {device} does not answer on {chosen[PIPE]}; a CUDA client "
            "would run without any limit, so this worker refuses to start. Run "
            "`gpuslice mps ensure` on this node"
        )
    env.update(chosen)
    return chosen


def export_lines(env: Mapping[str, str]) -> str:
    """Shell ``export K=V`` lines, values quoted with :func:`shlex.quote`, sorted by name."""
    return "".join(f"export {key}={shlex.quote(env[key])}\n" for key in sorted(env))
