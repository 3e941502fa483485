"""Emulated GPU kernels: ``kernel(work_ms)`` sleeps as long as the task would run on its slice.

A kernel reads its slice from the environment exactly as a CUDA process would
(``CUDA_VISIBLE_DEVICES``, ``CUDA_MPS_PIPE_DIRECTORY``, ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``,
``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``), announces itself to the other emulated kernels on the
same device, in any process, through a small record file, and advances in ticks at the rate
:func:`gpuslice.emulate.model.rates` gives for everything running there at that moment.

State directory (``$GPUSLICE_EMULATE_DIR``, default ``<tmp>/gpuslice-<uid>/emulate``, mode 0700)::

    devices.json                 facts of the emulated devices (register_devices)
    <device>/.lock               fcntl lock taken while a kernel is admitted (memory check)
    <device>/<pid>-<tid>-<n>.json one record per running kernel; its mtime is the heartbeat

A record whose process is gone, or whose heartbeat is older than :data:`STALE_AFTER_S`, is
ignored and removed, so a killed worker never slows the others down for long.

An MPS client is what the emulated control daemon granted at context creation
(:func:`mps_connection`): its effective percentage and memory cap, and the PIDs of its server and
daemon. Once either of those processes is gone, this process's context is lost for good, as a
CUDA context is: every later kernel raises :class:`CudaError` (:func:`check_context`).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib
import itertools
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from gpuslice.emulate.model import (
    ActiveClient,
    EmulatedDevice,
    check_bandwidth,
    check_memory,
    context_count,
    default_device,
    mps_visible_sm_count,
    rates,
    task_shape,
)
from gpuslice.errors import GpusliceError, UsageError
from gpuslice.mps.daemon import process_alive
from gpuslice.sizes import parse_size_mib

if TYPE_CHECKING:
    from gpuslice.emulate.mps_control import ClientGrant

#: Environment variable naming the emulator's state directory.
STATE_DIR_ENV = "GPUSLICE_EMULATE_DIR"

#: UUID used when ``CUDA_VISIBLE_DEVICES`` is not set (a CUDA process then sees every GPU and
#: uses the first; the emulator gives it this device, an H100 unless registered otherwise).
DEFAULT_DEVICE_UUID = "GPU-00000000-0000-0000-0000-emulated0000"

#: Seconds between two rate recomputations (and heartbeats) of a running kernel.
TICK_S = 0.01

#: A record whose heartbeat is older than this is a dead kernel's and is ignored.
STALE_AFTER_S = 3.0

__all__ = [
    "DEFAULT_DEVICE_UUID",
    "STATE_DIR_ENV",
    "CudaError",
    "CudaOutOfMemoryError",
    "EmulatedDevice",
    "EmulatedSlice",
    "KernelResult",
    "Mode",
    "check_context",
    "current_slice",
    "device_info",
    "emulate_dir",
    "forget_contexts",
    "kernel",
    "mps_connection",
    "parse_active_thread_percentage",
    "parse_pinned_mem_limit",
    "peak_memory_mib",
    "register_devices",
    "registered_devices",
    "reset_peak_memory",
    "visible_sm_count",
]

Mode = Literal["mps", "timeshare", "exclusive"]


class CudaOutOfMemoryError(GpusliceError, RuntimeError):
    """An emulated allocation failed, as ``torch.cuda.OutOfMemoryError`` would on a real GPU.

    Raised in the task that asked for too much only; other kernels on the device go on.
    Derives from RuntimeError, like torch's error, so code written for torch catches it.
    """

    def __init__(self, message: str, requested_mib: int, free_mib: int) -> None:
        self.requested_mib = requested_mib
        self.free_mib = free_mib
        self.text = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.text


class CudaError(GpusliceError, RuntimeError):
    """An emulated CUDA runtime error, named and numbered as ``cudaError_t`` names it.

    Raised by :func:`kernel` and :func:`check_context` in an MPS client whose server or control
    daemon is gone. Like a real lost context it is sticky: every later kernel of the process
    raises it again, so the process has to exit (and Parsl to start another worker).

    Attributes:
        name: the CUDA error name, e.g. ``cudaErrorMpsRpcFailure``.
        code: its ``cudaError_t`` value, e.g. 806.
        detail: what happened, in gpuslice's words.
    """

    def __init__(self, name: str, code: int, detail: str) -> None:
        self.name = name
        self.code = code
        self.detail = detail
        super().__init__(name, code, detail)

    def __str__(self) -> str:
        return f"{self.name} ({self.code}): {self.detail}"


# The CUDA runtime's MPS errors (enum cudaError in the CUDA Runtime API, "Data types used by
# CUDA Runtime", https://docs.nvidia.com/cuda/cuda-runtime-api/group__CUDART__TYPES.html; the
# same values and descriptions are in NVIDIA's cuda-python bindings):
#   cudaErrorMpsConnectionFailed = 805: "the MPS client failed to connect to the MPS control
#   daemon or the MPS server"; cudaErrorMpsRpcFailure = 806: "the remote procedural call between
#   the MPS server and the MPS client failed".
_MPS_CONNECTION_FAILED = ("cudaErrorMpsConnectionFailed", 805)
_MPS_RPC_FAILURE = ("cudaErrorMpsRpcFailure", 806)


@dataclass(frozen=True)
class EmulatedSlice:
    """What a CUDA process would get from its environment, on the emulated GPU.

    Attributes:
        device: the device (first entry of ``CUDA_VISIBLE_DEVICES``).
        mps: True when an MPS control daemon answered at ``CUDA_MPS_PIPE_DIRECTORY``.
        active_thread_percentage: the percentage the daemon granted (the lower of the client's
            ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` and its server's); None without MPS.
        pinned_limit_mib: device-0 memory cap the daemon granted (the client's
            ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``, else its server's default), in MiB; None
            without one.
        grant: the daemon's answer at context creation (server and daemon PIDs included);
            None without MPS.
    """

    device: EmulatedDevice
    mps: bool
    active_thread_percentage: float | None
    pinned_limit_mib: int | None
    grant: ClientGrant | None = None

    @property
    def visible_sm_count(self) -> int:
        """SMs CUDA reports inside this slice (``multi_processor_count``)."""
        if not self.mps:
            return self.device.sm_count
        return mps_visible_sm_count(self.device.sm_count, self.active_thread_percentage)

    @property
    def sm_limit(self) -> float:
        """Fraction of the device's SMs this slice may use."""
        return self.visible_sm_count / self.device.sm_count


@dataclass(frozen=True)
class KernelResult:
    """What one emulated kernel did.

    Attributes:
        device: UUID of the device it ran on.
        duration_ms: wall-clock time it took, in ms.
        mode: ``mps`` (an MPS client), ``timeshare`` (no MPS, and other contexts were active
            during the run) or ``exclusive`` (no MPS, alone on the device).
        share: time-averaged fraction of the device's SMs it really used (1.0 = the whole GPU
            all the time; ``work_ms * parallelism / duration_ms``).
        memory_mib: device memory it held, or None.
        work_ms: the work asked for (duration alone on a whole device).
        parallelism: ``duty * occupancy``: the fraction of the device's SMs it kept busy on
            average when alone.
        duty: fraction of its time alone during which one of its kernels ran.
        occupancy: fraction of the device's SMs its kernels kept busy while they ran.
        bandwidth: fraction of the device's usable memory bandwidth its kernels moved while
            they ran alone (0 when the task did not declare it).
        lag_ms: how much longer it took than the model gave it: the host woke it late (a
            loaded machine) or admitted it late. Not GPU time; a measure of how much the host
            distorted an emulated measurement.
    """

    device: str
    duration_ms: float
    mode: Mode
    share: float
    memory_mib: int | None
    work_ms: float
    parallelism: float
    duty: float = 1.0
    occupancy: float = 1.0
    bandwidth: float = 0.0
    lag_ms: float = 0.0


# ---------------------------------------------------------------------------------------------
# State directory and devices file


def emulate_dir(path: str | Path | None = None) -> Path:
    """The emulator's state directory (created, private to the user).

    Args:
        path: explicit directory; default ``$GPUSLICE_EMULATE_DIR`` or
            ``<tmp>/gpuslice-<uid>/emulate``.
    """
    if path is None:
        override = os.environ.get(STATE_DIR_ENV)
        path = override or Path(tempfile.gettempdir()) / f"gpuslice-{os.getuid()}" / "emulate"
    directory = Path(path)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return directory


def register_devices(
    devices: Mapping[str, EmulatedDevice], state_dir: str | Path | None = None
) -> Path:
    """Write the emulated fleet's device facts, replacing what was registered before.

    Args:
        devices: UUID -> device (the key must equal ``device.uuid``).
        state_dir: state directory; default :func:`emulate_dir`.

    Returns:
        The path of ``devices.json``.
    """
    for key, device in devices.items():
        if key != device.uuid:
            raise ValueError(f"devices[{key!r}] describes {device.uuid!r}; key them by their UUID")
    target = emulate_dir(state_dir) / "devices.json"
    payload = {"devices": [asdict(device) for device in devices.values()]}
    _write_atomic(target, json.dumps(payload, indent=2))
    return target


def registered_devices(state_dir: str | Path | None = None) -> list[EmulatedDevice]:
    """Devices in ``devices.json``, in the order registered (empty when there is none)."""
    target = emulate_dir(state_dir) / "devices.json"
    try:
        payload = json.loads(target.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise UsageError(
            f"{target} is not a devices file ({err}); delete it and register the devices again"
        ) from err
    return [EmulatedDevice(**entry) for entry in payload.get("devices", [])]


def device_info(uuid: str, state_dir: str | Path | None = None) -> EmulatedDevice:
    """Facts of the device with this UUID, or the default H100 (see :func:`model.default_device`).

    Like CUDA, a unique leading part of a registered UUID (``GPU-8932f937``) names it too.
    """
    known = registered_devices(state_dir)
    for device in known:
        if device.uuid == uuid:
            return device
    matches = [device for device in known if device.uuid.startswith(uuid)]
    if len(matches) == 1:
        return matches[0]
    return default_device(uuid)


# ---------------------------------------------------------------------------------------------
# The slice, read from the environment


def current_slice(
    env: Mapping[str, str] | None = None, state_dir: str | Path | None = None
) -> EmulatedSlice:
    """The slice this process would get from CUDA, given its environment.

    MPS applies only when ``CUDA_MPS_PIPE_DIRECTORY`` is set and a daemon answers there
    (:func:`mps_connection`); otherwise, as with real CUDA, the process runs without MPS and
    without its limits. Under MPS the limits are the daemon's answer, not the client's own
    variables: NVIDIA's client percentage only narrows the server's ("If the control daemon
    has a lower setting, the control daemon setting will be obeyed by the client instead",
    https://docs.nvidia.com/deploy/topics/topic_5_2_5.html), and a server's default memory
    limit applies to a client that sets none.

    Raises:
        UsageError: ``CUDA_VISIBLE_DEVICES`` is empty (no device visible) or an MPS variable
            is malformed.
        MpsError: the daemon refused the client, as CUDA context creation would fail.
    """
    env = os.environ if env is None else env
    device = _visible_device(env, state_dir)
    grant = mps_connection(env)
    if grant is None:
        return EmulatedSlice(
            device, mps=False, active_thread_percentage=None, pinned_limit_mib=None
        )
    return EmulatedSlice(
        device,
        mps=True,
        active_thread_percentage=grant.active_thread_percentage,
        pinned_limit_mib=parse_pinned_mem_limit(grant.pinned_mem_limit),
        grant=grant,
    )


def visible_sm_count(env: Mapping[str, str] | None = None) -> int:
    """What ``torch.cuda.get_device_properties(0).multi_processor_count`` shows in this slice.

    Under MPS the granted active thread percentage is rounded down to whole TPCs
    (:func:`model.mps_visible_sm_count`); without MPS it is the device's SM count. Workers use
    it to check the limit they got, as they would on a real GPU.
    """
    return current_slice(env).visible_sm_count


def _visible_device(env: Mapping[str, str], state_dir: str | Path | None) -> EmulatedDevice:
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return device_info(DEFAULT_DEVICE_UUID, state_dir)
    first = visible.split(",")[0].strip()
    if not first:
        raise UsageError(
            "CUDA_VISIBLE_DEVICES is empty, so no CUDA device is visible; "
            "set it to a GPU-… or MIG-… UUID of the emulated fleet"
        )
    if first.lstrip("-").isdigit():
        index = int(first)
        known = registered_devices(state_dir)
        if 0 <= index < len(known):
            return known[index]
        return default_device(f"GPU-emulated-index-{index}")
    return device_info(first, state_dir)


def parse_active_thread_percentage(text: str | None) -> float | None:
    """``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` as a number in (0, 100], or None when unset."""
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError as err:
        raise UsageError(
            f"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={text!r} is not a number; use 1-100"
        ) from err
    if not 0 < value <= 100:
        raise UsageError(f"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={text!r} is outside 1-100")
    return value


def parse_pinned_mem_limit(text: str | None, ordinal: int = 0) -> int | None:
    """The MiB limit for device ``ordinal`` in ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``.

    The variable is a comma-separated list of ``<device ordinal>=<size>`` entries, the ordinal
    as the client sees it (``0`` with one visible device), e.g. ``0=10G`` or ``0=1G,1=512M``
    (docs.nvidia.com/deploy/mps, appendix "Environment Variables"). A one-letter unit is
    binary (``G`` = GiB), as gpuslice.sizes reads it.

    Returns:
        The limit in MiB, or None when unset or when no entry names ``ordinal``.
    """
    if text is None or not text.strip():
        return None
    for entry in text.split(","):
        key, sep, size = entry.partition("=")
        if not sep or not key.strip().isdigit():
            raise UsageError(
                f"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT={text!r}: entry {entry!r} is not "
                "<device ordinal>=<size>; write e.g. 0=10G"
            )
        if int(key) == ordinal:
            try:
                return parse_size_mib(size.strip())
            except ValueError as err:
                raise UsageError(f"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT={text!r}: {err}") from err
    return None


# One context per (pipe dir, process, client variables): what the daemon granted, or None.
_GRANTS: dict[tuple[str, int, str | None, str | None], ClientGrant | None] = {}
# Processes whose MPS context is lost (sticky, as a CUDA context is), by PID.
_LOST: dict[int, CudaError] = {}
_MPS_LOCK = threading.Lock()


def mps_connection(env: Mapping[str, str] | None = None) -> ClientGrant | None:
    """What this process is connected to as an MPS client; creates the context if not yet.

    As CUDA does at context creation, the first call registers the process with the control
    daemon of ``CUDA_MPS_PIPE_DIRECTORY``, passing the client's own
    ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` and ``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT``; later calls
    return the same answer. A client whose daemon does not answer runs outside MPS, unlimited
    ("If the connection attempt fails, the program continues to run as it normally would
    without MPS", ``man nvidia-cuda-mps-control``), and stays so: the answer is kept.

    Args:
        env: the client's environment; default this process's.

    Returns:
        The daemon's grant (effective limits, server and daemon PIDs), or None when this
        process is not an MPS client (no pipe directory, or no daemon answered).

    Raises:
        UsageError: an MPS variable is malformed.
        MpsError: the daemon refused the client (too many clients on the device, or another
            user's server is busy), as CUDA context creation would fail.
    """
    env = os.environ if env is None else env
    pipe_dir = env.get("CUDA_MPS_PIPE_DIRECTORY")
    if not pipe_dir:
        return None
    percentage_text = env.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE")
    pinned_text = env.get("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT")
    percentage = parse_active_thread_percentage(percentage_text)
    pinned = parse_pinned_mem_limit(pinned_text)
    return _mps_connect(
        pipe_dir,
        percentage_text if percentage is not None else None,
        pinned_text if pinned is not None else None,
    )


def check_context() -> None:
    """Raise :class:`CudaError` if this process's MPS context is lost; nothing otherwise.

    The context is lost once the MPS server or the control daemon of any grant this process
    holds is gone (the check is ``kill(pid, 0)`` and a zombie test on the two PIDs, no control
    round trip), and it stays lost: later calls raise the same error even if a new daemon
    starts. Not an MPS client: nothing to check.

    Raises:
        CudaError: ``cudaErrorMpsRpcFailure`` (806) when the server is gone,
            ``cudaErrorMpsConnectionFailed`` (805) when only the control daemon is.
    """
    pid = os.getpid()
    lost = _LOST.get(pid)
    if lost is not None:
        raise lost
    for key, grant in list(_GRANTS.items()):
        if grant is not None and key[1] == pid:
            _check_grant(key[0], grant)


def _check_grant(pipe_dir: str, grant: ClientGrant) -> None:
    """Raise (and remember) the CUDA error of a client whose server or daemon is gone."""
    pid = os.getpid()
    lost = _LOST.get(pid)
    if lost is not None:
        raise lost
    if not process_alive(grant.server_pid):
        name, code = _MPS_RPC_FAILURE
        detail = (
            f"MPS server {grant.server_pid} of the daemon at {pipe_dir} is gone, so process "
            f"{pid}'s CUDA context is lost; no CUDA call can succeed in this process again: "
            "exit it and start a new one once the daemon is back (gpuslice mps ensure)"
        )
    elif not process_alive(grant.daemon_pid):
        # What NVIDIA's client does when only its control daemon dies is not documented;
        # the emulator treats the connection as failed (an assumption, owed on a GPU).
        name, code = _MPS_CONNECTION_FAILED
        detail = (
            f"MPS control daemon {grant.daemon_pid} at {pipe_dir} is gone, so process {pid}'s "
            "MPS connection is lost; exit the process and start a new one once the daemon is "
            "back (gpuslice mps ensure)"
        )
    else:
        return
    error = CudaError(name, code, detail + " (emulated GPU)")
    _LOST[pid] = error
    raise error


def _mps_connect(pipe_dir: str, percentage: str | None, pinned: str | None) -> ClientGrant | None:
    """Register this process with the emulated MPS daemon once, as CUDA does at context creation.

    ``percentage`` and ``pinned`` are the client's raw (already validated) variable values;
    the daemon applies its own defaults on top and answers with the effective limits. Raises
    MpsError when the daemon refuses the client (too many clients on the device), as context
    creation would fail.
    """
    key = (pipe_dir, os.getpid(), percentage, pinned)
    with _MPS_LOCK:
        if key in _GRANTS:
            return _GRANTS[key]
        try:
            # Imported by name: the daemon lives in its own module and is loaded only for MPS.
            control = importlib.import_module("gpuslice.emulate.mps_control")
        except ImportError:
            _GRANTS[key] = None
            return None
        grant: ClientGrant | None = control.register_client(
            pipe_dir,
            os.getpid(),
            active_thread_percentage=_whole(percentage),
            pinned_mem_limit=pinned.strip() if pinned is not None else None,
        )
        _GRANTS[key] = grant
        if grant is not None:
            atexit.register(_mps_disconnect, control, pipe_dir, os.getpid())
        return grant


def _whole(percentage: str | None) -> int | float | None:
    """The percentage as the daemon's register_client takes it: an int when it is whole."""
    if percentage is None:
        return None
    value = float(percentage)
    return int(value) if value.is_integer() else value


def _mps_disconnect(control: object, pipe_dir: str, pid: int) -> None:
    if os.getpid() != pid:  # a forked child does not own its parent's registration
        return
    with contextlib.suppress(Exception):  # the daemon may already be gone at exit
        control.unregister_client(pipe_dir, pid)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------
# Records of running kernels


@dataclass(frozen=True)
class _Record:
    path: Path
    pid: int
    mps: bool
    sm_limit: float
    duty: float
    occupancy: float
    memory_mib: int
    bandwidth: float = 0.0

    def client(self) -> ActiveClient:
        return ActiveClient(
            self.pid, self.mps, self.sm_limit, self.occupancy, self.duty, self.bandwidth
        )


_SEQUENCE = itertools.count()


def _device_dir(root: Path, uuid: str) -> Path:
    # MIG UUIDs of the old form (MIG-GPU-…/1/2) contain slashes.
    directory = root / uuid.replace("/", "_")
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_records(directory: Path) -> list[_Record]:
    """Running kernels on a device; stale records (dead process, old heartbeat) are removed."""
    now = time.time()
    records = []
    for path in directory.glob("*.json"):
        try:
            mtime = path.stat().st_mtime
            data = json.loads(path.read_text())
            # A record without duty/occupancy (written before they existed) is a one-number
            # task: duty 1, occupancy = its parallelism; one without bandwidth takes no part
            # in bandwidth sharing.
            record = _Record(
                path=path,
                pid=int(data["pid"]),
                mps=bool(data["mps"]),
                sm_limit=float(data["sm_limit"]),
                duty=float(data.get("duty", 1.0)),
                occupancy=float(data["occupancy"] if "occupancy" in data else data["parallelism"]),
                memory_mib=int(data["memory_mib"]),
                bandwidth=float(data.get("bandwidth", 0.0)),
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue  # removed or being replaced right now
        if now - mtime > STALE_AFTER_S or not process_alive(record.pid):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        records.append(record)
    return records


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with (directory / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _admit(
    directory: Path,
    the_slice: EmulatedSlice,
    me: ActiveClient,
    memory_mib: int,
) -> Path:
    """Check memory and write this kernel's record, atomically with respect to other kernels."""
    pid = os.getpid()
    with _locked(directory):
        others = _read_records(directory)
        if memory_mib:
            verdict = check_memory(
                requested_mib=memory_mib,
                device_memory_mib=the_slice.device.memory_mib,
                used_on_device_mib=sum(r.memory_mib for r in others),
                pinned_limit_mib=the_slice.pinned_limit_mib,
                used_by_process_mib=sum(r.memory_mib for r in others if r.pid == pid),
            )
            if verdict is not None:
                raise CudaOutOfMemoryError(verdict.message(), memory_mib, verdict.free_mib)
            _note_held(memory_mib + sum(r.memory_mib for r in others if r.pid == pid))
        path = directory / f"{pid}-{threading.get_ident()}-{next(_SEQUENCE)}.json"
        record = {
            "pid": pid,
            "mps": the_slice.mps,
            "sm_limit": the_slice.sm_limit,
            "duty": me.duty,
            "occupancy": me.occupancy,
            "parallelism": me.parallelism,
            "bandwidth": me.bandwidth,
            "memory_mib": memory_mib,
            "started": time.time(),
        }
        _write_atomic(path, json.dumps(record))
        return path


# ---------------------------------------------------------------------------------------------
# The kernel


def kernel(
    work_ms: float,
    parallelism: float | None = None,
    memory: int | str | None = None,
    duty: float | None = None,
    occupancy: float | None = None,
    bandwidth: float = 0.0,
) -> KernelResult:
    """Run an emulated GPU kernel: sleep, in real time, as long as it would take on this slice.

    A task is described by ``duty``, ``occupancy`` and ``bandwidth`` (docs/emulation-model.md).
    ``parallelism`` alone keeps its old meaning, ``duty`` 1 and ``occupancy = parallelism``;
    nothing given is a full task (``duty`` = ``occupancy`` = 1) that moves no memory.

    Args:
        work_ms: time the task takes with a whole device to itself, in ms (its kernels and the
            host gaps between them).
        parallelism: ``duty * occupancy``, in (0, 1]; alone, a task whose kernels run all the
            time on that fraction of the SMs.
        memory: device memory it holds while running: MiB, or a size such as ``"10GiB"``.
        duty: fraction of ``work_ms`` during which one of its kernels runs, in (0, 1]; the rest
            is host time (kernel launch, Python dispatch), not slowed by other tasks' kernels.
        occupancy: fraction of the device's SMs its kernels keep busy while they run, in (0, 1]
            (small kernels cannot fill an H100).
        bandwidth: fraction of the device's usable memory bandwidth its kernels move while
            they run alone, in [0, 1]; kernels of one context share it as they share the SMs.
            0 (the default) leaves the task out of bandwidth sharing.

    Raises:
        CudaOutOfMemoryError: ``memory`` is over the MPS pinned limit or the device's free memory.
        CudaError: this process is an MPS client whose server or control daemon is gone (now,
            or before: the error is sticky).
        UsageError: bad arguments, or a slice environment CUDA would refuse.
        MpsError: the MPS daemon refused this client at context creation.
    """
    if work_ms < 0:
        raise UsageError(f"work_ms must be >= 0, got {work_ms}")
    try:
        task_duty, task_occupancy = task_shape(parallelism, duty, occupancy)
        task_bandwidth = check_bandwidth(bandwidth)
    except ValueError as err:
        raise UsageError(str(err)) from err
    try:
        memory_mib = parse_size_mib(memory) if memory is not None else 0
    except ValueError as err:
        raise UsageError(f"memory: {err}") from err
    the_slice = current_slice()
    check_context()  # a lost context fails every kernel, whatever the environment says now
    grant = the_slice.grant
    pipe_dir = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "")
    directory = _device_dir(emulate_dir(), the_slice.device.uuid)
    me = ActiveClient(
        os.getpid(),
        the_slice.mps,
        the_slice.sm_limit,
        task_occupancy,
        task_duty,
        task_bandwidth,
    )

    start = time.monotonic()
    record_path = _admit(directory, the_slice, me, memory_mib)
    progress = 0.0  # fraction of work_ms done
    shared = False
    last = start
    model_end = start  # when the model says the work was done
    try:
        while progress < 1.0 and work_ms > 0:
            others = [r.client() for r in _read_records(directory) if r.path != record_path]
            clients = [me, *others]
            shared = shared or context_count(clients) > 1
            rate = rates(clients)[0]
            remaining_ms = (1.0 - progress) * work_ms / rate
            time.sleep(min(TICK_S, remaining_ms / 1000.0))
            now = time.monotonic()
            progress += (now - last) * 1000.0 * rate / work_ms
            last = now
            # The last tick overshoots by (progress - 1) of the work, done at this rate.
            model_end = now - max(0.0, progress - 1.0) * work_ms / rate / 1000.0
            with contextlib.suppress(OSError):
                os.utime(record_path)  # heartbeat
            if grant is not None:  # a kernel in flight fails when its server goes
                _check_grant(pipe_dir, grant)
    finally:
        with contextlib.suppress(OSError):
            record_path.unlink()
    end = time.monotonic()
    duration_ms = (end - start) * 1000.0
    mode: Mode = "mps" if the_slice.mps else ("timeshare" if shared else "exclusive")
    average = me.parallelism
    share = work_ms * average / duration_ms if duration_ms > 0 else average
    return KernelResult(
        device=the_slice.device.uuid,
        duration_ms=duration_ms,
        mode=mode,
        share=share,
        memory_mib=memory_mib or None,
        work_ms=work_ms,
        parallelism=average,
        duty=task_duty,
        occupancy=task_occupancy,
        bandwidth=task_bandwidth,
        lag_ms=(end - model_end) * 1000.0,
    )


# ---------------------------------------------------------------------------------------------
# Peak memory of this process (what the right-sizing profiler reads, as torch's
# torch.cuda.max_memory_allocated / reset_peak_memory_stats on a real GPU)

_PEAK_LOCK = threading.Lock()
_PEAK_MIB = {"held": 0}


def _note_held(mib: int) -> None:
    with _PEAK_LOCK:
        _PEAK_MIB["held"] = max(_PEAK_MIB["held"], mib)


def peak_memory_mib() -> int:
    """Most device memory this process's emulated kernels held at once since the last reset.

    The emulated counterpart of ``torch.cuda.max_memory_allocated``: the sum of the ``memory``
    of this process's kernels running at the same time, at its highest. 0 before any kernel.
    """
    with _PEAK_LOCK:
        return _PEAK_MIB["held"]


def reset_peak_memory() -> None:
    """Start a new peak (as ``torch.cuda.reset_peak_memory_stats`` does)."""
    with _PEAK_LOCK:
        _PEAK_MIB["held"] = 0


def forget_contexts() -> None:
    """Drop this process's emulated MPS contexts and lost-context errors, as a new process has none.

    A CUDA context lives as long as its process, so the emulator keeps each process's MPS
    connection (and a lost one) for good. A test suite runs many tests in one process: between
    tests it calls this so that one test's daemon, stopped at its end, does not leave the next
    test's kernels in a lost context.
    """
    with _MPS_LOCK:
        _GRANTS.clear()
        _LOST.clear()
