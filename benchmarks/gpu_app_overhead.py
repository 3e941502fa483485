"""What gpuslice's routing costs: no-op tasks through ``@gpu_app`` vs a plain ``python_app``.

Both apps run on the same executor (one gpuslice pool of two time-shared slices on the
emulated GPU), in alternating rounds of ``--tasks`` no-op tasks each, after a warm-up round
that lets every worker run its one-time slice check. A round's time runs from the first
submission to the last result. The result is the median over rounds of
``time(gpu_app) / time(python_app)``; gpuslice's target is a ratio under 1.05.

Run: ``.venv/bin/python benchmarks/gpu_app_overhead.py`` (writes
``benchmarks/results/gpu_app_overhead.json``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from parsl.app.app import python_app
from parsl.dataflow.dflow import DataFlowKernelLoader
from parsl.version import VERSION as PARSL_VERSION

import gpuslice
from gpuslice.parsl.app import gpu_app

HERE = Path(__file__).resolve().parent
FLEET = HERE.parent / "src" / "gpuslice" / "examples" / "fleet-2xh100.yaml"
PLAN = "bench=1x share"


def noop(i: int) -> int:
    return i


def run_round(app: Any, tasks: int) -> float:
    start = time.perf_counter()
    futures = [app(i) for i in range(tasks)]
    for future in futures:
        future.result()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="no-op tasks per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per app (alternating)")
    parser.add_argument(
        "--out", type=Path, default=HERE / "results" / "gpu_app_overhead.json", help="JSON file"
    )
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(dir="/tmp", prefix="gsb-"))
    os.environ.setdefault("GPUSLICE_MPS_ROOT", str(scratch / "mps"))
    os.environ.setdefault("GPUSLICE_EMULATE_DIR", str(scratch / "emu"))
    config = gpuslice.parsl_config(PLAN, fleet=FLEET, run_dir=str(scratch / "runinfo"))
    DataFlowKernelLoader.load(config)
    try:
        plain = python_app(executors=["bench"])(noop)
        routed = gpu_app(pool="bench")(noop)
        run_round(plain, args.tasks)  # warm-up: workers started, serialisation caches filled
        run_round(routed, args.tasks)
        plain_s: list[float] = []
        routed_s: list[float] = []
        for r in range(args.rounds):
            order = [(plain, plain_s), (routed, routed_s)]
            for app, times in order if r % 2 == 0 else reversed(order):
                times.append(run_round(app, args.tasks))
        workers = config.executors[0].max_workers_per_node
    finally:
        DataFlowKernelLoader.dfk().cleanup()
        DataFlowKernelLoader.clear()

    ratios = [g / p for g, p in zip(routed_s, plain_s, strict=True)]
    ratio = statistics.median(ratios)
    result = {
        "benchmark": "gpu_app_overhead",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": {
            "gpu": f"emulated ({FLEET.name}, no GPU used: no-op tasks)",
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
        },
        "versions": {
            "python": sys.version.split()[0],
            "parsl": PARSL_VERSION,
            "gpuslice": gpuslice.__version__,
        },
        "setup": {"plan": PLAN, "workers": workers, "tasks_per_round": args.tasks},
        "python_app_s": plain_s,
        "gpu_app_s": routed_s,
        "python_app_tasks_per_s": args.tasks / statistics.median(plain_s),
        "gpu_app_tasks_per_s": args.tasks / statistics.median(routed_s),
        "ratios": ratios,
        "median_ratio": ratio,
        "overhead_percent": (ratio - 1.0) * 100.0,
        "target": "median_ratio < 1.05",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"python_app {result['python_app_tasks_per_s']:.0f} tasks/s, "
        f"gpu_app {result['gpu_app_tasks_per_s']:.0f} tasks/s, "
        f"median ratio {ratio:.3f} ({result['overhead_percent']:+.1f}%) -> {args.out}"
    )


if __name__ == "__main__":
    main()
