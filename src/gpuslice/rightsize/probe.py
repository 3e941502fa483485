"""Measure slice sizes through real Parsl workers, one size at a time, on one DataFlowKernel.

A :class:`Prober` starts one DataFlowKernel for a whole profiling run (its own, not the one
``parsl.load`` may hold, so a user's loaded workflow is left alone). For each size it adds a
executor built by :func:`gpuslice.parsl.config.parsl_config` for a one-pool plan
(``n`` MPS slices of ``c`` percent on the profiled GPU, each with the memory cap the profile
would recommend), so the workers enter their slices exactly as a production pool does: MPS
daemon checked, limits exported before CUDA starts, the SM count verified in each worker.
Parsl cannot remove an executor from a running DataFlowKernel (``dfk.add_executors`` has no
counterpart), so once a size is measured its block is scaled in: its workers exit and their
MPS clients are gone before the next size starts. The configuration uses ``strategy="none"``
so nothing scales the block back out.

Per size (:meth:`Prober.measure`):

1. warm-up: one call in every worker (imports, CUDA context, model load), not timed; a worker
   whose slice check failed gets another call (its check runs again), and from then on only a
   few first calls run at once (:meth:`Prober._warm_up`);
2. alone: a few calls one after another, the rest of the GPU idle (``Point.alone_ms``);
3. filled: ``rounds x n`` calls submitted at once, so every slice is busy and co-located
   slices interfere as they would in production; their times and the window in which all
   slices were busy give the latency and throughput of :class:`~gpuslice.rightsize.measure.Point`.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any

from gpuslice.errors import GpusliceError, MpsError, UsageError
from gpuslice.hardware.inventory import Gpu, Inventory
from gpuslice.parsl.worker import SliceCheckError
from gpuslice.rightsize.identity import Call, module_root
from gpuslice.rightsize.measure import Point, Sample, held_call, summarize, timed_call
from gpuslice.rightsize.search import Size

__all__ = ["ALONE_CALLS", "FILLED_SAMPLES", "ProbeError", "Prober"]

#: Calls timed one after another with the rest of the GPU idle.
ALONE_CALLS = 3
#: At least this many calls are timed with the GPU filled (two rounds at the least).
FILLED_SAMPLES = 24
#: First calls started at once during warm-up once a slice check has failed (each checks its
#: slice; many at once overload a small host's MPS control program). Before that, all at once.
WARM_AT_ONCE = 4
#: Failed slice checks during one size's warm-up before giving up.
WARM_START_FAILURES = 24
#: Longest warm-up of one size, seconds.
WARM_TIMEOUT_S = 600.0


class ProbeError(GpusliceError):
    """Workers could not enter their slices (no MPS daemon, wrong SM count): nothing measured."""


class Prober:
    """Measures one function in slices of several sizes on one GPU (a context manager).

    Args:
        func: the function (importable by its module and name, so workers can load it).
        call: the arguments to call it with.
        inventory: the GPUs (NVML, or an emulated fleet).
        gpu: index of the GPU to profile on.
        fleet: the fleet file behind an emulated inventory.
        run_dir: Parsl's run directory (default: a temporary one, removed afterwards).
        samples: calls timed with the GPU filled, per size (at least two rounds).
        alone: calls timed alone, per size.
    """

    def __init__(
        self,
        func: Callable[..., Any],
        call: Call,
        inventory: Inventory,
        *,
        gpu: int = 0,
        fleet: str | None = None,
        run_dir: str | None = None,
        samples: int = FILLED_SAMPLES,
        alone: int = ALONE_CALLS,
    ) -> None:
        found = inventory.find(gpu)
        if found is None:
            raise UsageError(
                f"GPU {gpu} is not here ({len(inventory.gpus)} GPUs on {inventory.source}); "
                "pick one of `gpuslice gpus`"
            )
        self.gpu: Gpu = found
        self.func = func
        self.call = call
        self.inventory = inventory
        self.fleet = fleet
        self.samples = max(2, samples)
        self.alone = max(0, alone)
        self._run_dir = run_dir
        self._owned_run_dir = run_dir is None
        self._dfk: Any = None
        self._pipe_dirs: set[str] = set()
        self._sequence = 0

    def __enter__(self) -> Prober:
        from parsl.config import Config
        from parsl.dataflow.dflow import DataFlowKernel

        if self._run_dir is None:
            self._run_dir = tempfile.mkdtemp(prefix="gpuslice-profile-")
        # strategy "none": a scaled-in size stays scaled in.
        config = Config(executors=[], strategy="none", run_dir=self._run_dir)
        self._dfk = DataFlowKernel(config)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        from gpuslice.mps.daemon import stop

        try:
            if self._dfk is not None:
                self._dfk.cleanup()
        finally:
            self._dfk = None
            for pipe_dir in sorted(self._pipe_dirs):
                with contextlib.suppress(Exception):  # already gone is fine
                    stop(pipe_dir, timeout=5)
            if self._owned_run_dir and self._run_dir is not None:
                shutil.rmtree(self._run_dir, ignore_errors=True)

    def _executor(self, size: Size, memory_mib: int | None) -> tuple[str, Any]:
        from parsl.providers import LocalProvider

        from gpuslice.parsl.config import parsl_config
        from gpuslice.parsl.executor import SliceExecutor
        from gpuslice.plan.resolve import resolve

        self._sequence += 1
        label = f"probe{self._sequence}-{size.per_gpu}x{size.compute}"
        mps: dict[str, Any] = {"compute": size.compute}
        if memory_mib is not None:
            mps["memory"] = f"{memory_mib}MiB"
        plan = {
            "version": 1,
            "gpus": [self.gpu.index],
            "pools": {label: {"mps": mps, "per_gpu": size.per_gpu}},
        }
        layout = resolve(json.dumps(plan), self.inventory)
        root = module_root(self.func)
        init = f'export PYTHONPATH={json.dumps(root)}:"$PYTHONPATH"' if root else ""
        # The block is launched here, not by Parsl's status poller (init_blocks=0): a poller
        # thread that died on another executor's failure would leave this one without workers.
        provider = LocalProvider(  # type: ignore[no-untyped-call]
            init_blocks=0, min_blocks=0, max_blocks=1, worker_init=init
        )
        # The pool's executor as parsl_config builds it (its own node group: node-run starts the
        # MPS daemon and the slice's workers, and stops the daemon when the block ends).
        (executor,) = parsl_config(layout, provider=provider).executors
        assert isinstance(executor, SliceExecutor)
        self._pipe_dirs.update(d.pipe_dir for d in layout.daemons)
        self._dfk.add_executors([executor])
        executor.scale_out_facade(1)
        return label, executor

    def _warm_up(self, label: str, size: Size, errors: list[str]) -> None:
        """Run one call in every worker; after a failed slice check, :data:`WARM_AT_ONCE` at a time.

        Each warm-up call holds its worker at a gate once it has run (:func:`held_call`), so
        every new call reaches a worker that has not run yet. A worker whose slice check
        failed (its MPS daemon's ping timed out on a loaded host, say) checks again at its
        next call, so such failures are retried; the function's own failures end the warm-up
        (appended to ``errors``).

        Raises:
            ProbeError: workers still could not enter their slices after
                :data:`WARM_START_FAILURES` failures or :data:`WARM_TIMEOUT_S` seconds.
        """
        from parsl.executors.errors import BadStateException

        from gpuslice.parsl.app import gpu_app

        hold = gpu_app(pool=label, data_flow_kernel=self._dfk)(held_call)
        args, kwargs = list(self.call.args), dict(self.call.kwargs or {})
        assert self._run_dir is not None
        gate = Path(tempfile.mkdtemp(prefix="warm-", dir=self._run_dir))
        pending: list[Future[Any]] = []
        failures: list[BaseException] = []
        deadline = time.monotonic() + WARM_TIMEOUT_S
        try:
            while True:
                ready = len(list(gate.glob("ready-*")))
                if ready >= size.per_gpu:
                    return
                running = [f for f in pending if not f.done()]
                for future in [f for f in pending if f.done()]:
                    pending.remove(future)
                    try:
                        future.result()
                    except (MpsError, SliceCheckError) as err:
                        failures.append(err)
                    except BadStateException as err:  # the block did not start (worker_init)
                        raise ProbeError(
                            f"the workers of {size.per_gpu} slice(s) of {size.compute}% did not "
                            f"start: {err}"
                        ) from err
                    except Exception as err:  # the function failed: a measurement
                        errors.append(f"{type(err).__name__}: {err}")
                        return
                if len(failures) >= WARM_START_FAILURES or time.monotonic() > deadline:
                    last = failures[-1] if failures else "no call reached a worker in time"
                    raise ProbeError(
                        f"workers of {size.per_gpu} slice(s) of {size.compute}% could not enter "
                        f"their slices ({len(failures)} failed starts, {ready} of "
                        f"{size.per_gpu} ready): {last}. Check `gpuslice mps status`; on a "
                        "heavily loaded host, profile with fewer slices (--max-per-gpu)"
                    )
                starting = len(running) - ready
                at_once = WARM_AT_ONCE if failures else size.per_gpu
                while starting < at_once and len(running) < size.per_gpu:
                    future = hold(self.func, args, kwargs, str(gate), WARM_TIMEOUT_S)
                    pending.append(future)
                    running.append(future)
                    starting += 1
                time.sleep(0.05)
        finally:
            (gate / "open").touch()
            for future in pending:
                with contextlib.suppress(Exception):
                    future.result(timeout=WARM_TIMEOUT_S)
            shutil.rmtree(gate, ignore_errors=True)

    def measure(self, size: Size, memory_mib: int | None) -> Point:
        """Fill the GPU with slices of ``size`` (each capped at ``memory_mib``) and measure.

        Returns:
            The point; a failure point (``Point.failed`` > 0, no latencies) when the function
            failed, e.g. out of memory under the cap.

        Raises:
            ProbeError: workers could not enter their slices (their MPS daemon did not answer,
                or they saw another SM count): an environment problem, not a measurement.
            UsageError: used outside ``with``.
        """
        if self._dfk is None:
            raise UsageError("Prober.measure runs inside `with Prober(...) as prober:`")
        from parsl.executors.errors import BadStateException

        from gpuslice.parsl.app import gpu_app

        started = time.perf_counter()
        label, executor = self._executor(size, memory_mib)
        app = gpu_app(pool=label, data_flow_kernel=self._dfk)(timed_call)
        args, kwargs = list(self.call.args), dict(self.call.kwargs or {})
        errors: list[str] = []
        start_failures: list[BaseException] = []

        def run(count: int) -> list[Sample]:
            futures: list[Future[Any]] = [app(self.func, args, kwargs) for _ in range(count)]
            done: list[Sample] = []
            for future in futures:
                try:
                    done.append(Sample.from_dict(future.result()))
                except (MpsError, SliceCheckError, BadStateException) as err:  # not in its slice
                    start_failures.append(err)
                except Exception as err:  # the function failed: a measurement, not a crash
                    errors.append(f"{type(err).__name__}: {err}")
            return done

        try:
            self._warm_up(label, size, errors)
            ready = not errors
            startup = time.perf_counter() - started
            alone: list[Sample] = []
            packed: list[Sample] = []
            if ready:
                for _ in range(self.alone):
                    alone += run(1)
                rounds = max(2, math.ceil(self.samples / size.per_gpu))
                packed = run(rounds * size.per_gpu)
            if start_failures and not packed:
                raise ProbeError(f"workers left their slices while measuring: {start_failures[-1]}")
        finally:
            with contextlib.suppress(Exception):  # the block may already be gone
                executor.scale_in_facade(1)
        seconds = time.perf_counter() - started
        if errors and not packed:
            return Point.failure(
                size.per_gpu,
                size.compute,
                size.sms,
                memory_mib,
                errors[0],
                max(1, len(errors)),
                seconds,
            )
        point = summarize(
            per_gpu=size.per_gpu,
            compute=size.compute,
            sms=size.sms,
            memory_mib=memory_mib,
            alone=alone,
            packed=packed,
            seconds=seconds,
            startup_s=startup,
        )
        if errors:
            point = Point.from_dict({**point.to_dict(), "failed": len(errors), "error": errors[0]})
        return point

    @property
    def run_dir(self) -> Path | None:
        """Parsl's run directory of this profiling run."""
        return Path(self._run_dir) if self._run_dir is not None else None
