"""profile() through real Parsl on the emulated GPU: memory limits the sizes; failures are clear."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuslice.errors import UsageError
from gpuslice.rightsize.profiler import ProfileError, profile
from tests.parsl.conftest import emulated_environment
from tests.rightsize import funcs

FLEET = str(Path(__file__).resolve().parents[2] / "src/gpuslice/examples/fleet-1xh100.yaml")


@pytest.fixture
def emulated() -> Iterator[Path]:
    with emulated_environment() as root:
        yield root


def test_bad_arguments_are_refused_before_any_worker_starts() -> None:
    with pytest.raises(UsageError, match="p95_ms must be above 0"):
        profile(funcs.quick, fleet=FLEET, p95_ms=0, store=False)
    with pytest.raises(UsageError, match="GPU 3 is not here"):
        profile(funcs.quick, fleet=FLEET, gpu=3, store=False)


@pytest.mark.slow
def test_memory_decides_how_many_slices_are_tried(emulated: Path) -> None:
    events: list[str] = []
    result = profile(
        funcs.hungry,
        fleet=FLEET,
        max_per_gpu=8,
        samples=4,
        store=False,
        on_event=lambda e: events.append(e.kind),
    )
    # 30 GiB peak: the cap is 30720 * 1.2 = 36864 MiB, and two of those fit in 81920 MiB.
    assert result.recommended.memory_mib == 36864
    assert result.max_per_gpu == 2
    assert {p.per_gpu for p in result.points} <= {1, 2}
    assert all(p.peak_memory_mib == 30720 for p in result.points)
    assert events[0] == "measuring"
    assert events[-1] == "done"


@pytest.mark.slow
def test_a_function_that_always_fails_is_a_profile_error(emulated: Path) -> None:
    with pytest.raises(ProfileError, match="failed with the whole GPU to itself: RuntimeError"):
        profile(funcs.broken, fleet=FLEET, max_per_gpu=2, samples=4, store=False)
