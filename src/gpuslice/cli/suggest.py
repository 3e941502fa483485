"""``gpuslice plan suggest``: a v1 plan packing profiled functions in proportion to their calls."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from gpuslice.cli.console import err_console
from gpuslice.cli.options import console, fleet_option, json_option, print_json
from gpuslice.cli.profile import progress_events, store_option
from gpuslice.errors import UsageError

__all__ = ["parse_pairs", "suggest"]


def parse_pairs(text: str | None, option: str) -> dict[str, float]:
    """``a=0.6,b=0.4`` -> ``{"a": 0.6, "b": 0.4}``.

    Raises:
        UsageError: an entry is not NAME=NUMBER.
    """
    pairs: dict[str, float] = {}
    if not text:
        return pairs
    for entry in text.split(","):
        if not entry.strip():
            continue
        name, sep, value = entry.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name.strip() or number is None:
            raise UsageError(
                f"{option} entry {entry.strip()!r} is not NAME=NUMBER; write e.g. "
                f"{option} infer=0.6,train=0.4"
            )
        pairs[name.strip()] = number
    return pairs


@click.command()
@click.option(
    "--functions",
    required=True,
    help="Comma-separated MODULE:FUNC of the functions the plan is for.",
)
@click.option(
    "--mix",
    default=None,
    help="Share of calls per function, e.g. infer=0.6,train=0.4 (names as MODULE:FUNC or the "
    "function's name). Default: equal shares.",
)
@click.option(
    "--gpus",
    type=click.IntRange(min=1),
    default=None,
    help="Use GPUs 0..N-1 (default: all GPUs).",
)
@click.option(
    "--p95-ms",
    "p95_text",
    default=None,
    help="Latency bounds per function, e.g. infer=100 (used when profiling and packing).",
)
@fleet_option
@store_option
@click.option(
    "--max-per-gpu",
    type=click.IntRange(1, 48),
    default=None,
    help="Most slices per GPU to try when profiling a function the store lacks.",
)
@click.option(
    "--no-profile",
    is_flag=True,
    help="Fail instead of profiling functions the store has no profile for.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the plan here (default: print it on stdout).",
)
@json_option
def suggest(
    functions: str,
    mix: str | None,
    gpus: int | None,
    p95_text: str | None,
    fleet: str | None,
    store: str | None,
    max_per_gpu: int | None,
    no_profile: bool,
    out: str | None,
    as_json: bool,
) -> None:
    """Write a v1 plan for a mix of profiled functions, packed in proportion to their calls.

    Each function gets an MPS pool; slices and percentages are chosen from its profile so that
    the mix's tasks per second per GPU are highest within each function's p95 bound, the MPS
    client limit and the GPU's memory. Functions the store has no profile for (on this GPU
    model, for this code) are profiled first. The plan passes `gpuslice plan check`; a comment
    per pool says where its numbers come from.

    \b
    Example:
      gpuslice plan suggest --functions app:infer,app:train --mix infer=0.8,train=0.2 \\
          --fleet fleet.yaml --out plan.yaml
    """
    from gpuslice.hardware.inventory import discover
    from gpuslice.plan.load import load_plan
    from gpuslice.plan.resolve import resolve
    from gpuslice.rightsize.identity import function_id, load_function
    from gpuslice.rightsize.profiler import gpu_model_name, profile
    from gpuslice.rightsize.store import ProfileStore
    from gpuslice.rightsize.suggest import suggest_plan

    names = [f.strip() for f in functions.split(",") if f.strip()]
    if not names:
        raise UsageError(
            "--functions names no function; write e.g. --functions app:infer,app:train"
        )
    shares = parse_pairs(mix, "--mix")
    bounds = parse_pairs(p95_text, "--p95-ms")
    inventory = discover(fleet)
    if not inventory.gpus:
        raise UsageError("no GPUs to plan for")
    if gpus is not None and gpus > len(inventory.gpus):
        raise UsageError(f"--gpus {gpus}: only {len(inventory.gpus)} GPUs here")
    model = gpu_model_name(inventory.gpus[0])
    the_store = ProfileStore(store)
    notices = err_console if as_json or out is None else console
    profiles = []
    for name in names:
        func = load_function(name)
        fid = function_id(func)
        short = name.split(":")[-1]
        bound = bounds.get(name, bounds.get(short))
        found = the_store.lookup(fid, model)
        if (
            found.hit
            and found.profile is not None
            and (bound is None or found.profile.p95_bound_ms == bound)
        ):
            notices.print(f"[green]cache hit[/]: {fid.name} on {model}: {found.reason}")
            profiles.append(found.profile)
            continue
        if no_profile:
            raise UsageError(
                f"{fid.name}: {found.reason}; profile it with `gpuslice profile {fid.name}` "
                "or leave out --no-profile"
            )
        notices.print(f"[yellow]cache miss[/]: {found.reason}; profiling it now")
        with progress_events(notices) as on_event:
            profiles.append(
                profile(
                    func,
                    fleet=fleet,
                    p95_ms=bound,
                    max_per_gpu=max_per_gpu,
                    store=the_store,
                    refresh=True,
                    on_event=on_event,
                )
            )
    suggestion = suggest_plan(profiles, shares or None, gpus=gpus, p95_ms=bounds or None)
    resolve(load_plan(suggestion.yaml), inventory)  # what `plan check` does; a bug if it fails
    if as_json:
        print_json(
            {
                "plan": suggestion.yaml,
                "gpu_model": suggestion.gpu_model,
                "tasks_per_s_per_gpu": suggestion.tasks_per_s_per_gpu,
                "pools": [vars(p) for p in suggestion.pools],
                "written": out,
            }
        )
        if out is not None:
            Path(out).write_text(suggestion.yaml)
        return
    table = Table(title=f"suggested plan on {model}", title_justify="left")
    for column in (
        "pool",
        "function",
        "share",
        "slices/GPU",
        "compute",
        "SMs",
        "memory",
        "calls/s per slice",
        "p95 ms",
    ):
        table.add_column(column)
    for p in suggestion.pools:
        table.add_row(
            p.pool,
            p.function,
            f"{p.share:.2f}",
            str(p.per_gpu),
            f"{p.compute}%",
            str(p.sms),
            f"{p.memory_mib} MiB" if p.memory_mib else "-",
            f"{p.tasks_per_s_per_slice:.1f}",
            f"{p.p95_ms:.1f}" + (f" (≤{p.p95_bound_ms:g})" if p.p95_bound_ms is not None else ""),
        )
    notices.print(table)
    notices.print(f"expected {suggestion.tasks_per_s_per_gpu:.1f} tasks/s per GPU for this mix")
    if out is None:
        click.echo(suggestion.yaml, nl=False)
        return
    Path(out).write_text(suggestion.yaml)
    console.print(f"plan written to {out}; check it with `gpuslice plan check {out}`")
