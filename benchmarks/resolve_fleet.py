"""How long resolve() takes for a plan over a fleet of 1,000 GPUs (target: under 1 s).

Run: ``.venv/bin/python benchmarks/resolve_fleet.py``; writes benchmarks/results/resolve_fleet.json.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import gpuslice
from gpuslice.hardware.fleet import fleet_from_data

PLAN = (
    "version: 1\npools:\n"
    "  small: {mps: {compute: 25, memory: 10GiB}, per_gpu: 2}\n"
    "  large: {mps: {compute: 50}, per_gpu: 1}\n"
    "  tiny: {mig: 1g.10gb}\n"
    "  batch: {share: {}, per_gpu: 4, gpus: [0, 1, 2, 3]}\n"
)
FLEET = {
    "gpus": [
        {"model": "H100-80GB", "count": 750},
        {"model": "H100-80GB", "count": 250, "mig": ["1g.10gb"] * 7},
    ]
}


def main() -> None:
    inventory = fleet_from_data(FLEET, source="fleet:benchmark")
    plan = gpuslice.load_plan(PLAN)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        layout = gpuslice.resolve(plan, inventory)
        times.append(time.perf_counter() - start)
    result = {
        "benchmark": "resolve_fleet",
        "gpus": len(inventory.gpus),
        "slices": len(layout.slices),
        "median_s": statistics.median(times),
        "max_s": max(times),
        "target_s": 1.0,
        "met": max(times) < 1.0,
        "device": "CPU (resolve does not touch a GPU)",
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "gpuslice": gpuslice.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(__file__).parent / "results" / "resolve_fleet.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"resolve over {result['gpus']} GPUs -> {result['slices']} slices: "
        f"median {result['median_s'] * 1000:.1f} ms, max {result['max_s'] * 1000:.1f} ms "
        f"(target < 1000 ms: {'met' if result['met'] else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
