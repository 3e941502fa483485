"""The job's own GPUs: environments as Slurm and PBS set them, and an inventory cut to them.

Each environment below is one the scheduler documents or one observed on Slurm 22.05.8 (the
test cluster of tests/slurm); the comment on each says which. Expected GPUs are written out or
taken from the fleet's own ``Gpu`` objects, never computed by the code under test.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gpuslice.errors import GpusliceError
from gpuslice.hardware.allocation import (
    DEFAULT_MPS_PIPE_DIRECTORY,
    AllocationError,
    JobAllocation,
    job_allocation,
    parse_device_list,
    restrict_inventory,
)
from gpuslice.hardware.inventory import Inventory

Fleet = Callable[..., Inventory]


# --- CUDA_VISIBLE_DEVICES as CUDA reads it ------------------------------------------------


def test_an_invalid_index_hides_it_and_every_device_after_it() -> None:
    # CUDA C Programming Guide, env vars: "0,2,-1,1 causes devices 0 and 2 to be visible".
    assert parse_device_list("0,2,-1,1") == ("0", "2")


def test_an_empty_list_means_no_device() -> None:
    assert parse_device_list("") == ()


def test_uuid_entries_and_spaces_are_read_as_written() -> None:
    assert parse_device_list(" GPU-8932f937 , MIG-1b2c ") == ("GPU-8932f937", "MIG-1b2c")


# --- Slurm ----------------------------------------------------------------------------------


def test_slurm_batch_job_gets_the_global_ids_of_slurm_job_gpus() -> None:
    # Observed: sbatch --gpus=2 while job 1 holds GPU 0, no device cgroup.
    env = {
        "SLURM_JOB_ID": "2",
        "SLURM_JOB_GPUS": "1,2",
        "CUDA_VISIBLE_DEVICES": "1,2",
        "GPU_DEVICE_ORDINAL": "1,2",
        "SLURM_GPUS_ON_NODE": "2",
    }
    allocation = job_allocation(env)
    assert allocation == JobAllocation(
        scheduler="slurm",
        job_id="2",
        gpus=("1", "2"),
        visible=("1", "2"),
        scheduler_mps=None,
        source="SLURM_JOB_GPUS",
    )
    assert allocation.restricted


def test_slurm_ids_win_over_cuda_visible_devices_relative_to_a_device_cgroup() -> None:
    # sbatch(1): SLURM_JOB_GPUS "are not relative to any device cgroup"; gres.html: with
    # ConstrainDevices the job's CUDA_VISIBLE_DEVICES starts at 0.
    env = {
        "SLURM_JOB_ID": "7",
        "SLURM_JOB_GPUS": "2,3",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "SLURM_GPUS_ON_NODE": "2",
    }
    allocation = job_allocation(env)
    assert allocation.gpus == ("2", "3")
    assert allocation.visible == ("0", "1")


def test_an_srun_step_counts_its_own_gpus() -> None:
    # Observed: srun -n1 --gres=gpu:1 inside a job holding GPUs 1 and 2.
    env = {
        "SLURM_JOB_ID": "2",
        "SLURM_STEP_ID": "1",
        "SLURM_JOB_GPUS": "1,2",
        "SLURM_STEP_GPUS": "1",
        "CUDA_VISIBLE_DEVICES": "1",
        "GPU_DEVICE_ORDINAL": "1",
    }
    allocation = job_allocation(env)
    assert allocation.gpus == ("1",)
    assert allocation.source == "SLURM_STEP_GPUS"


def test_an_srun_step_of_an_exclusive_job_without_gpu_request_is_given_none() -> None:
    # Observed: sbatch --exclusive (no GPU asked) on a 4-GPU node; the step inherits
    # SLURM_JOB_GPUS but has no SLURM_STEP_GPUS and no CUDA_VISIBLE_DEVICES.
    env = {"SLURM_JOB_ID": "1", "SLURM_STEP_ID": "0", "SLURM_JOB_GPUS": "0,1,2,3"}
    allocation = job_allocation(env)
    assert allocation.gpus == ()
    assert allocation.restricted
    assert "gpus_per_node" in allocation.source


def test_the_batch_script_of_an_exclusive_job_gets_every_gpu() -> None:
    # Observed: same job, the batch script itself.
    env = {
        "SLURM_JOB_ID": "1",
        "SLURM_JOB_GPUS": "0,1,2,3",
        "CUDA_VISIBLE_DEVICES": "0,1,2,3",
        "SLURM_GPUS_ON_NODE": "4",
    }
    assert job_allocation(env).gpus == ("0", "1", "2", "3")


def test_a_slurm_job_without_gpu_variables_is_not_restricted() -> None:
    allocation = job_allocation({"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "vm"})
    assert allocation.gpus is None
    assert not allocation.restricted
    assert allocation.source.startswith("Slurm set no GPU variable")


def test_slurm_gres_without_device_files_leaves_the_gpus_unknown() -> None:
    # gres_common.c writes "NoDevFiles" when the GRES has no File= entries.
    allocation = job_allocation({"SLURM_JOB_ID": "3", "SLURM_JOB_GPUS": "NoDevFiles"})
    assert allocation.gpus is None
    assert "NoDevFiles" in allocation.source


def test_mig_uuids_set_by_slurm_are_used_rather_than_its_integer_ids() -> None:
    # gres_common.c: a device with a unique id (MIG under AutoDetect=nvml) goes into
    # CUDA_VISIBLE_DEVICES by that id; the global list keeps Slurm's integer index.
    mig = "MIG-41d1c0b2-5b07-5c52-8f44-4f1cbe4b8b59"
    env = {
        "SLURM_JOB_ID": "4",
        "SLURM_JOB_GPUS": "3",
        "CUDA_VISIBLE_DEVICES": mig,
        "SLURM_GPUS_ON_NODE": "1",
    }
    allocation = job_allocation(env)
    assert allocation.gpus == (mig,)
    assert allocation.source == "CUDA_VISIBLE_DEVICES"


def test_a_cuda_visible_devices_exported_at_submission_is_honoured() -> None:
    # sbatch --export=ALL (the default) carries the submitter's variable into the job.
    allocation = job_allocation({"SLURM_JOB_ID": "5", "CUDA_VISIBLE_DEVICES": "1"})
    assert allocation.gpus == ("1",)
    assert allocation.source == "CUDA_VISIBLE_DEVICES"


def test_slurm_gres_mps_is_reported_with_its_percentage_and_gpu() -> None:
    # Observed: sbatch --gres=mps:50 while GPU 0 is held by a gres/gpu job.
    env = {
        "SLURM_JOB_ID": "10",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "50",
        "CUDA_VISIBLE_DEVICES": "1",
        "SLURM_GPUS_ON_NODE": "1",
        "SLURM_JOB_GPUS": "1",
    }
    mps = job_allocation(env).scheduler_mps
    assert mps is not None
    assert mps.percentage == 50.0
    assert mps.gpus == ("1",)
    assert mps.pipe_directory is None
    # Slurm's sample prolog starts the daemon without a pipe directory: NVIDIA's default.
    assert mps.effective_pipe_directory == "/tmp/nvidia-mps" == DEFAULT_MPS_PIPE_DIRECTORY


def test_a_site_pipe_directory_for_the_schedulers_mps_is_kept() -> None:
    env = {
        "SLURM_JOB_ID": "11",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25",
        "CUDA_MPS_PIPE_DIRECTORY": "/var/run/mps-11",
        "SLURM_JOB_GPUS": "0",
    }
    mps = job_allocation(env).scheduler_mps
    assert mps is not None
    assert mps.effective_pipe_directory == "/var/run/mps-11"


@pytest.mark.parametrize("value", ["0", "150", "half"])
def test_a_scheduler_percentage_outside_0_to_100_is_refused_naming_the_variable(
    value: str,
) -> None:
    env = {"SLURM_JOB_ID": "12", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": value}
    with pytest.raises(AllocationError) as raised:
        job_allocation(env)
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" in str(raised.value)
    assert isinstance(raised.value, GpusliceError)
    assert raised.value.exit_code == 2


# --- PBS, and no scheduler ------------------------------------------------------------------


def test_pbs_cgroup_hook_devices_are_the_jobs_gpus() -> None:
    # pbs_cgroups.PY setup_job_devices_env: CUDA_VISIBLE_DEVICES from /dev/nvidiaN names.
    allocation = job_allocation({"PBS_JOBID": "1234.pbs01", "CUDA_VISIBLE_DEVICES": "2,3"})
    assert allocation.scheduler == "pbs"
    assert allocation.job_id == "1234.pbs01"
    assert allocation.gpus == ("2", "3")
    assert allocation.scheduler_mps is None


def test_a_polaris_whole_node_job_is_not_restricted() -> None:
    # Polaris: select=1:ngpus=4, whole node, no CUDA_VISIBLE_DEVICES.
    allocation = job_allocation(
        {"PBS_JOBID": "42.polaris-pbs-01", "PBS_NODEFILE": "/var/spool/pbs/aux/42"}
    )
    assert allocation.scheduler == "pbs"
    assert allocation.gpus is None
    assert not allocation.restricted


def test_outside_a_job_cuda_visible_devices_still_restricts() -> None:
    allocation = job_allocation({"CUDA_VISIBLE_DEVICES": "GPU-abc"})
    assert allocation.scheduler is None
    assert allocation.gpus == ("GPU-abc",)


def test_outside_a_job_with_nothing_set_every_gpu_is_available() -> None:
    allocation = job_allocation({})
    assert allocation == JobAllocation(
        None, None, None, None, None, "no batch job and no CUDA_VISIBLE_DEVICES"
    )


def test_os_environ_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("PBS_JOBID", "77.server")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert job_allocation().job_id == "77.server"


# --- an inventory cut to the job's GPUs -----------------------------------------------------


def _slurm(gpus: str) -> JobAllocation:
    return job_allocation({"SLURM_JOB_ID": "5", "SLURM_JOB_GPUS": gpus})


def test_an_unrestricted_job_keeps_the_whole_inventory(fleet: Fleet) -> None:
    inventory = fleet({"model": "H100-80GB", "count": 4})
    assert restrict_inventory(inventory, job_allocation({})) is inventory


def test_global_ids_pick_the_gpus_with_those_nvml_indices(fleet: Fleet) -> None:
    inventory = fleet({"model": "H100-80GB", "count": 4})
    restricted = restrict_inventory(inventory, _slurm("1,2"))
    assert restricted.gpus == (inventory.gpus[1], inventory.gpus[2])
    # Each keeps its node index and UUID: worker CUDA_VISIBLE_DEVICES uses the UUID.
    assert [g.index for g in restricted.gpus] == [1, 2]
    assert "slurm job 5" in restricted.source
    assert "SLURM_JOB_GPUS=1,2" in restricted.source


def test_an_nvml_view_inside_a_device_cgroup_is_the_jobs_gpus(fleet: Fleet) -> None:
    # Inside ConstrainDevices NVML counts only the job's 2 GPUs (indices 0, 1) while
    # SLURM_JOB_GPUS keeps the node's IDs 2 and 3: the inventory already is the job's view.
    seen_by_nvml = fleet({"model": "H100-80GB", "count": 2})
    restricted = restrict_inventory(seen_by_nvml, _slurm("2,3"))
    assert restricted.gpus == seen_by_nvml.gpus


def test_a_global_id_beyond_the_node_is_refused_with_the_variable_and_a_fix(
    fleet: Fleet,
) -> None:
    inventory = fleet({"model": "H100-80GB", "count": 4})
    with pytest.raises(AllocationError) as raised:
        restrict_inventory(inventory, _slurm("3,5"))
    message = str(raised.value)
    assert message.startswith("SLURM_JOB_GPUS='3,5': GPU 5 is not among this node's 4 GPUs")
    assert "fix:" in message


def test_a_job_given_no_gpu_gets_an_empty_inventory(fleet: Fleet) -> None:
    inventory = fleet({"model": "H100-80GB", "count": 2})
    step = job_allocation({"SLURM_JOB_ID": "1", "SLURM_STEP_ID": "0", "SLURM_JOB_GPUS": "0,1"})
    assert restrict_inventory(inventory, step).gpus == ()


def test_a_unique_uuid_prefix_picks_its_gpu(fleet: Fleet) -> None:
    inventory = fleet({"model": "H100-80GB", "count": 3})
    wanted = inventory.gpus[2]
    allocation = job_allocation({"CUDA_VISIBLE_DEVICES": wanted.uuid[:14]})
    assert restrict_inventory(inventory, allocation).gpus == (wanted,)


def test_an_ambiguous_uuid_prefix_is_refused(fleet: Fleet) -> None:
    inventory = fleet({"model": "H100-80GB", "count": 2})
    with pytest.raises(AllocationError, match="matches 2 GPUs"):
        restrict_inventory(inventory, job_allocation({"CUDA_VISIBLE_DEVICES": "GPU-"}))


def test_an_unknown_uuid_is_refused(fleet: Fleet) -> None:
    inventory = fleet({"model": "H100-80GB", "count": 2})
    allocation = job_allocation({"CUDA_VISIBLE_DEVICES": "GPU-00000000-dead"})
    with pytest.raises(AllocationError, match="matches no GPU of this node"):
        restrict_inventory(inventory, allocation)


def test_a_mig_uuid_keeps_its_parent_with_only_that_instance(fleet: Fleet) -> None:
    inventory = fleet(
        {"model": "H100-80GB", "count": 1},
        {"model": "A100-40GB", "count": 1, "mig": ["1g.5gb", "1g.5gb", "3g.20gb"]},
    )
    parent = inventory.gpus[1]
    wanted = parent.mig_devices[2]
    restricted = restrict_inventory(
        inventory, job_allocation({"CUDA_VISIBLE_DEVICES": wanted.uuid})
    )
    assert [g.uuid for g in restricted.gpus] == [parent.uuid]
    assert restricted.gpus[0].mig_devices == (wanted,)


def test_cuda_11_mig_names_pick_the_instance_by_its_ids(fleet: Fleet) -> None:
    inventory = fleet({"model": "A100-40GB", "count": 1, "mig": ["1g.5gb", "3g.20gb"]})
    parent = inventory.gpus[0]
    wanted = parent.mig_devices[1]
    name = f"MIG-{parent.uuid}/{wanted.gpu_instance_id}/{wanted.compute_instance_id}"
    restricted = restrict_inventory(inventory, job_allocation({"CUDA_VISIBLE_DEVICES": name}))
    assert restricted.gpus[0].mig_devices == (wanted,)
