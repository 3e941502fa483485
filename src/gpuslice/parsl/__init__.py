"""Parsl integration: one executor per pool, one job per node for every pool, guarded tasks.

- :mod:`gpuslice.parsl.config` — :func:`~gpuslice.parsl.config.parsl_config` turns a plan (or a
  resolved layout) into a ``parsl.Config``: one executor per pool, labelled with the pool's name.
- :mod:`gpuslice.parsl.executor` — :class:`~gpuslice.parsl.executor.SliceExecutor`, Parsl's
  HighThroughputExecutor with every task run through the slice guard.
- :mod:`gpuslice.parsl.group` — the provider every pool shares: one job per node hosts a block
  of every pool, submitted through the user's provider and launcher.
- :mod:`gpuslice.parsl.node` — ``gpuslice node-run``, what each job runs on its node: resolve the
  plan there, start the MPS daemons and one Parsl worker pool per (pool, device) in its slice's
  environment, supervise, stop everything at the end.
- :mod:`gpuslice.parsl.worker` — the guard around every task inside a worker, and
  :func:`~gpuslice.parsl.worker.current_slice` to see the slice from inside a task.
- :mod:`gpuslice.parsl.app` — :func:`~gpuslice.parsl.app.gpu_app`, a ``python_app`` bound to a
  pool.
- :mod:`gpuslice.parsl.globus` — one pool as a Globus Compute endpoint configuration.

This package is called ``parsl`` inside ``gpuslice``; its modules import the real Parsl with
absolute imports (``import parsl``), which Python 3 never resolves to this package.
Nothing is imported here, so ``import gpuslice`` does not import Parsl.
"""
