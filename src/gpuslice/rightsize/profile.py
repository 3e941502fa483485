"""A function's profile on one GPU model: its measured sizes and the recommended slice."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from gpuslice.rightsize.choice import Recommendation
from gpuslice.rightsize.measure import Point

__all__ = ["Profile"]


@dataclass(frozen=True)
class Profile:
    """What profiling one function on one GPU found.

    Attributes:
        function: ``module:qualname``.
        code_hash: the function's code version (:func:`gpuslice.rightsize.identity.function_id`).
        gpu_model: catalog model (``H100-80GB``), or the NVML name for a GPU not in the catalog.
        gpu_name: the GPU's product name.
        sm_count: SMs of the GPU.
        memory_mib: memory of the GPU.
        emulated: True on the emulated GPU (numbers follow the emulation model).
        p95_bound_ms: the latency bound the recommendation respects, if any.
        max_per_gpu: most slices per GPU the profiler considered (MPS clients, memory, cap).
        points: measured sizes, fewest slices per GPU first.
        order: slices per GPU of each measured size, in the order measured.
        recommended: the recommended slice.
        profiling_s: wall time of the profiling run, Parsl start-up included.
        created: when it was measured (ISO 8601, UTC).
        args_digest: hash of the arguments it was profiled with.
        exhaustive: True for a sweep of every candidate size (benchmarks), False for the search.
        source: ``measured`` (this run) or ``store`` (read back from the profile store).
    """

    function: str
    code_hash: str
    gpu_model: str
    gpu_name: str
    sm_count: int
    memory_mib: int
    emulated: bool
    p95_bound_ms: float | None
    max_per_gpu: int
    points: tuple[Point, ...]
    order: tuple[int, ...]
    recommended: Recommendation
    profiling_s: float
    created: str
    args_digest: str
    exhaustive: bool = False
    source: Literal["measured", "store"] = "measured"

    def point(self, per_gpu: int) -> Point | None:
        """The measured size with ``per_gpu`` slices, if measured."""
        return next((p for p in self.points if p.per_gpu == per_gpu), None)

    @property
    def peak_memory_mib(self) -> int | None:
        """The most memory one call held, over every measured size."""
        peaks = [p.peak_memory_mib for p in self.points if p.peak_memory_mib is not None]
        return max(peaks) if peaks else None

    def stored(self) -> Profile:
        """This profile, marked as read from the store."""
        return dataclasses.replace(self, source="store")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: what ``gpuslice profile --json`` prints and the store keeps."""
        rec = self.recommended
        return {
            "function": self.function,
            "code_hash": self.code_hash,
            "gpu_model": self.gpu_model,
            "gpu_name": self.gpu_name,
            "sm_count": self.sm_count,
            "memory_mib": self.memory_mib,
            "emulated": self.emulated,
            "p95_bound_ms": self.p95_bound_ms,
            "max_per_gpu": self.max_per_gpu,
            "recommended": {
                "kind": rec.kind,
                "compute": rec.compute,
                "memory_mib": rec.memory_mib,
                "per_gpu": rec.per_gpu,
                **{
                    k: v
                    for k, v in rec.to_dict().items()
                    if k not in ("kind", "compute", "memory_mib", "per_gpu")
                },
            },
            "points": [p.to_dict() for p in self.points],
            "order": list(self.order),
            "profiling_s": self.profiling_s,
            "created": self.created,
            "args_digest": self.args_digest,
            "exhaustive": self.exhaustive,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        """From :meth:`to_dict`."""
        return cls(
            function=data["function"],
            code_hash=data["code_hash"],
            gpu_model=data["gpu_model"],
            gpu_name=data["gpu_name"],
            sm_count=int(data["sm_count"]),
            memory_mib=int(data["memory_mib"]),
            emulated=bool(data["emulated"]),
            p95_bound_ms=data.get("p95_bound_ms"),
            max_per_gpu=int(data["max_per_gpu"]),
            points=tuple(Point.from_dict(p) for p in data["points"]),
            order=tuple(int(n) for n in data.get("order", [])),
            recommended=Recommendation.from_dict(data["recommended"]),
            profiling_s=float(data["profiling_s"]),
            created=data["created"],
            args_digest=data.get("args_digest", ""),
            exhaustive=bool(data.get("exhaustive", False)),
            source=data.get("source", "measured"),
        )
