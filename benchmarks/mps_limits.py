"""Do MPS compute percentages and memory caps hold? What does NVIDIA's daemon do on a GPU?

On a GPU (the checks owed by the MPS issues; run it where a GPU is lent)::

    .venv/bin/python benchmarks/mps_limits.py            # writes benchmarks/results/mps_limits.json

It starts a private MPS control daemon (its own pipe directory, nothing else on the GPU is
touched: no compute-mode, MIG or clock change), then runs torch client processes with the
exact environment gpuslice gives each slice (``gpuslice.mps.env.slice_environment``):

1. ``unlimited``: one client without a percentage: the reference rate of a compute-bound loop
   (fp16 8192x8192 matmuls).
2. ``alone-30`` and ``alone-70``: each slice alone; its rate over the reference should be close
   to the SMs it sees over the GPU's SMs (about 0.3 and 0.7).
3. ``together``: both at once; each keeps about its share.
4. ``memory``: the 30% client allocates above its cap and must fail with out-of-memory, alone;
   the 70% client runs its loop at the same time and must finish.

Then the facts the emulator and the planner assume and NVIDIA's pages do not state:

5. ``pinned``: how much a client can hold under a cap of 4096 MiB and one of 3000 MiB
   (``0=3000M``, which ``get_default_device_pinned_mem_limit`` prints as ``2G``): 64 MiB blocks
   until out-of-memory. The difference says whether the server enforces MiB (about 1096) or the
   truncated GiB (about 2048); the context's own memory cancels out.
6. ``replies``: what the daemon answers with a server and a client (``ps``,
   ``get_client_list``, ``get_device_client_list``, ...), verbatim, for the emulator.
7. ``reserve``: device memory (NVML ``memory.used``) that idle contexts take, 1 and 4 of them,
   without MPS and as MPS clients: the planner keeps 512 MiB per context.
8. ``server-limits``: the server's limits set to 30% and 2048M (``set_active_thread_percentage``,
   ``set_device_pinned_mem_limit``), then a client asking 70% and 4096 MiB: which one holds.
9. ``control-death``: the control daemon is SIGKILLed while a client computes: does the client
   go on? (The emulator assumes its connection fails.)

``--emulated`` runs the same orchestration on the emulated GPU (emulated daemon and kernels),
so the script itself is tested on machines without a GPU; its numbers then only restate the
emulation model (phase 7 needs NVML and is skipped there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

MATMUL_N = 8192
#: Allocation step of the memory probe, and the most it asks for (well under any cap tried).
PROBE_STEP_MIB = 64
PROBE_MAX_MIB = 16384
#: Commands whose replies phase 6 records; ``{server}`` is the MPS server's PID.
REPLY_COMMANDS = (
    "get_server_list",
    "ps",
    "get_client_list {server}",
    "get_device_client_list",
    "get_device_client_list {server}",
    "get_active_thread_percentage {server}",
    "get_default_active_thread_percentage",
    "get_default_device_pinned_mem_limit 0",
    "get_device_pinned_mem_limit {server} 0",
    "get_client_list 4242",
)


# ---------------------------------------------------------------------------------------------
# Inside one client process


def _probe_emulated(limit_mib: int) -> int:
    """Largest ``PROBE_STEP_MIB`` multiple the emulated context may hold (bisection)."""
    from gpuslice.emulate.kernel import CudaOutOfMemoryError, kernel

    low, high = 0, limit_mib // PROBE_STEP_MIB  # low fits, high + 1 is not asked for
    while low < high:
        mid = (low + high + 1) // 2
        try:
            kernel(1, parallelism=1.0, memory=mid * PROBE_STEP_MIB)
        except CudaOutOfMemoryError:
            high = mid - 1
        else:
            low = mid
    return low * PROBE_STEP_MIB


def client(args: argparse.Namespace) -> dict[str, Any]:
    """One client process: report the SMs seen, then loop, allocate, probe or hold."""
    if args.emulated:
        from gpuslice.emulate.kernel import CudaOutOfMemoryError, kernel, visible_sm_count

        sms = visible_sm_count()
        if args.allocate_mib:
            try:
                kernel(50, parallelism=1.0, memory=args.allocate_mib)
            except CudaOutOfMemoryError as err:
                return {"sms": sms, "oom": True, "error": str(err)}
            return {"sms": sms, "oom": False}
        if args.probe:
            return {"sms": sms, "held_mib": _probe_emulated(PROBE_MAX_MIB)}
        if args.hold:
            kernel(1, parallelism=1.0, memory=1)
            print(json.dumps({"sms": sms, "pid": os.getpid()}), flush=True)
            sys.stdin.readline()
            return {"sms": sms, "released": True}
        if args.seconds:
            return _timed_loop(sms, args.seconds, lambda: kernel(40, parallelism=1.0, memory=256))
        start = time.perf_counter()
        for _ in range(args.iterations):
            kernel(40, parallelism=1.0, memory=256)
        return {"sms": sms, "rate": args.iterations / (time.perf_counter() - start)}

    import torch

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    if args.allocate_mib:
        try:
            block = torch.empty(args.allocate_mib * 1024 * 1024, dtype=torch.uint8, device="cuda")
            torch.cuda.synchronize()
            del block
        except torch.OutOfMemoryError as err:
            return {"sms": sms, "oom": True, "error": str(err).splitlines()[0]}
        return {"sms": sms, "oom": False}
    if args.probe:
        free, total = torch.cuda.mem_get_info()  # creates the context first
        blocks = []
        error = None
        while len(blocks) * PROBE_STEP_MIB < PROBE_MAX_MIB:
            try:
                blocks.append(torch.empty(PROBE_STEP_MIB << 20, dtype=torch.uint8, device="cuda"))
                torch.cuda.synchronize()
            except torch.OutOfMemoryError as err:
                error = str(err).splitlines()[0]
                break
        held = len(blocks) * PROBE_STEP_MIB
        del blocks
        return {
            "sms": sms,
            "held_mib": held,
            "stopped_by": "out of memory" if error else f"probe limit {PROBE_MAX_MIB} MiB",
            "error": error,
            "mem_get_info_mib": [free >> 20, total >> 20],
        }
    if args.hold:
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        ready = {"sms": sms, "pid": os.getpid(), "mem_get_info_mib": [free >> 20, total >> 20]}
        print(json.dumps(ready), flush=True)
        sys.stdin.readline()
        return {"sms": sms, "released": True}
    x = torch.randn(MATMUL_N, MATMUL_N, dtype=torch.float16, device="cuda")
    for _ in range(3):  # warm-up: cuBLAS heuristics, clocks
        x @ x
    torch.cuda.synchronize()
    if args.seconds:

        def step() -> None:
            x @ x
            torch.cuda.synchronize()

        return _timed_loop(sms, args.seconds, step)
    start = time.perf_counter()
    for _ in range(args.iterations):
        x @ x
    torch.cuda.synchronize()
    return {"sms": sms, "rate": args.iterations / (time.perf_counter() - start)}


def _timed_loop(sms: int, seconds: float, step: Callable[[], object]) -> dict[str, Any]:
    """Say ``ready``, then run ``step`` for ``seconds``; report the steps and the first error."""
    step()
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    done, error, start = 0, None, time.perf_counter()
    while time.perf_counter() - start < seconds:
        try:
            step()
        except Exception as err:  # what a CUDA call raises when its MPS side is gone
            error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            break
        done += 1
    return {"sms": sms, "steps": done, "seconds": time.perf_counter() - start, "error": error}


# ---------------------------------------------------------------------------------------------
# The orchestrating process


def spawn(
    env: dict[str, str],
    emulated: bool,
    *,
    iterations: int = 0,
    allocate_mib: int = 0,
    mode: str | None = None,
    seconds: float = 0.0,
) -> subprocess.Popen[str]:
    """Start one client process with a slice's environment."""
    args = [sys.executable, __file__, "--client", "--iterations", str(iterations)]
    args += ["--allocate-mib", str(allocate_mib), "--seconds", str(seconds)]
    if mode is not None:
        args.append(f"--{mode}")
    if emulated:
        args.append("--emulated")
    return subprocess.Popen(
        args,
        env={**os.environ, **env},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


#: Longest a client may take (a CUDA call that hangs once its MPS side is gone must not hang
#: the script: the client is killed and the phase says so).
CLIENT_TIMEOUT_S = 120.0


def collect(proc: subprocess.Popen[str], timeout: float = CLIENT_TIMEOUT_S) -> dict[str, Any]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"failed": True, "hung": f"killed after {timeout:g} s"}
    if proc.returncode != 0:
        return {"failed": True, "returncode": proc.returncode}
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def first_line(proc: subprocess.Popen[str], timeout: float = CLIENT_TIMEOUT_S) -> dict[str, Any]:
    """The first JSON line a ``hold`` or ``seconds`` client prints once its context is up."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"client {proc.pid} was not ready after {timeout:g} s (killed)")
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=60)
        raise RuntimeError(f"client {proc.pid} exited ({proc.returncode}) before it was ready")
    result: dict[str, Any] = json.loads(line)
    return result


def release(procs: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """Let ``hold`` clients exit (close their stdin) and collect them."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.stdin = None  # closed: communicate() below only reads
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=CLIENT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        lines = (out or "").strip().splitlines()
        results.append(json.loads(lines[-1]) if lines else {"returncode": proc.returncode})
    return results


def raw_reply(pipe: str, line: str) -> dict[str, Any]:
    from gpuslice.mps import control

    reply = control.run_commands(pipe, [line])
    return {
        "command": line,
        "exit": reply.returncode,
        "stdout": reply.stdout,
        "stderr": reply.stderr,
    }


def guarded(phases: dict[str, Any], name: str, run: Callable[[], Any]) -> None:
    """Run one phase; a failure is recorded in its place and the next phase still runs."""
    started = time.perf_counter()
    print(f"phase {name} ...", flush=True)
    try:
        phases[name] = run()
    except Exception as err:
        phases[name] = {"error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()}
    print(f"phase {name}: {time.perf_counter() - started:.1f} s", flush=True)


def wait_for_servers(pipe: str, timeout: float = 20.0) -> tuple[int, ...]:
    from gpuslice.mps import control

    deadline = time.monotonic() + timeout
    while True:
        servers = control.get_server_list(pipe)
        if servers or time.monotonic() > deadline:
            return servers
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emulated", action="store_true", help="use the emulated GPU")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--allocate-mib", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "mps_limits.json"))
    args = parser.parse_args()
    if args.client:
        args.iterations = args.iterations or 0
        print(json.dumps(client(args)))
        return

    import gpuslice
    from gpuslice.hardware import nvml
    from gpuslice.mps import control, daemon
    from gpuslice.mps.env import slice_environment

    emulated = bool(args.emulated)
    iterations = args.iterations or (20 if emulated else 200)
    root = tempfile.mkdtemp(prefix="gsmps-", dir="/tmp")
    os.environ["GPUSLICE_MPS_ROOT"] = root
    if emulated:
        os.environ["GPUSLICE_MPS_CONTROL"] = "gpuslice-emulated-mps-control"
        os.environ["GPUSLICE_EMULATE_DIR"] = str(Path(root) / "emulate")
        fleet = str(Path(gpuslice.__file__).parent / "examples" / "fleet-1xh100.yaml")
        inventory = gpuslice.discover(fleet)
    else:
        inventory = gpuslice.discover()
    gpu = next(g for g in inventory.gpus if not g.mig_enabled)
    cap_mib = 4096

    # The reference client and the slices would sum above 100%, which a plan refuses: each
    # comes from its own plan, all on the same device and daemon.
    def env_of(plan: str, pool: str) -> dict[str, str]:
        lay = gpuslice.resolve(plan, inventory)
        return slice_environment(lay.pool(pool).slices[0])

    where = f"@{gpu.index}"
    unlimited = env_of(f"u=mps{where}", "u")
    pair = f"a=mps:30%/{cap_mib}MiB{where}, b=mps:70%/{2 * cap_mib}MiB{where}"
    slice_a, slice_b = env_of(pair, "a"), env_of(pair, "b")
    pipe = unlimited["CUDA_MPS_PIPE_DIRECTORY"]
    if emulated:
        from gpuslice.emulate.kernel import register_devices
        from gpuslice.emulate.model import EmulatedDevice

        register_devices(
            {gpu.uuid: EmulatedDevice(gpu.uuid, gpu.sm_count, gpu.memory_mib, gpu.name)}
        )
    status = daemon.ensure(pipe, unlimited["CUDA_MPS_LOG_DIRECTORY"], gpu.uuid)

    def probe(env: dict[str, str]) -> dict[str, Any]:
        return collect(spawn(env, emulated, mode="probe"))

    def pinned() -> dict[str, Any]:
        return {
            str(mib): probe(env_of(f"p=mps:30%/{mib}MiB{where}", "p")) | {"cap_mib": mib}
            for mib in (cap_mib, 3000)
        }

    def replies() -> dict[str, Any]:
        holder = spawn(slice_a, emulated, mode="hold")
        try:
            ready = first_line(holder)
            server = wait_for_servers(pipe)
            rows = [
                raw_reply(pipe, line.format(server=server[0] if server else 0))
                for line in REPLY_COMMANDS
            ]
        finally:
            released = release([holder])
        return {"client": ready, "servers": list(server), "replies": rows, "released": released}

    def reserve() -> dict[str, Any]:
        plain = {"CUDA_VISIBLE_DEVICES": gpu.uuid, "CUDA_MPS_PIPE_DIRECTORY": f"{root}/no-daemon"}
        result: dict[str, Any] = {}
        for label, env in (("plain", plain), ("mps", unlimited)):
            for count in (1, 4):
                before = nvml.memory_used_mib(gpu.uuid)
                holders = [spawn(env, emulated, mode="hold") for _ in range(count)]
                try:
                    seen = [first_line(h) for h in holders]
                    time.sleep(1.0)
                    during = nvml.memory_used_mib(gpu.uuid)
                finally:
                    release(holders)
                time.sleep(1.0)
                result[f"{label}-{count}"] = {
                    "used_before_mib": before,
                    "used_with_contexts_mib": during,
                    "per_context_mib": (during - before) / count,
                    "clients_saw_mem_get_info_mib": [s.get("mem_get_info_mib") for s in seen],
                }
        return result

    def server_limits() -> dict[str, Any]:
        holder = spawn(unlimited, emulated, mode="hold")
        try:
            first_line(holder)
            server = wait_for_servers(pipe)[0]
            set_replies = [
                raw_reply(pipe, f"set_active_thread_percentage {server} 30"),
                raw_reply(pipe, f"set_device_pinned_mem_limit {server} 0 2048M"),
                raw_reply(pipe, f"get_device_pinned_mem_limit {server} 0"),
            ]
            asking_more = probe(env_of(f"m=mps:70%/{cap_mib}MiB{where}", "m"))
            asking_nothing = probe(unlimited)
        finally:
            release([holder])
        return {
            "server": server,
            "set_replies": set_replies,
            "client_70_4096": asking_more,
            "client_without_limits": asking_nothing,
        }

    def control_death() -> dict[str, Any]:
        servers_before = control.get_server_list(pipe)
        loop = spawn(slice_b, emulated, seconds=8.0)
        ready = first_line(loop)
        victim = daemon.daemon_pid(pipe)
        if victim is not None:
            os.kill(victim, signal.SIGKILL)
        killed_at = time.perf_counter()
        outcome = collect(loop, timeout=60.0)
        alive = [p for p in servers_before if daemon.process_alive(p)]
        for pid in alive:  # the orphaned servers: nobody else will stop them now
            os.kill(pid, signal.SIGTERM)
        left = daemon.wait_gone(alive, 10.0)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        return {
            "daemon_killed": victim,
            "client": ready | outcome,
            "client_ran_after_kill_s": time.perf_counter() - killed_at,
            "servers_alive_after": alive,
            "servers_needed_sigkill": list(left),
        }

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    phases: dict[str, Any] = {}

    def save(extra: dict[str, Any]) -> dict[str, Any]:
        """Write what is known so far (a run cut short keeps the phases it finished)."""
        result = {
            "benchmark": "mps_limits",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device": gpu.name
            + (" (emulated: numbers restate the emulation model)" if emulated else ""),
            "gpu_uuid": gpu.uuid,
            "driver": inventory.driver_version,
            "cuda": inventory.cuda_version,
            "torch": None if emulated else metadata.version("torch"),
            "gpuslice": metadata.version("gpuslice"),
            "python": platform.python_version(),
            "control_program": control.control_program(),
            "daemon_started": status.started,
            "iterations": iterations,
            "phases": phases,
            **extra,
        }
        out.write_text(json.dumps(result, indent=2) + "\n")
        return result

    try:
        phases["unlimited"] = collect(spawn(unlimited, emulated, iterations=iterations))
        phases["alone-30"] = collect(spawn(slice_a, emulated, iterations=iterations))
        phases["alone-70"] = collect(spawn(slice_b, emulated, iterations=iterations))
        both = [
            spawn(slice_a, emulated, iterations=iterations),
            spawn(slice_b, emulated, iterations=iterations),
        ]
        phases["together"] = {"30": collect(both[0]), "70": collect(both[1])}
        runner = spawn(slice_b, emulated, iterations=iterations)
        greedy = spawn(slice_a, emulated, allocate_mib=2 * cap_mib)
        phases["memory"] = {"over_cap_30": collect(greedy), "running_70": collect(runner)}
        save({"partial": True})
        later: list[tuple[str, Callable[[], Any]]] = [
            ("pinned", pinned),
            ("replies", replies),
            ("reserve", reserve),
            ("server-limits", server_limits),
            ("control-death", control_death),
        ]
        for name, run in later:
            if name == "reserve" and emulated:
                phases[name] = {"skipped": "needs NVML's memory.used of a real GPU"}
            else:
                guarded(phases, name, run)
            save({"partial": True})
    finally:
        stopped = daemon.stop(pipe)
        shutil.rmtree(root, ignore_errors=True)

    checks = judge(phases, gpu.sm_count)
    save({"daemon_stop_clean": stopped.clean, "checks": checks})
    for name, check in checks.items():
        verdict = check.get("holds")
        word = "holds" if verdict else ("DOES NOT HOLD" if verdict is False else "observed")
        print(f"{name}: {word} {check}")
    print(f"wrote {out}")


def judge(phases: dict[str, Any], device_sms: int) -> dict[str, Any]:
    """What each phase shows; ``holds`` where gpuslice relies on the outcome."""
    checks: dict[str, Any] = {}
    reference = phases["unlimited"]["rate"]
    for name, pct in (("alone-30", 30), ("alone-70", 70)):
        seen = phases[name]["sms"] / phases["unlimited"]["sms"]
        ratio = phases[name]["rate"] / reference
        checks[name] = {
            "percentage": pct,
            "sm_fraction_seen": seen,
            "rate_fraction": ratio,
            "holds": abs(ratio - seen) <= 0.1,
        }
    memory = phases["memory"]
    checks["memory"] = {
        "over_cap_failed_with_oom": bool(memory["over_cap_30"].get("oom")),
        "other_client_finished": "rate" in memory["running_70"],
        "holds": bool(memory["over_cap_30"].get("oom")) and "rate" in memory["running_70"],
    }
    pinned = phases.get("pinned", {})
    if "error" not in pinned:
        whole, odd = pinned["4096"]["held_mib"], pinned["3000"]["held_mib"]
        gap = whole - odd
        # 4096 - 3000 = 1096 MiB if the server enforces MiB; 4096 - 2048 = 2048 if it
        # enforces the whole GiB that get_default_device_pinned_mem_limit prints.
        rule = (
            "MiB"
            if abs(gap - 1096) <= 2 * PROBE_STEP_MIB
            else ("truncated to GiB" if abs(gap - 2048) <= 2 * PROBE_STEP_MIB else "neither")
        )
        checks["pinned-mib"] = {
            "held_mib_at_4096": whole,
            "held_mib_at_3000": odd,
            "difference_mib": gap,
            "enforced_as": rule,
            "holds": rule == "MiB" and whole <= 4096 and odd <= 3000,
        }
    limits = phases.get("server-limits", {})
    if "error" not in limits:
        asked = limits["client_70_4096"]
        checks["client-above-server"] = {
            "server_set_to": "30% / 2048M",
            "client_asked": "70% / 4096 MiB",
            "client_sms": asked.get("sms"),
            "device_sms": device_sms,
            "client_held_mib": asked.get("held_mib"),
            "unlimited_client_sms": limits["client_without_limits"].get("sms"),
            "unlimited_client_held_mib": limits["client_without_limits"].get("held_mib"),
        }
    reserve = phases.get("reserve", {})
    if reserve and "error" not in reserve and "skipped" not in reserve:
        per = {k: v["per_context_mib"] for k, v in reserve.items()}
        checks["reserve"] = {"per_context_mib": per, "planner_reserve_mib": 512,
                             "holds": max(per.values()) <= 512}  # fmt: skip
    death = phases.get("control-death", {})
    if "error" not in death:
        client = death["client"]
        checks["control-death"] = {
            "client_error": client.get("error"),
            "client_steps": client.get("steps"),
            "servers_alive_after": death["servers_alive_after"],
        }
    return checks


if __name__ == "__main__":
    main()
