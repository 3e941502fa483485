"""Does the plan `plan suggest` writes for a two-function mix beat equal slices in `bench`?

The user's path, through the CLI, in one run:

1. ``gpuslice plan suggest --functions <mix's functions> --mix <shares> --fleet F``: profiles
   the mix's two workloads (``surrogate``: 3/4 MPNN inference, 1/4 retraining, as named
   functions in :mod:`gpuslice.bench.mixtasks`), stores the profiles, writes the plan;
2. ``gpuslice bench --workload surrogate --plans one-per-gpu,gpuslice-2,gpuslice-3,gpuslice-4,
   gpuslice-7,mps-unlimited-4,suggested``: the same task list under every arrangement,
   ``suggested`` built from the stored profiles.

Writes ``benchmarks/results/rightsize_suggested-surrogate.{json,md,png}`` (the bench output
plus the plan, the profiling time and the ratio of ``suggested`` to the best equal slices).

Run: ``.venv/bin/python benchmarks/rightsize_suggested.py`` (private emulator, MPS and store).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLEET = HERE.parent / "src" / "gpuslice" / "examples" / "fleet-1xh100.yaml"
EQUAL = ("gpuslice-2", "gpuslice-3", "gpuslice-4", "gpuslice-7")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", default=str(FLEET), help="fleet file (emulated GPU)")
    parser.add_argument("--mix", default="surrogate", help="the harness's workload mix")
    parser.add_argument("--tasks", type=int, default=200, help="tasks per arrangement")
    parser.add_argument("--max-per-gpu", type=int, default=16, help="most slices when profiling")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(dir="/tmp", prefix="gsrq-"))
    env = {
        **os.environ,
        "GPUSLICE_EMULATE_DIR": os.environ.get("GPUSLICE_EMULATE_DIR", str(scratch / "emu")),
        "GPUSLICE_MPS_ROOT": os.environ.get("GPUSLICE_MPS_ROOT", str(scratch / "mps")),
        "GPUSLICE_PROFILE_STORE": str(scratch / "profiles.sqlite"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    }
    gpuslice = str(Path(sys.executable).parent / "gpuslice")

    from gpuslice.bench.suggested import DEFAULT_MIX, suggest_command

    # Plain `suggested` is the default mix's plan; any other mix is named `suggested-<mix>`.
    arrangement = "suggested" if args.mix == DEFAULT_MIX else f"suggested-{args.mix}"

    command = suggest_command(args.mix, args.fleet).split()
    command[0] = gpuslice
    command += ["--max-per-gpu", str(args.max_per_gpu), "--out", str(scratch / "plan.yaml")]
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True)
    profiling_s = time.perf_counter() - started
    plans = ",".join(("one-per-gpu", *EQUAL, "mps-unlimited-4", arrangement))
    bench = [gpuslice, "bench", "--workload", args.mix, "--plans", plans, "--tasks",
             str(args.tasks), "--fleet", args.fleet, "--out", str(scratch / "bench")]  # fmt: skip
    print("$", " ".join(bench), flush=True)
    subprocess.run(bench, env=env, check=True)

    stem = f"rightsize_suggested-{args.mix}"
    produced = scratch / "bench" / f"{args.mix}-emulated.json"
    if not produced.exists():  # a real GPU names the file after its model
        produced = next((scratch / "bench").glob(f"{args.mix}-*.json"))
    data = json.loads(produced.read_text())
    by_name = {a["name"]: a for a in data["arrangements"]}
    best_equal = max((by_name[n] for n in EQUAL), key=lambda a: a["throughput"])
    suggested = by_name[arrangement]
    data["rightsize"] = {
        "plan": (scratch / "plan.yaml").read_text(),
        "suggest_command": " ".join(command[1:]),
        "bench_command": " ".join(bench[1:]),
        "profiling_s": profiling_s,
        "best_equal_slices": best_equal["name"],
        "suggested_tasks_per_s": suggested["throughput"],
        "best_equal_tasks_per_s": best_equal["throughput"],
        "suggested_vs_best_equal": suggested["throughput"] / best_equal["throughput"],
        "suggested_mean_tct_vs_best_equal": suggested["mean_tct_s"] / best_equal["mean_tct_s"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    for suffix in (".png", ".md"):
        shutil.copy(produced.with_suffix(suffix), args.out / f"{stem}{suffix}")
    (args.out / f"{stem}.yaml").write_text(data["rightsize"]["plan"])
    r = data["rightsize"]
    print(
        f"suggested {r['suggested_tasks_per_s']:.2f} tasks/s vs best equal slices "
        f"({r['best_equal_slices']}) {r['best_equal_tasks_per_s']:.2f}: "
        f"x{r['suggested_vs_best_equal']:.3f}"
    )
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
