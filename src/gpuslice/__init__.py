"""gpuslice: fine-grained NVIDIA GPU slices (MPS, MIG, time-sharing) for Parsl workflows.

The public API (DESIGN.md, "Public Python names")::

    inv    = gpuslice.discover(fleet=None)
    plan   = gpuslice.load_plan("plan.yaml")
    layout = gpuslice.resolve(plan, inv)
    config = gpuslice.parsl_config(plan, fleet=None, provider=None)

    @gpuslice.gpu_app(pool="small")
    def infer(batch): ...

Names are imported on first use, so small programs that import a gpuslice module start fast.
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

if TYPE_CHECKING:
    from gpuslice.hardware.inventory import Gpu, Inventory, MigDevice, discover
    from gpuslice.parsl.app import gpu_app
    from gpuslice.parsl.config import parsl_config
    from gpuslice.plan.layout import Layout, PoolLayout, Slice
    from gpuslice.plan.load import load_plan
    from gpuslice.plan.resolve import resolve
    from gpuslice.plan.schema import Plan

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

# Imported on first use: helper programs (the emulated MPS control daemon, worker-side
# checks) import gpuslice submodules and should not pay for pydantic or Parsl at start-up.
_LAZY = {
    "Gpu": "gpuslice.hardware.inventory",
    "Inventory": "gpuslice.hardware.inventory",
    "MigDevice": "gpuslice.hardware.inventory",
    "discover": "gpuslice.hardware.inventory",
    "Layout": "gpuslice.plan.layout",
    "PoolLayout": "gpuslice.plan.layout",
    "Slice": "gpuslice.plan.layout",
    "load_plan": "gpuslice.plan.load",
    "resolve": "gpuslice.plan.resolve",
    "Plan": "gpuslice.plan.schema",
    "parsl_config": "gpuslice.parsl.config",
    "gpu_app": "gpuslice.parsl.app",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gpuslice' has no attribute {name!r}")
