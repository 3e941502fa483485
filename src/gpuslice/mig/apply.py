"""Create the MIG instances a plan lacks (``gpuslice mig apply``): admin only, idle GPUs only.

Assert before apply (the mig-parted habit): :func:`apply` first asks
:func:`gpuslice.mig.check.assert_layout` what is missing and does nothing when the layout
already satisfies the plan, so running it twice changes nothing the second time.

What it never does: destroy an instance, turn MIG mode on, or run anything for an emulated
inventory (a fleet file). When the missing instances do not fit beside the existing ones it
refuses and names the instances that would have to go; when MIG mode is off it prints the
command for the administrator (turning it on may reset the GPU) and stops.

The commands, from NVIDIA's MIG user guide, "Creating GPU Instances"
(https://docs.nvidia.com/datacenter/tesla/mig-user-guide/getting-started-with-mig.html):
``nvidia-smi mig -cgi <profile names or ids, comma separated> -C`` creates the GPU instances
and, with ``-C``, their default compute instances (the guide's example is
``sudo nvidia-smi mig -cgi 9,3g.20gb -C``); ``-i <gpu>`` selects the GPU, one command per
GPU here. The driver picks each instance's placement itself, and the guide warns that a
``3g.20gb`` must come before smaller profiles in one command ("Due to a known issue with the
APIs, the profile ID 9 or 3g.20gb must be specified first"), so profiles are listed largest
first.
"""

from __future__ import annotations

import itertools
import os
import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuslice.errors import MigError
from gpuslice.hardware.catalog import GpuModel, placement_problem
from gpuslice.hardware.inventory import Gpu, Inventory, MigDevice
from gpuslice.mig.check import MigDiff, assert_layout, enable_command
from gpuslice.mig.layout import gi_profile
from gpuslice.plan.schema import Plan

#: Runs one command; ``subprocess.run`` or a stand-in with the same keywords.
Runner = Callable[..., "subprocess.CompletedProcess[Any]"]
#: Lists the PIDs of the compute processes on a device, by ``GPU-…``/``MIG-…`` UUID.
ProcessLister = Callable[[str], Sequence[int]]


def create_command(gpu_index: int, profiles: Sequence[str]) -> list[str]:
    """``nvidia-smi mig -i <gpu> -cgi <p1,p2,…> -C``: create GPU instances and their CIs."""
    return ["nvidia-smi", "mig", "-i", str(gpu_index), "-cgi", ",".join(profiles), "-C"]


@dataclass(frozen=True)
class _Instance:
    """An existing GPU instance (one or more MIG devices share its id)."""

    gpu_instance_id: int
    profile: str
    start: int | None
    uuids: tuple[str, ...]

    def __str__(self) -> str:
        where = f" at memory slice {self.start}" if self.start is not None else ""
        return (
            f"GPU instance {self.gpu_instance_id} ({self.profile}{where}; {', '.join(self.uuids)})"
        )


def _instances(gpu: Gpu) -> list[_Instance]:
    by_id: dict[int, list[MigDevice]] = {}
    for device in gpu.mig_devices:
        by_id.setdefault(device.gpu_instance_id, []).append(device)
    found: list[_Instance] = []
    for gi_id, devices in sorted(by_id.items()):
        starts = {d.placement_start for d in devices}
        start = starts.pop() if len(starts) == 1 else None
        found.append(
            _Instance(gi_id, gi_profile(devices[0].profile), start, tuple(d.uuid for d in devices))
        )
    return found


def _largest_first(model: GpuModel, profiles: Sequence[str]) -> list[str]:
    def key(name: str) -> tuple[int, int, str]:
        profile = model.profile(name)
        if profile is None:
            return (0, 0, name)
        return (-profile.memory_slices, -profile.compute_slices, profile.name)

    return sorted(profiles, key=key)


def _place_beside(model: GpuModel, existing: Sequence[_Instance], missing: Sequence[str]) -> bool:
    """Whether ``missing`` fits in the memory slices the ``existing`` instances leave free."""
    used = [False] * model.memory_slices
    for instance in existing:
        profile = model.profile(instance.profile)
        # Both checked by the caller: known profiles, known starts.
        assert profile is not None
        assert instance.start is not None
        for i in range(instance.start, instance.start + profile.memory_slices):
            if 0 <= i < len(used):
                used[i] = True
    items = [p for p in (model.profile(n) for n in _largest_first(model, missing)) if p]

    def search(i: int) -> bool:
        if i == len(items):
            return True
        profile = items[i]
        for start in profile.placements:
            end = start + profile.memory_slices
            if end > len(used) or any(used[start:end]):
                continue
            used[start:end] = [True] * profile.memory_slices
            if search(i + 1):
                return True
            used[start:end] = [False] * profile.memory_slices
        return False

    return search(0)


def _fits(model: GpuModel, existing: Sequence[_Instance], missing: Sequence[str]) -> bool:
    # Counts (instances per profile, compute and memory slices) and one arrangement of
    # everything on an empty GPU; then, when every existing start is known, an arrangement
    # that leaves the existing instances where they are.
    if placement_problem(model, [e.profile for e in existing] + list(missing)) is not None:
        return False
    if any(e.start is None for e in existing):
        return True
    return _place_beside(model, existing, missing)


def _to_destroy(
    model: GpuModel,
    candidates: Sequence[_Instance],
    missing: Sequence[str],
    kept: Sequence[_Instance] = (),
) -> list[_Instance] | None:
    """The fewest ``candidates`` whose removal would let ``missing`` fit beside the rest."""
    for size in range(1, len(candidates) + 1):
        for combo in itertools.combinations(candidates, size):
            keep = [*kept, *(e for e in candidates if e not in combo)]
            if _fits(model, keep, missing):
                return list(combo)
    return None


def _refuse_mig_mode_off(diff: MigDiff) -> None:
    off = diff.mig_mode_off
    if not off:
        return
    commands = "\n".join(f"  sudo {shlex.join(enable_command(i))}" for i in off)
    raise MigError(
        f"MIG mode is off on GPU{'s' if len(off) > 1 else ''} {', '.join(map(str, off))}, "
        "which the plan's mig: pools need. gpuslice does not turn it on: depending on the "
        "GPU the driver resets it (or a reboot is needed), which ends every process on it. "
        f"An administrator runs, with the GPU idle:\n{commands}\n"
        "then `gpuslice mig apply PLAN` creates the instances."
    )


def _surplus(existing: Sequence[_Instance], required: Sequence[str]) -> list[_Instance]:
    """Existing instances the plan does not need (the only ones worth naming to destroy)."""
    wanted = list(required)
    spare = []
    for instance in existing:
        if instance.profile in wanted:
            wanted.remove(instance.profile)
        else:
            spare.append(instance)
    return spare


def _gpu_commands(
    gpu: Gpu, missing: Sequence[str], required: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The create command for one GPU, and notes; MigError when the instances do not fit."""
    model = gpu.model
    if model is None:
        raise MigError(
            f"GPU {gpu.index} ({gpu.name}) is not in gpuslice's catalog, so its MIG placements "
            "are unknown and gpuslice cannot check that the instances fit; create them by hand "
            f"({shlex.join(create_command(gpu.index, missing))}, see `nvidia-smi mig -lgipp`)"
        )
    existing = _instances(gpu)
    unknown = [e for e in existing if model.profile(e.profile) is None]
    if unknown:
        raise MigError(
            f"GPU {gpu.index} has MIG instances whose profile gpuslice does not know "
            f"({', '.join(str(e) for e in unknown)}), so it cannot check that "
            f"{', '.join(missing)} fit beside them; create them by hand after checking "
            "`nvidia-smi mig -lgi` and `nvidia-smi mig -lgipp`"
        )
    notes: list[str] = []
    if not _fits(model, existing, missing):
        alone = placement_problem(model, list(required))
        if alone is not None:
            raise MigError(
                f"GPU {gpu.index} ({model.name}): the plan's MIG pools need "
                f"{', '.join(required)} on this GPU, which cannot fit on one GPU even when "
                f"empty ({alone}); lower mig.count or use smaller profiles"
            )
        spare = _surplus(existing, required)
        kept = [e for e in existing if e not in spare]
        # Only instances the plan does not use are worth destroying; keep the others.
        victims = [*(_to_destroy(model, spare, missing, kept) or spare)]
        listing = "\n".join(f"  - {v}" for v in victims)
        raise MigError(
            f"GPU {gpu.index} ({model.name}): {', '.join(missing)} do not fit beside the "
            f"existing MIG instances. They would fit only after destroying:\n{listing}\n"
            "gpuslice never destroys instances. If nothing runs on them, an administrator can "
            "destroy them (`nvidia-smi mig -dci` then `-dgi`, see the MIG user guide) and run "
            "`gpuslice mig apply PLAN` again; or change the plan to use what is there."
        )
    if any(e.start is None for e in existing):
        notes.append(
            f"GPU {gpu.index}: the placement of the existing instances is unknown (NVML did not "
            "report it), so the fit was checked by counts only; the driver may still refuse"
        )
    return create_command(gpu.index, _largest_first(model, missing)), notes


def _plan(diff: MigDiff, inventory: Inventory) -> tuple[list[list[str]], list[str]]:
    _refuse_mig_mode_off(diff)
    commands: list[list[str]] = []
    notes: list[str] = []
    for entry in diff.gpus:
        if not entry.missing:
            continue
        gpu = inventory.find(entry.index)
        if gpu is None or gpu.uuid != entry.uuid:
            raise MigError(
                f"GPU {entry.index} of the diff is not in this inventory; assert and apply "
                "against the same GPUs"
            )
        command, gpu_notes = _gpu_commands(gpu, entry.missing, entry.required)
        commands.append(command)
        notes.extend(gpu_notes)
    return commands, notes


def plan_commands(diff: MigDiff, inventory: Inventory) -> list[list[str]]:
    """The ``nvidia-smi mig`` commands that create what ``diff`` says is missing.

    One command per GPU that lacks instances: ``nvidia-smi mig -i <gpu> -cgi <profiles> -C``,
    profiles largest first. Nothing is run.

    Args:
        diff: from :func:`gpuslice.mig.check.assert_layout` on ``inventory``.
        inventory: the same GPUs, for the existing instances and the GPU models.

    Returns:
        The argv lists, in GPU order; ``[]`` when nothing is missing.

    Raises:
        MigError: MIG mode is off on a GPU that needs instances (the message has the command
            that turns it on); the missing instances do not fit beside the existing ones (the
            message names the instances that would have to be destroyed — gpuslice never
            destroys any); or the fit cannot be checked (GPU or profile unknown).
    """
    commands, _ = _plan(diff, inventory)
    return commands


@dataclass(frozen=True)
class ApplyReport:
    """What :func:`apply` found and did.

    Attributes:
        diff: the layout against the plan before anything ran.
        commands: the commands that create the missing instances (argv lists).
        ran: whether the commands were run.
        dry_run: whether this was a dry run (always, for an emulated inventory).
        emulated: whether the inventory was a fleet file (nothing can be run there).
        notes: caveats, e.g. a fit checked by counts only.
        after: the layout against the plan after running, when it was read again.
    """

    diff: MigDiff
    commands: tuple[tuple[str, ...], ...]
    ran: bool
    dry_run: bool
    emulated: bool
    notes: tuple[str, ...] = ()
    after: MigDiff | None = None

    @property
    def nothing_to_do(self) -> bool:
        """The plan's MIG pools were already satisfied."""
        return self.diff.satisfied

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form, as ``gpuslice mig apply --json`` prints it."""
        return {
            "nothing_to_do": self.nothing_to_do,
            "dry_run": self.dry_run,
            "emulated": self.emulated,
            "ran": self.ran,
            "commands": [list(c) for c in self.commands],
            "notes": list(self.notes),
            "before": self.diff.to_dict(),
            "after": self.after.to_dict() if self.after is not None else None,
        }


def _compute_processes(uuid: str) -> Sequence[int]:
    from gpuslice.hardware.nvml import compute_processes

    return compute_processes(uuid)


def _busy(diff: MigDiff, inventory: Inventory, processes: ProcessLister) -> dict[int, list[int]]:
    # As root, NVML answers for a MIG-mode GPU handle with the processes of all its instances
    # ("In MIG mode, if device handle is provided, the API returns aggregate information, only
    # if the caller has appropriate privileges", nvmlDeviceGetComputeRunningProcesses); the
    # MIG devices are asked too, in case it does not.
    busy: dict[int, list[int]] = {}
    for index in diff.missing:
        gpu = inventory.find(index)
        assert gpu is not None
        pids: set[int] = set()
        for uuid in (gpu.uuid, *(d.uuid for d in gpu.mig_devices)):
            pids.update(int(p) for p in processes(uuid))
        if pids:
            busy[index] = sorted(pids)
    return busy


def apply(
    plan: Plan | str | Path,
    inventory: Inventory,
    *,
    dry_run: bool = False,
    runner: Runner = subprocess.run,
    processes: ProcessLister | None = None,
    echo: Callable[[str], None] = print,
    confirm: Callable[[str], bool] | None = None,
    reread: Callable[[], Inventory] | None = None,
) -> ApplyReport:
    """Create the MIG instances the plan's ``mig:`` pools lack; never destroy any.

    Steps: assert (nothing to do when satisfied); refuse when MIG mode is off on a GPU that
    needs instances; build one ``nvidia-smi mig -i N -cgi … -C`` per GPU, refusing when the
    instances do not fit beside the existing ones; stop there for a dry run or an emulated
    inventory (printing the commands); otherwise refuse unless root and unless every GPU
    concerned is idle, ask ``confirm`` if given, then print and run each command.

    Args:
        plan: a :class:`Plan`, or anything :func:`gpuslice.load_plan` reads.
        inventory: the GPUs; an emulated one (fleet file) is always a dry run.
        dry_run: print the commands without running them (no root needed).
        runner: runs one command (``subprocess.run`` keywords); injectable for tests.
        processes: lists compute PIDs on a device by UUID; default NVML
            (:func:`gpuslice.hardware.nvml.compute_processes`).
        echo: where messages and commands are printed.
        confirm: asked once before running, with a question; False stops without running.
        reread: reads the inventory again after running, to report the layout then.

    Returns:
        The :class:`ApplyReport`.

    Raises:
        PlanError: the plan's MIG pools cannot be mapped onto these GPUs.
        MigError: MIG mode off, instances that do not fit, not root, a GPU not idle, the
            user declined, or a command failed (the message says which ran before it).
    """
    diff = assert_layout(plan, inventory)
    emulated = inventory.emulated
    if diff.satisfied:
        echo("nothing to do: the MIG instances the plan needs are present")
        return ApplyReport(diff, (), ran=False, dry_run=dry_run or emulated, emulated=emulated)
    commands, notes = _plan(diff, inventory)
    frozen = tuple(tuple(c) for c in commands)
    for note in notes:
        echo(f"note: {note}")
    if emulated or dry_run:
        why = (
            f"emulated GPUs ({inventory.source}): nothing is run; these commands would be"
            if emulated
            else "dry run: nothing is run; these commands would be"
        )
        echo(why)
        for command in commands:
            echo(f"  {shlex.join(command)}")
        return ApplyReport(
            diff, frozen, ran=False, dry_run=True, emulated=emulated, notes=tuple(notes)
        )
    if os.geteuid() != 0:
        raise MigError(
            "creating MIG instances needs root: run `sudo gpuslice mig apply PLAN` "
            "(or `gpuslice mig apply PLAN --dry-run` to see the commands)"
        )
    busy = _busy(diff, inventory, processes or _compute_processes)
    if busy:
        listing = "; ".join(
            f"GPU {i}: PID{'s' if len(p) > 1 else ''} {', '.join(map(str, p))}"
            for i, p in busy.items()
        )
        raise MigError(
            f"MIG instances are created on idle GPUs only, and compute processes run ({listing}); "
            "stop them (and any MPS daemon) and run `gpuslice mig apply PLAN` again"
        )
    echo("will run:")
    for command in commands:
        echo(f"  {shlex.join(command)}")
    if confirm is not None and not confirm("create these MIG instances?"):
        raise MigError("nothing was run: not confirmed (pass --yes to skip the question)")
    done: list[str] = []
    for command in commands:
        echo(f"$ {shlex.join(command)}")
        try:
            result = runner(command, capture_output=True, text=True, check=False)
        except OSError as err:
            raise MigError(
                f"could not run {command[0]!r}: {err.strerror or err}; is the NVIDIA driver "
                "(nvidia-smi) installed?"
            ) from err
        output = "\n".join(
            s.strip() for s in (str(result.stdout or ""), str(result.stderr or "")) if s.strip()
        )
        if output:
            echo(output)
        if result.returncode != 0:
            ran = ("; ran before it: " + "; ".join(done)) if done else ""
            raise MigError(
                f"`{shlex.join(command)}` failed with exit code {result.returncode}"
                f"{': ' + output if output else ''}{ran}. Nothing was destroyed; "
                "`gpuslice mig assert PLAN` shows what is still missing"
            )
        done.append(shlex.join(command))
    after = assert_layout(plan, reread()) if reread is not None else None
    return ApplyReport(
        diff, frozen, ran=True, dry_run=False, emulated=False, notes=tuple(notes), after=after
    )
