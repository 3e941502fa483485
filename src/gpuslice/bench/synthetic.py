"""Synthetic GPU functions for the right-sizing benchmark: emulated kernels of known shape.

Each function is a plain module-level function (importable by name, as ``gpuslice profile``
and Parsl need) that runs one emulated kernel (:func:`gpuslice.emulate.kernel.kernel`) of a
fixed shape: ``work_ms`` alone on a whole H100, a ``duty`` (fraction of that time a kernel
runs; the rest is host gaps), an ``occupancy`` (fraction of the SMs its kernels fill) and a
``memory`` footprint. They span the cases right-sizing must handle:

=============  =====  =====  =========  ======  =========  ===============================
function       work   duty   occupancy  memory  p95 bound  what limits it
=============  =====  =====  =========  ======  =========  ===============================
``decode``     100    0.17   0.40       2 GiB   -          launch gaps: many small slices
``stencil``    60     0.95   1.00       4 GiB   -          fills the GPU: one whole slice
``surrogate``  80     0.90   0.30       3 GiB   -          knee near 30% of the SMs
``embed``      40     0.30   0.50       1 GiB   80 ms      the latency bound
``train``      150    1.00   0.80       5 GiB   -          occupancy; 13 slices fit
``tiny``       30     0.10   0.10       1 GiB   -          launch-bound: smallest slices
``ranker``     40     0.60   0.35       2 GiB   70 ms      latency bound, mid occupancy
``bigmem``     120    0.80   0.60       12 GiB  -          memory: only 5 slices fit
=============  =====  =====  =========  ======  =========  ===============================

``bigmem`` shows the case right-sizing cannot make cheap: memory allows so few sizes (five
on an 80 GB GPU with 20% headroom) that the search measures most of them.

``bandwidth`` (a fraction of the device's memory bandwidth the kernels need while they run) is
part of every shape and None in all of them: these shapes differ in SMs, duty and memory, and the
committed sweep (``benchmarks/rightsize_sweep.py``) was measured so. The emulated GPU shares
bandwidth too (docs/emulation-model.md); a shape given a value passes it to the kernel, and a
shape without one takes no part in bandwidth sharing.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from gpuslice.errors import UsageError

__all__ = [
    "FUNCTIONS",
    "SHAPES",
    "Shape",
    "bigmem",
    "decode",
    "embed",
    "ranker",
    "run_shape",
    "stencil",
    "surrogate",
    "tiny",
    "train",
]


@dataclass(frozen=True)
class Shape:
    """What one call of a synthetic function does on the emulated GPU.

    Attributes:
        work_ms: time alone on a whole H100, ms.
        duty: fraction of that time during which one of its kernels runs.
        occupancy: fraction of the SMs its kernels keep busy while they run.
        memory_mib: device memory it holds while running.
        p95_ms: the latency bound the benchmark profiles it under, or None.
        bandwidth: fraction of the memory bandwidth its kernels need (None: not modelled).
    """

    work_ms: float
    duty: float
    occupancy: float
    memory_mib: int
    p95_ms: float | None = None
    bandwidth: float | None = None


SHAPES: dict[str, Shape] = {
    "decode": Shape(100, 0.17, 0.40, 2048),
    "stencil": Shape(60, 0.95, 1.00, 4096),
    "surrogate": Shape(80, 0.90, 0.30, 3072),
    "embed": Shape(40, 0.30, 0.50, 1024, p95_ms=80),
    "train": Shape(150, 1.00, 0.80, 5120),
    "tiny": Shape(30, 0.10, 0.10, 1024),
    "ranker": Shape(40, 0.60, 0.35, 2048, p95_ms=70),
    "bigmem": Shape(120, 0.80, 0.60, 12288),
}


def run_shape(name: str) -> dict[str, Any]:
    """Run one call of the synthetic function ``name`` on the emulated GPU.

    Raises:
        UsageError: unknown name, or a bandwidth demand the emulator cannot take.
    """
    from gpuslice.emulate.kernel import kernel

    if name not in SHAPES:
        raise UsageError(f"no synthetic function {name!r}; choose one of {', '.join(SHAPES)}")
    shape = SHAPES[name]
    options: dict[str, Any] = {}
    if shape.bandwidth is not None:
        if "bandwidth" not in inspect.signature(kernel).parameters:
            raise UsageError(
                f"synthetic function {name!r} asks for memory bandwidth {shape.bandwidth}, but "
                "this emulated GPU does not model bandwidth; set its bandwidth to None"
            )
        options["bandwidth"] = shape.bandwidth
    result = kernel(
        shape.work_ms,
        duty=shape.duty,
        occupancy=shape.occupancy,
        memory=shape.memory_mib,
        **options,
    )
    return {"ms": result.duration_ms, "mode": result.mode}


def decode() -> dict[str, Any]:
    """LLM-decode-like: short kernels between long launch gaps."""
    return run_shape("decode")


def stencil() -> dict[str, Any]:
    """A stencil sweep that fills every SM."""
    return run_shape("stencil")


def surrogate() -> dict[str, Any]:
    """Surrogate-model inference whose kernels fill about 30% of the SMs."""
    return run_shape("surrogate")


def embed() -> dict[str, Any]:
    """An embedding request with an 80 ms p95 bound."""
    return run_shape("embed")


def train() -> dict[str, Any]:
    """A training step: compute-bound, 5 GiB."""
    return run_shape("train")


def tiny() -> dict[str, Any]:
    """A launch-bound function whose kernels use a tenth of the SMs."""
    return run_shape("tiny")


def ranker() -> dict[str, Any]:
    """A ranking request with a 70 ms p95 bound."""
    return run_shape("ranker")


def bigmem() -> dict[str, Any]:
    """A model that holds 12 GiB: memory decides how many slices fit."""
    return run_shape("bigmem")


#: Name -> function, for scripts that iterate over them.
FUNCTIONS = {
    "decode": decode,
    "stencil": stencil,
    "surrogate": surrogate,
    "embed": embed,
    "train": train,
    "tiny": tiny,
    "ranker": ranker,
    "bigmem": bigmem,
}
