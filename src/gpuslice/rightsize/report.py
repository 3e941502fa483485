"""A profile for people: one table of the measured sizes, and a small plot with the knee marked."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from gpuslice.rightsize.choice import feasible
from gpuslice.rightsize.profile import Profile
from gpuslice.sizes import format_mib

__all__ = ["plot_profile", "profile_table", "summary_line"]


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def summary_line(profile: Profile) -> str:
    """One line: what is recommended, for which function and GPU."""
    rec = profile.recommended
    memory = format_mib(rec.memory_mib) if rec.memory_mib else "no cap"
    if rec.kind == "mig":
        what = f"{rec.per_gpu} x MIG {rec.mig_profile} (predicted)"
    else:
        what = f"{rec.per_gpu} x mps:{rec.compute}%/{memory}"
    where = f"{profile.gpu_model}{' (emulated)' if profile.emulated else ''}"
    return (
        f"{profile.function} on {where}: {what}, {rec.tasks_per_s_per_gpu:.1f} tasks/s per GPU, "
        f"p95 {rec.p95_ms:.1f} ms"
    )


def profile_table(profile: Profile) -> Table:
    """Every measured size: latency with its spread, packed throughput, memory, the choice."""
    bound = profile.p95_bound_ms
    title = (
        f"{profile.function} on {profile.gpu_name}"
        + (" (emulated)" if profile.emulated else "")
        + (f", p95 bound {bound:g} ms" if bound is not None else "")
    )
    table = Table(title=title, title_justify="left")
    for column, justify in (
        ("slices/GPU", "right"),
        ("compute", "right"),
        ("SMs", "right"),
        ("p50 ms (IQR)", "right"),
        ("p95 ms (90% CI)", "right"),
        ("alone ms", "right"),
        ("tasks/s/GPU (±95%)", "right"),
        ("via Parsl", "right"),
        ("peak mem", "right"),
        ("", "left"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    rec = profile.recommended
    for p in profile.points:
        if p.failed and not p.samples:
            note = f"failed: {p.error}"
        elif rec.kind == "mps" and p.per_gpu == rec.per_gpu:
            note = "[bold green]chosen[/]"
        elif not feasible(p, bound):
            note = "over the p95 bound" if not p.failed else f"{p.failed} calls failed"
        else:
            note = ""
        table.add_row(
            str(p.per_gpu),
            f"{p.compute}%",
            str(p.sms),
            f"{_ms(p.p50_ms)} ({_ms(p.p25_ms)}-{_ms(p.p75_ms)})",
            f"{_ms(p.p95_ms)} ({_ms(p.p95_low_ms)}-{_ms(p.p95_high_ms)})",
            _ms(p.alone_ms) if p.alone_ms is not None else "-",
            f"{p.tasks_per_s_per_gpu:.1f} ± {p.tasks_per_s_spread:.1f}",
            f"{p.tasks_per_s_observed:.1f}",
            format_mib(p.peak_memory_mib) if p.peak_memory_mib is not None else "-",
            note,
        )
    if rec.kind == "mig":
        table.add_row(
            str(rec.per_gpu),
            f"~{rec.compute}%",
            str(rec.sms),
            _ms(rec.p50_ms),
            _ms(rec.p95_ms),
            "-",
            f"{rec.tasks_per_s_per_gpu:.1f}",
            "-",
            format_mib(rec.memory_mib) if rec.memory_mib else "-",
            f"[bold green]chosen[/]: MIG {rec.mig_profile}, predicted",
        )
    return table


def plot_profile(profile: Profile, path: str | Path) -> Path:
    """Latency and packed throughput against slice size, the chosen size marked; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [p for p in profile.points if p.samples]
    xs = [p.compute for p in points]
    fig, left = plt.subplots(figsize=(6.4, 4.0))
    right = left.twinx()
    left.errorbar(
        xs,
        [p.tasks_per_s_per_gpu for p in points],
        yerr=[p.tasks_per_s_spread for p in points],
        marker="o",
        color="#2f7ab9",
        label="tasks/s per GPU (filled)",
    )
    right.errorbar(
        xs,
        [p.p95_ms for p in points],
        yerr=[
            [max(0.0, p.p95_ms - p.p95_low_ms) for p in points],
            [max(0.0, p.p95_high_ms - p.p95_ms) for p in points],
        ],
        marker="s",
        linestyle="--",
        color="#d1605e",
        label="p95 latency",
    )
    right.plot(xs, [p.p50_ms for p in points], marker=".", linestyle=":", color="#d1605e")
    if profile.p95_bound_ms is not None:
        right.axhline(profile.p95_bound_ms, color="#d1605e", linewidth=0.8, alpha=0.6)
    rec = profile.recommended
    label = (
        f"chosen: {rec.per_gpu} x {rec.compute}%"
        if rec.kind == "mps"
        else f"chosen: {rec.per_gpu} x MIG {rec.mig_profile} (predicted)"
    )
    left.axvline(rec.compute, color="#5aa469", linewidth=1.2, linestyle="-", alpha=0.7)
    left.plot(
        [rec.compute],
        [rec.tasks_per_s_per_gpu],
        marker="*",
        markersize=16,
        color="#5aa469",
        linestyle="none",
        label=label,
    )
    from matplotlib.ticker import NullFormatter

    left.set_xscale("log")
    ticks = sorted({*xs, rec.compute})
    left.set_xticks(ticks, [f"{x}%" for x in ticks])
    left.xaxis.set_minor_formatter(NullFormatter())
    left.set_xlim(min(ticks) / 1.25, max(ticks) * 1.25)
    left.set_xlabel("slice size (MPS compute %), GPU filled with such slices")
    left.set_ylabel("tasks per second per GPU")
    right.set_ylabel("latency in the slice, ms (p95 dashed, p50 dotted)")
    left.set_ylim(bottom=0, top=max(p.tasks_per_s_per_gpu for p in points) * 1.35)
    right.set_ylim(bottom=0, top=max(p.p95_high_ms for p in points) * 1.35)
    handles = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(handles=handles, fontsize=7, loc="upper center", ncol=3, frameon=False)
    name = profile.function.split(":")[-1]
    fig.suptitle(
        f"{name} on {profile.gpu_model}{' (emulated)' if profile.emulated else ''}", fontsize=10
    )
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
