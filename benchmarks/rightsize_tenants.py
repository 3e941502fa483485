"""Mixed tenants on one GPU: where right-sized limits must beat MPS without limits.

A latency-bound inference tenant (LLM decoding, ``gpuslice.bench.mixtasks:llm_medium``, a
seeded Poisson stream at ``--infer-rate`` per second, p95 bound ``--p95-ms``) shares one GPU
with a heavy tenant (a 2-D stencil that fills every SM, ``gpuslice.bench.mixtasks:stencil_large``,
a batch of ``--heavy-rate x --duration`` runs submitted at the start). The same schedule runs
under every arrangement, side by side in one run, each with the same number of workers
(:mod:`gpuslice.bench.tenants`):

- one pool shared by both tenants: time-sliced, MPS without limits, equal MPS slices;
- a pool per tenant under MPS without limits;
- right-sized: both tenants profiled (``gpuslice.rightsize.profile``), then packed by
  ``plan suggest`` with the tenants' call counts as the mix and the inference bound.

Reported per arrangement: the inference p50/p95 from submission to result (queueing included)
and inside the slice, each tenant's completed calls per second, and the total.

Run::

    .venv/bin/python benchmarks/rightsize_tenants.py
    # -> benchmarks/results/rightsize_tenants.json, .md, .png (and the plan, .yaml)

On the emulated GPU the numbers follow the emulation model (docs/emulation-model.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FLEET = HERE.parent / "src" / "gpuslice" / "examples" / "fleet-1xh100.yaml"


def _title(data: dict[str, Any]) -> str:
    infer, heavy = data["tenants"]
    return (
        f"LLM inference ({infer['rate_per_s']:g}/s, p95 bound {infer['p95_bound_ms']:g} ms) beside "
        f"a batch of {round(heavy['rate_per_s'] * data['duration_s'])} stencils on one "
        f"{data['device']}"
    )


def _replot(out: Path) -> int:
    from gpuslice.bench.tenants import TenantRun, markdown_table, plot_runs

    data = json.loads(out.read_text())
    runs = [TenantRun.from_dict(r) for r in data["runs"]]
    out.with_suffix(".md").write_text(markdown_table(runs, "infer", "heavy"))
    plot_runs(runs, "infer", "heavy", str(out.with_suffix(".png")), _title(data))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", default=str(FLEET), help="fleet file (emulated GPU)")
    parser.add_argument("--infer-rate", type=float, default=8.0, help="inference calls per s")
    parser.add_argument("--heavy-rate", type=float, default=2.0, help="heavy calls per s (burst)")
    parser.add_argument("--p95-ms", type=float, default=150.0, help="inference p95 bound, ms")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals")
    parser.add_argument("--max-per-gpu", type=int, default=16, help="most slices when profiling")
    parser.add_argument("--seed", type=int, default=11, help="arrival schedule seed")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "rightsize_tenants.json")
    parser.add_argument("--replot", action="store_true", help="redraw .md/.png from --out")
    args = parser.parse_args()
    if args.replot:
        return _replot(args.out)

    scratch = Path(tempfile.mkdtemp(dir="/tmp", prefix="gsrt-"))
    os.environ.setdefault("GPUSLICE_EMULATE_DIR", str(scratch / "emu"))
    os.environ.setdefault("GPUSLICE_MPS_ROOT", str(scratch / "mps"))
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"

    from gpuslice.bench.mixtasks import llm_medium, stencil_large
    from gpuslice.bench.report import provenance
    from gpuslice.bench.tenants import (
        Setup,
        Tenant,
        arrivals,
        baseline_setups,
        markdown_table,
        plot_runs,
        run_setup,
    )
    from gpuslice.hardware.inventory import discover
    from gpuslice.rightsize.profiler import profile
    from gpuslice.rightsize.store import ProfileStore
    from gpuslice.rightsize.suggest import suggest_plan

    started = time.perf_counter()
    inventory = discover(args.fleet)
    store = ProfileStore(scratch / "profiles.sqlite")
    tenants = [
        Tenant("infer", llm_medium, args.infer_rate, args.p95_ms),
        Tenant("heavy", stencil_large, args.heavy_rate, burst=True),
    ]
    profiles = []
    for tenant in tenants:
        print(f"profiling {tenant.name} ...", flush=True)
        profiles.append(
            profile(
                tenant.function,
                fleet=args.fleet,
                p95_ms=tenant.p95_bound_ms,
                max_per_gpu=args.max_per_gpu,
                store=store,
                refresh=True,
            )
        )
        rec = profiles[-1].recommended
        print(f"  {rec.per_gpu} x {rec.compute}% in {profiles[-1].profiling_s:.0f} s", flush=True)
    total = sum(t.rate_per_s for t in tenants)
    mix = {p.function: t.rate_per_s / total for p, t in zip(profiles, tenants, strict=True)}
    suggestion = suggest_plan(profiles, mix, gpus=1)
    pool_of = {
        t.name: suggestion.routes[p.function] for p, t in zip(profiles, tenants, strict=True)
    }
    chosen = {
        t.name: next(p for p in suggestion.pools if p.pool == pool_of[t.name]) for t in tenants
    }
    counts = {name: pool.per_gpu for name, pool in chosen.items()}
    sizes = ", ".join(f"{name} {p.per_gpu} x {p.compute}%" for name, p in chosen.items())
    setups = [
        *baseline_setups(counts, inventory.gpus[0].memory_mib),
        Setup("right-sized", f"right-sized by plan suggest ({sizes})", suggestion.plan, pool_of),
    ]
    schedule = arrivals(tenants, args.duration, args.seed)
    runs = []
    for setup in setups:
        print(f"running {setup.name} ({len(schedule)} calls) ...", flush=True)
        run = run_setup(setup, tenants, schedule, inventory, fleet=args.fleet)
        i = run.tenants["infer"]
        print(
            f"  infer p95 {i.p95_ms:.0f} ms, total {run.tasks_per_s:.2f} tasks/s, "
            f"errors {len(run.errors)}",
            flush=True,
        )
        runs.append(run)
    by_name = {r.name: r for r in runs}
    right, unlimited = by_name["right-sized"], by_name["mps-unlimited"]
    pools = by_name["mps-unlimited-pools"]
    data: dict[str, Any] = {
        **provenance(inventory),
        "benchmark": "rightsize_tenants",
        "date_end": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()},
        "tenants": [
            {
                "name": t.name,
                "function": p.function,
                "rate_per_s": t.rate_per_s,
                "p95_bound_ms": t.p95_bound_ms,
                "recommended": p.recommended.to_dict(),
                "profiling_s": p.profiling_s,
            }
            for t, p in zip(tenants, profiles, strict=True)
        ],
        "duration_s": args.duration,
        "calls": len(schedule),
        "seed": args.seed,
        "plan": suggestion.yaml,
        "expected_tasks_per_s_per_gpu": suggestion.tasks_per_s_per_gpu,
        "runs": [r.to_dict() for r in runs],
        "comparison": {
            "infer_p95_right_sized_ms": right.tenants["infer"].p95_ms,
            "infer_p95_mps_unlimited_ms": unlimited.tenants["infer"].p95_ms,
            "infer_p95_ratio_right_sized_vs_unlimited": right.tenants["infer"].p95_ms
            / unlimited.tenants["infer"].p95_ms,
            "infer_p95_mps_unlimited_pools_ms": pools.tenants["infer"].p95_ms,
            "total_tasks_per_s_right_sized": right.tasks_per_s,
            "total_tasks_per_s_mps_unlimited": unlimited.tasks_per_s,
            "total_tasks_per_s_mps_unlimited_pools": pools.tasks_per_s,
        },
        "total_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2, default=str) + "\n")
    args.out.with_suffix(".yaml").write_text(suggestion.yaml)
    table = markdown_table(runs, "infer", "heavy")
    args.out.with_suffix(".md").write_text(table)
    plot_runs(runs, "infer", "heavy", str(args.out.with_suffix(".png")), _title(data))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
