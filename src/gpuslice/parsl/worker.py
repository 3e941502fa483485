"""What runs inside a Parsl worker before its first task: enter the slice and check it.

A CUDA client reads its MPS settings when it creates its first context, and a client that
cannot reach its daemon runs with no limit at all, silently (REFERENCE.md, "CUDA MPS"). So
before the user's function runs for the first time in a worker process,
:func:`prepare_worker`:

1. for an MPS pool, runs :func:`gpuslice.mps.env.activate`: it sets ``CUDA_MPS_PIPE_DIRECTORY``
   for the worker's ``CUDA_VISIBLE_DEVICES`` and raises :class:`~gpuslice.errors.MpsError` if
   that daemon does not answer;
2. checks the limit the worker really got: the SM count CUDA reports inside the slice
   (``torch.cuda.get_device_properties(0).multi_processor_count`` on a real GPU when torch is
   there, :func:`gpuslice.emulate.kernel.visible_sm_count` on the emulated GPU) against the
   plan's ``GPUSLICE_EXPECTED_SMS`` for the device. MPS rounds a percentage down to a number of
   SMs the hardware supports, so up to one granule (:data:`SM_ROUNDING`) below the plan's
   figure is accepted; anything else raises :class:`SliceCheckError`.

The result is cached per process: later tasks in the same worker pay one dictionary lookup.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Generic, ParamSpec, TypeVar

from gpuslice.errors import GpusliceError
from gpuslice.mps import env as mps_env
from gpuslice.mps.limits import SM_GRANULARITY

__all__ = [
    "SliceCheck",
    "SliceCheckError",
    "current_slice",
    "in_slice",
    "prepare_worker",
]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger(__name__)

# What a pool's worker_init exports for its workers (gpuslice.parsl.config imports these
# names from here, so a worker never imports Parsl's configuration machinery).
#: ``<device>=<SMs>;…``: the SMs CUDA should report inside each device's slice of the pool.
EXPECTED_SMS_ENV = "GPUSLICE_EXPECTED_SMS"
#: ``1`` when the pool runs on the emulated GPU (workers check the emulated limit).
EMULATED_ENV = "GPUSLICE_EMULATED"
#: ``<slot>=<device>;…``: which device each accelerator slot of a node-local pool is.
SLOTS_ENV = "GPUSLICE_SLOTS"

#: MPS rounds a thread percentage down to a hardware granule. The plan's figure already
#: rounds down to whole SM pairs (gpuslice.mps.limits), but that granularity was observed by
#: third parties, not documented by NVIDIA, so CUDA may report up to one granule fewer.
SM_ROUNDING = SM_GRANULARITY

#: Variables :func:`current_slice` reports.
SLICE_VARS = (
    mps_env.VISIBLE,
    mps_env.PIPE,
    mps_env.LOG,
    mps_env.COMPUTE,
    mps_env.MEMORY,
    mps_env.POOL,
    "PARSL_WORKER_RANK",
    "PARSL_WORKER_COUNT",
    "PARSL_WORKER_POOL_ID",
    "PARSL_WORKER_BLOCK_ID",
)


class SliceCheckError(GpusliceError):
    """A worker did not get the slice its plan gives it (wrong SM count, no device)."""


@dataclass(frozen=True)
class SliceCheck:
    """What :func:`prepare_worker` found.

    Attributes:
        pool: the pool (``GPUSLICE_POOL``), or None outside a gpuslice pool.
        device: the worker's ``CUDA_VISIBLE_DEVICES``.
        expected_sms: SMs the plan says the slice sees, when known.
        visible_sms: SMs CUDA (or the emulated GPU) reported, when it could be asked.
        source: how ``visible_sms`` was read: ``emulated``, ``torch`` or ``none``.
        pid: the worker process.
    """

    pool: str | None
    device: str | None
    expected_sms: int | None
    visible_sms: int | None
    source: str
    pid: int


class _Cache:
    """This process's check (per PID, so a forked child checks again)."""

    check: SliceCheck | None = None
    lock = threading.Lock()


def _expected(environ: Mapping[str, str], device: str | None) -> int | None:
    text = environ.get(EXPECTED_SMS_ENV, "")
    if not text or device is None:
        return None
    value = mps_env.parse_device_map(text).get(device)
    return int(value) if value is not None else None


def _visible_sms(environ: Mapping[str, str]) -> tuple[int | None, str]:
    if environ.get(EMULATED_ENV) == "1":
        from gpuslice.emulate.kernel import visible_sm_count

        return visible_sm_count(environ), "emulated"
    if importlib.util.find_spec("torch") is None:
        return None, "none"
    import torch

    if not torch.cuda.is_available():
        return None, "none"
    # Creates this worker's CUDA context, i.e. its MPS client: the environment is final now.
    return int(torch.cuda.get_device_properties(0).multi_processor_count), "torch"


def _check(environ: MutableMapping[str, str]) -> SliceCheck:
    pool = environ.get(mps_env.POOL)
    device = environ.get(mps_env.VISIBLE)
    if pool is None:
        # Not a gpuslice executor: nothing was promised, so there is nothing to check.
        return SliceCheck(None, device, None, None, "none", os.getpid())
    if not device:
        raise SliceCheckError(
            f"this worker of pool {pool!r} has no CUDA_VISIBLE_DEVICES, so it would see every "
            "GPU; run it in an executor from gpuslice.parsl_config (one device UUID per worker)"
        )
    slots = environ.get(SLOTS_ENV)
    if slots:
        # A node-local pool: Parsl gave this worker a slot name; the node's worker_init mapped
        # each slot to a device UUID of this node. CUDA has not started yet, so this is final.
        mapped = mps_env.parse_device_map(slots).get(device)
        if mapped is None:
            raise SliceCheckError(
                f"this worker of pool {pool!r} got accelerator {device!r}, which is not one of "
                f"the node's slots ({slots}); the executor and its worker_init disagree"
            )
        environ[mps_env.VISIBLE] = device = mapped
    mps_env.activate(environ)
    expected = _expected(environ, device)
    visible, source = _visible_sms(environ)
    if expected is not None and visible is not None:
        low, high = expected - SM_ROUNDING, max(expected, 2)
        if not low <= visible <= high:
            what = (
                "its MPS limit did not apply (no limit at all)"
                if visible > high
                else "it got fewer SMs than planned (a lower daemon default, or another limit)"
            )
            raise SliceCheckError(
                f"worker {os.getpid()} of pool {pool!r} on {device} sees {visible} SMs ({source}) "
                f"but its slice should see {expected}: {what}. Check `gpuslice mps status` and "
                "the pool's CUDA_MPS_ACTIVE_THREAD_PERCENTAGE; the task was not run"
            )
    elif expected is not None:
        logger.warning(
            "gpuslice: pool %s on %s: cannot read the SM count here (no torch with CUDA); "
            "the MPS daemon answered, the limit itself is not verified",
            pool,
            device,
        )
    return SliceCheck(pool, device, expected, visible, source, os.getpid())


def prepare_worker(environ: MutableMapping[str, str] | None = None) -> SliceCheck:
    """Enter this worker's slice and check it, once per process.

    Args:
        environ: the environment to read and update; default this process's (``os.environ``).
            A check with an explicit mapping is not cached.

    Returns:
        What was found; cached, so later calls in the same process are free.

    Raises:
        MpsError: the worker's MPS daemon does not answer (the task must not run unlimited).
        SliceCheckError: CUDA reports another SM count than the plan gives the slice.
    """
    if environ is not None:
        return _check(environ)
    done = _Cache.check
    if done is not None and done.pid == os.getpid():
        return done
    with _Cache.lock:
        done = _Cache.check
        if done is None or done.pid != os.getpid():
            # A failure is not cached: the next task checks again (the daemon may be back).
            done = _Cache.check = _check(os.environ)
        return done


class _InSlice(Generic[P, R]):
    """``func`` behind :func:`prepare_worker`; pickles as a reference to ``func``.

    A closure would be pickled by value (several KB with dill) and shipped with every task;
    this object travels as the class and ``func``'s importable name (tens of bytes).
    """

    def __init__(self, func: Callable[P, R]) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        prepare_worker()
        return self.func(*args, **kwargs)

    def __reduce__(self) -> tuple[type[_InSlice[P, R]], tuple[Callable[P, R]]]:
        return (type(self), (self.func,))


def in_slice(func: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``func`` so that it runs only after :func:`prepare_worker` succeeded in its process.

    The wrapper keeps ``func``'s name, signature and docstring (``functools.update_wrapper``),
    which Parsl reads for its special keyword arguments and for caching.
    """
    return _InSlice(func)


def current_slice() -> dict[str, str | None]:
    """What this worker sees of its slice; call it from inside a ``gpu_app`` task.

    Returns:
        ``CUDA_VISIBLE_DEVICES``, the ``CUDA_MPS_*`` client variables, ``GPUSLICE_POOL``, the
        ``PARSL_WORKER_*`` variables (None where unset), plus ``pid`` and, once
        :func:`prepare_worker` ran in this process, ``visible_sms`` and ``expected_sms``.
    """
    seen: dict[str, str | None] = {name: os.environ.get(name) for name in SLICE_VARS}
    seen["pid"] = str(os.getpid())
    done = _Cache.check
    if done is not None and done.pid == os.getpid():
        seen["visible_sms"] = None if done.visible_sms is None else str(done.visible_sms)
        seen["expected_sms"] = None if done.expected_sms is None else str(done.expected_sms)
    return seen
