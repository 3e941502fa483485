"""Real Parsl on two emulated H100s with three pools: every worker runs in exactly its slice.

Plan: ``small`` (MPS 25%, 10 GiB, 2 per GPU), ``large`` (MPS 50%, 20 GiB, 1 per GPU) and
``batch`` (time-sharing, 1 per GPU). One Parsl load serves the whole module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpuslice.emulate.kernel import CudaOutOfMemoryError
from gpuslice.errors import UsageError
from gpuslice.parsl.app import gpu_app
from gpuslice.plan.layout import Layout
from tests.parsl.conftest import loaded

pytestmark = pytest.mark.slow

PLAN = "small=2x mps:25%/10GiB, large=1x mps:50%/20GiB, batch=1x share"


@pytest.fixture(scope="module")
def layout(parsl_root: Path) -> Iterator[Layout]:
    # heartbeat_period=1: a dead worker is noticed (and its task failed, then retried) in ~1 s.
    with loaded(PLAN, parsl_root, retries=1, heartbeat_period=1) as the_layout:
        yield the_layout


def where(pause: float = 0.0) -> dict[str, str | None]:
    import time

    from gpuslice.parsl.worker import current_slice

    time.sleep(pause)  # keeps a worker busy so the others take the next tasks
    return current_slice()


def slices_seen(pool: str, count: int) -> list[dict[str, Any]]:
    app = gpu_app(pool=pool)(where)
    return [f.result(timeout=60) for f in [app(0.4) for _ in range(count)]]


@pytest.mark.parametrize("pool", ["small", "large", "batch"])
def test_every_worker_sees_exactly_its_slice(layout: Layout, pool: str) -> None:
    the_pool = layout.pool(pool)
    seen = slices_seen(pool, 3 * len(the_pool.slices))
    by_device = {s.device: s for s in the_pool.slices}
    for view in seen:
        the_slice = by_device[str(view["CUDA_VISIBLE_DEVICES"])]
        assert view["GPUSLICE_POOL"] == pool
        assert view["CUDA_MPS_PIPE_DIRECTORY"] == the_slice.mps_pipe_dir
        compute = None if the_slice.compute is None else str(the_slice.compute)
        assert view["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == compute
        memory = None if the_slice.memory_mib is None else f"0={the_slice.memory_mib}M"
        assert view["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"] == memory
        assert view["visible_sms"] == str(the_slice.expected_sms)
    assert {v["CUDA_VISIBLE_DEVICES"] for v in seen} == set(the_pool.devices)
    # One Parsl worker pool per (pool, device): ranks count the device's slices.
    per_device = len(the_pool.slices) // len(set(the_pool.devices))
    ranks = {(v["CUDA_VISIBLE_DEVICES"], v["PARSL_WORKER_RANK"]) for v in seen}
    assert ranks == {(d, str(r)) for d in the_pool.devices for r in range(per_device)}


def test_tasks_land_only_in_their_pool(layout: Layout) -> None:
    futures = {pool: [gpu_app(pool=pool)(where)() for _ in range(4)] for pool in layout.pool_names}
    for pool, pool_futures in futures.items():
        for future in pool_futures:
            assert future.result(timeout=60)["GPUSLICE_POOL"] == pool
            assert future.task_record["executor"] == pool


def allocate(size: str) -> str:
    from gpuslice.emulate.kernel import kernel

    return kernel(1.0, memory=size).mode


def test_memory_cap_holds_inside_the_small_pool(layout: Layout) -> None:
    app = gpu_app(pool="small")(allocate)
    assert app("9GiB").result(timeout=60) == "mps"
    with pytest.raises(CudaOutOfMemoryError):
        app("11GiB").result(timeout=60)


def die_once(marker: str) -> int:
    import os
    import signal
    from pathlib import Path

    if not Path(marker).exists():
        Path(marker).write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def test_a_killed_workers_task_is_retried_and_completes(layout: Layout, tmp_path: Path) -> None:
    app = gpu_app(pool="large")(die_once)
    markers = [str(tmp_path / f"marker-{i}") for i in range(3)]
    futures = [app(m) for m in markers]
    pids = [f.result(timeout=90) for f in futures]
    assert all(isinstance(pid, int) for pid in pids)
    assert all(f.task_record["try_id"] == 1 for f in futures)
    assert all(Path(m).read_text() == "killed" for m in markers)


def test_an_unknown_pool_is_a_usage_error_listing_the_pools(layout: Layout) -> None:
    app = gpu_app(pool="huge")(where)
    with pytest.raises(UsageError, match=r"'huge'.*small, large, batch"):
        app()


def test_no_pool_with_three_pools_loaded_is_a_usage_error(layout: Layout) -> None:
    app = gpu_app(where)
    with pytest.raises(UsageError, match="names no pool"):
        app()


def test_the_app_keeps_the_functions_name_and_dependencies_work(layout: Layout) -> None:
    @gpu_app(pool="batch")
    def add(a: int, b: int) -> int:
        return a + b

    assert add.__name__ == "add"
    assert add(add(1, 2), add(3, 4)).result(timeout=60) == 10
