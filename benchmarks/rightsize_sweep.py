"""Does the knee search find the slice an exhaustive sweep would, in a fraction of its time?

For each synthetic function of :mod:`gpuslice.bench.synthetic` (different duty, occupancy,
memory and latency bounds; emulated kernels), in one run:

1. ``profile()``: the knee search (``gpuslice profile``), timed from start to recommendation,
   Parsl start-up included;
2. ``profile(exhaustive=True)``: every candidate size measured the same way (the sweep).

The two run back to back per function (search first, then sweep), so both see the same load
on the host. Reported per function: the recommendation, the sweep's throughput at the
recommended size over the best feasible throughput the sweep found (the issue asks for at
least 0.95), and the search's time over the sweep's (at most 0.40). Both throughputs come from
the same sweep run, so the ratio is not a comparison across runs; the search's own measurement
of its choice is reported beside it.

Run (a few tens of minutes on a small machine)::

    .venv/bin/python benchmarks/rightsize_sweep.py
    # -> benchmarks/results/rightsize_sweep.json, .md, .png

It sets private emulator and MPS directories. On the emulated GPU the numbers follow the
emulation model (docs/emulation-model.md), not a GPU. At most 16 slices per GPU by default:
each slice is a Parsl worker, and on a 2-core host shared with other test runs starting them
dominates a size's cost.

Besides the two wall times (which also count the host's load drifting between the two runs),
the *same-run* time ratio prices the sizes the search measured at what they cost in the sweep:
the search's cost under the sweep's conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FLEET = HERE.parent / "src" / "gpuslice" / "examples" / "fleet-1xh100.yaml"
TIME_TARGET = 0.40
#: Six shapes that differ in duty, occupancy, memory and latency bound, and the memory-bound
#: one (bigmem). ``tiny`` (like decode, launch-bound) is left out to keep the run short.
DEFAULT_FUNCTIONS = ("decode", "stencil", "surrogate", "embed", "train", "ranker", "bigmem")
THROUGHPUT_TARGET = 0.95


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _summary(profile: Any) -> dict[str, Any]:
    rec = profile.recommended
    return {
        "recommended": {
            "kind": rec.kind,
            "per_gpu": rec.per_gpu,
            "compute": rec.compute,
            "sms": rec.sms,
            "memory_mib": rec.memory_mib,
            "tasks_per_s_per_gpu": rec.tasks_per_s_per_gpu,
            "p95_ms": rec.p95_ms,
            "meets_bound": rec.meets_bound,
        },
        "profiling_s": profile.profiling_s,
        "order": list(profile.order),
        "points": [p.to_dict() for p in profile.points],
    }


def _compare(name: str, shape: Any, search: Any, sweep: Any) -> dict[str, Any]:
    from gpuslice.rightsize.choice import feasible

    bound = shape.p95_ms
    ok = [p for p in sweep.points if feasible(p, bound)]
    best = max(ok, key=lambda p: p.tasks_per_s_per_gpu)
    rec = search.recommended
    at_choice = sweep.point(rec.per_gpu)
    sweep_t = at_choice.tasks_per_s_per_gpu if at_choice is not None else float("nan")
    ratio = sweep_t / best.tasks_per_s_per_gpu
    time_ratio = search.profiling_s / sweep.profiling_s
    # What the sizes the search measured (each time it measured one) cost in the sweep's run.
    cost = {p.per_gpu: p.seconds for p in sweep.points}
    same_run = sum(cost[n] for n in search.order if n in cost) / sum(cost.values())
    return {
        "function": name,
        "shape": {
            "work_ms": shape.work_ms,
            "duty": shape.duty,
            "occupancy": shape.occupancy,
            "memory_mib": shape.memory_mib,
            "p95_ms": shape.p95_ms,
            "bandwidth": shape.bandwidth,
        },
        "candidate_sizes": len(sweep.points),
        "search": _summary(search),
        "sweep": _summary(sweep),
        "sweep_best": {
            "per_gpu": best.per_gpu,
            "compute": best.compute,
            "tasks_per_s_per_gpu": best.tasks_per_s_per_gpu,
        },
        "sweep_choice": sweep.recommended.per_gpu,
        "sweep_tasks_per_s_at_recommended": sweep_t,
        "sweep_p95_at_recommended": at_choice.p95_ms if at_choice is not None else None,
        "throughput_ratio": ratio,
        "search_throughput_ratio": rec.tasks_per_s_per_gpu / best.tasks_per_s_per_gpu,
        "time_ratio": time_ratio,
        "same_run_time_ratio": same_run,
        "meets_throughput": ratio >= THROUGHPUT_TARGET,
        "meets_time": time_ratio <= TIME_TARGET,
        "meets_time_same_run": same_run <= TIME_TARGET,
    }


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| function | duty | occupancy | memory | p95 bound | sizes | search measured | "
        "recommended | sweep best | throughput ratio | search s | sweep s | time ratio | "
        "same-run time ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s, rec, best = r["shape"], r["search"]["recommended"], r["sweep_best"]
        bound = f"{s['p95_ms']:g} ms" if s["p95_ms"] else "-"
        lines.append(
            f"| `{r['function']}` | {s['duty']} | {s['occupancy']} | "
            f"{s['memory_mib'] // 1024} GiB | "
            f"{bound} | {r['candidate_sizes']} | {len(r['search']['order'])} | "
            f"{rec['per_gpu']} x {rec['compute']}% | {best['per_gpu']} x {best['compute']}% | "
            f"{r['throughput_ratio']:.3f} | {r['search']['profiling_s']:.0f} | "
            f"{r['sweep']['profiling_s']:.0f} | {r['time_ratio']:.2f} | "
            f"{r['same_run_time_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    columns = (len(rows) + 1) // 2
    fig, axes = plt.subplots(2, columns, figsize=(3.2 * columns, 6.0))
    for axis, r in zip(axes.flat, rows, strict=False):
        bound = r["shape"]["p95_ms"]
        sweep = [p for p in r["sweep"]["points"] if p["samples"]]
        search = [p for p in r["search"]["points"] if p["samples"]]
        axis.plot(
            [p["compute"] for p in sweep],
            [p["tasks_per_s_per_gpu"] for p in sweep],
            "-",
            color="#888",
        )
        ok = [p for p in sweep if bound is None or p["p95_ms"] <= bound]
        over = [p for p in sweep if bound is not None and p["p95_ms"] > bound]
        axis.plot([p["compute"] for p in ok], [p["tasks_per_s_per_gpu"] for p in ok], "o",
                  color="#888", label="sweep")  # fmt: skip
        axis.plot([p["compute"] for p in over], [p["tasks_per_s_per_gpu"] for p in over], "o",
                  mfc="none", color="#888", label="sweep, over the p95 bound")  # fmt: skip
        axis.plot([p["compute"] for p in search], [p["tasks_per_s_per_gpu"] for p in search],
                  "x", color="#2f7ab9", markersize=9, label="search")  # fmt: skip
        axis.axvline(r["search"]["recommended"]["compute"], color="#5aa469", label="recommended")
        axis.set_xscale("log")
        ticks = [2, 5, 10, 20, 50, 100]
        axis.set_xticks(ticks, [f"{t}%" for t in ticks])
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_title(r["function"] + (f" (p95 <= {bound:g} ms)" if bound else ""), fontsize=9)
        axis.set_xlabel("compute %", fontsize=8)
        axis.tick_params(labelsize=7)
    axes.flat[0].set_ylabel("tasks/s per GPU (filled)")
    handles, labels = [], []
    for axis in axes.flat:
        for h, label in zip(*axis.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    for axis in list(axes.flat)[len(rows) :]:
        axis.axis("off")
        axis.legend(handles, labels, fontsize=8, loc="center")
    fig.suptitle("knee search vs exhaustive sweep (emulated H100)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", default=str(FLEET), help="fleet file (emulated GPU)")
    parser.add_argument(
        "--functions", default=None, help="comma-separated synthetic function names"
    )
    parser.add_argument("--max-per-gpu", type=int, default=16, help="most slices per GPU")
    parser.add_argument("--samples", type=int, default=24, help="timed calls per size, GPU filled")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "rightsize_sweep.json")
    parser.add_argument("--replot", action="store_true", help="redraw .md/.png from --out")
    args = parser.parse_args()
    if args.replot:
        rows = json.loads(args.out.read_text())["functions"]
        args.out.with_suffix(".md").write_text(_markdown(rows))
        _plot(rows, args.out.with_suffix(".png"))
        return 0

    scratch = Path(tempfile.mkdtemp(dir="/tmp", prefix="gsrs-"))
    os.environ.setdefault("GPUSLICE_EMULATE_DIR", str(scratch / "emu"))
    os.environ.setdefault("GPUSLICE_MPS_ROOT", str(scratch / "mps"))
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"

    from gpuslice.bench.report import provenance
    from gpuslice.bench.synthetic import FUNCTIONS, SHAPES
    from gpuslice.hardware.inventory import discover
    from gpuslice.rightsize.probe import ProbeError
    from gpuslice.rightsize.profiler import profile

    names = args.functions.split(",") if args.functions else list(DEFAULT_FUNCTIONS)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for name in names:
        shape = SHAPES[name]
        results = {}
        for mode in ("search", "sweep"):
            for attempt in range(2):
                try:
                    print(f"{name}: {mode} ...", flush=True)
                    results[mode] = profile(
                        FUNCTIONS[name],
                        fleet=args.fleet,
                        p95_ms=shape.p95_ms,
                        max_per_gpu=args.max_per_gpu,
                        store=False,
                        exhaustive=mode == "sweep",
                        samples=args.samples,
                    )
                    break
                except ProbeError as err:  # workers could not start (host overload): once more
                    print(f"{name}: {mode}: {err}; retrying in 30 s", flush=True)
                    if attempt:
                        raise
                    time.sleep(30)
            print(
                f"{name}: {mode}: {results[mode].recommended.per_gpu} x "
                f"{results[mode].recommended.compute}% in {results[mode].profiling_s:.0f} s",
                flush=True,
            )
        row = _compare(name, shape, results["search"], results["sweep"])
        print(
            f"{name}: throughput ratio {row['throughput_ratio']:.3f}, "
            f"time ratio {row['time_ratio']:.2f}",
            flush=True,
        )
        rows.append(row)
    data = {
        **provenance(discover(args.fleet)),
        "benchmark": "rightsize_sweep",
        "max_per_gpu": args.max_per_gpu,
        "samples": args.samples,
        "targets": {"throughput_ratio_min": THROUGHPUT_TARGET, "time_ratio_max": TIME_TARGET},
        "host": {
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "platform": platform.platform(),
        },
        "total_s": time.perf_counter() - started,
        "date_end": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "functions": rows,
        "all_meet_throughput": all(r["meets_throughput"] for r in rows),
        "all_meet_time": all(r["meets_time"] for r in rows),
        "gpuslice": _version("gpuslice"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    table = _markdown(rows)
    args.out.with_suffix(".md").write_text(table)
    _plot(rows, args.out.with_suffix(".png"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
