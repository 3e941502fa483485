"""The elastic controller's decisions, as a pure function of what it sees (no Parsl, no processes).

Sizes used throughout, on an 80 GB H100 (81,559 MiB): ``infer`` slices of 10% and 6 GiB,
``train`` slices of 50% and 32 GiB; ten infer slices or two train slices fill the GPU's compute.
Expected values are worked out by hand in the comments, never with the controller's own code.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuslice.errors import UsageError
from gpuslice.parsl.capacity import DeviceCapacity, SliceSize, overflow
from gpuslice.parsl.config import layout_of
from gpuslice.parsl.elastic import (
    DeviceView,
    ElasticPolicy,
    Move,
    PoolLimits,
    PoolView,
    SliceView,
    decide,
    targets,
)
from tests.parsl.conftest import FLEET_2XH100

H100_MIB = 81559
INFER = SliceSize(10, 6144)
TRAIN = SliceSize(50, 32768)
POLICY = ElasticPolicy(grow_after_s=2.0, idle_after_s=3.0, cooldown_s=5.0)


def gpu(uuid: str = "GPU-0", node: str = "n0") -> DeviceView:
    return DeviceView(node, DeviceCapacity(uuid, H100_MIB), {"infer": INFER, "train": TRAIN})


def views(
    pool: str,
    n: int,
    state: str = "serving",
    tasks: int = 1,
    idle: float | None = None,
    device: str = "GPU-0",
    first: int = 0,
) -> list[SliceView]:
    """``n`` slices of ``pool`` (``infer`` or ``train``) on one device of node n0."""
    size = {"infer": INFER, "train": TRAIN}[pool]
    return [
        SliceView(f"{pool}.{device}.{first + i}", pool, "n0", device, size, state, tasks, idle)
        for i in range(n)
    ]


infer = functools.partial(views, "infer")
train = functools.partial(views, "train")


def load(name: str, waiting: int, backlog_s: float, running: int = 0, **more: float) -> PoolView:
    return PoolView(name, waiting + running, waiting, backlog_s if waiting else 0.0, **more)


def starts(moves: list[Move]) -> list[tuple[str, str]]:
    return [(m.pool, m.device) for m in moves if m.kind == "start"]


def retired(moves: list[Move]) -> list[str]:
    return [m.slice for m in moves if m.kind == "retire" and m.slice]


# -- the policy itself -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"min": -1}, "min must be 0 or more"),
        ({"min": 3, "max": 2}, "must be at least 1 and at least min"),
        ({"max": 0}, "must be at least 1"),
        ({"weight": 0}, "weight must be positive"),
    ],
)
def test_bad_pool_limits_are_refused_naming_the_field(
    limits: dict[str, float], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        PoolLimits(**limits)  # type: ignore[arg-type]


def test_a_policy_naming_a_pool_the_plan_lacks_is_refused() -> None:
    layout = layout_of("infer=2x mps:10%/6GiB", FLEET_2XH100)
    with pytest.raises(
        UsageError, match="'llm', which the plan does not have; its pools are infer"
    ):
        ElasticPolicy(pools={"llm": PoolLimits()}).check(layout)


@pytest.mark.parametrize(
    ("plan", "what"),
    [
        ("a=2x share", "it is share"),
        ("a=2x mps:20%", "without a limit"),
        ("a=2x mps:20%/8GiB, b=1x share", "pool 'b' needs"),
    ],
)
def test_elastic_pools_must_be_mps_with_compute_and_memory_limits(plan: str, what: str) -> None:
    with pytest.raises(UsageError, match=what):
        ElasticPolicy().check(layout_of(plan, FLEET_2XH100))


def test_a_negative_period_is_refused() -> None:
    with pytest.raises(UsageError, match=r"ElasticPolicy\.grow_after_s must be a positive number"):
        ElasticPolicy(grow_after_s=-1)


# -- targets: fair shares ----------------------------------------------------------------------


def test_pools_that_both_want_everything_get_equal_dominant_shares() -> None:
    # infer's dominant share is compute (10% > 6/79.6 GiB), train's too (50% > 32/79.6 GiB).
    # Equal shares: train 1 slice (50%), infer 5 slices (50%).
    pools = [load("infer", 200, 10.0), load("train", 20, 10.0)]
    assert targets(POLICY, pools, [gpu()], []) == {"infer": 5, "train": 1}


def test_weights_skew_the_shares() -> None:
    a, b = SliceSize(25, 1024), SliceSize(25, 1024)
    device = DeviceView("n0", DeviceCapacity("GPU-0", H100_MIB), {"a": a, "b": b})
    policy = ElasticPolicy(pools={"a": PoolLimits(weight=3.0)})
    pools = [load("a", 50, 10.0), load("b", 50, 10.0)]
    # Shares per slice: a 0.25/3, b 0.25. a gets 3 slices before its share reaches b's first.
    assert targets(policy, pools, [device], []) == {"a": 3, "b": 1}


def test_an_idle_pool_is_not_given_capacity_but_keeps_its_minimum() -> None:
    policy = ElasticPolicy(pools={"train": PoolLimits(min=1)})
    pools = [load("infer", 200, 10.0), load("train", 0, 0.0)]
    # train keeps 1 slice (50%); infer gets the other 50%.
    assert targets(policy, pools, [gpu()], train(1, tasks=0, idle=60.0)) == {
        "infer": 5,
        "train": 1,
    }


def test_a_maximum_caps_a_pool() -> None:
    policy = ElasticPolicy(pools={"infer": PoolLimits(max=3)})
    assert targets(policy, [load("infer", 200, 10.0)], [gpu()], []) == {"infer": 3}


def test_a_pool_with_few_tasks_is_not_given_more_slices_than_tasks() -> None:
    assert targets(POLICY, [load("infer", 2, 10.0, running=1)], [gpu()], []) == {"infer": 3}


# -- decide: hysteresis, room, draining ------------------------------------------------------


def test_a_backlog_shorter_than_grow_after_moves_nothing() -> None:
    pools = [load("infer", 50, 1.5, running=2), load("train", 0, 0.0)]
    _, moves = decide(POLICY, pools, [gpu()], infer(2))
    assert moves == []


def test_a_sustained_backlog_starts_slices_where_there_is_room() -> None:
    # Two GPUs: GPU-0 has infer 2 (20%) and train 1 busy (50%): room for 3 infer slices;
    # GPU-1 is empty: room for 10. The backlog of 40 wants all of it, train keeps its busy slice.
    devices = [gpu("GPU-0"), gpu("GPU-1")]
    slices = infer(2) + train(1, tasks=1)
    pools = [load("infer", 40, 3.0, running=2), load("train", 0, 0.0, running=1)]
    goal, moves = decide(POLICY, pools, devices, slices)
    assert goal == {"infer": 15, "train": 1}
    assert sorted(starts(moves)) == [("infer", "GPU-0")] * 3 + [("infer", "GPU-1")] * 10
    assert retired(moves) == []


def test_an_idle_slice_of_another_pool_is_retired_and_nothing_starts_until_it_is_gone() -> None:
    # GPU full: infer 5 x 10% + train 1 x 50%, train idle for 10 s; infer has a backlog.
    slices = infer(5) + train(1, tasks=0, idle=10.0)
    pools = [load("infer", 30, 4.0, running=5), load("train", 0, 0.0)]
    _, moves = decide(POLICY, pools, [gpu()], slices)
    assert retired(moves) == ["train.GPU-0.0"]
    assert starts(moves) == []  # its room is still taken until its processes are gone
    (move,) = moves
    assert move.receiver == "infer"
    assert "idle 10.0s" in move.reason
    assert "infer has 30 task(s) waiting for 4.0s" in move.reason


def test_room_freed_by_leaving_slices_is_waited_for_not_overbooked() -> None:
    # The train slice is already stopping: infer must neither start (100% in use now) nor
    # retire anything else.
    slices = infer(5) + train(1, state="stopping", tasks=0)
    pools = [load("infer", 30, 4.0, running=5), load("train", 0, 0.0)]
    _, moves = decide(POLICY, pools, [gpu()], slices)
    assert moves == []
    # Once it is gone, the five infer slices it made room for start.
    _, moves = decide(POLICY, pools, [gpu()], infer(5))
    assert starts(moves) == [("infer", "GPU-0")] * 5


def test_room_promised_to_a_waiting_slice_is_not_taken_by_another_pool() -> None:
    # GPU-0: two leaving a-slices (40%) and two staying (40%); GPU-1: four a-slices (80%).
    # t (50%) fits only on GPU-0 once the leaving slices are gone (40 + 50 = 90%), so that room
    # is promised to it. s (20%) fits on GPU-0 right now (80 + 20 = 100%), but there it would
    # break the promise (40 + 50 + 20 = 110%): it must start on GPU-1 (80 + 20 = 100%).
    a, t, s = SliceSize(20, 1024), SliceSize(50, 1024), SliceSize(20, 1024)
    sizes = {"a": a, "t": t, "s": s}
    devices = [
        DeviceView("n0", DeviceCapacity("GPU-0", H100_MIB), sizes),
        DeviceView("n0", DeviceCapacity("GPU-1", H100_MIB), sizes),
    ]
    slices = [
        SliceView(f"a.{i}", "a", "n0", "GPU-0", a, "retiring" if i < 2 else "serving", 1)
        for i in range(4)
    ] + [SliceView(f"a.1{i}", "a", "n0", "GPU-1", a, "serving", 1) for i in range(4)]
    pools = [load("a", 0, 0.0, running=6), load("t", 1, 10.0), load("s", 1, 10.0)]
    goal, moves = decide(POLICY, pools, devices, slices)
    assert goal == {"a": 6, "t": 1, "s": 1}
    assert moves == [Move("start", "s", "n0", "GPU-1", "grow: s has 1 task(s) waiting for 10.0s")]


def test_busy_slices_are_drained_only_from_pools_that_did_not_just_grow() -> None:
    # Phase change: train has a backlog, infer holds the GPU with busy slices (fairness:
    # infer 5, train 1). infer grew 2 s ago: its busy slices are not taken yet.
    slices = infer(10)
    grew = load("infer", 40, 10.0, running=10, since_grow_s=2.0)
    pools = [grew, load("train", 10, 5.0)]
    _, moves = decide(POLICY, pools, [gpu()], slices)
    assert moves == []
    settled = replace(grew, since_grow_s=30.0)
    _, moves = decide(POLICY, [settled, pools[1]], [gpu()], slices)
    assert len(retired(moves)) == 5
    assert all("finished first" in m.reason for m in moves)


def test_a_pool_that_just_gave_capacity_does_not_grow_back_at_once() -> None:
    slices = infer(2) + train(1, tasks=1)
    gave = load("infer", 20, 10.0, running=2, since_shrink_s=1.0)
    _, moves = decide(POLICY, [gave, load("train", 0, 0.0, running=1)], [gpu()], slices)
    assert moves == []
    _, moves = decide(
        POLICY,
        [replace(gave, since_shrink_s=6.0), load("train", 0, 0.0, running=1)],
        [gpu()],
        slices,
    )
    assert len(starts(moves)) == 3


def test_a_pool_with_no_slice_grows_even_in_its_cooldown() -> None:
    pools = [load("infer", 5, 10.0, since_shrink_s=1.0)]
    _, moves = decide(POLICY, pools, [gpu()], [])
    assert len(starts(moves)) == 5


def test_a_minimum_is_never_retired_and_a_pool_below_it_grows_without_backlog() -> None:
    policy = ElasticPolicy(pools={"train": PoolLimits(min=1)})
    slices = infer(3)
    pools = [load("infer", 0, 0.0, running=3), load("train", 0, 0.0)]
    _, moves = decide(policy, pools, [gpu()], slices)
    assert starts(moves) == [("train", "GPU-0")]
    slices = infer(5) + train(1, tasks=0, idle=100.0)
    pools = [load("infer", 50, 10.0, running=5), load("train", 0, 0.0)]
    _, moves = decide(policy, pools, [gpu()], slices)
    assert "train.GPU-0.0" not in retired(moves)


# -- invariants over many situations -----------------------------------------------------------


@st.composite
def situations(
    draw: st.DrawFn,
) -> tuple[ElasticPolicy, list[PoolView], list[DeviceView], list[SliceView]]:
    sizes = {
        "infer": SliceSize(draw(st.sampled_from([5, 10, 20])), draw(st.sampled_from([2048, 6144]))),
        "train": SliceSize(
            draw(st.sampled_from([25, 50, 100])), draw(st.sampled_from([16384, 32768]))
        ),
    }
    devices = [
        DeviceView(f"n{i // 2}", DeviceCapacity(f"GPU-{i}", H100_MIB), sizes)
        for i in range(draw(st.integers(1, 3)))
    ]
    counter = itertools.count()
    slices: list[SliceView] = []
    for d in devices:
        for _ in range(draw(st.integers(0, 12))):
            pool = draw(st.sampled_from(["infer", "train"]))
            size = sizes[pool]
            if overflow(d.capacity, [*(s.size for s in slices if s.device == d.device), size]):
                continue
            state = draw(
                st.sampled_from(["starting", "serving", "serving", "retiring", "stopping"])
            )
            tasks = draw(st.integers(0, 2)) if state in ("serving", "retiring") else 0
            idle = draw(st.floats(0, 20)) if tasks == 0 and state == "serving" else None
            slices.append(
                SliceView(
                    f"{pool}.{next(counter)}", pool, d.node, d.device, size, state, tasks, idle
                )
            )
    pools = [
        PoolView(
            name,
            outstanding=(queued := draw(st.integers(0, 40))) + draw(st.integers(0, 5)),
            queued=queued,
            backlog_s=draw(st.floats(0, 10)) if queued else 0.0,
            since_grow_s=draw(st.one_of(st.none(), st.floats(0, 20))),
            since_shrink_s=draw(st.one_of(st.none(), st.floats(0, 20))),
        )
        for name in ("infer", "train")
    ]
    policy = ElasticPolicy(
        pools={
            "train": PoolLimits(min=draw(st.integers(0, 1)), max=draw(st.sampled_from([None, 3])))
        },
        grow_after_s=2.0,
        idle_after_s=3.0,
        cooldown_s=5.0,
    )
    return policy, pools, devices, slices


@settings(max_examples=300, deadline=None)
@given(situations())
def test_no_decision_ever_exceeds_a_device_or_retires_below_a_minimum(
    situation: tuple[ElasticPolicy, list[PoolView], list[DeviceView], list[SliceView]],
) -> None:
    policy, pools, devices, slices = situation
    goal, moves = decide(policy, pools, devices, slices)
    by_id = {s.id: s for s in slices}
    for d in devices:
        here = [s.size for s in slices if s.device == d.device]
        started = [d.pools[m.pool] for m in moves if m.kind == "start" and m.device == d.device]
        # Every slice still counted, plus every start, fits the device now.
        assert overflow(d.capacity, [*here, *started]) is None
    for m in moves:
        if m.kind == "retire":
            victim = by_id[m.slice or ""]
            assert victim.state == "serving"
            assert victim.pool != m.receiver
    for name in ("infer", "train"):
        active = sum(1 for s in slices if s.pool == name and s.active)
        gone = sum(1 for m in moves if m.kind == "retire" and m.pool == name)
        assert active - gone >= min(policy.limits(name).min, active)
        grown = sum(1 for m in moves if m.kind == "start" and m.pool == name)
        assert active + grown <= policy.limits(name).ceiling or grown == 0
        assert grown == 0 or active + grown <= goal[name]


def test_a_device_keeps_room_for_every_cuda_context_as_the_planner_does() -> None:
    # 512 MiB per context (each slice, and the MPS server): two 4,608 MiB caps need
    # 9,216 + 3 x 512 = 10,752 MiB, more than a 10,240 MiB device; one needs 5,632.
    device = DeviceCapacity("GPU-s", 10240)
    assert overflow(device, [SliceSize(10, 4608)]) is None
    problem = overflow(device, [SliceSize(10, 4608)] * 2)
    assert problem is not None
    assert "plus 1.5GiB kept for 3 CUDA contexts" in problem
