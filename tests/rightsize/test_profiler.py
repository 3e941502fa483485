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


def test_a_larger_slice_slower_than_a_smaller_one_is_suspect() -> None:
    from gpuslice.rightsize.profiler import _slower_than_a_smaller_slice
    from tests.rightsize.helpers import point

    small = point(12, 8, 10, p50=180.0)  # p95 198 (1.1 x)
    fine = point(3, 33, 42, p50=47.0)
    stalled = point(3, 33, 42, p50=80.0, p95=254.0)
    assert _slower_than_a_smaller_slice(fine, [small, fine]) is None
    reason = _slower_than_a_smaller_slice(stalled, [small, stalled])
    assert reason is not None
    assert "p95 latency 254.0 ms is above that of 12 slice(s) of 10 SMs (198.0 ms)" in reason
    # within 10%: not suspect
    assert _slower_than_a_smaller_slice(point(3, 33, 42, p50=190.0, p95=200.0), [small]) is None
