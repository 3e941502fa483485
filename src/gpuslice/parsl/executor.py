"""The executor of one pool: Parsl's HighThroughputExecutor, with every task guarded.

:class:`SliceExecutor` differs from ``HighThroughputExecutor`` in three ways, each through an
interface Parsl documents:

- **Every task runs through gpuslice's guard.** ``HighThroughputExecutor.submit_payload``
  documents a ``task_executor`` entry of a task's context: the worker imports that function and
  calls it with the task's buffer instead of Parsl's ``execute_task``. :meth:`SliceExecutor.submit`
  names :func:`gpuslice.parsl.worker.execute_task` there, which checks the worker's slice (its
  device, its MPS daemon, the limit CUDA reports) before the task and hands the buffer to Parsl's
  own ``execute_task``. So ``python_app``, ``bash_app`` and ``gpu_app`` tasks are all guarded,
  not only gpu_app's.
- **Its workers are started by ``gpuslice node-run``.** The launch command is Parsl's own
  ``process_worker_pool.py`` command without the worker count and the accelerators: the node's
  ``gpuslice node-run`` (:mod:`gpuslice.parsl.node`) starts one worker pool per device of the
  pool on that node, with the device's slice environment (MPS pipe directory, limits), and adds
  the worker count and the device's UUID as accelerators. Its blocks are submitted through a
  :class:`gpuslice.parsl.nodes.PoolProvider`, so one batch job per node hosts every pool.
- It knows its pool (:attr:`SliceExecutor.pool`) and layout (:attr:`SliceExecutor.layout`),
  which is how ``gpu_app`` finds pools and ``gpu_app(pool="auto")`` sizes them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from parsl.executors import HighThroughputExecutor

if TYPE_CHECKING:
    from gpuslice.plan.layout import Layout

__all__ = ["TASK_EXECUTOR", "SliceExecutor", "worker_pool_command"]

#: The function a worker runs each task through (``submit_payload``'s ``task_executor``).
TASK_EXECUTOR = "gpuslice.parsl.worker.execute_task"


def _beside_python(name: str) -> str:
    """A console script beside this interpreter (a virtualenv's ``bin`` need not be on PATH)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


def worker_pool_command() -> str:
    """Parsl's worker-pool launch template, without ``{max_workers_per_node}`` and accelerators.

    This is ``DEFAULT_LAUNCH_CMD`` of Parsl's HighThroughputExecutor less its
    ``{max_workers_per_node}`` and ``--available-accelerators {accelerators}`` parts, which
    ``gpuslice node-run`` adds per device on the node; the executable is the one beside this
    interpreter. ``str.format`` leaves the unused names alone, and ``{{block_id}}`` survives
    Parsl's first formatting for its second.
    """
    return (
        f"{_beside_python('process_worker_pool.py')} {{debug}} "
        "-a {addresses} "
        "-p {prefetch_capacity} "
        "-c {cores_per_worker} "
        "-m {mem_per_worker} "
        "--poll {poll_period} "
        "--port={worker_port} "
        "--cert_dir {cert_dir} "
        "--logdir={logdir} "
        "--logconf={logconf} "
        "--block_id={{block_id}} "
        "--hb_period={heartbeat_period} "
        "{address_probe_timeout_string} "
        "--hb_threshold={heartbeat_threshold} "
        "--drain_period={drain_period} "
        "--cpu-affinity {cpu_affinity} "
        "{enable_mpi_mode} "
        "--mpi-launcher={mpi_launcher}"
    )


class SliceExecutor(HighThroughputExecutor):
    """A HighThroughputExecutor for one gpuslice pool (see the module's description).

    Args:
        pool: the pool's name (also the executor's label).
        layout: the resolved layout the pool belongs to.
        **kwargs: HighThroughputExecutor's arguments.
    """

    def __init__(self, *, pool: str, layout: Layout | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pool = pool
        #: The resolved layout the pool belongs to (its slices' sizes and GPUs), which
        #: ``gpu_app(pool="auto")`` matches against a function's profile.
        self.layout = layout
        #: Set once :meth:`start` has formatted the launch command (the node group may then
        #: ask this executor for blocks).
        self.started = False

    def start(self) -> None:
        """Start the interchange; from now on the executor can launch blocks."""
        super().start()  # type: ignore[no-untyped-call]
        self.started = True
        group = getattr(self.provider, "group", None)
        if group is not None:
            group.executor_started(self)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the node group's elastic controller (if any), then shut down as Parsl does."""
        group = getattr(self.provider, "group", None)
        if group is not None:
            group.executor_stopping(self)
        super().shutdown(timeout)

    def submit(
        self, func: Any, resource_specification: dict[str, Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Submit ``func(*args, **kwargs)`` to run through gpuslice's guard in a worker.

        Same as HighThroughputExecutor.submit, plus the documented ``task_executor`` context
        entry that makes the worker run the task through
        :func:`gpuslice.parsl.worker.execute_task`.
        """
        from parsl.serialize import pack_apply_message
        from parsl.serialize.errors import SerializationError

        self.validate_resource_spec(resource_specification)
        try:
            buffer = pack_apply_message(func, args, kwargs, buffer_threshold=1 << 20)
        except TypeError:
            raise SerializationError(func.__name__) from None
        context: dict[str, Any] = {"task_executor": {"f": TASK_EXECUTOR}}
        if resource_specification:
            context["resource_spec"] = resource_specification
        return self.submit_payload(context, buffer)
