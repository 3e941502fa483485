"""A one-node Slurm cluster from Debian's packages, started on this machine and stopped afterwards.

Used by the ``slurm`` tests (tests/slurm/conftest.py) and by hand through
``scripts/slurm-cluster.sh start|stop|status``. The module needs only the standard library, so
the system ``python3`` runs it before any virtual environment exists.

Everything the cluster writes lives in one private directory: the munge key and socket, the
``slurm.conf`` (reached through ``SLURM_CONF``), state, spool, logs, pid files, a scratch
directory for jobs, and fake GPU device files. Nothing is written under /etc or /var, no system
service is started, and two clusters (two test sessions) can run side by side on their own
ports. ``stop`` cancels the jobs, stops the daemons, kills any process left that carries this
cluster's ``SLURM_CONF`` and removes the directory.

Facts this module relies on, each checked against Slurm 22.05.8 and munge 0.5.15 (Debian
bookworm) on this machine:

- ``AuthInfo=socket=PATH`` points auth/munge and cred/munge at a private munged socket
  (slurm.conf(5) of the installed 22.05.8, "AuthInfo"; https://slurm.schedmd.com/slurm.conf.html).
- munged refuses a socket directory without execute permission for all ("Socket is
  inaccessible: execute permissions for all required"), so the munge directory is 0755.
- ``proctrack/linuxproc``, ``task/none`` and ``jobacct_gather/none`` need no cgroup: slurmd
  starts inside a container without systemd.
- A gpu GRES needs ``File=`` device paths to set ``CUDA_VISIBLE_DEVICES``; slurmd rejects a
  regular file ("is not a valid character or block device") but accepts a symlink to
  ``/dev/null``. The indices Slurm hands out are positions in gres.conf (files ``nvidia[4-7]``
  give ``SLURM_JOB_GPUS=0..3``), see https://slurm.schedmd.com/gres.html#GPU_Management.
- slurmd and slurmstepd inherit ``SLURM_CONF`` from the environment they start in, which is how
  ``stop`` finds a job step that outlived its slurmd.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

#: Debian packages of the cluster: controller, node daemon, client commands, authentication.
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
#: Programs the cluster runs; all four packages are installed when any is missing.
PROGRAMS = (
    "munged",
    "munge",
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "squeue",
    "scancel",
    "sinfo",
)
#: The cluster's one partition (the default one).
PARTITION = "gpuslice"
#: Where the command line keeps its cluster unless told otherwise (short: a socket lives there).
DEFAULT_ROOT = Path("/tmp/gpuslice-slurm")
#: Fake GPUs configured as gres/gpu unless told otherwise.
DEFAULT_GPUS = 4
FACTS_FILE = "cluster.json"
#: What a cluster writes in its directory; ``stop`` removes these and nothing else.
OWNED = ("etc", "state", "spool", "log", "run", "munge", "scratch", "dev", FACTS_FILE)
#: Prefix of the directories the test fixture makes (and ``reap_orphans`` looks at).
SESSION_PREFIX = "gs-slurm-"
# Root's usual PATH may lack the sbin directories when a test runner sets its own.
SBIN = ("/usr/sbin", "/sbin")


class ClusterUnavailable(RuntimeError):
    """Slurm cannot run here; :attr:`reason` says why and what would make it work."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class BatchJob:
    """A batch job that has left the queue.

    Attributes:
        job_id: Slurm's job id.
        output: what the job wrote to stdout and stderr.
    """

    job_id: str
    output: str


@dataclass(frozen=True)
class Cluster:
    """What a test needs to know about a running cluster.

    Attributes:
        root: the private directory holding everything the cluster wrote.
        conf: its ``slurm.conf``; clients find it through ``SLURM_CONF`` (see :meth:`env`).
        hostname: the node's name (``slurmd -C``), which jobs see as ``SLURMD_NODENAME``.
        partition: the only partition, the default.
        scratch: a directory every job can read and write (mode 1777).
        gpus: fake GPUs configured as gres/gpu (0: no GRES).
        mps_per_gpu: gres/mps count of each fake GPU (100: ``--gres=mps:N`` asks for N%; 0: no
            gres/mps).
        slurmctld_port: the controller's TCP port.
        slurmd_port: the node daemon's TCP port.
        munge_socket: the private munged socket.
        version: ``slurmctld -V``, e.g. ``slurm-wlm 22.05.8``.
        started_in_s: seconds from the call to ``start`` until the node was idle (0 when an
            already running cluster was reused).
        installed_in_s: seconds spent installing packages by this ``start`` (0: none needed).
        owner_pid: the process whose end makes this cluster an orphan (None: kept until
            ``stop``).
        pids: pids of munged, slurmctld and slurmd, by name.
    """

    root: Path
    conf: Path
    hostname: str
    partition: str
    scratch: Path
    gpus: int
    mps_per_gpu: int
    slurmctld_port: int
    slurmd_port: int
    munge_socket: Path
    version: str
    started_in_s: float
    installed_in_s: float
    owner_pid: int | None
    pids: Mapping[str, int]

    def env(self) -> dict[str, str]:
        """The variables a client (sbatch, squeue, Parsl's SlurmProvider) needs to reach it."""
        return {"SLURM_CONF": str(self.conf)}

    def queued(self) -> dict[str, str]:
        """Jobs in the queue (pending, running, completing), by id: their state."""
        done = _run(["squeue", "-h", "-o", "%i %T"], self.conf)
        if done.returncode != 0:
            raise RuntimeError(f"squeue failed: {done.stderr.strip()}")
        return dict(line.split(" ", 1) for line in done.stdout.splitlines() if line.strip())

    def batch(self, *options: str, script: str | None = None, timeout: float = 60.0) -> BatchJob:
        """Run ``sbatch OPTIONS`` (with ``script`` on stdin, or ``--wrap``); wait until it ends.

        ``sbatch --wait`` polls at growing intervals (a one-second job took 10 s to report);
        squeue every 0.1 s keeps a test short.

        Returns:
            The job's id and its output (stdout and stderr, from a file under :attr:`scratch`).

        Raises:
            RuntimeError: sbatch refused the job, or it was still queued after ``timeout``
                seconds (it is cancelled then).
        """
        job_id = self.submit(*options, script=script)
        out = self.scratch / f"job-{job_id}.out"
        deadline = time.monotonic() + timeout
        while job_id in self.queued():
            if time.monotonic() > deadline:
                _run(["scancel", job_id], self.conf)
                raise RuntimeError(f"job {job_id} still queued after {timeout:.0f} s")
            time.sleep(0.1)
        return BatchJob(job_id, out.read_text() if out.exists() else "")

    def submit(self, *options: str, script: str | None = None) -> str:
        """``sbatch OPTIONS`` without waiting; output goes to ``scratch/job-<id>.out``.

        Returns:
            The job id.
        """
        argv = ["sbatch", "--parsable", "-o", str(self.scratch / "job-%j.out"), *options]
        done = subprocess.run(
            argv,
            input=script,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
            env=_client_env(self.conf),
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout.strip().split(";")[0]

    def cancel(self, *job_ids: str) -> None:
        """``scancel`` these jobs (Slurm signals their processes, then kills them)."""
        _run(["scancel", *job_ids], self.conf)

    def job_processes(self) -> list[int]:
        """Processes of this cluster's jobs still alive (they carry SLURM_JOB_ID)."""
        mine = {os.getpid(), os.getppid()}
        return [
            pid
            for pid in _processes_of(self.conf)
            if pid not in mine and _has_variable(pid, "SLURM_JOB_ID")
        ]

    def to_json(self) -> dict[str, object]:
        """Plain-JSON form, as ``status --json`` prints it and ``cluster.json`` stores it."""
        data = asdict(self)
        for key in ("root", "conf", "scratch", "munge_socket"):
            data[key] = str(data[key])
        data["pids"] = dict(self.pids)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Cluster:
        """Read back what :meth:`to_json` wrote."""
        pids = data["pids"]
        assert isinstance(pids, dict)
        owner = data.get("owner_pid")
        return cls(
            root=Path(str(data["root"])),
            conf=Path(str(data["conf"])),
            hostname=str(data["hostname"]),
            partition=str(data["partition"]),
            scratch=Path(str(data["scratch"])),
            gpus=int(str(data["gpus"])),
            mps_per_gpu=int(str(data["mps_per_gpu"])),
            slurmctld_port=int(str(data["slurmctld_port"])),
            slurmd_port=int(str(data["slurmd_port"])),
            munge_socket=Path(str(data["munge_socket"])),
            version=str(data["version"]),
            started_in_s=float(str(data["started_in_s"])),
            installed_in_s=float(str(data["installed_in_s"])),
            owner_pid=None if owner is None else int(str(owner)),
            pids={str(k): int(v) for k, v in pids.items()},
        )


@dataclass(frozen=True)
class _Layout:
    """The paths of a cluster directory."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def munge(self) -> Path:
        return self.root / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge / "socket"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def facts(self) -> Path:
        return self.root / FACTS_FILE


# --- finding and installing the programs ---------------------------------------------------


def _search_path() -> str:
    parts = os.environ.get("PATH", os.defpath).split(os.pathsep)
    return os.pathsep.join([*parts, *(d for d in SBIN if d not in parts)])


def _which(program: str) -> str | None:
    return shutil.which(program, path=_search_path())


def _missing_programs() -> list[str]:
    return [p for p in PROGRAMS if _which(p) is None]


def ensure_installed(*, install: bool = True, timeout: float = 600.0) -> float:
    """Install Debian's Slurm and munge packages when a program is missing.

    Installs with apt-get, non-interactive and quiet. Debian's maintainer scripts would start
    the system munge service where the init system allows it; a ``policy-rc.d`` that denies
    every action (exit 101, "action forbidden by policy": README.policy-rc.d of Debian's
    init-system-helpers) stops them for the duration, unless the machine has its own policy.

    Args:
        install: install what is missing (False: only check).
        timeout: seconds allowed for ``apt-get update`` and ``apt-get install`` together.

    Returns:
        Seconds spent installing (0.0 when nothing was missing).

    Raises:
        ClusterUnavailable: a program is missing and cannot be installed here.
    """
    missing = _missing_programs()
    if not missing:
        return 0.0
    if not install:
        raise ClusterUnavailable(f"Slurm is not installed (missing: {', '.join(missing)})")
    apt = _which("apt-get")
    if apt is None:
        raise ClusterUnavailable(
            f"Slurm is not installed (missing: {', '.join(missing)}) and there is no apt-get to "
            f"install it: install {' '.join(PACKAGES)} (Debian/Ubuntu package names)"
        )
    began = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": _search_path()}
    lock = ("-o", "DPkg::Lock::Timeout=120")
    steps = (
        [apt, "-qq", *lock, "update"],
        [apt, "-y", "-qq", *lock, "--no-install-recommends", "install", *PACKAGES],
    )
    with _services_denied():
        for step in steps:
            left = timeout - (time.monotonic() - began)
            try:
                done = subprocess.run(
                    step,
                    check=False,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=max(left, 1.0),
                )
            except subprocess.TimeoutExpired as err:
                raise ClusterUnavailable(
                    f"`{' '.join(step)}` took more than {timeout:.0f} s (no network to the "
                    "Debian mirror?)"
                ) from err
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise ClusterUnavailable(
                    f"`{' '.join(step)}` failed (exit {done.returncode}): {' | '.join(tail)}"
                )
    still = _missing_programs()
    if still:
        raise ClusterUnavailable(f"installed {' '.join(PACKAGES)} but still missing: {still}")
    return time.monotonic() - began


@contextlib.contextmanager
def _services_denied() -> Iterator[None]:
    policy = Path("/usr/sbin/policy-rc.d")
    if policy.exists():
        yield
        return
    policy.write_text("#!/bin/sh\n# gpuslice tests: start no service while installing\nexit 101\n")
    policy.chmod(0o755)
    try:
        yield
    finally:
        policy.unlink(missing_ok=True)


# --- processes -----------------------------------------------------------------------------


# Daemons this process started: only these are reaped here (another child's exit status
# belongs to whoever started it, e.g. Parsl).
_SPAWNED: set[int] = set()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not; a daemon started here is reaped when it ends)."""
    if pid in _SPAWNED:
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                _SPAWNED.discard(pid)
                return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _carries(pid: int, variable: str) -> bool:
    """Whether process ``pid`` has ``variable`` (``NAME=value``) in its environment."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return variable.encode() in environ.split(b"\0")


def _signal_and_wait(pids: Sequence[int], timeout: float) -> None:
    """SIGTERM each pid, wait up to ``timeout`` seconds, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        left = [p for p in pids if _alive(p)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while any(_alive(p) for p in left) and time.monotonic() < deadline:
            time.sleep(0.05)


def _has_variable(pid: int, name: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return any(item.startswith(name.encode() + b"=") for item in environ.split(b"\0"))


def _processes_of(conf: Path) -> list[int]:
    """Processes of this cluster: daemons, step daemons and job processes carry its SLURM_CONF."""
    marker = f"SLURM_CONF={conf}"
    own = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != own and _carries(int(entry.name), marker):
            found.append(int(entry.name))
    return found


def _client_env(conf: Path) -> dict[str, str]:
    # SLURM_* variables of an enclosing job (a developer inside a real allocation) would steer
    # the daemons and clients; only this cluster's configuration is passed on.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    env["SLURM_CONF"] = str(conf)
    env["PATH"] = _search_path()
    return env


def _run(
    argv: Sequence[str], conf: Path, timeout: float = 10.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        check=False,
        env=_client_env(conf),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tail(path: Path, lines: int = 4) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return f"(no {path.name})"
    return " | ".join(text[-lines:])


# --- configuration -------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    """Ports free now on every interface (the daemons bind 0.0.0.0); kept apart by holding all."""
    held = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("0.0.0.0", 0))  # the daemons listen on all interfaces too
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def _node_line() -> tuple[str, str]:
    """``slurmd -C``'s description of this machine: (node name, its NodeName=… line)."""
    slurmd = _which("slurmd")
    assert slurmd is not None
    done = subprocess.run([slurmd, "-C"], check=False, capture_output=True, text=True, timeout=30)
    first = next((ln for ln in done.stdout.splitlines() if ln.startswith("NodeName=")), None)
    if done.returncode != 0 or first is None:
        raise ClusterUnavailable(
            f"`slurmd -C` could not describe this machine: {done.stderr.strip()}"
        )
    name = first.split()[0].split("=", 1)[1]
    return name, first


def _slurm_conf(
    layout: _Layout, node: str, node_line: str, ports: Sequence[int], gpus: int, mps: int
) -> str:
    root = layout.root
    gres = f" Gres=gpu:{gpus}" + (f",mps:{gpus * mps}" if mps else "") if gpus else ""
    # Every setting is explained in slurm.conf(5) of Slurm 22.05; the node runs all daemons and
    # jobs as root, with no cgroup (proctrack/linuxproc, task/none) so it works in containers.
    lines = [
        "# Written by gpuslice's tests/slurm/cluster.py: a one-node test cluster.",
        "ClusterName=gpuslice",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={layout.munge_socket}",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/run/slurmctld.pid",
        f"SlurmdPidFile={root}/run/slurmd.pid",
        f"SlurmctldLogFile={layout.log}/slurmctld.log",
        f"SlurmdLogFile={layout.log}/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=none",
        "ReturnToService=2",
        "MailProg=/bin/true",
        # Seconds between SIGTERM and SIGKILL when a job is cancelled (default 30): a cancelled
        # Parsl block goes in seconds.
        "KillWait=5",
        # Schedule a batch job when it is submitted (the default defers it up to 3 s).
        "SchedulerParameters=batch_sched_delay=0",
    ]
    if gpus:
        lines.append("GresTypes=gpu,mps" if mps else "GresTypes=gpu")
    lines += [
        f"NodeName={node} NodeAddr=127.0.0.1{gres} {node_line.split(' ', 1)[1]} State=UNKNOWN",
        f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def _fake_gpus(layout: _Layout, gpus: int, mps: int) -> str:
    dev = layout.root / "dev"
    dev.mkdir()
    for i in range(gpus):
        (dev / f"nvidia{i}").symlink_to("/dev/null")
    # No NVML here: AutoDetect off, device files listed in index order. A gres/mps Count
    # without File is spread evenly over the GPUs (https://slurm.schedmd.com/gres.html#MPS_Management).
    text = f"AutoDetect=off\nName=gpu File={dev}/nvidia[0-{gpus - 1}]\n"
    return text + (f"Name=mps Count={gpus * mps}\n" if mps else "")


# --- start, status, stop -------------------------------------------------------------------


def _spawn(argv: Sequence[str], conf: Path, log: Path) -> int:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            env=_client_env(conf),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _SPAWNED.add(proc.pid)
    return proc.pid


def _wait_for(what: str, ready: Callable[[], bool], pid: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if not _alive(pid):
            raise ClusterUnavailable(f"{what} exited at start: {_tail(log)}")
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"{what} not ready after {timeout:.0f} s: {_tail(log)}")
        time.sleep(0.05)


def _node_state(conf: Path, node: str) -> str:
    try:
        done = _run(["sinfo", "-h", "-n", node, "-o", "%T"], conf, timeout=5)
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def start(
    root: Path = DEFAULT_ROOT,
    *,
    gpus: int = DEFAULT_GPUS,
    mps_per_gpu: int = 100,
    install: bool = True,
    owner_pid: int | None = None,
    timeout: float = 60.0,
) -> Cluster:
    """Start a one-node cluster in ``root`` (idempotent: a healthy one there is reused).

    Args:
        root: private directory for everything the cluster writes; created if missing.
        gpus: fake GPUs to configure as gres/gpu (0: none).
        mps_per_gpu: gres/mps count of each GPU (0: no gres/mps; needs ``gpus``).
        install: install Debian's packages when a program is missing.
        owner_pid: a process whose end makes the cluster an orphan, for :func:`reap_orphans`.
        timeout: seconds allowed for the daemons to start and the node to become idle.

    Returns:
        The facts of the running cluster.

    Raises:
        ClusterUnavailable: Slurm cannot run here; the reason says why.
    """
    if not sys.platform.startswith("linux"):
        raise ClusterUnavailable(f"Slurm's daemons run on Linux, not {sys.platform}")
    if os.geteuid() != 0:
        raise ClusterUnavailable(
            "starting slurmd needs root (it runs each job as its user); run as root, as CI does"
        )
    root = Path(root).absolute()
    running = status(root)
    if running is not None:
        return running
    if not _cluster_dir(root):
        raise ClusterUnavailable(
            f"{root} is neither empty nor a cluster directory: choose another directory"
        )
    if root.exists():
        stop(root)
    installed = ensure_installed(install=install)
    began_daemons = time.monotonic()

    layout = _Layout(root)
    root.mkdir(parents=True, exist_ok=True)
    # Claims the directory first, so that `stop` cleans up after a start that fails early.
    layout.facts.write_text("{}\n")
    for sub in ("etc", "state", "spool", "log", "run", "munge", "scratch"):
        (root / sub).mkdir(exist_ok=True)
    # The munge socket's directory and its parents must be reachable by every user.
    root.chmod(0o755)
    layout.munge.chmod(0o755)
    layout.scratch.chmod(0o1777)
    key = layout.munge / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)

    node, node_line = _node_line()
    ports = _free_ports(2)
    mps = mps_per_gpu if gpus else 0
    layout.conf.write_text(_slurm_conf(layout, node, node_line, ports, gpus, mps))
    if gpus:
        (layout.conf.parent / "gres.conf").write_text(_fake_gpus(layout, gpus, mps))

    cluster = Cluster(
        root=root,
        conf=layout.conf,
        hostname=node,
        partition=PARTITION,
        scratch=layout.scratch,
        gpus=gpus,
        mps_per_gpu=mps,
        slurmctld_port=ports[0],
        slurmd_port=ports[1],
        munge_socket=layout.munge_socket,
        version="",
        started_in_s=0.0,
        installed_in_s=round(installed, 3),
        owner_pid=owner_pid,
        pids={},
    )
    pids: dict[str, int] = {}

    def spawn(name: str, argv: list[str]) -> None:
        pids[name] = _spawn(argv, layout.conf, layout.log / f"{name}.out")
        # Written at once, so that `stop` finds every daemon even if this start is interrupted.
        _write_facts(layout, dataclasses.replace(cluster, pids=dict(pids)))

    try:
        spawn(
            "munged",
            [
                str(_which("munged")),
                "--foreground",
                f"--socket={layout.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={layout.munge}/munged.pid",
                f"--log-file={layout.log}/munged.log",
                f"--seed-file={layout.munge}/munged.seed",
            ],
        )
        _wait_for(
            "munged", layout.munge_socket.exists, pids["munged"], layout.log / "munged.log", timeout
        )
        for daemon in ("slurmctld", "slurmd"):
            spawn(daemon, [str(_which(daemon)), "-D", "-f", str(layout.conf)])
        _wait_for(
            "slurmd",
            lambda: _node_state(layout.conf, node) == "idle",
            pids["slurmd"],
            layout.log / "slurmd.log",
            timeout,
        )
    except BaseException:
        stop(root)
        raise

    cluster = dataclasses.replace(
        cluster,
        version=_run([str(_which("slurmctld")), "-V"], layout.conf).stdout.strip(),
        started_in_s=round(time.monotonic() - began_daemons, 3),
        pids=pids,
    )
    _write_facts(layout, cluster)
    return cluster


def _write_facts(layout: _Layout, cluster: Cluster) -> None:
    tmp = layout.facts.with_suffix(".tmp")
    tmp.write_text(json.dumps(cluster.to_json(), indent=2) + "\n")
    tmp.replace(layout.facts)


def _read_facts(root: Path) -> Cluster | None:
    try:
        return Cluster.from_json(json.loads((root / FACTS_FILE).read_text()))
    except (OSError, ValueError, KeyError, AssertionError):
        return None


def _ours(pid: int, root: Path) -> bool:
    """Whether ``pid`` is one of this cluster's daemons (its command line names ``root``)."""
    return _alive(pid) and str(root) in _cmdline(pid)


def status(root: Path = DEFAULT_ROOT) -> Cluster | None:
    """The running cluster in ``root``, or None when it is not (fully) running.

    Running means: its three daemons are alive and ``sinfo`` shows the node up (idle, mixed or
    allocated).
    """
    cluster = _read_facts(Path(root).absolute())
    if cluster is None or not cluster.version:
        return None
    if not all(_ours(pid, cluster.root) for pid in cluster.pids.values()):
        return None
    if _node_state(cluster.conf, cluster.hostname) not in {"idle", "mixed", "allocated"}:
        return None
    return dataclasses.replace(cluster, started_in_s=0.0, installed_in_s=0.0)


def stop(root: Path = DEFAULT_ROOT, *, timeout: float = 20.0) -> None:
    """Stop the cluster in ``root`` and remove the directory; nothing of it is left running.

    Cancels every job (Slurm signals the job's processes, then kills them after ``KillWait``),
    stops slurmd, slurmctld and munged, kills any process still carrying this cluster's
    ``SLURM_CONF`` (a job step that outlived its slurmd), and removes what the cluster wrote in
    ``root`` (and ``root`` itself when nothing else is left in it).

    Raises:
        ValueError: ``root`` holds something that is not a cluster's: nothing is touched.
    """
    root = Path(root).absolute()
    if not root.exists():
        return
    if not _cluster_dir(root):
        raise ValueError(f"{root} is not a cluster directory (no {FACTS_FILE}): nothing stopped")
    layout = _Layout(root)
    cluster = _read_facts(root)
    if cluster is not None:
        daemons = {name: pid for name, pid in cluster.pids.items() if _ours(pid, root)}
        if "slurmctld" in daemons:
            _cancel_all(layout.conf, timeout)
        order = [daemons[n] for n in ("slurmd", "slurmctld", "munged") if n in daemons]
        _signal_and_wait(order, timeout)
    if layout.conf.exists():
        _signal_and_wait(_processes_of(layout.conf), 5.0)
    for name in (*OWNED, FACTS_FILE + ".tmp"):
        path = root / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        root.rmdir()


def _cluster_dir(root: Path) -> bool:
    """Whether ``root`` is missing, empty, or a cluster's (it has the facts file)."""
    if not root.exists():
        return True
    return root.is_dir() and (not any(root.iterdir()) or (root / FACTS_FILE).exists())


def _cancel_all(conf: Path, timeout: float) -> None:
    try:
        queued = _run(["squeue", "-h", "-o", "%i"], conf).stdout.split()
        if not queued:
            return
        _run(["scancel", *queued], conf)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = _run(["squeue", "-h", "-o", "%i"], conf)
            if left.returncode != 0 or not left.stdout.split():
                return
            time.sleep(0.2)
    except subprocess.TimeoutExpired:
        return


def reap_orphans(base: Path) -> list[Path]:
    """Stop clusters under ``base`` whose owner process has ended (a test run that was killed).

    Args:
        base: directory whose subdirectories may hold clusters (e.g. /tmp).

    Returns:
        The directories of the clusters stopped.
    """
    reaped = []
    for facts in Path(base).glob(f"{SESSION_PREFIX}*/{FACTS_FILE}"):
        cluster = _read_facts(facts.parent)
        if cluster is None or cluster.owner_pid is None or _alive(cluster.owner_pid):
            continue
        stop(cluster.root)
        reaped.append(cluster.root)
    return reaped


# --- command line --------------------------------------------------------------------------


def _describe(cluster: Cluster) -> str:
    return "\n".join(
        [
            f"Slurm ({cluster.version}) is running: node {cluster.hostname}, partition "
            f"{cluster.partition}, {cluster.gpus} fake GPUs (gres/mps {cluster.mps_per_gpu} "
            f"each), scratch {cluster.scratch}",
            f"started in {cluster.started_in_s:.1f} s"
            + (
                f" after installing in {cluster.installed_in_s:.0f} s"
                if cluster.installed_in_s
                else ""
            ),
            "Use it with:",
            f"  export SLURM_CONF={cluster.conf}",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``start|stop|status [--dir D] [--gpus N] [--no-install] [--json]``."""
    parser = argparse.ArgumentParser(
        prog="slurm-cluster", description="A one-node Slurm cluster for gpuslice's tests."
    )
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--dir", type=Path, default=DEFAULT_ROOT, help="cluster directory")
    parser.add_argument("--gpus", type=int, default=DEFAULT_GPUS, help="fake gres/gpu count")
    parser.add_argument("--mps", type=int, default=100, help="gres/mps count per GPU (0: none)")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install")
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    args = parser.parse_args(argv)

    if args.action == "stop":
        try:
            stop(args.dir)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"stopped; {args.dir} removed")
        return 0
    if args.action == "status":
        found = status(args.dir)
        if found is None:
            print(f"no cluster running in {args.dir}", file=sys.stderr)
            return 1
        print(json.dumps(found.to_json(), indent=2) if args.json else _describe(found))
        return 0
    try:
        cluster = start(args.dir, gpus=args.gpus, mps_per_gpu=args.mps, install=not args.no_install)
    except ClusterUnavailable as err:
        print(f"error: Slurm cannot start here: {err.reason}", file=sys.stderr)
        return 2
    print(json.dumps(cluster.to_json(), indent=2) if args.json else _describe(cluster))
    return 0


if __name__ == "__main__":
    sys.exit(main())
