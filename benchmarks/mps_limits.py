"""Do MPS compute percentages and memory caps hold? Two clients at 30% and 70% on one GPU.

On a GPU (the check owed by the MPS issue; run it where a GPU is lent)::

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

``--emulated`` runs the same orchestration on the emulated GPU (emulated daemon and kernels),
so the script itself is tested on machines without a GPU; its numbers then only restate the
emulation model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

MATMUL_N = 8192


def client(iterations: int, allocate_mib: int, emulated: bool) -> dict[str, Any]:
    """Inside one client process: report the SMs seen, run the loop, or try the allocation."""
    if emulated:
        from gpuslice.emulate.kernel import CudaOutOfMemoryError, kernel, visible_sm_count

        sms = visible_sm_count()
        if allocate_mib:
            try:
                kernel(50, parallelism=1.0, memory=allocate_mib)
            except CudaOutOfMemoryError as err:
                return {"sms": sms, "oom": True, "error": str(err)}
            return {"sms": sms, "oom": False}
        start = time.perf_counter()
        for _ in range(iterations):
            kernel(40, parallelism=1.0, memory=256)
        return {"sms": sms, "rate": iterations / (time.perf_counter() - start)}

    import torch

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    if allocate_mib:
        try:
            block = torch.empty(allocate_mib * 1024 * 1024, dtype=torch.uint8, device="cuda")
            torch.cuda.synchronize()
            del block
        except torch.OutOfMemoryError as err:
            return {"sms": sms, "oom": True, "error": str(err).splitlines()[0]}
        return {"sms": sms, "oom": False}
    x = torch.randn(MATMUL_N, MATMUL_N, dtype=torch.float16, device="cuda")
    for _ in range(3):  # warm-up: cuBLAS heuristics, clocks
        x @ x
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        x @ x
    torch.cuda.synchronize()
    return {"sms": sms, "rate": iterations / (time.perf_counter() - start)}


def spawn(
    env: dict[str, str], iterations: int, allocate_mib: int, emulated: bool
) -> subprocess.Popen[str]:
    """Start one client process with a slice's environment."""
    args = [
        sys.executable,
        __file__,
        "--client",
        "--iterations",
        str(iterations),
        "--allocate-mib",
        str(allocate_mib),
    ] + (["--emulated"] if emulated else [])
    return subprocess.Popen(args, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)


def collect(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=600)
    if proc.returncode != 0:
        return {"failed": True, "returncode": proc.returncode}
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emulated", action="store_true", help="use the emulated GPU")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--allocate-mib", type=int, default=0)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "mps_limits.json"))
    args = parser.parse_args()
    if args.client:
        print(json.dumps(client(args.iterations or 0, args.allocate_mib, args.emulated)))
        return

    import gpuslice
    from gpuslice.mps import daemon
    from gpuslice.mps.env import slice_environment

    iterations = args.iterations or (20 if args.emulated else 200)
    root = tempfile.mkdtemp(prefix="gsmps-", dir="/tmp")
    os.environ["GPUSLICE_MPS_ROOT"] = root
    if args.emulated:
        os.environ["GPUSLICE_MPS_CONTROL"] = "gpuslice-emulated-mps-control"
        os.environ["GPUSLICE_EMULATE_DIR"] = str(Path(root) / "emulate")
        fleet = str(Path(gpuslice.__file__).parent / "examples" / "fleet-1xh100.yaml")
        inventory = gpuslice.discover(fleet)
    else:
        inventory = gpuslice.discover()
    gpu = next(g for g in inventory.gpus if not g.mig_enabled)
    cap_mib = 4096

    # The reference client and the two slices would sum above 100%, which a plan refuses:
    # each comes from its own plan, all on the same device and daemon.
    def env_of(plan: str, pool: str) -> dict[str, str]:
        lay = gpuslice.resolve(plan, inventory)
        return slice_environment(lay.pool(pool).slices[0])

    where = f"@{gpu.index}"
    unlimited = env_of(f"u=mps{where}", "u")
    slice_a = env_of(f"a=mps:30%/{cap_mib}MiB{where}, b=mps:70%/{2 * cap_mib}MiB{where}", "a")
    slice_b = env_of(f"a=mps:30%/{cap_mib}MiB{where}, b=mps:70%/{2 * cap_mib}MiB{where}", "b")
    if args.emulated:
        from gpuslice.emulate.kernel import register_devices
        from gpuslice.emulate.model import EmulatedDevice

        register_devices(
            {gpu.uuid: EmulatedDevice(gpu.uuid, gpu.sm_count, gpu.memory_mib, gpu.name)}
        )
    status = daemon.ensure(
        unlimited["CUDA_MPS_PIPE_DIRECTORY"], unlimited["CUDA_MPS_LOG_DIRECTORY"], gpu.uuid
    )
    phases: dict[str, Any] = {}
    try:
        phases["unlimited"] = collect(spawn(unlimited, iterations, 0, args.emulated))
        phases["alone-30"] = collect(spawn(slice_a, iterations, 0, args.emulated))
        phases["alone-70"] = collect(spawn(slice_b, iterations, 0, args.emulated))
        both = [
            spawn(slice_a, iterations, 0, args.emulated),
            spawn(slice_b, iterations, 0, args.emulated),
        ]
        phases["together"] = {"30": collect(both[0]), "70": collect(both[1])}
        runner = spawn(slice_b, iterations, 0, args.emulated)
        greedy = spawn(slice_a, 0, 2 * cap_mib, args.emulated)
        phases["memory"] = {"over_cap_30": collect(greedy), "running_70": collect(runner)}
    finally:
        stopped = daemon.stop(unlimited["CUDA_MPS_PIPE_DIRECTORY"])
        shutil.rmtree(root, ignore_errors=True)

    reference = phases["unlimited"]["rate"]
    checks = {}
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
    result = {
        "benchmark": "mps_limits",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": gpu.name
        + (" (emulated: numbers restate the emulation model)" if args.emulated else ""),
        "gpu_uuid": gpu.uuid,
        "driver": inventory.driver_version,
        "cuda": inventory.cuda_version,
        "torch": None if args.emulated else metadata.version("torch"),
        "gpuslice": metadata.version("gpuslice"),
        "python": platform.python_version(),
        "daemon_started": status.started,
        "daemon_stop_clean": stopped.clean,
        "iterations": iterations,
        "phases": phases,
        "checks": checks,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, check in checks.items():
        print(f"{name}: {'holds' if check['holds'] else 'DOES NOT HOLD'} {check}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
