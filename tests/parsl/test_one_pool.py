"""With one pool loaded, a gpu_app without a pool runs there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuslice.parsl.app import gpu_app
from gpuslice.plan.layout import Layout
from tests.parsl.conftest import loaded

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def layout(parsl_root: Path) -> Iterator[Layout]:
    with loaded("solo=1x share", parsl_root) as the_layout:
        yield the_layout


def pool_and_device() -> tuple[str | None, str | None]:
    import os

    return os.environ.get("GPUSLICE_POOL"), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_a_bare_gpu_app_runs_in_the_only_pool(layout: Layout) -> None:
    app = gpu_app(pool_and_device)
    pool, device = app().result(timeout=60)
    assert pool == "solo"
    assert device in layout.pool("solo").devices
    assert app.label == "solo"


def test_python_app_options_are_accepted(layout: Layout) -> None:
    app = gpu_app(cache=True, ignore_for_cache=["note"])(add_note)
    first = app(1, note="a")
    second = app(1, note="b")
    assert first.result(timeout=60) == second.result(timeout=60) == 2


def add_note(x: int, note: str = "") -> int:
    return x + 1
