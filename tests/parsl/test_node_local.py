"""Pools resolved on the node a block lands on: slot names, worker-init, and a real run."""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from parsl.providers import SlurmProvider

from gpuslice.cli import cli
from gpuslice.errors import UsageError
from gpuslice.hardware.fleet import load_fleet
from gpuslice.mps import daemon
from gpuslice.mps.env import parse_device_map
from gpuslice.parsl.app import gpu_app
from gpuslice.parsl.config import layout_of, parsl_config
from gpuslice.parsl.worker import SLOTS_ENV, current_slice, prepare_worker
from gpuslice.plan.resolve import resolve
from tests.parsl.conftest import emulated_environment, loaded

PLAN = "small=2x mps:25%/10GiB, batch=1x share"


@pytest.fixture
def env_root() -> Iterator[Path]:
    with emulated_environment() as root:
        yield root


def node_fleet(tmp: Path, node: str) -> str:
    path = tmp / f"fleet-{node}.yaml"
    path.write_text(f"node: {node}\ngpus:\n  - {{model: H100-80GB, count: 2}}\n")
    return str(path)


def test_named_nodes_get_different_uuids(tmp_path: Path) -> None:
    a = load_fleet(node_fleet(tmp_path, "login"))
    b = load_fleet(node_fleet(tmp_path, "n01"))
    assert [g.name for g in a.gpus] == [g.name for g in b.gpus]
    assert not {g.uuid for g in a.gpus} & {g.uuid for g in b.gpus}


@pytest.mark.usefixtures("env_root")
def test_cluster_providers_get_slot_names_and_a_node_side_worker_init(tmp_path: Path) -> None:
    provider = SlurmProvider(partition="gpu", worker_init="module load cuda")
    config = parsl_config(PLAN, fleet=node_fleet(tmp_path, "login"), provider=provider)
    small = next(e for e in config.executors if e.label == "small")
    assert small.available_accelerators == [f"gpuslice-slot-{i}" for i in range(4)]
    init = small.provider.worker_init
    assert init.startswith("module load cuda\n")
    assert "worker-init --pool small --slots 4 --plan" in init
    assert "|| { echo" in init  # a node that cannot resolve the plan starts no worker
    assert "GPU-" not in init  # no UUID of the planning machine reaches the node


@pytest.mark.usefixtures("env_root")
def test_node_local_needs_the_plan_not_a_layout(tmp_path: Path) -> None:
    layout = layout_of(PLAN, node_fleet(tmp_path, "login"))
    with pytest.raises(UsageError, match="needs the plan"):
        parsl_config(layout, node_local=True)


@pytest.mark.usefixtures("env_root")
def test_worker_init_maps_slots_to_this_nodes_devices(tmp_path: Path) -> None:
    fleet = node_fleet(tmp_path, "n01")
    result = CliRunner().invoke(
        cli, ["worker-init", "--plan", PLAN, "--pool", "small", "--slots", "4", "--fleet", fleet]
    )
    assert result.exit_code == 0, result.output
    exports = dict(
        shlex.split(line.removeprefix("export "))[0].split("=", 1)
        for line in result.stdout.splitlines()
    )
    here = resolve(PLAN, load_fleet(fleet)).pool("small")
    slots = parse_device_map(exports[SLOTS_ENV])
    assert slots == {f"gpuslice-slot-{s.rank}": s.device for s in here.slices}
    assert set(parse_device_map(exports["GPUSLICE_MPS_PIPE_DIRS"])) == set(here.devices)
    for pipe_dir in here.pipe_dirs:  # worker-init started this node's daemons
        assert daemon.status(pipe_dir).running
        daemon.stop(pipe_dir, timeout=5)


@pytest.mark.usefixtures("env_root")
def test_worker_init_refuses_a_node_with_other_gpus(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "worker-init",
            "--plan",
            PLAN,
            "--pool",
            "small",
            "--slots",
            "6",
            "--no-ensure",
            "--fleet",
            node_fleet(tmp_path, "n01"),
        ],
    )
    assert result.exit_code == 2
    assert "has 4 slices, but its executor was configured for 6" in result.stderr


@pytest.mark.usefixtures("env_root")
def test_a_worker_applies_its_slot_before_cuda_starts() -> None:
    device = "GPU-bbbbbbbb-0000-0000-0000-000000000002"
    env = {
        "GPUSLICE_POOL": "batch",
        "CUDA_VISIBLE_DEVICES": "gpuslice-slot-1",
        SLOTS_ENV: f"gpuslice-slot-0=GPU-x;gpuslice-slot-1={device}",
    }
    check = prepare_worker(env)
    assert env["CUDA_VISIBLE_DEVICES"] == device
    assert check.device == device


def where_am_i() -> dict[str, str | None]:
    return current_slice()


@pytest.mark.slow
def test_tasks_run_on_the_devices_the_node_resolved(env_root: Path, tmp_path: Path) -> None:
    planning = node_fleet(tmp_path, "login")
    node = node_fleet(tmp_path, "n01")
    node_layout = resolve(PLAN, load_fleet(node))
    here = node_layout.pool("small")
    with loaded(
        PLAN, env_root, fleet=planning, daemons=node_layout, node_local=True, node_fleet=node
    ):
        app = gpu_app(pool="small")(where_am_i)
        seen = [f.result() for f in [app() for _ in range(16)]]
    assert {s["CUDA_VISIBLE_DEVICES"] for s in seen} <= set(here.devices)
    assert {s["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] for s in seen} == {"25"}
    for s in seen:
        assert s["CUDA_MPS_PIPE_DIRECTORY"] == next(
            x.mps_pipe_dir for x in here.slices if x.device == s["CUDA_VISIBLE_DEVICES"]
        )
    assert os.environ.get(SLOTS_ENV) is None  # nothing leaked into the submitting process
