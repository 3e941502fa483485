"""A resolved plan: every slice bound to a device UUID, with the settings its worker gets.

A :class:`Layout` is what the rest of gpuslice consumes: the Parsl layer makes one executor
per :class:`PoolLayout`, the MPS layer starts one daemon per :attr:`Slice.mps_pipe_dir` and
exports each slice's client environment, the MIG layer checks the instances exist.
It serialises to plain JSON (``gpuslice plan show --json``) and loads back unchanged.

Pool names, device UUIDs and directories end up in shell text (``worker_init``) and in
environment variables, so a layout is checked by :func:`layout_problems` wherever it comes
from: :func:`gpuslice.resolve` checks what it builds, :meth:`Layout.from_dict` what it loads.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import PurePath
from typing import Any, Literal

from gpuslice.errors import PlanError, Problem

SliceKind = Literal["mps", "mig", "share"]

#: NVML device UUIDs: ``GPU-``/``MIG-`` and a five-part hexadecimal string
#: (https://docs.nvidia.com/deploy/nvml-api/group__nvmlDeviceQueries.html, nvmlDeviceGetUUID;
#: MIG devices have had ``MIG-<uuid>`` names since driver R470).
_HEX_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
GPU_UUID = re.compile(rf"^GPU-{_HEX_UUID}$")
MIG_UUID = re.compile(rf"^MIG-{_HEX_UUID}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
    def from_dict(cls, data: Any) -> Layout:
        """Rebuild a layout from :meth:`to_dict` output, validated as a plan is.

        The structure is checked strictly (no unknown keys, numbers are numbers), then
        :func:`layout_problems` checks what a resolved plan guarantees: pool names, device
        UUIDs, ranges, and MPS directories under a root :func:`gpuslice.mps.paths.root_problems`
        accepts. Nothing from the JSON reaches a shell or a daemon unchecked.

        Raises:
            PlanError: every problem found, each located (``pools.0.slices.3.device``).
        """
        from gpuslice.plan.layout_schema import layout_from_data

        layout = layout_from_data(data)
        problems = layout_problems(layout)
        if problems:
            raise PlanError(problems, source="layout")
        return layout


def _daemons(slices: tuple[Slice, ...]) -> tuple[Daemon, ...]:
    seen: dict[str, Daemon] = {}
    for s in slices:
        if s.mps_pipe_dir is not None and s.mps_pipe_dir not in seen:
            log_dir = s.mps_log_dir or str(PurePath(s.mps_pipe_dir).parent / "log")
            seen[s.mps_pipe_dir] = Daemon(s.device, s.mps_pipe_dir, log_dir)
    return tuple(seen.values())


def _text_problems(where: str, value: str, limit: int) -> list[Problem]:
    if len(value) > limit or _CONTROL.search(value):
        return [
            Problem(
                where,
                f"{value[:40]!r}… is longer than {limit} characters or holds control characters"
                if len(value) > 40
                else f"{value!r} is longer than {limit} characters or holds control characters",
                "write it on one line, as `gpuslice plan show --json` does",
            )
        ]
    return []


def _directory_problems(device: str, pipe: str, log: str, roots: dict[str, list[str]]) -> list[str]:
    """Why a slice's MPS directories are not ``<root>/<device>/pipe|log`` under a good root.

    ``roots`` caches :func:`~gpuslice.mps.paths.root_problems` per root (a layout has one).
    """
    from gpuslice.mps.paths import root_problems

    tail = f"/{device}/pipe"
    root = pipe[: -len(tail)] if pipe.endswith(tail) else ""
    if not root or log != f"{root}/{device}/log":
        return ["the MPS directories must be <root>/<device>/pipe and <root>/<device>/log"]
    if root not in roots:
        roots[root] = [f"the MPS root {reason}" for reason in root_problems(root)]
    return roots[root]


def _slice_problems(where: str, pool: PoolLayout, rank: int, s: Slice) -> list[Problem]:
    from gpuslice.plan import limits
    from gpuslice.sizes import MAX_MIB

    found: list[Problem] = []

    def bad(field: str, message: str, hint: str = "") -> None:
        found.append(Problem(f"{where}.{field}", message, hint))

    if s.pool != pool.name:
        bad("pool", f"names pool {s.pool!r}, but sits in pool {pool.name!r}")
    if s.rank != rank:
        bad("rank", f"is {s.rank}, but the slice is number {rank} of its pool")
    if s.kind != pool.kind:
        bad("kind", f"is {s.kind!r}, but its pool is {pool.kind!r}")
    if not 0 <= s.gpu_index < limits.MAX_FLEET_GPUS:
        bad("gpu_index", f"{s.gpu_index} is not a GPU index (0 to {limits.MAX_FLEET_GPUS - 1})")
    if not GPU_UUID.match(s.gpu_uuid):
        bad("gpu_uuid", f"{s.gpu_uuid[:60]!r} is not a GPU UUID (GPU-xxxxxxxx-xxxx-…)")
    expected_device = MIG_UUID if s.kind == "mig" else GPU_UUID
    if not expected_device.match(s.device):
        bad(
            "device",
            f"{s.device[:60]!r} is not a {'MIG-' if s.kind == 'mig' else 'GPU-'} UUID",
            "CUDA_VISIBLE_DEVICES must be the device's UUID as NVML reports it",
        )
    elif s.kind != "mig" and s.device != s.gpu_uuid:
        bad("device", "a whole-GPU slice's device must be its gpu_uuid")
    if s.compute is not None and not 1 <= s.compute <= 100:
        bad("compute", f"{s.compute} is not a percentage from 1 to 100")
    if not 0 <= s.memory_total_mib <= MAX_MIB:
        bad("memory_total_mib", f"{s.memory_total_mib} MiB is not a device memory size")
    if s.memory_mib is not None and not (1 <= s.memory_mib <= (s.memory_total_mib or MAX_MIB)):
        bad("memory_mib", f"{s.memory_mib} MiB is not a cap within the device's memory")
    if not 0 <= s.sm_count <= limits.MAX_SM_COUNT:
        bad("sm_count", f"{s.sm_count} is not an SM count (0 when unknown)")
    if s.expected_sms is not None and not 0 < s.expected_sms <= max(s.sm_count, 0):
        bad("expected_sms", f"{s.expected_sms} is not within the device's {s.sm_count} SMs")
    if s.kind == "share" and (s.compute, s.memory_mib, s.mps_pipe_dir) != (None, None, None):
        bad("kind", "a share slice has no MPS limits and no MPS daemon")
    limited = s.kind == "mps" or s.compute is not None or s.memory_mib is not None
    if limited and s.mps_pipe_dir is None:
        bad("mps_pipe_dir", "an MPS slice needs its daemon's pipe directory")
    if (s.mps_pipe_dir is None) != (s.mps_log_dir is None):
        bad("mps_log_dir", "pipe and log directories come together")
    return found


def layout_problems(layout: Layout) -> list[Problem]:
    """Everything wrong with a layout that a resolved plan never has (empty when valid).

    The one check of a layout's contents, applied by :func:`gpuslice.resolve` to what it
    builds and by :meth:`Layout.from_dict` to what it loads.
    """
    from gpuslice.plan import limits
    from gpuslice.plan.schema import POOL_NAME

    problems: list[Problem] = []
    # ``nvml``, ``fleet:<path>`` (the path is exported to workers, quoted) or a caller's name.
    problems += _text_problems("inventory_source", layout.inventory_source, 4096)
    problems += _text_problems("plan", layout.plan_text, limits.MAX_SOURCE_BYTES)
    if len(layout.pools) > limits.MAX_POOLS:
        problems.append(Problem("pools", f"more than {limits.MAX_POOLS} pools"))
    if sum(len(p.slices) for p in layout.pools) > limits.MAX_SLICES:
        problems.append(Problem("pools", f"more than {limits.MAX_SLICES} slices"))
    if problems:
        return problems
    names: set[str] = set()
    daemons: dict[str, str] = {}
    checked: dict[tuple[str, str, str], list[str]] = {}
    roots: dict[str, list[str]] = {}
    for index, pool in enumerate(layout.pools):
        where = f"pools.{index}"
        if not POOL_NAME.match(pool.name):
            problems.append(
                Problem(
                    f"{where}.name",
                    f"invalid pool name {pool.name[:60]!r}",
                    "start with a letter, then letters, digits, '_' or '-', at most 40 characters",
                )
            )
        elif pool.name in names:
            problems.append(Problem(f"{where}.name", f"pool {pool.name!r} appears twice"))
        names.add(pool.name)
        if not pool.slices:
            problems.append(Problem(f"{where}.slices", "a pool needs at least one slice"))
        for rank, s in enumerate(pool.slices):
            problems += _slice_problems(f"{where}.slices.{rank}", pool, rank, s)
            pipe, log = s.mps_pipe_dir, s.mps_log_dir
            if pipe is not None and log is not None:
                key = (s.device, pipe, log)  # once per daemon, not once per slice
                if key not in checked:
                    checked[key] = _directory_problems(*key, roots)
                    problems += [
                        Problem(
                            f"{where}.slices.{rank}.mps_pipe_dir",
                            reason,
                            "load the JSON `gpuslice plan show --json` printed, unedited",
                        )
                        for reason in checked[key]
                    ]
            if pipe is not None and daemons.setdefault(s.device, pipe) != pipe:
                problems.append(
                    Problem(
                        f"{where}.slices.{rank}.mps_pipe_dir",
                        f"device {s.device} has two MPS pipe directories",
                        "one daemon serves each device",
                    )
                )
        mps = [s for s in pool.slices if s.mps_pipe_dir is not None]
        if len({(s.compute, s.memory_mib) for s in mps}) > 1:
            problems.append(
                Problem(
                    f"{where}.slices",
                    "the pool's MPS slices have different limits",
                    "every slice of a pool has the same compute and memory",
                )
            )
    return problems
