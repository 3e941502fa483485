"""``gpuslice node-run``: on one node, start every pool's workers in their slices, look after them.

A Parsl block of a gpuslice configuration is one node running the worker pools of *every* pool of
the plan (one batch job per node; :mod:`gpuslice.parsl.group` composes its command). On the node,
:class:`NodeAgent`:

1. resolves the plan against the node's own GPUs (NVML, or the fleet file of an emulated node), so
   device UUIDs are the node's, and checks that each pool gets as many slices as its executor was
   sized for. Inside a batch job ``gpus: all`` means the job's GPUs (the scheduler's allocation,
   :mod:`gpuslice.hardware.allocation`), not every GPU of the node; and where the scheduler runs
   its own MPS for the job (Slurm's gres/mps), MPS pools are refused with an explanation rather
   than a second daemon started on the same GPU;
2. starts (or finds) the MPS control daemon of every device the plan's MPS slices use, leased for
   this node run, so that the daemons stop when the run ends (``keep_daemons`` keeps them);
3. starts one Parsl worker pool (``process_worker_pool.py``) per (pool, device), with the slice's
   environment exported before it starts (``CUDA_VISIBLE_DEVICES``, ``CUDA_MPS_PIPE_DIRECTORY``,
   the compute and memory limits): every task of that worker pool — gpu_app, python_app, bash_app,
   a Globus Compute function — runs in the slice, and Parsl gives each worker the device's UUID
   as its accelerator. The worker pools of one block all report that block's id to their pool's
   interchange, as the nodes of a multi-node block do;
4. supervises: an MPS daemon that dies is restarted (its orphaned servers are killed first, since
   their clients' contexts are lost anyway); a device whose daemon cannot be restarted after
   :data:`DAEMON_RETRIES` attempts has its worker pools stopped, so their tasks go to healthy
   devices (Parsl retries the tasks they held); a worker pool that crashes is restarted;
5. stops everything when the block ends (SIGTERM from the provider's cancel, or every worker pool
   gone after its interchange went away), releasing its daemon leases.

If a pool cannot start on the node, node-run prints why (naming the node, the pool and the
reason) on stderr and exits 1 before any worker starts; Parsl reports the failed block, with that
message, as its tasks' error.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from gpuslice.errors import GpusliceError, MpsError, UsageError
from gpuslice.hardware.allocation import JobAllocation
from gpuslice.mps import control, daemon
from gpuslice.mps import env as mps_env
from gpuslice.parsl.worker import (
    DEVICE_ENV,
    EMULATED_ENV,
    EXPECTED_SMS_ENV,
    HOLDER_ENV,
    HOLDER_PID_ENV,
    NODE_ENV,
)
from gpuslice.plan.layout import Daemon, Layout, Slice

__all__ = [
    "DAEMON_RETRIES",
    "NodeAgent",
    "NodeError",
    "NodeSpec",
    "decode_spec",
    "encode_spec",
    "register_emulated_devices",
]

#: Consecutive failed restarts after which a device's daemon is given up on.
DAEMON_RETRIES = 3
#: Seconds between two supervision rounds.
SUPERVISE_PERIOD_S = 1.0
#: Seconds worker pools get to exit on SIGTERM before they are killed. Short, so that node-run
#: has stopped its workers and released its MPS daemons before the batch system's own SIGKILL:
#: Slurm sends it ``KillWait`` seconds after SIGTERM (default 30, sites set it as low as 5;
#: https://slurm.schedmd.com/slurm.conf.html#OPT_KillWait), and a daemonized MPS control daemon
#: outlives a killed node-run where Slurm tracks processes by parentage (proctrack/linuxproc).
STOP_GRACE_S = 3.0
#: Restarts of one crashed worker pool before its device is given up on.
MANAGER_RESTARTS = 3
#: Prefix of an encoded spec on the command line.
_SPEC_PREFIX = "b64:"
#: Variables of the submitting shell that must not leak into a slice (or into a daemon).
_MPS_CLIENT_VARS = (mps_env.PIPE, mps_env.LOG, mps_env.COMPUTE, mps_env.MEMORY)


class NodeError(GpusliceError):
    """A pool cannot start on this node; the message names the node, the pool and the reason."""


@dataclass(frozen=True)
class NodeSpec:
    """What every node of a gpuslice configuration is told (``gpuslice node-run --spec``).

    Attributes:
        group: the configuration's node group id (names the daemon leases and the node lock).
        pools: pool name -> the slices per node its executor was sized for.
        plan: the plan to resolve on the node (``Plan.model_dump``), or None with ``layout``.
        layout: a resolved layout (``Layout.to_dict``) to use as is, for a layout resolved on
            this very machine.
        fleet: the fleet file of emulated nodes (None: the node's GPUs through NVML).
        emulate_dir: the emulated GPU's state directory, for emulated nodes.
        keep_daemons: leave the MPS daemons running when the node run ends.
        elastic: for an elastic configuration, ``{"hub": HubAddress.to_dict()}``: the node runs
            one worker pool per slice and takes orders from the controller
            (:mod:`gpuslice.parsl.elastic_node`); None for a fixed plan.
    """

    group: str
    pools: dict[str, int]
    plan: dict[str, Any] | None = None
    layout: dict[str, Any] | None = None
    fleet: str | None = None
    emulate_dir: str | None = None
    keep_daemons: bool = False
    elastic: dict[str, Any] | None = None

    @property
    def emulated(self) -> bool:
        """True for nodes whose GPUs are described by a fleet file."""
        if self.fleet is not None:
            return True
        return bool(self.layout and self.layout.get("emulated"))


def encode_spec(spec: NodeSpec) -> str:
    """The spec as one shell- and ``str.format``-safe word (``b64:`` + URL-safe base64 JSON)."""
    raw = json.dumps(asdict(spec), separators=(",", ":"), sort_keys=True).encode()
    return _SPEC_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_spec(text: str) -> NodeSpec:
    """Read :func:`encode_spec`'s word back.

    Raises:
        UsageError: the text is not a spec gpuslice wrote.
    """
    if not text.startswith(_SPEC_PREFIX):
        raise UsageError(f"--spec must start with {_SPEC_PREFIX!r} (written by gpuslice)")
    body = text[len(_SPEC_PREFIX) :]
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        pools = {str(k): int(v) for k, v in dict(data["pools"]).items()}
        return NodeSpec(
            group=str(data["group"]),
            pools=pools,
            plan=data.get("plan"),
            layout=data.get("layout"),
            fleet=data.get("fleet"),
            emulate_dir=data.get("emulate_dir"),
            keep_daemons=bool(data.get("keep_daemons", False)),
            elastic=data.get("elastic"),
        )
    except (binascii.Error, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"--spec is not a node spec written by gpuslice: {err}") from err


def register_emulated_devices(layout: Layout) -> None:
    """Tell the emulated GPU the SMs and memory of every device the layout's slices use.

    It lives here, on the node side, rather than in :mod:`gpuslice.parsl.config` (which
    re-exports it): that module imports Parsl, about 1.3 s of start-up that ``gpuslice
    node-run`` would otherwise spend, on every emulated node, before it starts any worker.
    """
    from gpuslice.emulate.kernel import register_devices
    from gpuslice.emulate.model import EmulatedDevice

    devices: dict[str, EmulatedDevice] = {}
    for s in layout.slices:
        if s.device not in devices and s.sm_count > 0 and s.memory_total_mib > 0:
            devices[s.device] = EmulatedDevice(
                uuid=s.device,
                sm_count=s.sm_count,
                memory_mib=s.memory_total_mib,
                name=f"emulated {'MIG instance' if s.kind == 'mig' else 'GPU'} {s.gpu_index}",
            )
    register_devices(devices)


def _say(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp} gpuslice node-run {os.getpid()}] {message}", file=sys.stderr, flush=True)


@dataclass
class _WorkerPool:
    """One Parsl worker pool this node runs: a pool's slices on one device."""

    pool: str
    device: str
    slices: tuple[Slice, ...]
    argv: list[str]
    env: dict[str, str]
    uid: str
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    stopped: bool = False
    failed: bool = False

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env)

    @property
    def current_uid(self) -> str:
        """The manager id of the running worker pool: ``uid``, then ``uid.rN`` after restart N."""
        return self.uid if self.restarts == 0 else f"{self.uid}.r{self.restarts}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class _DaemonWatch:
    """One MPS daemon this node run holds, with what the supervisor knows of it."""

    daemon: Daemon
    pid: int | None = None
    servers: set[int] = field(default_factory=set)
    failures: int = 0
    given_up: bool = False


def _node_name() -> str:
    return socket.gethostname()


def _lock_dir() -> Path:
    base = Path(tempfile.gettempdir()) / f"gpuslice-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    return base


class NodeAgent:
    """Runs one node of a gpuslice configuration (see the module's description).

    Args:
        spec: what the configuration tells every node.
        commands: pool name -> the Parsl worker-pool command its executor formatted for this
            block (Parsl's ``process_worker_pool.py`` line without worker count and
            accelerators).
    """

    def __init__(self, spec: NodeSpec, commands: dict[str, str]) -> None:
        self.spec = spec
        self.commands = commands
        self.node = _node_name()
        self.holder = f"node-run.{spec.group}.{os.getpid()}"
        self.pools: list[_WorkerPool] = []
        self.daemons: list[_DaemonWatch] = []
        self.stopping = False
        self._lock_fd: int | None = None
        self.allocation: JobAllocation = JobAllocation(None, None, None, None, None, "not read")
        self.scheduler_env: dict[str, str] = {}

    # -- set-up --------------------------------------------------------------------------

    def _fail(self, pool: str | None, reason: str) -> NodeError:
        who = f"pool {pool!r}" if pool else "this plan"
        return NodeError(f"gpuslice: {who} cannot start on node {self.node}: {reason}")

    def _environment(self) -> None:
        """Read the job's allocation, then clear what must not leak into slices and daemons.

        Also sets the emulated GPU's variables, so daemons, worker pools and workers find it.
        """
        from gpuslice.hardware.allocation import job_allocation

        # Before anything is cleared: the scheduler's MPS variables are the job's, not ours.
        self.allocation = job_allocation()
        self.scheduler_env = {
            name: os.environ[name] for name in _MPS_CLIENT_VARS if name in os.environ
        }
        os.environ.pop(HOLDER_ENV, None)
        os.environ.pop(HOLDER_PID_ENV, None)
        for name in _MPS_CLIENT_VARS:
            os.environ.pop(name, None)
        if self.spec.emulated:
            from gpuslice.emulate.kernel import STATE_DIR_ENV

            os.environ[control.CONTROL_ENV] = control.EMULATED_PROGRAM
            os.environ[EMULATED_ENV] = "1"
            if self.spec.emulate_dir:
                os.environ[STATE_DIR_ENV] = self.spec.emulate_dir
            if self.spec.fleet:
                os.environ["GPUSLICE_FLEET"] = self.spec.fleet

    def layout(self) -> Layout:
        """The plan resolved on this node, checked against what each executor expects.

        Raises:
            NodeError: the plan does not fit this node's GPUs, or gives a pool another number
                of slices than its executor was sized for.
        """
        from gpuslice.hardware.allocation import restrict_inventory
        from gpuslice.hardware.inventory import discover
        from gpuslice.plan.resolve import resolve

        try:
            if self.spec.layout is not None:
                layout = Layout.from_dict(self.spec.layout)
            else:
                inventory = restrict_inventory(discover(self.spec.fleet), self.allocation)
                layout = resolve(json.dumps(self.spec.plan), inventory)
        except GpusliceError as err:
            raise self._fail(None, str(err)) from err
        self._check_scheduler_mps(layout)
        for name, expected in self.spec.pools.items():
            try:
                here = layout.pool(name)
            except KeyError:
                raise self._fail(name, "the plan resolved here has no such pool") from None
            if len(here.slices) != expected:
                raise self._fail(
                    name,
                    f"the plan gives it {len(here.slices)} slices on this node's GPUs, but its "
                    f"executor was sized for {expected}: nodes must have the GPUs the plan was "
                    "sized for (the fleet given to parsl_config, or the submitting machine's)",
                )
        missing = sorted(set(self.commands) - set(self.spec.pools))
        if missing:
            raise self._fail(missing[0], "no executor was sized for it")
        return layout

    def _check_scheduler_mps(self, layout: Layout) -> None:
        """Refuse MPS slices where the scheduler already runs MPS for the job.

        Slurm's gres/mps gives the job a share of a GPU served by an MPS daemon that Slurm's
        prolog started (https://slurm.schedmd.com/gres.html#MPS_Management); a second daemon
        of gpuslice's on that GPU would fight it, and its clients could not be held to the
        job's share. Time-shared pools run as clients of the scheduler's daemon instead, inside
        the job's share (they keep its variables).
        """
        mps = self.allocation.scheduler_mps
        if mps is None:
            return
        for pool in layout.pools:
            if any(s.uses_mps for s in pool.slices):
                raise self._fail(
                    pool.name,
                    f"the scheduler runs its own MPS for this job ({mps.source}: "
                    f"{mps.percentage:g}% of GPU {', '.join(mps.gpus) or '?'}, daemon at "
                    f"{mps.effective_pipe_directory}), so gpuslice will not start a second MPS "
                    "daemon on that GPU. Ask for whole GPUs (e.g. `--gres=gpu:1`) and let "
                    "gpuslice cut them, or run only `share:` pools inside the job's MPS share",
                )

    def _take_node_lock(self) -> None:
        """One node run per configuration per host: a second one would double every slice."""
        path = _lock_dir() / f"node-{self.spec.group}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise self._fail(
                None,
                "another block of this configuration already runs on this host, and two would "
                "put every slice on its GPUs twice. Use one block per node: LocalProvider with "
                "max_blocks=1, and with nodes_per_block > 1 a launcher that starts one copy per "
                "node (SrunLauncher, MpiExecLauncher, AprunLauncher, ...)",
            ) from None
        self._lock_fd = fd

    def _start_daemons(self, layout: Layout) -> None:
        for d in layout.daemons:
            try:
                daemon.ensure(d.pipe_dir, d.log_dir, d.device, holder=self.holder)
            except MpsError as err:
                pools = sorted({s.pool for s in layout.slices if s.mps_pipe_dir == d.pipe_dir})
                raise self._fail(pools[0], f"no MPS daemon for {d.device}: {err}") from err
            watch = _DaemonWatch(d, pid=daemon.daemon_pid(d.pipe_dir))
            self.daemons.append(watch)

    def _worker_pools(self, layout: Layout) -> list[_WorkerPool]:
        made: list[_WorkerPool] = []
        for pool in layout.pools:
            if pool.name not in self.commands:
                continue
            base = shlex.split(self.commands[pool.name])
            by_device: dict[str, list[Slice]] = {}
            for s in pool.slices:
                by_device.setdefault(s.device, []).append(s)
            for index, (device, slices) in enumerate(by_device.items()):
                uid = f"{pool.name}.{self.node}.{os.getpid()}.{index}"
                argv = [
                    *base,
                    f"--max_workers_per_node={len(slices)}",
                    f"--uid={uid}",
                    "--available-accelerators",
                    *(device for _ in slices),
                ]
                made.append(
                    _WorkerPool(pool.name, device, tuple(slices), argv, self._env(slices[0]), uid)
                )
        return made

    def _env(self, first: Slice) -> dict[str, str]:
        env = dict(os.environ)
        if self.allocation.scheduler_mps is not None and not first.uses_mps:
            env.update(self.scheduler_env)  # a client of the scheduler's MPS, at the job's share
        env.update(mps_env.slice_environment(first))
        env[mps_env.POOL] = first.pool
        env[DEVICE_ENV] = first.device
        env[NODE_ENV] = self.node
        env[HOLDER_ENV] = self.holder
        env[HOLDER_PID_ENV] = str(os.getpid())
        if first.expected_sms is not None and first.expected_sms > 0:
            env[EXPECTED_SMS_ENV] = str(first.expected_sms)
        else:
            env.pop(EXPECTED_SMS_ENV, None)
        return env

    def start(self) -> None:
        """Resolve, lock, start the daemons and the worker pools.

        Raises:
            NodeError: a pool cannot start here; nothing is left running.
        """
        self._environment()
        layout = self.layout()
        self._take_node_lock()
        if self.spec.emulated:
            register_emulated_devices(layout)
        try:
            self._start_daemons(layout)
            self.pools = self._worker_pools(layout)
            for wp in self.pools:
                wp.start()
        except BaseException:
            self.stop()
            raise
        summary = ", ".join(f"{wp.pool}: {len(wp.slices)}x {wp.device}" for wp in self.pools)
        _say(f"node {self.node}: worker pools started ({summary})")

    # -- supervision ---------------------------------------------------------------------

    def _watch_daemon(self, watch: _DaemonWatch) -> None:
        d = watch.daemon
        if watch.given_up:
            return
        if watch.pid is not None and daemon.process_alive(watch.pid):
            watch.servers.update(daemon.children(watch.pid))
            return
        # The daemon is gone. Its servers' clients lost their contexts with it; kill the
        # orphans so that nothing half-alive serves the device, then start a new daemon.
        for server in sorted(watch.servers):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(server, signal.SIGKILL)
        watch.servers.clear()
        _say(f"the MPS daemon of {d.device} ({watch.pid}) is gone; restarting it")
        try:
            daemon.ensure(d.pipe_dir, d.log_dir, d.device, holder=self.holder)
        except MpsError as err:
            watch.failures += 1
            _say(f"restart {watch.failures} of the MPS daemon of {d.device} failed: {err}")
            if watch.failures >= DAEMON_RETRIES:
                watch.given_up = True
                self._give_up(d.device, f"its MPS daemon could not be restarted: {err}")
            return
        watch.failures = 0
        watch.pid = daemon.daemon_pid(d.pipe_dir)
        _say(f"the MPS daemon of {d.device} runs again as {watch.pid}")

    def _give_up(self, device: str, reason: str) -> None:
        for wp in self.pools:
            if wp.device == device and not wp.stopped:
                wp.stopped = wp.failed = True
                _say(
                    f"stopping pool {wp.pool}'s workers on {device} on node {self.node}: {reason}; "
                    "Parsl retries their tasks elsewhere"
                )
                _terminate([wp])

    def _watch_pool(self, wp: _WorkerPool) -> None:
        if wp.stopped or wp.alive or wp.proc is None:
            return
        code = wp.proc.returncode
        if code == 0:
            # A worker pool ends by itself when its interchange is gone or it drained.
            wp.stopped = True
            _say(f"pool {wp.pool}'s workers on {wp.device} finished")
            return
        if wp.restarts >= MANAGER_RESTARTS:
            wp.stopped = wp.failed = True
            _say(
                f"pool {wp.pool}'s worker pool on {wp.device} exited {code} "
                f"{wp.restarts + 1} times; not restarting it again"
            )
            return
        # A new manager id: were the old one reused, the interchange would replace the old
        # manager's record on registration and never report the tasks it held as lost.
        old = f"--uid={wp.current_uid}"
        wp.restarts += 1
        wp.argv = [a if a != old else f"--uid={wp.current_uid}" for a in wp.argv]
        _say(
            f"pool {wp.pool}'s worker pool on {wp.device} exited {code}; restarting it as "
            f"{wp.current_uid}"
        )
        wp.start()

    def supervise(self) -> int:
        """Watch daemons and worker pools until the block ends.

        Returns:
            The exit status: 0 when the worker pools finished or the block was cancelled, 1
            when every worker pool stopped and some of them failed (a device given up on, a
            worker pool that kept crashing).
        """
        while not self.stopping:
            for watch in self.daemons:
                self._watch_daemon(watch)
            for wp in self.pools:
                self._watch_pool(wp)
            if all(wp.stopped for wp in self.pools):
                break
            time.sleep(SUPERVISE_PERIOD_S)
        failed = [f"{wp.pool} on {wp.device}" for wp in self.pools if wp.failed]
        if failed and not self.stopping:
            _say(f"node {self.node}: every worker pool stopped; failed: {', '.join(failed)}")
            return 1
        return 0

    # -- shutdown ------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the worker pools, then release this run's daemons (unless they are kept)."""
        self.stopping = True
        _terminate(self.pools)
        for wp in self.pools:
            wp.stopped = True
        if not self.spec.keep_daemons:
            for watch in self.daemons:
                d = watch.daemon
                try:
                    report = daemon.release(d.pipe_dir, d.log_dir, self.holder)
                except MpsError as err:
                    _say(f"could not stop the MPS daemon of {d.device}: {err}")
                    continue
                if report is not None:
                    _say(f"stopped the MPS daemon of {d.device}")
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _terminate(pools: Sequence[_WorkerPool]) -> None:
    running = [wp.proc for wp in pools if wp.proc is not None and wp.proc.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _signals(agent: NodeAgent) -> Iterator[None]:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        agent.stopping = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(spec: NodeSpec, commands: dict[str, str]) -> int:
    """Run this node until its block ends; what ``gpuslice node-run`` does.

    Returns:
        The exit status (1 when a pool cannot start here or every device was given up).
    """
    agent: NodeAgent
    if spec.elastic is not None:
        from gpuslice.parsl.elastic_node import ElasticNodeAgent

        agent = ElasticNodeAgent(spec, commands)
    else:
        agent = NodeAgent(spec, commands)
    with _signals(agent):
        try:
            agent.start()
        except NodeError as err:
            print(str(err), file=sys.stderr, flush=True)
            return 1
        try:
            return agent.supervise()
        finally:
            agent.stop()
