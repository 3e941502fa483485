"""Shared fixtures: fleets described in YAML (the emulated GPU) and small helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpuslice.hardware.fleet import fleet_from_data
from gpuslice.hardware.inventory import Inventory

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "gpuslice" / "examples"


@pytest.fixture(autouse=True)
def _fresh_emulated_contexts() -> Iterator[None]:
    """Each test starts as a new process would: no emulated MPS context from an earlier test.

    Tests that run emulated kernels in the pytest process become MPS clients of their test's
    daemon; once that daemon is stopped the context is lost for good (as a real CUDA context
    is), which would fail every later test's kernels in this process.
    """
    from gpuslice.emulate.kernel import forget_contexts

    forget_contexts()
    yield
    forget_contexts()


@pytest.fixture
def fleet() -> Callable[..., Inventory]:
    """Build an emulated inventory: ``fleet({"model": "H100-80GB", "count": 2}, ...)``."""

    def make(*entries: dict[str, object]) -> Inventory:
        return fleet_from_data({"gpus": list(entries)}, source="fleet:test")

    return make


@pytest.fixture
def h100x2(fleet: Callable[..., Inventory]) -> Inventory:
    """Two whole H100-80GB GPUs."""
    return fleet({"model": "H100-80GB", "count": 2})


@pytest.fixture
def examples() -> Path:
    """The example plans and fleets shipped with the package."""
    return EXAMPLES
