"""The emulated GPU's compute model: how fast a task runs on a slice, as pure functions.

The model, its sources and what could not be confirmed are written down in
``docs/emulation-model.md``; this module is that document in code. Nothing here does I/O,
so every rule can be unit-tested with plain values; :mod:`gpuslice.emulate.kernel` feeds it
the kernels that are really running and sleeps for the durations it computes.

In short: a task is ``work_ms`` of GPU time on a whole device and can keep a fraction
``parallelism`` of the device's SMs busy. Its progress rate (fraction of ``work_ms`` per ms) is
``time_fraction * sm_fraction / parallelism``, where ``sm_fraction`` is the SM share it gets
inside its context and ``time_fraction`` the share of time its context gets on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gpuslice.mps.limits import visible_sm_count

#: Share of the device's time that survives the context switches of time-slicing, when more
#: than one CUDA context is active. NVIDIA documents that without MPS the contexts' scheduling
#: resources "must be swapped on and off the GPU" (https://docs.nvidia.com/deploy/mps/index.html,
#: "Reduced GPU context switching") but gives no number; 0.95 is an assumption (5% lost to
#: switches), a parameter rather than a measurement. See docs/emulation-model.md.
TIMESLICE_EFFICIENCY = 0.95

#: Client CUDA contexts one Volta-or-later MPS server accepts per device; over it, context
#: creation fails (MPS overview, "Client-Server Connection Limits").
MAX_MPS_CLIENTS = 48

#: SMs the hardware hands out together under an active-thread-percentage limit. One TPC is two
#: SMs on Volta and later; an RTX 2080 was observed to grant SMs "2 at a time" under
#: CUDA_MPS_ACTIVE_THREAD_PERCENTAGE (rlscope's experiments). Not confirmed by NVIDIA's text,
#: which says only "rounded down to the nearest hardware supported thread count limit".


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


@dataclass(frozen=True)
class ActiveClient:
    """One kernel running on a device right now, as the model sees it.

    Attributes:
        pid: process that launched it. Without MPS every process is its own CUDA context.
        mps: True when the process is an MPS client (its kernels share the MPS server's context).
        sm_limit: fraction of the device's SMs the client may use (its MPS limit; 1.0 without).
        parallelism: fraction of the device's SMs the kernel can keep busy, in (0, 1].
    """

    pid: int
    mps: bool
    sm_limit: float
    parallelism: float

    def __post_init__(self) -> None:
        if not 0.0 < self.parallelism <= 1.0:
            raise ValueError(f"parallelism must be in (0, 1], got {self.parallelism}")
        if not 0.0 < self.sm_limit <= 1.0:
            raise ValueError(f"sm_limit must be in (0, 1], got {self.sm_limit}")


def mps_visible_sm_count(sm_count: int, percentage: float | None) -> int:
    """SMs an MPS client sees under a thread percentage; the rule lives in gpuslice.mps.limits."""
    return visible_sm_count(sm_count, percentage)


def context_count(clients: Sequence[ActiveClient]) -> int:
    """CUDA contexts that take turns on the device: one per non-MPS process, one for MPS.

    Without MPS, kernels of different processes cannot run at the same time and are time-sliced;
    all MPS clients' work goes through the MPS server's single set of scheduling resources.
    """
    return len({_context(c) for c in clients})


def _context(client: ActiveClient) -> tuple[str, int]:
    return ("mps", 0) if client.mps else ("pid", client.pid)


def rates(clients: Sequence[ActiveClient], efficiency: float = TIMESLICE_EFFICIENCY) -> list[float]:
    """Progress rate of each running kernel: the fraction of its ``work_ms`` done per ms.

    Rules (docs/emulation-model.md):

    * A kernel's SM demand is ``min(parallelism, sm_limit)``. Kernels sharing a context (MPS
      clients, or kernels of one process) run concurrently; when their demands sum above 1,
      each is scaled down in proportion.
    * Contexts take turns: with ``n > 1`` contexts each gets ``efficiency / n`` of the time.
    * ``rate = time_fraction * sm_fraction / parallelism``: a kernel alone with
      ``parallelism <= sm_limit`` runs at rate 1 (its duration is ``work_ms``).

    Args:
        clients: the kernels running on one device, in any order.
        efficiency: time share left after context switches (:data:`TIMESLICE_EFFICIENCY`).

    Returns:
        One rate per client, in the order given; every rate is > 0.
    """
    n_contexts = context_count(clients)
    time_fraction = 1.0 if n_contexts <= 1 else efficiency / n_contexts
    keys = [_context(c) for c in clients]
    demands = [min(c.parallelism, c.sm_limit) for c in clients]
    demand_by_context: dict[tuple[str, int], float] = {}
    for key, demand in zip(keys, demands, strict=True):
        demand_by_context[key] = demand_by_context.get(key, 0.0) + demand
    return [
        time_fraction * demand / max(1.0, demand_by_context[key]) / client.parallelism
        for key, demand, client in zip(keys, demands, clients, strict=True)
    ]


def duration_alone_ms(work_ms: float, parallelism: float, sm_limit: float = 1.0) -> float:
    """Duration of a kernel that has its device (or its MPS limit) to itself."""
    client = ActiveClient(pid=0, mps=False, sm_limit=sm_limit, parallelism=parallelism)
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
