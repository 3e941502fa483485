"""What runs inside a Parsl worker around every task: the slice guard.

``gpuslice node-run`` starts one Parsl worker pool per (pool, device) on a node, with that
slice's environment already set (``CUDA_VISIBLE_DEVICES``, the MPS pipe and log directories, the
compute and memory limits), so whatever a task is — ``gpu_app``, ``python_app``, ``bash_app`` — it
starts inside its slice. Every task of a :class:`~gpuslice.parsl.executor.SliceExecutor` then runs
through :func:`execute_task` (Parsl's documented ``task_executor`` hook), which:

1. before the first task of the process, checks the slice (:func:`prepare_worker`): the worker's
   device is its pool's, its MPS daemon answers (a CUDA client that cannot reach its daemon runs
   without any limit, silently: REFERENCE.md, "CUDA MPS"), and the SM count CUDA reports inside
   the slice matches the plan within one MPS granule (``torch`` on a GPU, the emulated GPU
   otherwise; skipped with a logged reason when neither can say, e.g. a GPU model gpuslice does
   not know);
2. before every later task, checks cheaply that the daemon is still there and, where this process
   already is an MPS client, that its context is alive;
3. supervises: a worker whose daemon is gone while it has no CUDA context runs the (lock-safe)
   ``ensure`` and goes on, or fails the task with a message naming the GPU and the daemon if the
   daemon cannot be had within :data:`RECOVERY_WAIT_S` (slowly, so it swallows no tasks); a worker
   whose CUDA context died with its MPS daemon or server cannot recover (a lost context is lost for
   the process), so it leaves: it exits at once, Parsl reports the task as lost with its worker
   and retries it (``Config(retries=…)``), and the worker pool starts a fresh worker.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from gpuslice.errors import GpusliceError, MpsError
from gpuslice.mps import env as mps_env
from gpuslice.mps.limits import SM_GRANULARITY

__all__ = [
    "DEVICE_ENV",
    "EMULATED_ENV",
    "EXPECTED_SMS_ENV",
    "HOLDER_ENV",
    "HOLDER_PID_ENV",
    "NODE_ENV",
    "SLICE_LOST_EXIT",
    "SliceCheck",
    "SliceCheckError",
    "current_slice",
    "execute_task",
    "prepare_worker",
]

logger = logging.getLogger(__name__)

# What gpuslice node-run exports for each worker pool it starts (gpuslice.parsl.node imports
# these names from here, so a worker never imports Parsl's configuration machinery).
#: The slice's device: the ``GPU-…``/``MIG-…`` UUID its workers get as CUDA_VISIBLE_DEVICES.
DEVICE_ENV = "GPUSLICE_DEVICE"
#: The SMs CUDA should report inside the slice (absent when the plan cannot know them).
EXPECTED_SMS_ENV = "GPUSLICE_EXPECTED_SMS"
#: ``1`` when the slice is on the emulated GPU (workers check the emulated limit).
EMULATED_ENV = "GPUSLICE_EMULATED"
#: The node the worker runs on, as node-run names it in messages.
NODE_ENV = "GPUSLICE_NODE"
#: The lease holder that keeps the node's MPS daemons (a worker that restarts one leases it
#: for the same holder, so node-run stops it at the end).
HOLDER_ENV = "GPUSLICE_HOLDER"
#: The process that holder is (node-run): the lease lives with it, not with the worker.
HOLDER_PID_ENV = "GPUSLICE_HOLDER_PID"

#: MPS rounds a thread percentage down to a hardware granule. The plan's figure already
#: rounds down to whole SM pairs (gpuslice.mps.limits), but that granularity was observed by
#: third parties, not documented by NVIDIA, so CUDA may report up to one granule fewer.
SM_ROUNDING = SM_GRANULARITY
#: Seconds a worker without a CUDA context waits for its MPS daemon to come back before it
#: fails the task (node-run's supervisor or the worker's own ``ensure`` restarts it).
RECOVERY_WAIT_S = 15.0
#: Exit status of a worker that left because its CUDA context died with its MPS daemon.
SLICE_LOST_EXIT = 75

#: Variables :func:`current_slice` reports.
SLICE_VARS = (
    mps_env.VISIBLE,
    mps_env.PIPE,
    mps_env.LOG,
    mps_env.COMPUTE,
    mps_env.MEMORY,
    mps_env.POOL,
    DEVICE_ENV,
    NODE_ENV,
    "PARSL_WORKER_RANK",
    "PARSL_WORKER_COUNT",
    "PARSL_WORKER_POOL_ID",
    "PARSL_WORKER_BLOCK_ID",
)


class SliceCheckError(GpusliceError):
    """A worker did not get the slice its plan gives it (wrong device, wrong SM count)."""


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
        daemon_pid: the MPS control daemon the worker's slice uses, when it has one.
    """

    pool: str | None
    device: str | None
    expected_sms: int | None
    visible_sms: int | None
    source: str
    pid: int
    daemon_pid: int | None = None


class _State:
    """This process's check (per PID, so a forked child checks again)."""

    check: SliceCheck | None = None
    lock = threading.Lock()


def _where(environ: Mapping[str, str]) -> str:
    node = environ.get(NODE_ENV) or "this node"
    return f"{environ.get(mps_env.VISIBLE) or '?'} on {node}"


def _expected(environ: Mapping[str, str]) -> int | None:
    text = environ.get(EXPECTED_SMS_ENV, "").strip()
    return int(text) if text.isdigit() else None


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


def _daemon_pid(environ: Mapping[str, str]) -> int | None:
    """The live daemon of the worker's pipe directory (its record, else the socket's listener)."""
    from gpuslice.mps.daemon import daemon_pid

    pipe = environ.get(mps_env.PIPE)
    return daemon_pid(pipe) if pipe else None


def _daemon_answers(environ: MutableMapping[str, str]) -> bool:
    """The worker's MPS daemon answers, after a lock-safe ``ensure`` if it did not."""
    from gpuslice.mps import control, daemon

    pipe = environ[mps_env.PIPE]
    if control.ping(pipe):
        return True
    log_dir = environ.get(mps_env.LOG) or pipe
    device = environ.get(mps_env.VISIBLE)
    holder = environ.get(HOLDER_ENV) or None
    holder_pid = environ.get(HOLDER_PID_ENV, "")
    deadline = time.monotonic() + RECOVERY_WAIT_S
    problem = "it does not answer"
    while True:
        try:
            daemon.ensure(
                pipe,
                log_dir,
                device,
                holder=holder,
                holder_pid=int(holder_pid) if holder and holder_pid.isdigit() else None,
            )
            return True
        except MpsError as err:
            problem = str(err)
        if time.monotonic() > deadline:
            break
        time.sleep(1.0)
    raise MpsError(
        f"the MPS daemon of {_where(environ)} (pipe directory {pipe}) is gone and could not be "
        f"restarted within {RECOVERY_WAIT_S:g}s: {problem}. A CUDA client without its daemon "
        "would run without any limit, so the task was not run; see `gpuslice mps status`"
    )


def _check(environ: MutableMapping[str, str]) -> SliceCheck:
    pool = environ.get(mps_env.POOL)
    device = environ.get(mps_env.VISIBLE)
    if pool is None:
        # Not started by gpuslice node-run: nothing was promised, so nothing to check.
        return SliceCheck(None, device, None, None, "none", os.getpid())
    planned = environ.get(DEVICE_ENV)
    if not device or (planned and device != planned):
        raise SliceCheckError(
            f"this worker of pool {pool!r} has CUDA_VISIBLE_DEVICES={device!r}, not its slice's "
            f"device {planned!r}; run it through gpuslice.parsl_config (one device UUID per "
            "worker)"
        )
    daemon_pid = None
    if environ.get(mps_env.PIPE):
        _daemon_answers(environ)
        daemon_pid = _daemon_pid(environ)
    expected = _expected(environ)
    if expected is None:
        logger.info(
            "gpuslice: pool %s on %s: the plan does not know this device's SM count (a GPU model "
            "outside gpuslice's catalog), so the worker does not check its SM limit",
            pool,
            device,
        )
        return SliceCheck(pool, device, None, None, "none", os.getpid(), daemon_pid)
    visible, source = _visible_sms(environ)
    if visible is None:
        logger.warning(
            "gpuslice: pool %s on %s: cannot read the SM count here (no torch with CUDA); "
            "the MPS daemon answered, the limit itself is not verified",
            pool,
            device,
        )
    elif not expected - SM_ROUNDING <= visible <= max(expected, 2):
        what = (
            "its MPS limit did not apply (no limit at all)"
            if visible > expected
            else "it got fewer SMs than planned (a lower daemon default, or another limit)"
        )
        raise SliceCheckError(
            f"worker {os.getpid()} of pool {pool!r} on {_where(environ)} sees {visible} SMs "
            f"({source}) but its slice should see {expected}: {what}. Check `gpuslice mps status` "
            "and the pool's CUDA_MPS_ACTIVE_THREAD_PERCENTAGE; the task was not run"
        )
    return SliceCheck(pool, device, expected, visible, source, os.getpid(), daemon_pid)


def prepare_worker(environ: MutableMapping[str, str] | None = None) -> SliceCheck:
    """Check this worker's slice, once per process.

    Args:
        environ: the environment to read and update; default this process's (``os.environ``).
            A check with an explicit mapping is not cached.

    Returns:
        What was found; cached, so later calls in the same process are free.

    Raises:
        MpsError: the worker's MPS daemon does not answer and cannot be restarted (the task
            must not run unlimited).
        SliceCheckError: the worker has another device, or CUDA reports another SM count than
            the plan gives the slice.
    """
    if environ is not None:
        return _check(environ)
    done = _State.check
    if done is not None and done.pid == os.getpid():
        return done
    with _State.lock:
        done = _State.check
        if done is None or done.pid != os.getpid():
            # A failure is not cached: the next task checks again (the daemon may be back).
            done = _State.check = _check(os.environ)
        return done


def _context_lost(environ: Mapping[str, str]) -> str | None:
    """Why this process's CUDA context is gone with its MPS daemon or server, or None."""
    if environ.get(EMULATED_ENV) == "1":
        from gpuslice.emulate.kernel import CudaError, check_context

        try:
            check_context()
        except CudaError as err:
            return str(err)
        return None
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None  # no context yet: nothing to lose
    check = _State.check
    from gpuslice.mps.daemon import process_alive

    if check is not None and check.daemon_pid is not None and not process_alive(check.daemon_pid):
        return f"its MPS control daemon {check.daemon_pid} exited"
    return None


def _leave(environ: Mapping[str, str], why: str) -> None:
    """Exit this worker at once: Parsl retries its task, the worker pool starts a new worker."""
    message = (
        f"gpuslice: worker {os.getpid()} of pool {environ.get(mps_env.POOL)!r} on "
        f"{_where(environ)} leaves: its CUDA context is lost ({why}); MPS daemon pipe directory "
        f"{environ.get(mps_env.PIPE)}. Parsl reports the task lost with this worker and retries "
        "it; a new worker starts in its place"
    )
    logger.critical(message)
    print(message, file=sys.stderr, flush=True)
    os._exit(SLICE_LOST_EXIT)


def _before_task() -> None:
    environ = os.environ
    if environ.get(mps_env.POOL) is None:
        return
    done = _State.check
    if done is None or done.pid != os.getpid():
        prepare_worker()
        return
    if not environ.get(mps_env.PIPE):
        return
    lost = _context_lost(environ)
    if lost is not None:
        _leave(environ, lost)
    from gpuslice.mps.daemon import process_alive

    if done.daemon_pid is not None and not process_alive(done.daemon_pid):
        # No context to lose: restart the daemon (or wait for node-run to) and go on.
        _daemon_answers(environ)
        with _State.lock:
            _State.check = SliceCheck(
                done.pool,
                done.device,
                done.expected_sms,
                done.visible_sms,
                done.source,
                done.pid,
                _daemon_pid(environ),
            )


def execute_task(buffer: bytes, *args: Any, **kwargs: Any) -> Any:
    """Run one task inside this worker's slice (Parsl's ``task_executor`` hook).

    Args:
        buffer: the task as Parsl packed it (``pack_apply_message``).
        *args: extra arguments from the task context, passed on to Parsl's ``execute_task``.
        **kwargs: likewise.

    Returns:
        The task's result.

    Raises:
        MpsError: the slice's MPS daemon is gone and could not be had again.
        SliceCheckError: the worker is not in the slice its plan gives it.
    """
    from parsl.executors.execute_task import execute_task as parsl_execute_task

    _before_task()
    try:
        return parsl_execute_task(buffer, *args, **kwargs)
    except BaseException:
        if os.environ.get(mps_env.PIPE):
            lost = _context_lost(os.environ)
            if lost is not None:
                _leave(os.environ, lost)
        raise


def current_slice() -> dict[str, str | None]:
    """What this worker sees of its slice; call it from inside a task.

    Returns:
        ``CUDA_VISIBLE_DEVICES``, the ``CUDA_MPS_*`` client variables, ``GPUSLICE_POOL``,
        ``GPUSLICE_DEVICE``, ``GPUSLICE_NODE``, the ``PARSL_WORKER_*`` variables (None where
        unset), plus ``pid`` and, once the worker checked its slice, ``visible_sms`` and
        ``expected_sms``.
    """
    seen: dict[str, str | None] = {name: os.environ.get(name) for name in SLICE_VARS}
    seen["pid"] = str(os.getpid())
    done = _State.check
    if done is not None and done.pid == os.getpid():
        seen["visible_sms"] = None if done.visible_sms is None else str(done.visible_sms)
        seen["expected_sms"] = None if done.expected_sms is None else str(done.expected_sms)
    return seen
