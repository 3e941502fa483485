"""The emulated GPU's compute model: how fast a task runs on a slice, as pure functions.

The model, its sources and what could not be confirmed are written down in
``docs/emulation-model.md``; this module is that document in code. Nothing here does I/O,
so every rule can be unit-tested with plain values; :mod:`gpuslice.emulate.kernel` feeds it
the kernels that are really running and sleeps for the durations it computes.

In short: a task is ``work_ms`` of time alone on a whole device, during a fraction ``duty`` of
which one of its kernels is running (the rest is host time between kernels: launch and Python
dispatch), and its kernels keep a fraction ``occupancy`` of the device's SMs busy while they run.
Host gaps are never slowed by the GPU. Inside a CUDA context (one process, or the MPS server
for all its clients) kernels share the SMs; different contexts take turns on the device, but
only while they have a kernel to run, so one context's kernels fill another's host gaps.
``parallelism = duty * occupancy`` is the time-averaged SM fraction of the task alone, the one
number the model used before it had two. A task may also declare ``bandwidth``, the fraction of
the device's usable memory bandwidth its kernels move while they run: inside a context, kernels
share the bandwidth as they share the SMs, and the scarcer of the two sets their speed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

#: Share of the device's time that does work when more than one CUDA context competes for it.
#: NVIDIA documents that without MPS the contexts' scheduling resources "must be swapped on and
#: off the GPU" (https://docs.nvidia.com/deploy/mps/index.html, "Reduced GPU context switching")
#: but gives no number; 0.95 is an assumption (5% lost to switches), a parameter rather than a
#: measurement. See docs/emulation-model.md.
TIMESLICE_EFFICIENCY = 0.95

#: Bisection steps when solving for the SM scale of an oversubscribed context (2**-60 is far
#: below anything a 10 ms tick can show).
_SOLVE_STEPS = 60

#: Client CUDA contexts one Volta-or-later MPS server accepts per device; over it, context
#: creation fails (MPS overview, "Client-Server Connection Limits").
MAX_MPS_CLIENTS = 48

#: SMs per texture processing cluster (TPC), the unit the emulator hands SMs out in under an
#: active thread percentage. Two on Volta and later: the H100 SXM5 has 66 TPCs for its 132 SMs
#: and the full GH100 72 TPCs for 144 SMs ("2 SMs/TPC", NVIDIA Hopper architecture whitepaper,
#: tabulated at https://glennklockwood.com/garden/processors/h100). That MPS grants whole TPCs is
#: an observation (an RTX 2080 granted SMs "2 at a time" under CUDA_MPS_ACTIVE_THREAD_PERCENTAGE
#: in rlscope's experiments), not NVIDIA's text; see :func:`mps_visible_sm_count`.
SMS_PER_TPC = 2

#: Resident threads per SM on compute capability 7.0 to 9.0 (Volta to Hopper): the "maximum
#: number of resident threads per SM" row of the CUDA C++ Programming Guide's table of technical
#: specifications per compute capability. The active thread percentage is a share of the
#: device's threads, ``sm_count * MAX_THREADS_PER_SM``.
MAX_THREADS_PER_SM = 2048


@dataclass(frozen=True)
class EmulatedDevice:
    """A device the emulator runs kernels on: a whole GPU or one MIG instance.

    Attributes:
        uuid: ``GPU-…`` or ``MIG-…`` UUID, as it appears in ``CUDA_VISIBLE_DEVICES``.
        sm_count: streaming multiprocessors of the device (of the instance, for MIG).
        memory_mib: device memory usable by CUDA.
        name: product name, e.g. ``NVIDIA H100 80GB HBM3``.
    """

    uuid: str
    sm_count: int
    memory_mib: int
    name: str

    def __post_init__(self) -> None:
        if self.sm_count < 1 or self.memory_mib < 1:
            raise ValueError(
                f"emulated device {self.uuid!r} needs sm_count >= 1 and memory_mib >= 1, "
                f"got {self.sm_count} and {self.memory_mib}"
            )


def default_device(uuid: str) -> EmulatedDevice:
    """The device assumed for a UUID nobody registered: an H100 80GB SXM (132 SMs, 81559 MiB).

    132 SMs is the H100 SXM5 configuration; 81559 MiB is the total memory NVML reports for it.
    """
    return EmulatedDevice(uuid=uuid, sm_count=132, memory_mib=81559, name="NVIDIA H100 80GB HBM3")


def task_shape(
    parallelism: float | None = None,
    duty: float | None = None,
    occupancy: float | None = None,
) -> tuple[float, float]:
    """``(duty, occupancy)`` of a task from whichever of the three numbers the caller gave.

    ``parallelism`` alone keeps its old meaning: a task whose kernels run all the time
    (``duty`` 1) and keep that fraction of the SMs busy. With ``duty`` or ``occupancy`` given,
    a ``parallelism`` next to it fixes the other one (``parallelism = duty * occupancy``);
    nothing given means a full task (1, 1).

    Raises:
        ValueError: a value outside (0, 1], or three values that disagree.
    """
    for name, value in (("parallelism", parallelism), ("duty", duty), ("occupancy", occupancy)):
        if value is not None and not 0.0 < value <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {value}")
    if duty is None and occupancy is None:
        return 1.0, 1.0 if parallelism is None else parallelism
    if duty is not None and occupancy is not None:
        if parallelism is not None and not math.isclose(
            parallelism, duty * occupancy, rel_tol=1e-6
        ):
            raise ValueError(
                f"parallelism {parallelism} is not duty * occupancy ({duty} * {occupancy}); "
                "give duty and occupancy alone"
            )
        return duty, occupancy
    given = duty if duty is not None else occupancy
    assert given is not None  # one of the two, by the cases above
    other = 1.0 if parallelism is None else parallelism / given
    if other > 1.0 + 1e-9:
        raise ValueError(
            f"parallelism {parallelism} cannot be split with {given}: "
            "duty * occupancy would need a factor above 1"
        )
    other = min(other, 1.0)
    return (given, other) if duty is not None else (other, given)


@dataclass(frozen=True)
class ActiveClient:
    """One kernel running on a device right now, as the model sees it.

    Attributes:
        pid: process that launched it. Without MPS every process is its own CUDA context.
        mps: True when the process is an MPS client (its kernels share the MPS server's context).
        sm_limit: fraction of the device's SMs the client may use (its MPS limit; 1.0 without).
        occupancy: fraction of the device's SMs its kernels keep busy while they run, in (0, 1].
        duty: fraction of its time alone during which one of its kernels runs, in (0, 1]; the
            rest is host time between kernels (launch, Python dispatch). 1 by default, so
            ``ActiveClient(pid, mps, limit, p)`` is the one-number task of parallelism ``p``.
        bandwidth: fraction of the device's usable memory bandwidth its kernels move while they
            run alone, in [0, 1] (1 for a streaming kernel). 0 by default: a task that does not
            declare it takes no part in bandwidth sharing.
    """

    pid: int
    mps: bool
    sm_limit: float
    occupancy: float
    duty: float = 1.0
    bandwidth: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.occupancy <= 1.0:
            raise ValueError(f"occupancy must be in (0, 1], got {self.occupancy}")
        if not 0.0 < self.duty <= 1.0:
            raise ValueError(f"duty must be in (0, 1], got {self.duty}")
        if not 0.0 < self.sm_limit <= 1.0:
            raise ValueError(f"sm_limit must be in (0, 1], got {self.sm_limit}")
        check_bandwidth(self.bandwidth)

    @property
    def parallelism(self) -> float:
        """Fraction of the device's SMs the task keeps busy on average alone: duty x occupancy."""
        return self.duty * self.occupancy


def check_bandwidth(bandwidth: float) -> float:
    """``bandwidth`` if it is a fraction of the device's bandwidth, in [0, 1].

    Raises:
        ValueError: it is outside [0, 1] (or not a number).
    """
    if not 0.0 <= bandwidth <= 1.0:
        raise ValueError(f"bandwidth must be in [0, 1], got {bandwidth}")
    return bandwidth


def mps_visible_sm_count(sm_count: int, percentage: float | None) -> int:
    """SMs an MPS client sees (``cudaDevAttrMultiProcessorCount``) under a thread percentage.

    NVIDIA: with the active thread percentage, "the limit will be internally rounded down to the
    nearest hardware supported thread count limit" (MPS overview, "Volta MPS Execution Resource
    Provisioning", https://docs.nvidia.com/deploy/mps/index.html). The emulator reads that as: the
    percentage of the device's threads (``sm_count * MAX_THREADS_PER_SM``) is rounded down to
    whole TPCs (:data:`SMS_PER_TPC` SMs of :data:`MAX_THREADS_PER_SM` threads each), at least one
    TPC. This is the emulator's own reading of NVIDIA's text, written apart from the planner's
    (``gpuslice.mps.limits``) on purpose, so that a planner mistake shows up as a slice that sees
    another SM count than planned. The TPC granularity is an observation, not NVIDIA's text.

    Args:
        sm_count: SMs of the device (a whole GPU or a MIG instance).
        percentage: the client's effective ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``, or None.
    """
    if percentage is None or percentage >= 100:
        return sm_count
    if percentage <= 0:
        raise ValueError(f"an active thread percentage must be in (0, 100], got {percentage}")
    # Exact decimal arithmetic: a binary float such as 33.3 must not land just below a TPC.
    threads = Fraction(sm_count * MAX_THREADS_PER_SM) * Fraction(str(percentage)) / 100
    tpcs = int(threads // (SMS_PER_TPC * MAX_THREADS_PER_SM))
    return min(sm_count, max(1, tpcs) * SMS_PER_TPC)


def context_count(clients: Sequence[ActiveClient]) -> int:
    """CUDA contexts that take turns on the device: one per non-MPS process, one for MPS.

    Without MPS, kernels of different processes cannot run at the same time and are time-sliced;
    all MPS clients' work goes through the MPS server's single set of scheduling resources.
    """
    return len({_context(c) for c in clients})


def _context(client: ActiveClient) -> tuple[str, int]:
    return ("mps", 0) if client.mps else ("pid", client.pid)


def _rate(duty: float, kernel_speed: float) -> float:
    """Progress rate of a task whose kernels run at ``kernel_speed`` and whose host gaps do not
    slow down: alone it spends ``duty`` of ``work_ms`` in kernels and ``1 - duty`` on the host."""
    return 1.0 / (duty / kernel_speed + 1.0 - duty)


def _sm_use(members: Sequence[ActiveClient], speeds: Sequence[float]) -> float:
    """Average fraction of the SMs the members use at these kernel speeds.

    A kernel's SM-time is fixed (``duty * occupancy`` per unit of work, however it is spread),
    so a member progressing at rate ``r`` uses ``r * duty * occupancy`` of the SMs on average.
    """
    return sum(
        _rate(c.duty, speed) * c.duty * c.occupancy
        for c, speed in zip(members, speeds, strict=True)
    )


def _bandwidth_use(members: Sequence[ActiveClient], speeds: Sequence[float]) -> float:
    """Average fraction of the device's usable bandwidth the members use at these speeds.

    The bytes a kernel moves are fixed per unit of work, like its SM-time, so a member
    progressing at rate ``r`` uses ``r * duty * bandwidth`` of the bandwidth on average.
    """
    return sum(
        _rate(c.duty, speed) * c.duty * c.bandwidth
        for c, speed in zip(members, speeds, strict=True)
    )


def _use(members: Sequence[ActiveClient], speeds: Sequence[float]) -> float:
    """The busier of the two shared resources, SMs and bandwidth, as a fraction of all of it."""
    return max(_sm_use(members, speeds), _bandwidth_use(members, speeds))


def context_rates(members: Sequence[ActiveClient]) -> tuple[list[float], float]:
    """Rates of the kernels of one context while it holds the device, and its busy fraction.

    Inside a context kernels share two resources: the SMs and the memory bandwidth. A member's
    kernels run at speed ``min(occupancy, sm_limit) / occupancy`` (an MPS limit below its
    occupancy slows them; MPS limits SMs, not bandwidth). When the members together would use
    more than all of either resource, every kernel speed is scaled by the same factor, the
    largest one at which neither the SMs nor the bandwidth are over-used: the scarcer resource
    is the bottleneck, as in a roofline model, and it is shared in proportion to demand (for
    members with ``duty`` 1 this is ``demand / sum(demand)``, with ``demand`` =
    ``min(occupancy, sm_limit)`` for the SMs and the speed-scaled ``bandwidth`` for memory).
    Host gaps are not slowed.

    Returns:
        The rates, in the order given, and the fraction of time at least one member has a
        kernel running, taken as ``min(1, sum)`` of the members' own fractions: the fluid
        assumption that their kernels interleave rather than pile up.
    """
    base = [min(c.occupancy, c.sm_limit) / c.occupancy for c in members]
    scale = 1.0
    if _use(members, base) > 1.0:
        low, high = 0.0, 1.0  # _use grows with the scale: bisect, keeping the feasible side
        for _ in range(_SOLVE_STEPS):
            middle = (low + high) / 2
            if _use(members, [middle * b for b in base]) > 1.0:
                high = middle
            else:
                low = middle
        scale = low
    speeds = [scale * b for b in base]
    member_rates = [_rate(c.duty, s) for c, s in zip(members, speeds, strict=True)]
    busy = sum(r * c.duty / s for r, c, s in zip(member_rates, members, speeds, strict=True))
    return member_rates, min(1.0, busy)


def time_share(busy: Sequence[float], efficiency: float = TIMESLICE_EFFICIENCY) -> float:
    """Fraction of full speed every context keeps when contexts take turns on the device.

    ``busy`` is each context's fraction of time with a kernel to run. A context without a
    kernel does not hold the device, so others' kernels fill its gaps: with one context, or
    while the contexts' busy fractions sum to no more than ``efficiency`` (the device time
    left after switches), everyone runs at full speed. Above that the device's time is the
    bottleneck and each context gets ``efficiency / sum(busy)`` of its speed.
    """
    if len(busy) <= 1:
        return 1.0
    return min(1.0, efficiency / sum(busy))


def rates(clients: Sequence[ActiveClient], efficiency: float = TIMESLICE_EFFICIENCY) -> list[float]:
    """Progress rate of each running kernel: the fraction of its ``work_ms`` done per ms.

    Rules (docs/emulation-model.md): kernels of one context share its SMs and the memory
    bandwidth (:func:`context_rates`); contexts share the device's time (:func:`time_share`),
    each counting for its busy fraction (only one context's kernels run at a time, so contexts
    never compete for bandwidth). A kernel alone with ``occupancy <= sm_limit`` runs at
    rate 1, whatever its duty: its duration is ``work_ms``.

    Args:
        clients: the kernels running on one device, in any order.
        efficiency: device time left after context switches (:data:`TIMESLICE_EFFICIENCY`).

    Returns:
        One rate per client, in the order given; every rate is in (0, 1].
    """
    groups: dict[tuple[str, int], list[int]] = {}
    for index, client in enumerate(clients):
        groups.setdefault(_context(client), []).append(index)
    result = [0.0] * len(clients)
    busy: list[float] = []
    for indices in groups.values():
        member_rates, context_busy = context_rates([clients[i] for i in indices])
        busy.append(context_busy)
        for i, rate in zip(indices, member_rates, strict=True):
            result[i] = rate
    share = time_share(busy, efficiency)
    return [share * rate for rate in result]


def duration_alone_ms(
    work_ms: float,
    parallelism: float | None = None,
    sm_limit: float = 1.0,
    *,
    duty: float | None = None,
    occupancy: float | None = None,
    bandwidth: float = 0.0,
) -> float:
    """Duration of a kernel that has its device (or its MPS limit) to itself.

    ``parallelism``, ``duty`` and ``occupancy`` are read as :func:`task_shape` reads them.
    Alone, ``bandwidth`` (at most all of it) never slows a task.
    """
    task_duty, task_occupancy = task_shape(parallelism, duty, occupancy)
    client = ActiveClient(
        pid=0,
        mps=False,
        sm_limit=sm_limit,
        occupancy=task_occupancy,
        duty=task_duty,
        bandwidth=bandwidth,
    )
    return work_ms / rates([client])[0]


@dataclass(frozen=True)
class OutOfMemory:
    """Why an allocation fails; :meth:`message` words it as CUDA/torch would.

    Attributes:
        requested_mib: what the task asked for.
        total_mib: capacity of the device (or the MPS pinned limit, when that is what bit).
        free_mib: what was left for this task.
        pinned_limit_mib: the client's MPS pinned memory limit, when it has one.
    """

    requested_mib: int
    total_mib: int
    free_mib: int
    pinned_limit_mib: int | None

    def message(self) -> str:
        """Text in the shape of torch's ``torch.cuda.OutOfMemoryError``."""
        text = (
            f"CUDA out of memory. Tried to allocate {_mib(self.requested_mib)}. "
            f"GPU 0 has a total capacity of {_mib(self.total_mib)} of which "
            f"{_mib(self.free_mib)} is free."
        )
        if self.pinned_limit_mib is not None:
            text += (
                f" This process is an MPS client with CUDA_MPS_PINNED_DEVICE_MEM_LIMIT of "
                f"{_mib(self.pinned_limit_mib)}."
            )
        return text + " (emulated GPU)"


def _mib(mib: int) -> str:
    return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.2f} MiB"


def check_memory(
    requested_mib: int,
    device_memory_mib: int,
    used_on_device_mib: int,
    pinned_limit_mib: int | None = None,
    used_by_process_mib: int = 0,
) -> OutOfMemory | None:
    """Whether an allocation of ``requested_mib`` fits; the reason it does not, else None.

    Two limits, the first that bites is reported:

    * the MPS pinned device memory limit of the process (its allocations together): "If a client
      attempts to allocate memory beyond the preset limit, the cuda memory allocation calls will
      return out of memory error" (MPS overview, "Volta MPS Device Memory Limit");
    * the device's free memory: capacity minus what the kernels running on it hold.

    Args:
        requested_mib: the allocation asked for.
        device_memory_mib: capacity of the device.
        used_on_device_mib: memory held by every other running kernel on the device.
        pinned_limit_mib: ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` of this process, if any.
        used_by_process_mib: memory this process's other running kernels already hold.
    """
    if pinned_limit_mib is not None and used_by_process_mib + requested_mib > pinned_limit_mib:
        return OutOfMemory(
            requested_mib=requested_mib,
            total_mib=pinned_limit_mib,
            free_mib=max(0, pinned_limit_mib - used_by_process_mib),
            pinned_limit_mib=pinned_limit_mib,
        )
    free = max(0, device_memory_mib - used_on_device_mib)
    if requested_mib > free:
        return OutOfMemory(
            requested_mib=requested_mib,
            total_mib=device_memory_mib,
            free_mib=free,
            pinned_limit_mib=pinned_limit_mib,
        )
    return None
