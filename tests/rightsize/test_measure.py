"""Statistics of one measured size: latency, spread, throughput of the filled GPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from gpuslice.rightsize.measure import Point, Sample, summarize


def _sample(start: float, ms: float, pid: int, peak: int | None = 100) -> Sample:
    return Sample(start=start, end=start + ms / 1000, ms=ms, peak_mib=peak, pid=pid)


def test_throughput_is_slices_over_mean_latency_and_observed_counts_gaps() -> None:
    # Two workers, each runs two 100 ms calls with a 50 ms gap between them.
    packed = [
        _sample(0.00, 100, 1),
        _sample(0.15, 100, 1),
        _sample(0.00, 100, 2),
        _sample(0.15, 100, 2),
    ]
    point = summarize(
        per_gpu=2, compute=50, sms=66, memory_mib=None, alone=[], packed=packed, seconds=1.0
    )
    assert point.tasks_per_s_per_gpu == pytest.approx(20.0)  # 2 slices / 0.1 s
    # Window: 0.0 (last first start) to 0.25 (first last end); each worker did 2 calls in it.
    assert point.tasks_per_s_observed == pytest.approx(4 / 0.25)
    assert point.p50_ms == pytest.approx(100.0)
    assert point.tasks_per_s_spread == pytest.approx(0.0)
    assert point.peak_memory_mib == 100


def test_latency_quantiles_and_spread_follow_the_samples() -> None:
    times = [100.0, 110.0, 120.0, 130.0, 200.0]
    packed = [_sample(i * 0.3, ms, 1) for i, ms in enumerate(times)]
    alone = [_sample(5.0, 90.0, 1), _sample(5.2, 95.0, 1), _sample(5.4, 92.0, 1)]
    point = summarize(
        per_gpu=1, compute=100, sms=132, memory_mib=None, alone=alone, packed=packed, seconds=2.0
    )
    assert point.p50_ms == pytest.approx(120.0)
    assert point.p25_ms == pytest.approx(110.0)
    assert point.p75_ms == pytest.approx(130.0)
    # inclusive p95 of 5 values: 130 + 0.8 * (200 - 130)
    assert point.p95_ms == pytest.approx(186.0)
    assert point.p95_low_ms <= point.p95_ms <= point.p95_high_ms
    assert point.alone_ms == pytest.approx(92.0)
    mean = sum(times) / 5
    sd = math.sqrt(sum((t - mean) ** 2 for t in times) / 4)
    assert point.tasks_per_s_spread == pytest.approx(1000 / mean * 1.96 * sd / mean / math.sqrt(5))


def test_a_point_needs_samples_and_round_trips_through_json() -> None:
    with pytest.raises(ValueError, match="at least one"):
        summarize(per_gpu=1, compute=100, sms=132, memory_mib=None, alone=[], packed=[], seconds=0)
    failed = Point.failure(4, 25, 32, 1024, "CudaOutOfMemoryError: boom", 3, 2.5)
    assert failed.samples == 0
    assert Point.from_dict(failed.to_dict()).error == "CudaOutOfMemoryError: boom"


def test_timed_call_reads_the_emulated_peak_memory_of_the_call(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gpuslice.emulate.kernel import kernel, peak_memory_mib, reset_peak_memory
    from gpuslice.rightsize.measure import timed_call

    monkeypatch.setenv("GPUSLICE_EMULATE_DIR", str(tmp_path / "emu"))
    monkeypatch.setenv("GPUSLICE_EMULATED", "1")
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    kernel(1, memory=2048)  # an earlier, larger call does not count: timed_call resets the peak
    first = timed_call(kernel, [5], {"occupancy": 0.5, "memory": 300})
    assert first["peak_mib"] == 300
    assert first["ms"] >= 5
    assert first["end"] > first["start"]
    reset_peak_memory()
    assert peak_memory_mib() == 0
