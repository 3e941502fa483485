"""Functions the right-sizing tests profile and route (importable by workers as tests.rightsize.funcs)."""

from __future__ import annotations

from typing import Any


def quick(scale: float = 1.0) -> dict[str, Any]:
    """A short emulated call: 20 ms alone, kernels on 30% of the SMs, 512 MiB."""
    from gpuslice.emulate.kernel import kernel

    result = kernel(20 * scale, duty=0.5, occupancy=0.3, memory=512)
    return {"ms": result.duration_ms}


def hungry() -> dict[str, Any]:
    """An emulated call that holds 30 GiB."""
    from gpuslice.emulate.kernel import kernel

    return {"ms": kernel(10, occupancy=0.5, memory="30GiB").duration_ms}


def broken() -> None:
    """Always fails."""
    raise RuntimeError("this function is broken")


def where() -> str:
    """The pool a call ran in."""
    import os

    return os.environ.get("GPUSLICE_POOL", "")
