"""``gpuslice bench``: the same task list under every arrangement, side by side, in one run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from gpuslice.bench.arrangements import Arrangement
from gpuslice.bench.harness import (
    ArrangementResult,
    TaskSpec,
    result_dict,
    run_arrangement,
    write_json,
)
from gpuslice.bench.report import comparisons, markdown_table, plot, provenance
from gpuslice.hardware.inventory import Inventory


def run_comparison(
    arrangements: Sequence[Arrangement],
    tasks: Sequence[TaskSpec],
    inventory: Inventory,
    *,
    fleet: str | None,
    console: Console,
    show_progress: bool = True,
) -> list[ArrangementResult]:
    """Run every arrangement in turn over the same tasks, with a progress bar."""
    results: list[ArrangementResult] = []
    columns = (
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(
        *columns, console=console, disable=not show_progress, transient=False
    ) as progress:
        for arrangement in arrangements:
            bar = progress.add_task(arrangement.name, total=len(tasks))

            def advance(count: int, bar: TaskID = bar) -> None:
                progress.advance(bar, count)

            result = run_arrangement(arrangement, tasks, inventory, fleet=fleet, on_done=advance)
            progress.update(bar, description=f"{arrangement.name}: {result.throughput:.1f} tasks/s")
            results.append(result)
    return results


def write_outputs(
    out: Path,
    stem: str,
    title: str,
    results: Sequence[ArrangementResult],
    inventory: Inventory,
    extra: dict[str, Any],
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.png`` and ``<stem>.md`` under ``out``."""
    data = {
        **provenance(inventory),
        **extra,
        "arrangements": [result_dict(r) for r in results],
        "comparisons": comparisons(results),
    }
    paths = {"json": out / f"{stem}.json", "png": out / f"{stem}.png", "md": out / f"{stem}.md"}
    write_json(paths["json"], data)
    plot(results, paths["png"], title)
    paths["md"].write_text(f"### {title}\n\n{markdown_table(results)}")
    return paths
