"""A resolved plan: every slice bound to a device UUID, with the settings its worker gets.

A :class:`Layout` is what the rest of gpuslice consumes: the Parsl layer makes one executor
per :class:`PoolLayout`, the MPS layer starts one daemon per :attr:`Slice.mps_pipe_dir` and
exports each slice's client environment, the MIG layer checks the instances exist.
It serialises to plain JSON (``gpuslice plan show --json``) and loads back unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import PurePath
from typing import Any, Literal

SliceKind = Literal["mps", "mig", "share"]


@dataclass(frozen=True)
class Daemon:
    """One MPS control daemon a layout needs: the device it serves and its directories."""

    device: str
    pipe_dir: str
    log_dir: str


@dataclass(frozen=True)
class Slice:
    """One worker's share of one GPU.

    Attributes:
        pool: name of the pool (and Parsl executor label) the slice belongs to.
        rank: position of the slice within its pool (0-based, in GPU order).
        kind: ``mps`` (MPS client with limits), ``mig`` (a MIG instance, optionally with MPS
            inside) or ``share`` (plain time-sharing, no limits).
        gpu_index: NVML index of the physical GPU.
        gpu_uuid: ``GPU-…`` UUID of the physical GPU.
        device: the exact ``CUDA_VISIBLE_DEVICES`` value: ``GPU-…`` or ``MIG-…``.
        compute: ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` (1-100) or None for no limit.
        memory_mib: ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` in MiB, or None for no cap.
        sm_count: SMs of the device the slice runs on (whole GPU or MIG instance).
        expected_sms: SMs the slice should see inside CUDA (after the MPS percentage), when known.
        memory_total_mib: memory of the device the slice runs on.
        mps_pipe_dir: ``CUDA_MPS_PIPE_DIRECTORY`` of the daemon serving this slice, or None.
        mps_log_dir: ``CUDA_MPS_LOG_DIRECTORY`` of that daemon, or None.
    """

    pool: str
    rank: int
    kind: SliceKind
    gpu_index: int
    gpu_uuid: str
    device: str
    compute: int | None = None
    memory_mib: int | None = None
    sm_count: int = 0
    expected_sms: int | None = None
    memory_total_mib: int = 0
    mps_pipe_dir: str | None = None
    mps_log_dir: str | None = None

    @property
    def uses_mps(self) -> bool:
        """True when a worker in this slice must reach an MPS daemon before CUDA starts."""
        return self.mps_pipe_dir is not None


@dataclass(frozen=True)
class PoolLayout:
    """The slices of one pool.

    Attributes:
        name: pool name; becomes the Parsl executor label.
        kind: ``mps``, ``mig`` or ``share``.
        slices: the pool's slices, in GPU order.
        oversubscribe: the plan allowed compute above 100% on a GPU for this pool.
    """

    name: str
    kind: SliceKind
    slices: tuple[Slice, ...]
    oversubscribe: bool = False

    @property
    def devices(self) -> tuple[str, ...]:
        """``CUDA_VISIBLE_DEVICES`` values of the slices, in order (may repeat)."""
        return tuple(s.device for s in self.slices)

    @property
    def daemons(self) -> tuple[Daemon, ...]:
        """The MPS daemons the pool's workers need, one per device, in first-use order."""
        return _daemons(self.slices)

    @property
    def pipe_dirs(self) -> tuple[str, ...]:
        """Distinct MPS pipe directories the pool's workers need, in first-use order."""
        return tuple(d.pipe_dir for d in self.daemons)


@dataclass(frozen=True)
class Layout:
    """A plan bound to real (or described) hardware.

    Attributes:
        pools: pools in plan order.
        inventory_source: where the GPUs came from (``nvml`` or ``fleet:<path>``).
        emulated: True when the GPUs are described by a fleet file rather than present.
        plan_text: the plan in compact form, for messages and provenance.
    """

    pools: tuple[PoolLayout, ...]
    inventory_source: str
    emulated: bool = False
    plan_text: str = ""

    def pool(self, name: str) -> PoolLayout:
        """The pool called ``name``.

        Raises:
            KeyError: no such pool; the message lists the pools there are.
        """
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(f"no pool {name!r} in this layout; pools: {', '.join(self.pool_names)}")

    @property
    def pool_names(self) -> tuple[str, ...]:
        """Pool names in plan order."""
        return tuple(p.name for p in self.pools)

    @property
    def slices(self) -> tuple[Slice, ...]:
        """Every slice of every pool."""
        return tuple(s for p in self.pools for s in p.slices)

    @property
    def daemons(self) -> tuple[Daemon, ...]:
        """Every MPS daemon the layout needs (pools on one device share its daemon)."""
        return _daemons(self.slices)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (``gpuslice plan show --json``); :meth:`from_dict` loads it back."""
        return {
            "inventory_source": self.inventory_source,
            "emulated": self.emulated,
            "plan": self.plan_text,
            "pools": [
                {
                    "name": p.name,
                    "kind": p.kind,
                    "oversubscribe": p.oversubscribe,
                    "slices": [asdict(s) for s in p.slices],
                }
                for p in self.pools
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Layout:
        """Rebuild a layout from :meth:`to_dict` output."""
        pools = tuple(
            PoolLayout(
                name=p["name"],
                kind=p["kind"],
                oversubscribe=bool(p.get("oversubscribe", False)),
                slices=tuple(Slice(**s) for s in p["slices"]),
            )
            for p in data["pools"]
        )
        return cls(
            pools=pools,
            inventory_source=data["inventory_source"],
            emulated=bool(data.get("emulated", False)),
            plan_text=data.get("plan", ""),
        )


def _daemons(slices: tuple[Slice, ...]) -> tuple[Daemon, ...]:
    seen: dict[str, Daemon] = {}
    for s in slices:
        if s.mps_pipe_dir is not None and s.mps_pipe_dir not in seen:
            log_dir = s.mps_log_dir or str(PurePath(s.mps_pipe_dir).parent / "log")
            seen[s.mps_pipe_dir] = Daemon(s.device, s.mps_pipe_dir, log_dir)
    return tuple(seen.values())
