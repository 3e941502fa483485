"""The emulated GPU's compute model (docs/emulation-model.md), rule by rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuslice.emulate.model import (
    TIMESLICE_EFFICIENCY,
    ActiveClient,
    check_memory,
    context_count,
    duration_alone_ms,
    mps_visible_sm_count,
    rates,
)


def mps(pid: int, limit: float, parallelism: float = 1.0) -> ActiveClient:
    return ActiveClient(pid=pid, mps=True, sm_limit=limit, parallelism=parallelism)


def plain(pid: int, parallelism: float = 1.0) -> ActiveClient:
    return ActiveClient(pid=pid, mps=False, sm_limit=1.0, parallelism=parallelism)


def test_task_alone_takes_work_ms_when_its_parallelism_fits_its_share() -> None:
    assert duration_alone_ms(200.0, parallelism=0.25, sm_limit=0.3) == pytest.approx(200.0)
    assert duration_alone_ms(200.0, parallelism=0.3) == pytest.approx(200.0)


def test_full_task_in_a_30_percent_mps_slice_takes_work_over_0_3() -> None:
    assert duration_alone_ms(300.0, parallelism=1.0, sm_limit=0.3) == pytest.approx(1000.0)


def test_half_parallel_task_in_a_25_percent_slice_runs_at_half_speed() -> None:
    assert duration_alone_ms(100.0, parallelism=0.5, sm_limit=0.25) == pytest.approx(200.0)


def test_two_time_shared_full_tasks_each_take_twice_over_efficiency() -> None:
    assert rates([plain(1), plain(2)]) == pytest.approx([TIMESLICE_EFFICIENCY / 2] * 2)


def test_time_slicing_does_not_let_small_kernels_overlap() -> None:
    # Two processes whose kernels would fit side by side still take turns without MPS.
    assert rates([plain(1, 0.2), plain(2, 0.2)]) == pytest.approx([TIMESLICE_EFFICIENCY / 2] * 2)


def test_mps_clients_of_30_and_70_percent_run_concurrently_at_their_own_rates() -> None:
    assert rates([mps(1, 0.3), mps(2, 0.7)]) == pytest.approx([0.3, 0.7])


def test_small_mps_kernels_run_concurrently_at_full_speed() -> None:
    assert rates([mps(1, 1.0, 0.2), mps(2, 1.0, 0.3), mps(3, 1.0, 0.4)]) == pytest.approx([1.0] * 3)


def test_oversubscribed_mps_clients_are_scaled_down_proportionally() -> None:
    assert rates([mps(1, 1.0), mps(2, 1.0)]) == pytest.approx([0.5, 0.5])
    # demands 0.6 + 0.6 + 0.6 = 1.8: each gets 0.6 / 1.8 of the SMs, i.e. 1/3 of its work rate.
    assert rates([mps(1, 0.6), mps(2, 0.6), mps(3, 0.6)]) == pytest.approx([1 / 3] * 3)


def test_mps_server_and_a_plain_process_take_turns_as_two_contexts() -> None:
    clients = [mps(1, 0.5), mps(2, 0.5), plain(3)]
    assert context_count(clients) == 2
    half = TIMESLICE_EFFICIENCY / 2
    assert rates(clients) == pytest.approx([0.5 * half, 0.5 * half, half])


def test_kernels_of_one_process_share_its_context_without_switching() -> None:
    assert rates([plain(1, 0.5), plain(1, 0.5)]) == pytest.approx([1.0, 1.0])


def test_visible_sm_count_rounds_percentage_down_to_whole_sm_pairs() -> None:
    assert mps_visible_sm_count(132, 30) == 38  # 39.6 SMs -> 38
    assert mps_visible_sm_count(100, 30) == 30
    assert mps_visible_sm_count(132, 50) == 66


def test_visible_sm_count_without_limit_is_the_whole_device() -> None:
    assert mps_visible_sm_count(132, None) == 132
    assert mps_visible_sm_count(132, 100) == 132


def test_visible_sm_count_never_falls_to_zero() -> None:
    assert mps_visible_sm_count(132, 0.5) == 2


def test_allocation_over_the_pinned_limit_is_out_of_memory() -> None:
    verdict = check_memory(
        2048, device_memory_mib=81559, used_on_device_mib=0, pinned_limit_mib=1024
    )
    assert verdict is not None
    assert verdict.pinned_limit_mib == 1024
    assert verdict.message().startswith("CUDA out of memory. Tried to allocate 2.00 GiB.")
    assert "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT" in verdict.message()


def test_pinned_limit_counts_the_whole_process() -> None:
    fits = check_memory(600, 81559, used_on_device_mib=600, pinned_limit_mib=1024)
    assert fits is None
    verdict = check_memory(
        600, 81559, used_on_device_mib=600, pinned_limit_mib=1024, used_by_process_mib=600
    )
    assert verdict is not None
    assert verdict.free_mib == 424


def test_allocation_over_the_devices_free_memory_is_out_of_memory() -> None:
    verdict = check_memory(500, device_memory_mib=1000, used_on_device_mib=600)
    assert verdict is not None
    assert verdict.free_mib == 400
    assert "of which 400.00 MiB is free" in verdict.message()


def test_allocation_that_fits_is_allowed() -> None:
    assert check_memory(400, device_memory_mib=1000, used_on_device_mib=600) is None


def test_parallelism_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="parallelism"):
        plain(1, 1.5)


client_strategy = st.builds(
    ActiveClient,
    pid=st.integers(1, 4),
    mps=st.booleans(),
    sm_limit=st.floats(0.01, 1.0),
    parallelism=st.floats(0.01, 1.0),
)


@given(st.lists(client_strategy, min_size=1, max_size=8))
def test_rates_never_use_more_than_the_whole_device(clients: list[ActiveClient]) -> None:
    result = rates(clients)
    assert all(0 < rate <= 1.0 + 1e-9 for rate in result)
    used = sum(rate * c.parallelism for rate, c in zip(result, clients, strict=True))
    assert used <= 1.0 + 1e-9
