"""MIG layer: what MIG instances a plan needs, whether they are there, and how to create them.

Modelled on NVIDIA's mig-parted: ``assert`` before ``apply``, so applying is idempotent.

- :mod:`gpuslice.mig.layout` — the instances a plan's ``mig:`` pools need on each GPU, and the
  instances an inventory has (``required_instances``, ``current_instances``).
- :mod:`gpuslice.mig.check` — ``assert_layout(plan, inventory) -> MigDiff``: what is missing,
  what is present, which GPUs need MIG mode turned on (``gpuslice mig assert``).
- :mod:`gpuslice.mig.apply` — the ``nvidia-smi mig`` commands that create the missing
  instances, and ``apply`` which runs them (root only, idle GPUs only, never on an emulated
  fleet, never destroying anything) (``gpuslice mig apply``).
"""

from __future__ import annotations

# ``apply`` (the function) is not re-exported: it would hide the ``gpuslice.mig.apply`` module.
from gpuslice.mig.apply import ApplyReport, plan_commands
from gpuslice.mig.check import GpuMigDiff, MigDiff, assert_layout
from gpuslice.mig.layout import current_instances, required_instances

__all__ = [
    "ApplyReport",
    "GpuMigDiff",
    "MigDiff",
    "assert_layout",
    "current_instances",
    "plan_commands",
    "required_instances",
]
