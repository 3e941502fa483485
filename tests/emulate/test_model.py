"""The emulated GPU's compute model (docs/emulation-model.md), rule by rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuslice.emulate import model
from gpuslice.emulate.model import (
    TIMESLICE_EFFICIENCY,
    ActiveClient,
    check_memory,
    context_count,
    context_rates,
    duration_alone_ms,
    mps_visible_sm_count,
    rates,
    task_shape,
    time_share,
)


def mps(
    pid: int, limit: float, occupancy: float = 1.0, duty: float = 1.0, bandwidth: float = 0.0
) -> ActiveClient:
    return ActiveClient(
        pid=pid, mps=True, sm_limit=limit, occupancy=occupancy, duty=duty, bandwidth=bandwidth
    )


def plain(
    pid: int, occupancy: float = 1.0, duty: float = 1.0, bandwidth: float = 0.0
) -> ActiveClient:
    return ActiveClient(
        pid=pid, mps=False, sm_limit=1.0, occupancy=occupancy, duty=duty, bandwidth=bandwidth
    )


# --- a task alone ----------------------------------------------------------------------------


def test_task_alone_takes_work_ms_when_its_parallelism_fits_its_share() -> None:
    assert duration_alone_ms(200.0, parallelism=0.25, sm_limit=0.3) == pytest.approx(200.0)
    assert duration_alone_ms(200.0, parallelism=0.3) == pytest.approx(200.0)


def test_launch_bound_task_alone_takes_work_ms_whatever_its_duty() -> None:
    assert duration_alone_ms(200.0, duty=0.1, occupancy=0.4) == pytest.approx(200.0)


def test_full_task_in_a_30_percent_mps_slice_takes_work_over_0_3() -> None:
    assert duration_alone_ms(300.0, parallelism=1.0, sm_limit=0.3) == pytest.approx(1000.0)


def test_half_parallel_task_in_a_25_percent_slice_runs_at_half_speed() -> None:
    assert duration_alone_ms(100.0, parallelism=0.5, sm_limit=0.25) == pytest.approx(200.0)


def test_mps_limit_slows_only_the_kernels_not_the_host_gaps() -> None:
    # Kernels (40 ms) run at 0.25/0.5 = half speed -> 80 ms; the 60 ms of host gaps stay 60 ms.
    assert duration_alone_ms(100.0, duty=0.4, occupancy=0.5, sm_limit=0.25) == pytest.approx(140.0)


# --- time-sharing: contexts compete only while they have a kernel to run --------------------


def test_two_time_shared_full_tasks_each_take_twice_over_efficiency() -> None:
    assert rates([plain(1), plain(2)]) == pytest.approx([TIMESLICE_EFFICIENCY / 2] * 2)


def test_time_slicing_does_not_let_small_kernels_overlap() -> None:
    # Occupancy is no help without MPS: kernels that would fit side by side still take turns.
    assert rates([plain(1, 0.2), plain(2, 0.2)]) == pytest.approx([TIMESLICE_EFFICIENCY / 2] * 2)


def test_time_shared_launch_bound_tasks_fill_each_others_gaps_at_full_speed() -> None:
    # Two LLM-decode-like tasks, kernels running 10% of the time: 0.2 of the device's time.
    assert rates([plain(1, 0.4, duty=0.1), plain(2, 0.4, duty=0.1)]) == pytest.approx([1.0, 1.0])


def test_time_shared_tasks_share_the_device_time_once_their_duties_exceed_it() -> None:
    # Duties 0.6 + 0.6 = 1.2 > 0.95: each keeps 0.95 / 1.2 of its speed.
    assert rates([plain(1, duty=0.6), plain(2, duty=0.6)]) == pytest.approx([0.95 / 1.2] * 2)


def test_launch_bound_neighbour_costs_a_compute_bound_task_its_duty() -> None:
    # Duties 1 + 0.1 = 1.1: both keep 0.95 / 1.1 of their speed.
    assert rates([plain(1), plain(2, duty=0.1)]) == pytest.approx([0.95 / 1.1] * 2)


def test_time_share_is_continuous_at_the_efficiency() -> None:
    assert time_share([0.5, 0.45]) == pytest.approx(1.0)
    assert time_share([0.5, 0.45 + 1e-9]) == pytest.approx(1.0)
    assert time_share([0.5, 0.5]) == pytest.approx(0.95)
    assert time_share([1.0]) == 1.0  # one context never pays for switches


# --- MPS: one context, clients share the SMs -------------------------------------------------


def test_mps_clients_of_30_and_70_percent_run_concurrently_at_their_own_rates() -> None:
    assert rates([mps(1, 0.3), mps(2, 0.7)]) == pytest.approx([0.3, 0.7])


def test_small_mps_kernels_run_concurrently_at_full_speed() -> None:
    assert rates([mps(1, 1.0, 0.2), mps(2, 1.0, 0.3), mps(3, 1.0, 0.4)]) == pytest.approx([1.0] * 3)


def test_oversubscribed_mps_clients_are_scaled_down_proportionally() -> None:
    assert rates([mps(1, 1.0), mps(2, 1.0)]) == pytest.approx([0.5, 0.5])
    # demands 0.6 + 0.6 + 0.6 = 1.8: each gets 0.6 / 1.8 of the SMs, i.e. 1/3 of its work rate.
    assert rates([mps(1, 0.6), mps(2, 0.6), mps(3, 0.6)]) == pytest.approx([1 / 3] * 3)


def test_mps_clients_with_host_gaps_share_the_sms_only_while_their_kernels_run() -> None:
    # Two full-occupancy clients busy half the time use exactly all SMs: no slowdown.
    assert rates([mps(1, 1.0, duty=0.5), mps(2, 1.0, duty=0.5)]) == pytest.approx([1.0, 1.0])
    # Three: kernels slow to half speed (0.5 ms of kernel becomes 1 ms, the 0.5 ms gap stays),
    # so each progresses at 1 / 1.5 and together they use 3 x (2/3) x 0.5 = all the SMs.
    three = [mps(i, 1.0, duty=0.5) for i in (1, 2, 3)]
    assert rates(three) == pytest.approx([2 / 3] * 3)


def test_mps_server_and_a_plain_process_take_turns_as_two_contexts() -> None:
    clients = [mps(1, 0.5), mps(2, 0.5), plain(3)]
    assert context_count(clients) == 2
    half = TIMESLICE_EFFICIENCY / 2
    assert rates(clients) == pytest.approx([0.5 * half, 0.5 * half, half])


def test_mps_server_counts_for_its_clients_kernel_time_when_time_shared() -> None:
    # Two launch-bound MPS clients (busy 0.1 each) beside a compute-bound process:
    # the server holds the device 0.2 of the time, the process 1; 0.95 / 1.2 for everyone.
    clients = [mps(1, 1.0, 0.4, duty=0.1), mps(2, 1.0, 0.4, duty=0.1), plain(3)]
    assert context_rates(clients[:2])[1] == pytest.approx(0.2)
    assert rates(clients) == pytest.approx([0.95 / 1.2] * 3)


def test_kernels_of_one_process_share_its_context_without_switching() -> None:
    assert rates([plain(1, 0.5), plain(1, 0.5)]) == pytest.approx([1.0, 1.0])


# --- memory bandwidth: a second resource shared inside a context -----------------------------


def test_mps_clients_that_fit_the_sms_are_slowed_by_the_bandwidth_they_share() -> None:
    # SMs 0.3 + 0.3 = 0.6 fit; bandwidth 0.8 + 0.8 = 1.6 does not: 1 / 1.6 = 0.625 each.
    clients = [mps(1, 1.0, 0.3, bandwidth=0.8), mps(2, 1.0, 0.3, bandwidth=0.8)]
    assert rates(clients) == pytest.approx([0.625, 0.625])


def test_the_scarcer_resource_sets_the_speed() -> None:
    # SMs 0.5 + 0.3 + 0.3 = 1.1 (factor 1/1.1); bandwidth 0.1 + 0.9 + 0.9 = 1.9 (factor 1/1.9):
    # the bandwidth is the bottleneck.
    clients = [
        mps(1, 1.0, 0.5, bandwidth=0.1),
        mps(2, 1.0, 0.3, bandwidth=0.9),
        mps(3, 1.0, 0.3, bandwidth=0.9),
    ]
    assert rates(clients) == pytest.approx([1 / 1.9] * 3)
    # Without the bandwidth demands the SMs are the bottleneck.
    assert rates([mps(1, 1.0, 0.5), mps(2, 1.0, 0.3), mps(3, 1.0, 0.3)]) == pytest.approx(
        [1 / 1.1] * 3
    )


def test_launch_bound_decode_clients_share_bandwidth_only_in_kernel_time() -> None:
    # Seven clients whose kernels run 20% of the time on 40% of the SMs and stream memory at
    # 80% of the bandwidth: 7 x 0.2 x 0.8 = 1.12 of the bandwidth. Each keeps rate r with
    # 7 x r x 0.2 x 0.8 = 1, so r = 1 / 1.12: kernels at speed s = 0.2 / (1/r - 0.8) = 0.625.
    clients = [mps(i, 1.0, 0.4, duty=0.2, bandwidth=0.8) for i in range(7)]
    assert rates(clients) == pytest.approx([1 / 1.12] * 7)
    # Six need 0.96 of it: no slowdown.
    assert rates(clients[:6]) == pytest.approx([1.0] * 6)


def test_time_shared_contexts_never_compete_for_bandwidth() -> None:
    # Only one context's kernels run at a time: two processes streaming memory half the time
    # share the device's time (busy 0.5 + 0.5 = 1 > 0.95), not its bandwidth.
    clients = [plain(1, duty=0.5, bandwidth=1.0), plain(2, duty=0.5, bandwidth=1.0)]
    assert rates(clients) == pytest.approx([0.95, 0.95])


def test_an_mps_limit_caps_sms_not_bandwidth() -> None:
    # Alone, a kernel at 25% of the SMs with occupancy 0.5 runs at half speed whatever its
    # bandwidth: the limit, not the memory, is its bottleneck.
    assert rates([mps(1, 0.25, 0.5, bandwidth=1.0)]) == pytest.approx([0.5])
    # Beside a streaming neighbour, the capped kernel moves 0.5 x 1.0 of the bandwidth and the
    # neighbour 1.0: 1.5 in all, so both are scaled by 1/1.5 (0.5/1.5 and 1/1.5).
    pair = [mps(1, 0.25, 0.5, bandwidth=1.0), mps(2, 1.0, 0.3, bandwidth=1.0)]
    assert rates(pair) == pytest.approx([0.5 / 1.5, 1 / 1.5])


def test_a_task_alone_is_never_slowed_by_its_own_bandwidth() -> None:
    assert duration_alone_ms(100.0, duty=0.3, occupancy=0.4, bandwidth=1.0) == pytest.approx(100)


def test_bandwidth_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="bandwidth"):
        mps(1, 1.0, bandwidth=1.2)
    with pytest.raises(ValueError, match="bandwidth"):
        mps(1, 1.0, bandwidth=-0.1)


# --- describing a task -----------------------------------------------------------------------


def test_parallelism_alone_means_kernels_running_all_the_time() -> None:
    assert task_shape(0.3) == (1.0, 0.3)
    assert task_shape() == (1.0, 1.0)
    assert ActiveClient(1, False, 1.0, 0.3).parallelism == pytest.approx(0.3)


def test_parallelism_next_to_duty_or_occupancy_fixes_the_other() -> None:
    assert task_shape(0.06, duty=0.15) == pytest.approx((0.15, 0.4))
    assert task_shape(0.06, occupancy=0.4) == pytest.approx((0.15, 0.4))
    assert task_shape(duty=0.2) == (0.2, 1.0)


def test_parallelism_that_disagrees_with_duty_and_occupancy_is_refused() -> None:
    with pytest.raises(ValueError, match="duty \\* occupancy"):
        task_shape(0.5, duty=0.2, occupancy=0.4)
    with pytest.raises(ValueError, match="cannot be split"):
        task_shape(0.5, duty=0.2)


def test_visible_sm_count_rounds_the_thread_limit_down_to_whole_tpcs() -> None:
    # 30% of 132 x 2048 threads = 81,100.8; a TPC is 2 x 2048 = 4,096 threads: 19 TPCs, 38 SMs.
    assert mps_visible_sm_count(132, 30) == 38
    assert mps_visible_sm_count(100, 30) == 30  # 61,440 threads: exactly 15 TPCs
    assert mps_visible_sm_count(132, 50) == 66  # 135,168 threads: exactly 33 TPCs
    assert mps_visible_sm_count(132, 14) == 18  # 37,847.04 threads: 9 TPCs
    assert mps_visible_sm_count(132, 33.3) == 42  # 90,021.888 threads: 21 TPCs
    assert mps_visible_sm_count(16, 30) == 4  # a 1g MIG instance: 9,830.4 threads, 2 TPCs


def test_visible_sm_count_without_limit_is_the_whole_device() -> None:
    assert mps_visible_sm_count(132, None) == 132
    assert mps_visible_sm_count(132, 100) == 132


def test_visible_sm_count_never_falls_below_one_tpc() -> None:
    assert mps_visible_sm_count(132, 0.5) == 2


def test_emulated_sm_rounding_is_written_apart_from_the_planners() -> None:
    # The emulator checks the planner; if it called the planner's rounding, a planner mistake
    # would be copied into what the emulated GPU reports and could never show.
    tree = ast.parse(Path(model.__file__).read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    ]
    assert not [name for name in imported if name and name.startswith("gpuslice")]


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


def test_shares_outside_zero_to_one_are_refused() -> None:
    with pytest.raises(ValueError, match="occupancy"):
        plain(1, 1.5)
    with pytest.raises(ValueError, match="duty"):
        plain(1, 0.5, duty=0.0)
    with pytest.raises(ValueError, match="parallelism"):
        task_shape(1.5)


client_strategy = st.builds(
    ActiveClient,
    pid=st.integers(1, 4),
    mps=st.booleans(),
    sm_limit=st.floats(0.01, 1.0),
    occupancy=st.floats(0.01, 1.0),
    duty=st.floats(0.01, 1.0),
    bandwidth=st.floats(0.0, 1.0),
)


@given(st.lists(client_strategy, min_size=1, max_size=8))
def test_rates_never_use_more_than_the_whole_device(clients: list[ActiveClient]) -> None:
    result = rates(clients)
    assert all(0 < rate <= 1.0 + 1e-9 for rate in result)
    # SM-time is conserved: a kernel at rate r uses r * duty * occupancy of the SMs on average.
    used = sum(rate * c.parallelism for rate, c in zip(result, clients, strict=True))
    assert used <= 1.0 + 1e-9
    # Inside each context, at its rates while it holds the device, neither the SMs nor the
    # bandwidth (r * duty * bandwidth on average) is used beyond all of it.
    contexts: dict[tuple[bool, int], list[ActiveClient]] = {}
    for c in clients:
        contexts.setdefault((c.mps, 0 if c.mps else c.pid), []).append(c)
    for members in contexts.values():
        inside = context_rates(members)[0]
        sms = sum(r * c.parallelism for r, c in zip(inside, members, strict=True))
        memory = sum(r * c.duty * c.bandwidth for r, c in zip(inside, members, strict=True))
        assert sms <= 1.0 + 1e-9
        assert memory <= 1.0 + 1e-9


@given(st.lists(client_strategy, min_size=2, max_size=8))
def test_contexts_together_never_hold_the_device_longer_than_its_time(
    clients: list[ActiveClient],
) -> None:
    contexts: dict[tuple[bool, int], list[ActiveClient]] = {}
    for c in clients:
        contexts.setdefault((c.mps, 0 if c.mps else c.pid), []).append(c)
    busy = [context_rates(members)[1] for members in contexts.values()]
    held = time_share(busy) * sum(busy)
    assert held <= (TIMESLICE_EFFICIENCY if len(busy) > 1 else 1.0) + 1e-9


@given(st.lists(client_strategy, min_size=1, max_size=7), client_strategy)
def test_a_new_kernel_never_speeds_the_others_up(
    clients: list[ActiveClient], newcomer: ActiveClient
) -> None:
    before = rates(clients)
    after = rates([*clients, newcomer])[: len(clients)]
    assert all(a <= b + 1e-9 for a, b in zip(after, before, strict=True))


@given(client_strategy)
def test_a_kernel_alone_within_its_limit_runs_at_full_speed(client: ActiveClient) -> None:
    if client.occupancy <= client.sm_limit:
        assert rates([client]) == pytest.approx([1.0])
