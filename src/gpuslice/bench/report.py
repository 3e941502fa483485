"""Benchmark results for people and scripts: provenance, ratios, a markdown table, a plot."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from gpuslice.bench.harness import ArrangementResult
from gpuslice.hardware.inventory import Inventory


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(inventory: Inventory) -> dict[str, Any]:
    """Device, driver, CUDA, torch and package versions, and the date, for a results file."""
    gpus = sorted({g.name for g in inventory.gpus})
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": ", ".join(gpus)
        + (" (emulated GPU: described by a fleet file)" if inventory.emulated else ""),
        "gpus": len(inventory.gpus),
        "emulated": inventory.emulated,
        "inventory_source": inventory.source,
        "driver": inventory.driver_version,
        "cuda": inventory.cuda_version,
        "torch": _version("torch"),
        "parsl": _version("parsl"),
        "gpuslice": _version("gpuslice"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        # The host shapes emulated timings (late wake-ups): say what it was.
        "host_cpus": os.cpu_count(),
        "host_niceness": os.nice(0) if hasattr(os, "nice") else None,
    }


def comparisons(results: Sequence[ArrangementResult]) -> dict[str, Any]:
    """The ratios the issue asks about: best gpuslice plan against (a), (b), (c) and (e)."""
    by_family: dict[str, list[ArrangementResult]] = {}
    for r in results:
        if r.failed == 0:
            by_family.setdefault(r.family, []).append(r)
    out: dict[str, Any] = {}
    if "d" not in by_family:
        return out
    best = max(by_family["d"], key=lambda r: r.throughput)
    out["best_gpuslice"] = best.name
    for family, key in (
        ("a", "one_per_gpu"),
        ("b", "best_timeshare"),
        ("c", "best_mps_unlimited"),
        ("e", "batched_ceiling"),
    ):
        if family not in by_family:
            continue
        other = max(by_family[family], key=lambda r: r.throughput)
        out[f"throughput_vs_{key}"] = best.throughput / other.throughput
        out[f"mean_tct_reduction_vs_{key}"] = 1 - best.mean_tct_s / other.mean_tct_s
        out[f"{key}_name"] = other.name
    return out


def markdown_table(results: Sequence[ArrangementResult]) -> str:
    """A markdown table, one row per arrangement, with throughput relative to (a).

    On the emulated GPU two more columns say how much the host distorted the run: its load
    average when timing started, and how much longer than the model the kernels took.
    """
    base = next((r for r in results if r.family == "a" and r.throughput > 0), None)
    emulated = any(r.emulator_lag_ms is not None for r in results)
    header = (
        "| arrangement | workers | tasks/s | × one-per-GPU | mean TCT (s) | p95 TCT (s) "
        "| GPU busy | failed |"
    )
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|"
    if emulated:
        header += " host load | emulator lag (ms) |"
        rule += "---:|---:|"
    lines = [header, rule]
    for r in results:
        ratio = f"{r.throughput / base.throughput:.2f}" if base else "-"
        busy = f"{r.gpu_busy_pct:.0f}%" if r.gpu_busy_pct is not None else "-"
        line = (
            f"| {r.label} (`{r.name}`) | {r.workers} | {r.throughput:.2f} | {ratio} | "
            f"{r.mean_tct_s:.2f} | {r.p95_tct_s:.2f} | {busy} | {r.failed} |"
        )
        if emulated:
            load = f"{r.host_load:.1f}" if r.host_load is not None else "-"
            lag = f"{r.emulator_lag_ms:.0f}" if r.emulator_lag_ms is not None else "-"
            line += f" {load} | {lag} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def plot(results: Sequence[ArrangementResult], path: Path, title: str) -> None:
    """Two bar charts side by side: throughput and mean/p95 completion time per arrangement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"a": "#888888", "b": "#e39c3a", "c": "#d1605e", "d": "#2f7ab9", "e": "#5aa469"}
    names = [r.name for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8.0, 0.75 * len(results) + 4), 4.5))
    left.bar(
        names,
        [r.throughput for r in results],
        color=[colours.get(r.family, "#444") for r in results],
    )
    left.set_ylabel("tasks per second")
    left.set_title("throughput (higher is better)")
    xs = range(len(results))
    right.bar(
        [x - 0.2 for x in xs],
        [r.mean_tct_s for r in results],
        width=0.4,
        label="mean",
        color=[colours.get(r.family, "#444") for r in results],
    )
    right.bar(
        [x + 0.2 for x in xs],
        [r.p95_tct_s for r in results],
        width=0.4,
        label="p95",
        color=[colours.get(r.family, "#444") for r in results],
        alpha=0.5,
    )
    right.set_xticks(list(xs), names)
    right.set_ylabel("seconds, submission to result")
    right.set_title("task completion time (lower is better)")
    right.legend()
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=60)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
