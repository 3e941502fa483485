"""``@gpu_app``: a Parsl ``python_app`` whose tasks run in one pool's slices.

::

    parsl.load(gpuslice.parsl_config("small=2x mps:25%/10GiB, large=1x mps:50%"))

    @gpuslice.gpu_app(pool="small")
    def infer(batch): ...

    infer(batch).result()

A ``gpu_app`` is called exactly like a ``python_app``: it returns an ``AppFuture``, takes
futures as arguments (dependencies), honours ``Config(retries=…)``, and accepts python_app's
``cache``, ``ignore_for_cache`` and ``data_flow_kernel``. The pool is looked up in the loaded
configuration at the first call (the decorator may run before ``parsl.load``): ``pool=None``
picks the only pool there is, and a pool that is not there is a :class:`~gpuslice.UsageError`
that lists the pools there are. In the worker, every task of a gpuslice executor runs through
gpuslice's slice guard (:func:`gpuslice.parsl.worker.execute_task`), gpu_app's and python_app's
alike: a gpu_app adds only the routing.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, overload

from parsl.app.python import PythonApp
from parsl.dataflow.dflow import DataFlowKernel, DataFlowKernelLoader
from parsl.dataflow.futures import AppFuture
from parsl.errors import NoDataFlowKernelError

from gpuslice.errors import UsageError
from gpuslice.parsl.executor import SliceExecutor
from gpuslice.parsl.worker import current_slice

__all__ = ["GpuApp", "current_slice", "gpu_app", "pools_of"]

P = ParamSpec("P")
R = TypeVar("R")

#: Parsl's own executor for internal tasks; never a pool.
_INTERNAL = "_parsl_internal"


def pools_of(dfk: DataFlowKernel) -> tuple[str, ...]:
    """Labels of the gpuslice pools in a loaded configuration, in configuration order."""
    return tuple(
        label for label, executor in dfk.executors.items() if isinstance(executor, SliceExecutor)
    )


def _choose(pool: str | None, dfk: DataFlowKernel, app: str) -> str:
    pools = pools_of(dfk)
    labels = tuple(label for label in dfk.executors if label != _INTERNAL)
    listed = ", ".join(pools or labels) or "none"
    if pool is None:
        candidates = pools or labels
        if len(candidates) == 1:
            return candidates[0]
        raise UsageError(
            f"gpu_app {app!r} names no pool and the loaded Parsl config has "
            f"{len(candidates)} ({listed}); write @gpu_app(pool=...) with one of them"
        )
    if pool in labels:
        return pool
    raise UsageError(
        f"gpu_app {app!r} asks for pool {pool!r}, which is not in the loaded Parsl config; "
        f"pools there: {listed}. Fix the name, or add the pool to the plan given to "
        "gpuslice.parsl_config"
    )


class GpuApp(Generic[P, R]):
    """A Python app bound to a pool; calling it submits a task and returns its AppFuture.

    Attributes:
        func: the user's function.
        pool: the pool asked for (None: the only pool of the loaded configuration).
        label: the executor label the app was bound to at its last call, or None before.
    """

    def __init__(
        self,
        func: Callable[P, R],
        *,
        pool: str | None = None,
        data_flow_kernel: DataFlowKernel | None = None,
        cache: bool = False,
        ignore_for_cache: Sequence[str] | None = None,
    ) -> None:
        self.func = func
        self.pool = pool
        self.data_flow_kernel = data_flow_kernel
        self.cache = cache
        self.ignore_for_cache = list(ignore_for_cache) if ignore_for_cache else None
        self._bound: tuple[weakref.ref[DataFlowKernel], str, PythonApp] | None = None
        functools.update_wrapper(self, func)

    @property
    def label(self) -> str | None:
        """The executor the app was bound to at its last call (None before its first call)."""
        bound = self._bound
        return bound[1] if bound is not None else None

    def _dfk(self) -> DataFlowKernel:
        if self.data_flow_kernel is not None:
            return self.data_flow_kernel
        try:
            return DataFlowKernelLoader.dfk()
        except NoDataFlowKernelError as err:
            raise UsageError(
                f"gpu_app {self.func.__name__!r} was called before a Parsl config was loaded; "
                "run parsl.load(gpuslice.parsl_config(plan)) first"
            ) from err

    def _app(self) -> PythonApp:
        dfk = self._dfk()
        bound = self._bound
        if bound is not None and bound[0]() is dfk:
            return bound[2]
        if self.pool == "auto":  # right-sizing: the pool the function's profile recommends
            from gpuslice.rightsize.route import auto_pool

            label = auto_pool(self.func, dfk)
        else:
            label = _choose(self.pool, dfk, self.func.__name__)
        app = PythonApp(  # type: ignore[no-untyped-call]
            self.func,
            data_flow_kernel=dfk,
            cache=self.cache,
            executors=[label],
            ignore_for_cache=self.ignore_for_cache,
        )
        self._bound = (weakref.ref(dfk), label, app)
        return app

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> AppFuture:
        """Submit one task to the pool.

        Raises:
            UsageError: no configuration is loaded, or the pool is not in it.
        """
        future: AppFuture = self._app()(*args, **kwargs)
        return future

    def __repr__(self) -> str:
        return f"GpuApp({self.func.__name__!r}, pool={self.pool!r})"


@overload
def gpu_app(function: Callable[P, R], /) -> GpuApp[P, R]: ...


@overload
def gpu_app(
    function: str | None = None,
    /,
    *,
    pool: str | None = None,
    data_flow_kernel: DataFlowKernel | None = None,
    cache: bool = False,
    ignore_for_cache: Sequence[str] | None = None,
) -> Callable[[Callable[P, R]], GpuApp[P, R]]: ...


def gpu_app(
    function: Callable[P, R] | str | None = None,
    /,
    *,
    pool: str | None = None,
    data_flow_kernel: DataFlowKernel | None = None,
    cache: bool = False,
    ignore_for_cache: Sequence[str] | None = None,
) -> Any:
    """Decorate a function as a Parsl Python app that runs in one pool's slices.

    Usable bare (``@gpu_app``: the loaded configuration's only pool), with a pool
    (``@gpu_app(pool="small")`` or ``@gpu_app("small")``), and with ``python_app``'s options.

    Args:
        function: the function (bare use), or the pool's name.
        pool: the pool, i.e. the executor label ``gpuslice.parsl_config`` gave it; None picks
            the only pool of the loaded configuration.
        data_flow_kernel: as for ``python_app``; default the loaded one.
        cache: as for ``python_app``: reuse results of identical calls.
        ignore_for_cache: as for ``python_app``: arguments left out of the cache key.

    Returns:
        A :class:`GpuApp` (or a decorator that makes one).
    """
    if isinstance(function, str):
        if pool is not None and pool != function:
            raise UsageError(f"gpu_app got two pools, {function!r} and {pool!r}; give one")
        pool, function = function, None

    def decorate(func: Callable[P, R]) -> GpuApp[P, R]:
        return GpuApp(
            func,
            pool=pool,
            data_flow_kernel=data_flow_kernel,
            cache=cache,
            ignore_for_cache=ignore_for_cache,
        )

    if function is not None:
        return decorate(function)
    return decorate
