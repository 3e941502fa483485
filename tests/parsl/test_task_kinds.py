"""Every kind of task on a gpuslice executor runs in its pool's slice, checked from inside it.

A two-pool plan on one emulated H100: ``big`` (one MPS slice of 60%, 40 GiB) and ``small`` (one
of 40%, 30 GiB). Tasks of each pool, sent as gpu_app, plain python_app and bash_app, report
their device, percentage, memory cap and what the MPS daemon granted them when they connected
as CUDA clients (the emulated GPU's ``mps_connection``): none may run outside its slice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from parsl.app.app import bash_app, python_app

from gpuslice.parsl.app import gpu_app
from gpuslice.plan.layout import Layout
from tests.parsl.conftest import REPO, loaded

pytestmark = pytest.mark.slow

PLAN = "big=1x mps:60%/40GiB, small=1x mps:40%/30GiB"
FLEET_1XH100 = str(REPO / "src" / "gpuslice" / "examples" / "fleet-1xh100.yaml")


@pytest.fixture(scope="module")
def layout(parsl_root: Path) -> Iterator[Layout]:
    with loaded(PLAN, parsl_root, fleet=FLEET_1XH100) as the_layout:
        yield the_layout


def inside() -> dict[str, Any]:
    """What a task sees of its slice, and what the MPS daemon granted it as a CUDA client."""
    import os

    from gpuslice.emulate.kernel import mps_connection, visible_sm_count

    grant = mps_connection()
    return {
        "pool": os.environ.get("GPUSLICE_POOL"),
        "device": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "percentage": os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"),
        "memory": os.environ.get("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"),
        "pipe": os.environ.get("CUDA_MPS_PIPE_DIRECTORY"),
        "granted": None if grant is None else grant.active_thread_percentage,
        "granted_memory": None if grant is None else grant.pinned_mem_limit,
        "sms": visible_sm_count(),
    }


# The bash app runs a separate CUDA process, which connects with the environment it inherits.
REPORT = (
    "{python} -c 'import json; from tests.parsl.test_task_kinds import inside; "
    "print(json.dumps(inside()))' > {out}"
)


def bash_report(out: str, stderr: str = "") -> str:
    import sys

    return REPORT.format(python=sys.executable, out=out)


def check(view: dict[str, Any], layout: Layout, pool: str) -> None:
    (the_slice,) = layout.pool(pool).slices
    assert view["pool"] == pool
    assert view["device"] == the_slice.device
    assert view["percentage"] == str(the_slice.compute)
    assert view["memory"] == f"0={the_slice.memory_mib}M"
    assert view["pipe"] == the_slice.mps_pipe_dir
    assert view["granted"] == the_slice.compute  # an MPS client, at its own limit
    assert view["granted_memory"] == f"0={the_slice.memory_mib}M"
    # 60% and 40% of 132 SMs, rounded down to SM pairs by hand: 78 and 52.
    assert view["sms"] == {"big": 78, "small": 52}[pool]


@pytest.mark.parametrize("pool", ["big", "small"])
def test_gpu_app_tasks_run_in_their_slice(layout: Layout, pool: str) -> None:
    views = [f.result(timeout=90) for f in [gpu_app(pool=pool)(inside)() for _ in range(3)]]
    for view in views:
        check(view, layout, pool)


@pytest.mark.parametrize("pool", ["big", "small"])
def test_plain_python_app_tasks_run_in_their_slice(layout: Layout, pool: str) -> None:
    app = python_app(executors=[pool])(inside)
    for view in [f.result(timeout=90) for f in [app() for _ in range(3)]]:
        check(view, layout, pool)


@pytest.mark.parametrize("pool", ["big", "small"])
def test_bash_app_tasks_run_in_their_slice(layout: Layout, pool: str, tmp_path: Path) -> None:
    app = bash_app(executors=[pool])(bash_report)
    out = tmp_path / f"{pool}.json"
    errors = tmp_path / f"{pool}.err"
    done = app(str(out), stderr=str(errors))
    assert done.result(timeout=90) == 0, errors.read_text() if errors.exists() else ""
    check(json.loads(out.read_text()), layout, pool)
