"""What a device can hold at once: the one rule the elastic controller and every node apply.

A plan is checked once, when it is resolved (:mod:`gpuslice.plan.resolve`): per device, MPS
compute percentages sum to at most 100, memory caps plus a reserve for every CUDA context (each
worker and the MPS server, :func:`gpuslice.plan.resolve.mps_reserve_mib`) to at most the
device's memory, and the clients to at most what one MPS server accepts. In elastic mode the
slices on a device change while the workflow runs, so the same limits are checked again before
every slice starts, by the controller when it decides and by ``gpuslice node-run`` before it
starts the slice's worker pool: a slice counts from the moment its start is decided until
every process of its worker pool has exited (:mod:`gpuslice.parsl.elastic_node`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from gpuslice.hardware.catalog import MPS_MAX_CLIENTS
from gpuslice.plan.resolve import mps_reserve_mib
from gpuslice.sizes import format_mib

__all__ = ["DeviceCapacity", "SliceSize", "overflow"]


@dataclass(frozen=True)
class SliceSize:
    """What one slice takes of its device.

    Attributes:
        compute: its ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``.
        memory_mib: its ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``, in MiB.
    """

    compute: int
    memory_mib: int


@dataclass(frozen=True)
class DeviceCapacity:
    """What one device (a whole GPU, or a MIG instance) offers its slices.

    Attributes:
        device: its ``GPU-…`` or ``MIG-…`` UUID.
        memory_mib: its memory.
        compute: the percentage its MPS clients may sum to (100: no oversubscription).
        clients: MPS clients one server accepts on it.
    """

    device: str
    memory_mib: int
    compute: int = 100
    clients: int = MPS_MAX_CLIENTS


def overflow(capacity: DeviceCapacity, sizes: Iterable[SliceSize]) -> str | None:
    """Why ``sizes`` together exceed ``capacity``, or None when they fit.

    The same limits :func:`gpuslice.resolve` applies to a plan, for the slices present at one
    instant: compute, and memory caps plus the reserve of every slice's CUDA context and the
    MPS server's.
    """
    chosen = list(sizes)
    compute = sum(s.compute for s in chosen)
    memory = sum(s.memory_mib for s in chosen)
    reserve = mps_reserve_mib(len(chosen)) if chosen else 0
    problems = []
    if compute > capacity.compute:
        problems.append(f"compute would sum to {compute}% (at most {capacity.compute}%)")
    if memory + reserve > capacity.memory_mib:
        problems.append(
            f"memory caps would sum to {format_mib(memory)}, plus {format_mib(reserve)} kept "
            f"for {len(chosen) + 1} CUDA contexts (at most {format_mib(capacity.memory_mib)})"
        )
    if len(chosen) > capacity.clients:
        problems.append(f"{len(chosen)} MPS clients (at most {capacity.clients})")
    if not problems:
        return None
    return f"on {capacity.device}: " + " and ".join(problems)
