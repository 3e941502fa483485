"""The GPUs a batch job was given, and whether its scheduler runs MPS for it.

On a cluster, ``gpus: all`` must mean the GPUs the scheduler gave the job, not every GPU on the
node. :func:`job_allocation` reads that from the job's environment; :func:`restrict_inventory`
keeps only those GPUs of an :class:`~gpuslice.hardware.inventory.Inventory`.

What the schedulers set, as documented and as observed on Slurm 22.05.8 (Debian bookworm, the
test cluster of tests/slurm, with GPUs configured as GRES):

Slurm (``SLURM_JOB_ID`` is set in every job):
    - ``SLURM_JOB_GPUS``: "the global GPU IDs of the GPUs allocated to this job. The GPU IDs are
      not relative to any device cgroup, even if devices are constrained with task/cgroup. Only
      set in batch and interactive jobs." ``SLURM_STEP_GPUS``: the same for a job step (srun).
      (sbatch(1) and srun(1) of 22.05, "OUTPUT ENVIRONMENT VARIABLES";
      https://slurm.schedmd.com/sbatch.html.) Observed:
      comma-separated integers, the GPU's position among the node's configured GPUs (gres.conf
      ``File=…/nvidia[4-7]`` gives ``0..3``, not ``4..7``); with ``AutoDetect=nvml`` that is
      NVML's order.
    - ``CUDA_VISIBLE_DEVICES`` is set "for each job step", and for the batch script to the GPUs
      of node zero (https://slurm.schedmd.com/gres.html#GPU_Management). Without a device cgroup
      it holds the same global IDs (observed: ``SLURM_JOB_GPUS=1,2``, ``CUDA_VISIBLE_DEVICES=1,2``);
      with ``ConstrainDevices=yes`` the IDs are relative to the job (``0,1``). A MIG device with a
      unique id (NVML autodetect) appears as its ``MIG-…`` UUID. ``GPU_DEVICE_ORDINAL`` and
      ``ROCR_VISIBLE_DEVICES`` carry the same list for gres/gpu jobs (gres.conf(5), ``Flags``).
    - gres/mps (https://slurm.schedmd.com/gres.html#MPS_Management): a job that asked for
      ``--gres=mps:N`` gets ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` (its share of one GPU, in
      percent) and ``CUDA_VISIBLE_DEVICES``; Slurm's sample prolog (etc/prolog.example) starts
      ``nvidia-cuda-mps-control -d`` for the job without setting a pipe directory, i.e. NVIDIA's
      default ``/tmp/nvidia-mps``. Observed on 22.05: ``--gres=mps:50`` gives
      ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50``, ``SLURM_JOB_GPUS=1`` and ``CUDA_VISIBLE_DEVICES=1``
      when the shared GPU is GPU 1, and no ``GPU_DEVICE_ORDINAL``; for a job without gres/mps,
      Slurm removes a ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` exported at submission.
    - ``--exclusive`` without a GPU request (Parsl's SlurmProvider default): observed, the batch
      script gets every GPU of the node (``SLURM_JOB_GPUS=0,1,2,3``) but an srun step gets none:
      no ``SLURM_STEP_GPUS``, ``CUDA_VISIBLE_DEVICES`` unset, only the inherited
      ``SLURM_JOB_GPUS`` (gres.html: a step gets the job's GRES "except those implicitly
      requested when a job is exclusive"). Such a step is reported as given no GPU.
    - A job that requested no GPU has none of these variables; gpuslice cannot tell it from a
      site that does not manage GPUs as GRES at all, so its GPUs are *not restricted*.
    - Inside an srun step (``SLURM_STEP_ID`` set) the step's ``SLURM_STEP_GPUS`` count, not the
      job's.

PBS Professional / OpenPBS (``PBS_JOBID`` is set in every job):
    - GPUs are requested as ``-l select=N:ngpus=G``; PBS itself sets no GPU variable. The cgroup
      hook (``pbs_cgroups``, devices subsystem enabled) sets ``CUDA_VISIBLE_DEVICES`` at launch to
      the job's devices, from their ``/dev/nvidiaN`` names (``setup_job_devices_env`` in
      https://github.com/openpbs/openpbs/blob/master/src/hooks/cgroups/pbs_cgroups.PY).
    - ALCF Polaris (4 A100 per node, PBS Pro) gives whole nodes: every GPU of the node belongs to
      the job and no ``CUDA_VISIBLE_DEVICES`` is set; Parsl's own Polaris configuration
      (parsl/configs/polaris.py) asks for ``select_options="ngpus=4"`` and
      ``available_accelerators=4``.
    - PBS has no MPS integration of its own.

``CUDA_VISIBLE_DEVICES`` itself (CUDA C Programming Guide, "CUDA Environment Variables",
https://docs.nvidia.com/cuda/cuda-c-programming-guide/index.html#env-vars): a comma-separated
sequence of integer indices, ``GPU-…`` UUIDs (a unique prefix suffices) or ``MIG-…`` identifiers;
devices are enumerated in the order given and renumbered from 0 inside the process; an invalid
index hides it and every entry after it (``0,2,-1,1`` makes 0 and 2 visible).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpuslice.errors import GpusliceError
from gpuslice.hardware.inventory import Gpu, Inventory, MigDevice

#: NVIDIA's default MPS pipe directory, used when ``CUDA_MPS_PIPE_DIRECTORY`` is unset
#: (https://docs.nvidia.com/deploy/mps/index.html, "CUDA_MPS_PIPE_DIRECTORY").
DEFAULT_MPS_PIPE_DIRECTORY = "/tmp/nvidia-mps"

# Slurm writes this instead of indices when its GRES has no device files (gres_common.c).
_SLURM_NO_DEVICE_FILES = "NoDevFiles"


class AllocationError(GpusliceError):
    """The job's GPU variables name GPUs this node's inventory does not have."""

    exit_code = 2

    def __init__(self, variable: str, value: str, problem: str, fix: str) -> None:
        self.variable = variable
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"{self.variable}={self.value!r}: {self.problem} (fix: {self.fix})"


@dataclass(frozen=True)
class SchedulerMps:
    """MPS that the scheduler runs for the job (Slurm's gres/mps).

    Attributes:
        percentage: the share of the GPU the scheduler granted, from
            ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` (Slurm: the job's gres/mps count over the GPU's
            configured count, in percent).
        gpus: the GPU(s) of the share, as the scheduler named them (global IDs).
        pipe_directory: ``CUDA_MPS_PIPE_DIRECTORY`` as set in the job, or None when unset:
            then clients reach the daemon the site's prolog started at NVIDIA's default,
            :data:`DEFAULT_MPS_PIPE_DIRECTORY`.
        source: the variables this was read from.
    """

    percentage: float
    gpus: tuple[str, ...]
    pipe_directory: str | None
    source: str

    @property
    def effective_pipe_directory(self) -> str:
        """Where the scheduler's clients find the daemon."""
        return self.pipe_directory or DEFAULT_MPS_PIPE_DIRECTORY


@dataclass(frozen=True)
class JobAllocation:
    """The GPUs a batch job was given.

    Attributes:
        scheduler: ``slurm``, ``pbs``, or None outside a batch job.
        job_id: the scheduler's job id (``SLURM_JOB_ID``, ``PBS_JOBID``), or None.
        gpus: the node's GPUs given to the job, as the scheduler names them (integer IDs in the
            node's numbering, ``GPU-…`` or ``MIG-…``), in order; None when nothing restricts the
            job (every GPU of the node is its own); ``()`` when the job was given none.
        visible: ``CUDA_VISIBLE_DEVICES`` as the job sees it (may be relative to a device
            cgroup), or None when unset.
        scheduler_mps: the scheduler's own MPS for this job, or None.
        source: the variable ``gpus`` was read from, or why the GPUs are not restricted.
    """

    scheduler: str | None
    job_id: str | None
    gpus: tuple[str, ...] | None
    visible: tuple[str, ...] | None
    scheduler_mps: SchedulerMps | None
    source: str

    @property
    def restricted(self) -> bool:
        """Whether the job may use only some of the node's GPUs."""
        return self.gpus is not None


def parse_device_list(value: str) -> tuple[str, ...]:
    """The devices of a ``CUDA_VISIBLE_DEVICES``-style list, as CUDA reads it.

    Entries are stripped; an empty value means no device. An entry that is neither a
    non-negative integer nor a ``GPU-``/``MIG-`` identifier ends the list, as CUDA ignores it
    and everything after it.
    """
    devices: list[str] = []
    if not value.strip():
        return ()
    for raw in value.split(","):
        entry = raw.strip()
        if not (entry.isdigit() or entry.upper().startswith(("GPU-", "MIG-"))):
            break
        devices.append(entry)
    return tuple(devices)


def job_allocation(environ: Mapping[str, str] | None = None) -> JobAllocation:
    """Which GPUs the batch job running here was given, from its environment.

    Call it with the job's own environment, before gpuslice exports any ``CUDA_*`` variable of
    its own (``worker_init`` does that for each pool): a pool's
    ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` would otherwise look like the scheduler's.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        The allocation; ``gpus`` is None when nothing restricts the job.
    """
    env = os.environ if environ is None else environ
    visible_raw = env.get("CUDA_VISIBLE_DEVICES")
    visible = None if visible_raw is None else parse_device_list(visible_raw)
    if env.get("SLURM_JOB_ID"):
        return _slurm(env, visible)
    if env.get("PBS_JOBID"):
        return _pbs(env, visible)
    if visible is not None:
        return JobAllocation(None, None, visible, visible, None, "CUDA_VISIBLE_DEVICES")
    return JobAllocation(None, None, None, None, None, "no batch job and no CUDA_VISIBLE_DEVICES")


def _slurm(env: Mapping[str, str], visible: tuple[str, ...] | None) -> JobAllocation:
    job_id = env["SLURM_JOB_ID"]
    gpus, source = _slurm_gpus(env, visible)
    mps = None
    percentage = env.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
    if percentage is not None:
        # Slurm sets it only for gres/mps jobs and removes a submitted one from other jobs.
        mps = SchedulerMps(
            percentage=_percentage(percentage),
            gpus=gpus if gpus is not None else (visible or ()),
            pipe_directory=env.get("CUDA_MPS_PIPE_DIRECTORY") or None,
            source="CUDA_MPS_ACTIVE_THREAD_PERCENTAGE in a Slurm job (gres/mps)",
        )
    return JobAllocation("slurm", job_id, gpus, visible, mps, source)


def _slurm_gpus(
    env: Mapping[str, str], visible: tuple[str, ...] | None
) -> tuple[tuple[str, ...] | None, str]:
    """The GPUs of a Slurm job (or of the srun step this runs in) and where they came from."""
    if visible and all(not v.isdigit() for v in visible) and "SLURM_GPUS_ON_NODE" in env:
        # UUIDs (MIG devices with a unique id) name devices exactly; Slurm's integer IDs
        # count MIG devices among the node's GRES and cannot be matched to NVML indices.
        return visible, "CUDA_VISIBLE_DEVICES"
    in_step = "SLURM_STEP_ID" in env
    name = "SLURM_STEP_GPUS" if in_step else "SLURM_JOB_GPUS"
    value = env.get(name)
    if value is None and in_step and env.get("SLURM_JOB_GPUS") is not None:
        # Observed on 22.05: in an --exclusive job that asked for no GPU, the batch script
        # gets every GPU of the node, an srun step none (no SLURM_STEP_GPUS, and Slurm
        # unsets CUDA_VISIBLE_DEVICES) - "except those implicitly requested when a job is
        # exclusive" (https://slurm.schedmd.com/gres.html#Running_Jobs).
        return (), (
            f"SLURM_STEP_GPUS: this srun step (SLURM_STEP_ID={env['SLURM_STEP_ID']}) was "
            f"given no GPU although its job has SLURM_JOB_GPUS={env['SLURM_JOB_GPUS']}; an "
            "exclusive job's GPUs reach only its batch script unless GPUs are requested "
            "(SlurmProvider(gpus_per_node=N) or srun --gpus-per-node=N)"
        )
    if value is not None:
        if value.strip() == _SLURM_NO_DEVICE_FILES:
            return None, f"{name}={_SLURM_NO_DEVICE_FILES}: Slurm's GRES has no device files"
        return parse_device_list(value), name
    if visible is not None:
        # Exported at submission (sbatch --export=ALL carries it into the job): CUDA honours
        # it in the job, so gpuslice does too.
        return visible, "CUDA_VISIBLE_DEVICES"
    return None, (
        "Slurm set no GPU variable: the job requested no GPU or the site does not manage "
        "GPUs as GRES"
    )


def _pbs(env: Mapping[str, str], visible: tuple[str, ...] | None) -> JobAllocation:
    job_id = env["PBS_JOBID"]
    if visible is not None:
        return JobAllocation("pbs", job_id, visible, visible, None, "CUDA_VISIBLE_DEVICES")
    return JobAllocation(
        "pbs",
        job_id,
        None,
        None,
        None,
        "PBS set no CUDA_VISIBLE_DEVICES: the job has whole nodes (Polaris) or no cgroup hook "
        "assigns devices",
    )


def _percentage(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0 < number <= 100:
        raise AllocationError(
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
            value,
            "not a percentage in (0, 100]",
            "unset it, or check the scheduler's gres/mps configuration",
        )
    return number


def restrict_inventory(inventory: Inventory, allocation: JobAllocation) -> Inventory:
    """The GPUs of ``inventory`` that ``allocation`` gives the job.

    Entries are matched as follows:

    - ``GPU-…``: the GPU with that UUID, or the only one whose UUID starts with it (CUDA accepts
      a unique prefix).
    - ``MIG-…``: the MIG device with that UUID (or unique prefix); its parent GPU is kept with
      only the MIG devices named.
    - an integer: the GPU with that NVML index. That matches Slurm when its GPUs are
      autodetected through NVML or listed in gres.conf in NVML order, and an unconstrained
      process's ``CUDA_VISIBLE_DEVICES`` when ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (or the GPUs are
      all alike). One exception: Slurm's IDs are never relative to a device cgroup, but NVML
      inside such a cgroup sees only the job's GPUs, renumbered from 0 (NVML counts accessible
      devices only: NVML API reference, nvmlDeviceGetIndex; not yet seen on a GPU). So when an
      ID lies beyond the inventory and the inventory holds exactly as many GPUs as the job was
      given, the inventory already is the job's view: the IDs in ascending order are its GPUs
      0, 1, ….

    Args:
        inventory: the node's GPUs (NVML, or a fleet file describing the node).
        allocation: what :func:`job_allocation` read.

    Returns:
        ``inventory`` itself when the job is not restricted, else an inventory of the job's GPUs
        in the allocation's order (each keeps its NVML index and UUID), whose ``source`` names
        the job.

    Raises:
        AllocationError: an entry matches no GPU of the inventory, or several.
    """
    if allocation.gpus is None:
        return inventory
    variable = allocation.source.split(" ", 1)[0]
    value = ",".join(allocation.gpus)
    integers = [int(g) for g in allocation.gpus if g.isdigit()]
    known = {gpu.index for gpu in inventory.gpus}
    # IDs beyond the inventory, and exactly as many GPUs as IDs: NVML sees the job's GPUs only.
    job_view = any(i not in known for i in integers) and len(integers) == len(inventory.gpus)

    chosen: dict[str, Gpu] = {}
    migs: dict[str, list[MigDevice]] = {}
    for entry in allocation.gpus:
        if entry.isdigit():
            gpu = _by_index(inventory, entry, job_view, integers)
            if gpu is None:
                raise AllocationError(
                    variable,
                    value,
                    f"GPU {entry} is not among this node's {len(inventory.gpus)} GPUs "
                    f"({inventory.source})",
                    "describe every GPU of the node in the fleet file, or check that the "
                    "scheduler numbers GPUs as NVML does (gres.conf in NVML order, or "
                    "AutoDetect=nvml)",
                )
            chosen.setdefault(gpu.uuid, gpu)
        elif entry.upper().startswith("MIG-"):
            gpu, mig = _mig(inventory, entry, variable, value)
            chosen.setdefault(gpu.uuid, gpu)
            migs.setdefault(gpu.uuid, []).append(mig)
        else:
            gpu = _one(
                [g for g in inventory.gpus if g.uuid.lower().startswith(entry.lower())],
                entry,
                variable,
                value,
                inventory,
            )
            chosen.setdefault(gpu.uuid, gpu)

    gpus = tuple(
        dataclasses.replace(gpu, mig_devices=tuple(migs[key])) if key in migs else gpu
        for key, gpu in chosen.items()
    )
    job = f"{allocation.scheduler} job {allocation.job_id}" if allocation.job_id else "this job"
    return dataclasses.replace(
        inventory,
        gpus=gpus,
        source=f"{inventory.source}, {job}'s GPUs ({variable}={value})",
    )


def _by_index(
    inventory: Inventory, entry: str, job_view: bool, integers: Sequence[int]
) -> Gpu | None:
    if job_view:
        # The job's GPUs in the scheduler's (NVML) order are NVML's 0..n-1 inside the cgroup.
        return inventory.gpus[sorted(integers).index(int(entry))]
    return next((g for g in inventory.gpus if g.index == int(entry)), None)


def _one(found: Sequence[Gpu], entry: str, variable: str, value: str, inventory: Inventory) -> Gpu:
    if len(found) == 1:
        return found[0]
    problem = (
        f"{entry} matches no GPU of this node ({inventory.source})"
        if not found
        else f"{entry} matches {len(found)} GPUs ({', '.join(g.uuid for g in found)})"
    )
    raise AllocationError(
        variable, value, problem, "give full GPU-/MIG- UUIDs as `gpuslice gpus` lists them"
    )


def _mig(inventory: Inventory, entry: str, variable: str, value: str) -> tuple[Gpu, MigDevice]:
    key = entry.lower()
    if key.startswith("mig-gpu-") and "/" in key:
        # CUDA 11's form: MIG-<GPU UUID>/<GPU instance id>/<compute instance id>.
        parent, _, ids = entry[len("MIG-") :].partition("/")
        gi, _, ci = ids.partition("/")
        found = [
            (gpu, mig)
            for gpu in inventory.gpus
            if gpu.uuid.lower() == parent.lower()
            for mig in gpu.mig_devices
            if str(mig.gpu_instance_id) == gi and str(mig.compute_instance_id) == ci
        ]
    else:
        found = [
            (gpu, mig)
            for gpu in inventory.gpus
            for mig in gpu.mig_devices
            if mig.uuid.lower().startswith(key)
        ]
    if len(found) == 1:
        return found[0]
    problem = (
        f"{entry} matches no MIG device of this node ({inventory.source})"
        if not found
        else f"{entry} matches {len(found)} MIG devices"
    )
    raise AllocationError(
        variable, value, problem, "give full MIG- UUIDs as `gpuslice gpus` lists them"
    )
