"""``gpuslice profile MODULE:FUNC``: measure a function in slices and recommend its slice."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from gpuslice.cli.console import err_console
from gpuslice.cli.options import console, fleet_option, json_option, print_json

__all__ = ["commands", "progress_events", "store_option"]

store_option = click.option(
    "--store",
    type=click.Path(dir_okay=False),
    envvar="GPUSLICE_PROFILE_STORE",
    default=None,
    help="Profile store (sqlite file; may be on a shared file system). "
    "Default: profiles.sqlite in the user's cache directory. Env: GPUSLICE_PROFILE_STORE.",
)


@contextmanager
def progress_events(out: Console, enabled: bool = True) -> Iterator[Callable[[Any], None]]:
    """A callback for profiling events that shows a spinner and prints each measured size."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=out,
        transient=True,
        disable=not enabled,
    ) as progress:
        task = progress.add_task("profiling", total=None)

        def on_event(event: Any) -> None:
            if event.kind == "store":
                style = "green" if event.lookup is not None and event.lookup.hit else "yellow"
                label = "cache hit" if style == "green" else "cache miss"
                if event.lookup is None:
                    label = "note"
                out.print(f"[{style}]{label}[/]: {event.message}")
            elif event.kind == "measuring":
                progress.update(task, description=event.message)
            elif event.kind == "measured":
                out.print(f"  {event.message}")
            elif event.kind == "retry":
                out.print(f"  [yellow]retry[/]: {event.message}")

        yield on_event


def _default_plot(function: str, model: str) -> str:
    short = function.rsplit(":", maxsplit=1)[-1].replace(".", "-")
    return f"profile-{short}-{model}.png"


@click.command(name="profile")
@click.argument("function", metavar="MODULE:FUNC")
@click.option(
    "--args-from",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="JSON/YAML file with the call's arguments: {args: [...], kwargs: {...}}, a list, or "
    "a mapping of keyword arguments. Default: no arguments.",
)
@fleet_option
@click.option(
    "--p95-ms",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Latency bound: only slices whose p95 call latency is at most this many ms.",
)
@click.option("--gpu", type=int, default=0, show_default=True, help="GPU index to profile on.")
@click.option(
    "--max-per-gpu",
    type=click.IntRange(1, 48),
    default=None,
    help="Most slices per GPU to try (default: the MPS client limit, at most the host's "
    "cores and never below 8).",
)
@store_option
@click.option("--refresh", is_flag=True, help="Measure even if the store has a profile.")
@click.option(
    "--exhaustive",
    is_flag=True,
    help="Measure every candidate size (a sweep) instead of the knee search.",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Where to write the plot (default profile-<func>-<gpu model>.png here).",
)
@click.option("--no-plot", is_flag=True, help="Write no plot.")
@json_option
def profile_command(
    function: str,
    args_from: str | None,
    fleet: str | None,
    p95_ms: float | None,
    gpu: int,
    max_per_gpu: int | None,
    store: str | None,
    refresh: bool,
    exhaustive: bool,
    plot_path: str | None,
    no_plot: bool,
    as_json: bool,
) -> None:
    """Profile MODULE:FUNC in MPS slices through real Parsl workers and recommend a slice.

    It fills the GPU with slices of a few sizes (a knee search that stops when no other size
    could change the choice), measures per size the call latency (p50, p95), the tasks per
    second of the filled GPU and the peak memory, and recommends the slice with the most
    tasks per second per GPU within --p95-ms: compute %, memory cap with headroom, slices per
    GPU (or a MIG profile, predicted, where that serves better). Profiles are kept in the
    store, keyed by the function's name, a hash of its code and the GPU model; a stored
    profile is reused (cache hit) unless --refresh.

    \b
    Example:
      gpuslice profile gpuslice.bench.synthetic:embed --fleet fleet.yaml --p95-ms 80
    """
    from gpuslice.rightsize.identity import load_call, load_function
    from gpuslice.rightsize.profiler import profile
    from gpuslice.rightsize.report import plot_profile, profile_table, summary_line
    from gpuslice.rightsize.store import ProfileStore

    func = load_function(function)
    call = load_call(args_from)
    the_store = ProfileStore(store)
    notices = err_console if as_json else console
    with progress_events(notices) as on_event:
        result = profile(
            func,
            call.args,
            call.kwargs,
            fleet=fleet,
            gpu=gpu,
            p95_ms=p95_ms,
            max_per_gpu=max_per_gpu,
            store=the_store,
            refresh=refresh,
            exhaustive=exhaustive,
            on_event=on_event,
        )
    plot_file: str | None = None
    if not no_plot:
        plot_file = str(
            plot_profile(result, plot_path or _default_plot(result.function, result.gpu_model))
        )
    if as_json:
        print_json({**result.to_dict(), "store": str(the_store.path), "plot": plot_file})
        return
    console.print(profile_table(result))
    console.print(f"[bold]recommended[/]: {summary_line(result)}")
    console.print(f"  why: {result.recommended.reason}")
    origin = (
        f"read from the store {the_store.path}"
        if result.source == "store"
        else f"stored in {the_store.path}"
    )
    console.print(
        f"profiling took {result.profiling_s:.1f} s ({len(result.points)} sizes measured); "
        f"{origin}" + (f"; plot: {plot_file}" if plot_file else "")
    )
    if result.emulated:
        console.print(
            "[yellow]emulated GPU[/]: the numbers follow the emulation model "
            "(docs/emulation-model.md), not a measurement of real hardware"
        )


commands = [profile_command]
