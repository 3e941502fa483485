"""gpuslice globus-compute: a Globus Compute endpoint config.yaml for one pool."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpuslice.parsl.config import layout_of
from gpuslice.parsl.globus import endpoint_config, endpoint_yaml
from tests.parsl.conftest import FLEET_2XH100, emulated_environment

PLAN = "small=2x mps:25%/10GiB, large=1x mps:50%/20GiB"


@pytest.fixture(autouse=True)
def _private_dirs() -> object:
    with emulated_environment() as root:
        yield root


def test_the_engine_gets_the_pools_accelerators_workers_and_worker_init() -> None:
    layout = layout_of(PLAN, FLEET_2XH100)
    config = yaml.safe_load(endpoint_yaml(PLAN, "small", fleet=FLEET_2XH100))
    engine = config["engine"]
    # Keys and types as globus-compute-endpoint 4.19's config.yaml loader reads them.
    assert engine["type"] == "GlobusComputeEngine"
    assert engine["available_accelerators"] == list(layout.pool("small").devices)
    assert engine["max_workers_per_node"] == 4
    provider = engine["provider"]
    assert provider["type"] == "LocalProvider"
    assert isinstance(provider["worker_init"], str)
    assert "export GPUSLICE_POOL=small" in provider["worker_init"]
    assert provider["worker_init"].count(" mps ensure ") == 2


def test_the_users_worker_init_runs_first() -> None:
    config = endpoint_config(PLAN, "large", fleet=FLEET_2XH100, worker_init="conda activate ml")
    assert config["engine"]["provider"]["worker_init"].startswith("conda activate ml\n# gpuslice")


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


def test_globus_compute_endpoint_loads_the_config() -> None:
    utils = pytest.importorskip(
        "globus_compute_endpoint.endpoint.config.utils",
        reason="globus-compute-endpoint is not installed (not a gpuslice dependency)",
    )
    layout = layout_of(PLAN, FLEET_2XH100)
    config = utils.load_config_yaml(endpoint_yaml(layout, "small"))
    executor = config.engine.executor
    try:
        assert executor.available_accelerators == list(layout.pool("small").devices)
        assert executor.max_workers_per_node == 4
        assert "mps ensure" in executor.provider.worker_init
    finally:
        config.engine.shutdown()
