"""Parsl integration: one HighThroughputExecutor per pool, and apps bound to a pool.

- :mod:`gpuslice.parsl.config` — :func:`~gpuslice.parsl.config.parsl_config` turns a plan (or a
  resolved layout) into a ``parsl.Config``: one executor per pool, labelled with the pool's name,
  whose workers each get one slice's device UUID and whose ``worker_init`` starts the pool's MPS
  daemons and exports its limits.
- :mod:`gpuslice.parsl.app` — :func:`~gpuslice.parsl.app.gpu_app`, a ``python_app`` bound to a
  pool.
- :mod:`gpuslice.parsl.worker` — what runs inside a worker before its first task: point it at its
  MPS daemon and check the limit it really got (:func:`~gpuslice.parsl.worker.prepare_worker`),
  and :func:`~gpuslice.parsl.worker.current_slice` to see the slice from inside a task.
- :mod:`gpuslice.parsl.globus` — the same pool as a Globus Compute endpoint configuration.

This package is called ``parsl`` inside ``gpuslice``; its modules import the real Parsl with
absolute imports (``import parsl``), which Python 3 never resolves to this package.
Nothing is imported here, so ``import gpuslice`` does not import Parsl.
"""
