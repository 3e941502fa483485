"""gpuslice globus-compute: a Globus Compute endpoint config.yaml for one pool."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

from gpuslice.mps import daemon
from gpuslice.parsl.config import layout_of
from gpuslice.parsl.globus import endpoint_config, endpoint_yaml
from gpuslice.parsl.node import decode_spec
from tests.parsl.conftest import FLEET_2XH100, REPO, emulated_environment

FLEET_1XH100 = str(REPO / "src" / "gpuslice" / "examples" / "fleet-1xh100.yaml")

PLAN = "small=2x mps:25%/10GiB, large=1x mps:50%/20GiB"


@pytest.fixture(autouse=True)
def _private_dirs() -> object:
    with emulated_environment() as root:
        yield root


def test_the_engine_starts_its_workers_through_node_run_for_the_pool() -> None:
    config = yaml.safe_load(endpoint_yaml(PLAN, "small", fleet=FLEET_2XH100))
    engine = config["engine"]
    # Keys and types as globus-compute-endpoint 4.19's config.yaml loader reads them.
    assert engine["type"] == "GlobusComputeEngine"
    assert engine["max_workers_per_node"] == 4
    assert len(engine["available_accelerators"]) == 4
    words = engine["launch_cmd"].split()
    assert words[1:3] == ["node-run", "--spec"]
    assert words[4:7] == ["--pool", "small", "--"]
    assert decode_spec(words[3]).pools == {"small": 4}
    # The engine joins shlex.split(launch_cmd) with spaces and formats it twice: no word may
    # need quoting, and only Parsl's own placeholders may hold braces.
    assert " ".join(shlex.split(engine["launch_cmd"])) == engine["launch_cmd"]
    assert "{{block_id}}" in engine["launch_cmd"]
    assert engine["address"] == "127.0.0.1"  # local workers: no address probe
    assert engine["provider"] == {
        "type": "LocalProvider",
        "init_blocks": 1,
        "min_blocks": 1,
        "max_blocks": 1,
    }


def test_the_users_worker_init_is_the_providers() -> None:
    config = endpoint_config(PLAN, "large", fleet=FLEET_2XH100, worker_init="conda activate ml")
    assert config["engine"]["provider"]["worker_init"] == "conda activate ml\n"


def test_the_cli_writes_the_file_and_refuses_an_unknown_pool(tmp_path: Path) -> None:
    gpuslice = str(Path(sys.executable).parent / "gpuslice")
    out = tmp_path / "config.yaml"
    done = subprocess.run(
        [gpuslice, "globus-compute", PLAN, "large", "--fleet", FLEET_2XH100, "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(out.read_text())["engine"]["max_workers_per_node"] == 2
    refused = subprocess.run(
        [gpuslice, "globus-compute", PLAN, "huge", "--fleet", FLEET_2XH100],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert "no pool 'huge'" in refused.stderr
    assert "small, large" in refused.stderr


def inside() -> dict[str, object]:
    """What a function sent to the endpoint sees: its slice, and what MPS granted it."""
    from tests.parsl.test_task_kinds import inside as report

    return report()


@pytest.mark.slow
def test_globus_compute_runs_a_plain_function_in_its_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    utils = pytest.importorskip(
        "globus_compute_endpoint.endpoint.config.utils",
        reason="globus-compute-endpoint is not installed (the test extra `globus` installs it)",
    )
    from globus_compute_common import messagepack
    from globus_compute_common.messagepack.message_types import Task
    from globus_compute_endpoint.engines.base import GCFuture
    from globus_compute_sdk.serialize import ComputeSerializer

    # The endpoint runs from its environment: its bin on PATH, the tests importable.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    plan = "big=1x mps:60%/40GiB, small=1x mps:40%/30GiB"
    layout = layout_of(plan, FLEET_1XH100)
    config = utils.load_config_yaml(endpoint_yaml(plan, "big", fleet=FLEET_1XH100))
    engine = config.engine
    run_dir = tempfile.mkdtemp(dir="/tmp", prefix="gsg-")
    engine.start(endpoint_id=uuid.uuid4(), run_dir=run_dir)
    try:
        # The task as the Globus Compute service would send it, without the service.
        serde = ComputeSerializer()
        task_id = uuid.uuid4()
        body = serde.pack_buffers(
            [serde.serialize(inside), serde.serialize(()), serde.serialize({})]
        )
        future = GCFuture(task_id)
        engine.submit(future, messagepack.pack(Task(task_id=task_id, task_buffer=body)), {})
        result = messagepack.unpack(future.result(timeout=180))
        assert not result.is_error, result.data
        seen = serde.deserialize(result.data)
    finally:
        pids = [p for d in layout.daemons if (p := daemon.read_pid(d.pipe_dir)) is not None]
        engine.shutdown()
        # The engine's shutdown cancels the block: node-run stops the daemons it started.
        left = daemon.wait_gone(pids, 30)
        shutil.rmtree(run_dir, ignore_errors=True)
    assert not left, f"MPS daemons {left} outlived the endpoint"
    (big,) = layout.pool("big").slices
    assert seen["pool"] == "big"
    assert seen["device"] == big.device
    assert seen["percentage"] == "60"
    assert seen["memory"] == f"0={big.memory_mib}M"
    assert seen["granted"] == 60  # connected to its MPS daemon, at its own limit
    assert seen["sms"] == 78  # 60% of 132 SMs, rounded down to SM pairs by hand
