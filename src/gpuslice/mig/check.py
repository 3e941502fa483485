"""Assert that the MIG instances a plan needs are present (``gpuslice mig assert``).

Like ``nvidia-mig-parted assert``, this only reads: it compares the instances the plan's
``mig:`` pools need (:func:`gpuslice.mig.layout.required_instances`) with those the inventory
has, and says per GPU what is missing. Unlike mig-parted, which asserts one exact layout,
instances the plan does not need are allowed: other users or whole-plan layouts may use them,
and gpuslice never destroys anything.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuslice.hardware.inventory import Inventory
from gpuslice.mig.layout import current_instances, required_instances
from gpuslice.plan.schema import Plan


def enable_command(gpu_index: int) -> list[str]:
    """The command an administrator runs to turn MIG mode on for one GPU.

    ``nvidia-smi -i <GPU IDs> -mig 1`` (MIG user guide, "Enable MIG Mode":
    https://docs.nvidia.com/datacenter/tesla/mig-user-guide/getting-started-with-mig.html);
    depending on the product the driver resets the GPU, or a reboot is needed.
    """
    return ["nvidia-smi", "-i", str(gpu_index), "-mig", "1"]


@dataclass(frozen=True)
class GpuMigDiff:
    """The MIG state of one GPU that the plan's ``mig:`` pools target.

    Attributes:
        index: GPU index.
        uuid: ``GPU-…`` UUID.
        name: product (or catalog) name.
        mig_enabled: whether MIG mode is on now.
        required: profiles the plan needs here (a sorted multiset).
        present: profiles of every MIG device present here (a sorted multiset, any profile).
        missing: ``required`` minus ``present``: the GPU instances to create.
    """

    index: int
    uuid: str
    name: str
    mig_enabled: bool
    required: tuple[str, ...]
    present: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def satisfied(self) -> bool:
        """MIG mode is on and nothing is missing."""
        return self.mig_enabled and not self.missing

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "mig_enabled": self.mig_enabled,
            "required": list(self.required),
            "present": list(self.present),
            "missing": list(self.missing),
            "satisfied": self.satisfied,
        }


@dataclass(frozen=True)
class MigDiff:
    """What the plan's MIG pools need against what is there, for every GPU they target.

    Attributes:
        gpus: one entry per GPU that needs MIG instances, in index order.
        source: the inventory's source (``nvml`` or ``fleet:<path>``).
        emulated: True when the GPUs are described by a fleet file, not present.
    """

    gpus: tuple[GpuMigDiff, ...]
    source: str
    emulated: bool = False

    @property
    def satisfied(self) -> bool:
        """The present layout already gives every MIG pool its instances."""
        return all(gpu.satisfied for gpu in self.gpus)

    @property
    def mig_mode_off(self) -> tuple[int, ...]:
        """Indices of GPUs that need MIG instances but are not in MIG mode."""
        return tuple(gpu.index for gpu in self.gpus if not gpu.mig_enabled)

    @property
    def missing(self) -> dict[int, tuple[str, ...]]:
        """Profiles to create, per GPU index (only GPUs that lack something)."""
        return {gpu.index: gpu.missing for gpu in self.gpus if gpu.missing}

    def gpu(self, index: int) -> GpuMigDiff:
        """The entry of GPU ``index``.

        Raises:
            KeyError: the plan needs no MIG instance on that GPU.
        """
        for gpu in self.gpus:
            if gpu.index == index:
                return gpu
        raise KeyError(f"the plan needs no MIG instance on GPU {index}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, as ``gpuslice mig assert --json`` prints it."""
        return {
            "satisfied": self.satisfied,
            "source": self.source,
            "emulated": self.emulated,
            "mig_mode_off": list(self.mig_mode_off),
            "enable_commands": [" ".join(enable_command(i)) for i in self.mig_mode_off],
            "gpus": [gpu.to_dict() for gpu in self.gpus],
        }

    def describe(self) -> str:
        """The diff for people, one line per GPU, then what to do."""
        if not self.gpus:
            return "the plan has no mig: pools; nothing to assert"
        lines: list[str] = []
        for gpu in self.gpus:
            head = f"GPU {gpu.index} ({gpu.name})"
            need = _count_text(gpu.required)
            have = _count_text(gpu.present) or "none"
            if not gpu.mig_enabled:
                lines.append(
                    f"{head}: MIG mode is off; the plan needs {need} "
                    f"(enable: {' '.join(enable_command(gpu.index))})"
                )
            elif gpu.missing:
                lines.append(
                    f"{head}: missing {_count_text(gpu.missing)}; needs {need}, has {have}"
                )
            else:
                lines.append(f"{head}: ok; needs {need}, has {have}")
        if self.satisfied:
            lines.append("MIG layout satisfies the plan")
        else:
            lines.append(
                "MIG layout does not satisfy the plan: `gpuslice mig apply PLAN --dry-run` "
                "shows the commands that create the missing instances (root, idle GPU)"
            )
        return "\n".join(lines)


def _count_text(profiles: tuple[str, ...]) -> str:
    counts = Counter(profiles)
    return ", ".join(f"{n}x {p}" for p, n in sorted(counts.items()))


def _multiset_minus(wanted: list[str], have: list[str]) -> tuple[str, ...]:
    left = Counter(wanted)
    left.subtract(Counter(have))
    return tuple(sorted(left.elements()))


def assert_layout(plan: Plan | str | Path, inventory: Inventory) -> MigDiff:
    """Compare the MIG instances a plan needs with those present.

    Args:
        plan: a :class:`Plan`, or anything :func:`gpuslice.load_plan` reads.
        inventory: the GPUs (NVML on a real machine, or a fleet file).

    Returns:
        The :class:`MigDiff`; ``diff.satisfied`` tells whether nothing needs to change.
        A GPU counts as having an instance of profile P when a MIG device named exactly P is
        present (as :func:`gpuslice.plan.resolve.resolve` binds them); a GPU instance split
        into smaller compute instances (``1c.3g.20gb``) does not count as a ``3g.20gb``.

    Raises:
        PlanError: the plan's MIG pools cannot be mapped onto these GPUs at all
            (unknown GPU, a GPU without MIG or without the profile).
    """
    needed = required_instances(plan, inventory)
    present = current_instances(inventory)
    entries: list[GpuMigDiff] = []
    for index, profiles in needed.items():
        gpu = inventory.find(index)
        assert gpu is not None  # required_instances only returns GPUs of the inventory
        have = present.get(index, [])
        entries.append(
            GpuMigDiff(
                index=index,
                uuid=gpu.uuid,
                name=gpu.name,
                mig_enabled=gpu.mig_enabled,
                required=tuple(profiles),
                present=tuple(have),
                missing=_multiset_minus(profiles, have),
            )
        )
    return MigDiff(gpus=tuple(entries), source=inventory.source, emulated=inventory.emulated)
