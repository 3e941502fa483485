"""gpuslice: fine-grained NVIDIA GPU slices (MPS, MIG, time-sharing) for Parsl workflows.

The public API (DESIGN.md, "Public Python names")::

    inv    = gpuslice.discover(fleet=None)
    plan   = gpuslice.load_plan("plan.yaml")
    layout = gpuslice.resolve(plan, inv)
    config = gpuslice.parsl_config(plan, fleet=None, provider=None)

    @gpuslice.gpu_app(pool="small")
    def infer(batch): ...

Parsl is imported only when the Parsl names are first used, so the CLI and planning stay fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpuslice.errors import (
    GpusliceError,
    MigError,
    MpsError,
    NvmlUnavailable,
    PlanError,
    Problem,
    UsageError,
)
from gpuslice.hardware.inventory import Gpu, Inventory, MigDevice, discover
from gpuslice.plan.layout import Layout, PoolLayout, Slice
from gpuslice.plan.load import load_plan
from gpuslice.plan.resolve import resolve
from gpuslice.plan.schema import Plan

if TYPE_CHECKING:
    from gpuslice.parsl.app import gpu_app
    from gpuslice.parsl.config import parsl_config

__version__ = "0.1.0"

__all__ = [
    "Gpu",
    "GpusliceError",
    "Inventory",
    "Layout",
    "MigDevice",
    "MigError",
    "MpsError",
    "NvmlUnavailable",
    "Plan",
    "PlanError",
    "PoolLayout",
    "Problem",
    "Slice",
    "UsageError",
    "discover",
    "gpu_app",
    "load_plan",
    "parsl_config",
    "resolve",
]

_LAZY = {
    "parsl_config": "gpuslice.parsl.config",
    "gpu_app": "gpuslice.parsl.app",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gpuslice' has no attribute {name!r}")
