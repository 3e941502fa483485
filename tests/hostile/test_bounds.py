"""Inputs that ran away before (GBs of memory, minutes, a read that never returns) now end in
exit 2 within bounded time and memory; and the worst input gpuslice accepts stays bounded too.

The cases run in one child process under an address-space limit
(:data:`tests.hostile.conftest.CHILD_ADDRESS_SPACE`), which reports each case's exit code,
time and its peak RSS (``resource.getrusage``), so a regression fails here instead of
exhausting the machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuslice.plan import limits

from .conftest import FLEET_2XH100, RunBatch

Write = Callable[[str, bytes | str], str]

#: Peak RSS a batch of refused inputs may reach: the CLI alone takes about 40 MiB here.
REFUSED_PEAK_KIB = 200 * 1024
#: Seconds one refused input may take on this shared 2-core machine (most take 0.01-0.2 s).
REFUSED_SECONDS = 10.0


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs": each anchor lists the previous one ``width`` times."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def _runaway_cases(tmp_path: Path, write: Write) -> list[dict[str, Any]]:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    bomb = write("bomb.yaml", _alias_bomb())
    pools = write(
        "400000-pools.yaml",
        "version: 1\npools:\n" + "".join(f"  p{i}: {{share: {{}}}}\n" for i in range(400_000)),
    )
    fleet = write("big-fleet.yaml", "gpus:\n" + "  - {model: H100-80GB, count: 100000}\n" * 10)
    million = write("million.yaml", "version: 1\npools:\n  a: {share: {}, per_gpu: 1000000}\n")
    e30 = write(
        "e30.yaml", "version: 1\npools:\n  a: {share: {}, per_gpu: " + "1" + "0" * 30 + "}\n"
    )
    digits = write(
        "4000-digits.yaml", "version: 1\npools:\n  a: {share: {}, per_gpu: " + "9" * 4000 + "}\n"
    )
    check = ["plan", "check"]
    return [
        {"id": "alias-bomb-plan", "argv": [*check, bomb, "--fleet", FLEET_2XH100]},
        {"id": "alias-bomb-fleet", "argv": ["gpus", "--fleet", bomb]},
        {"id": "dev-zero-plan", "argv": [*check, "/dev/zero", "--fleet", FLEET_2XH100]},
        {"id": "dev-urandom-plan", "argv": [*check, "/dev/urandom", "--fleet", FLEET_2XH100]},
        {"id": "dev-zero-fleet", "argv": ["gpus", "--fleet", "/dev/zero"]},
        {
            "id": "dev-urandom-fleet-env",
            "argv": ["gpus"],
            "env": {"GPUSLICE_FLEET": "/dev/urandom"},
        },
        {"id": "fifo-plan", "argv": [*check, str(fifo), "--fleet", FLEET_2XH100]},
        {"id": "fifo-fleet", "argv": ["gpus", "--fleet", str(fifo)]},
        {"id": "9mb-400000-pools", "argv": [*check, pools, "--fleet", FLEET_2XH100]},
        {"id": "fleet-10x100000", "argv": ["gpus", "--fleet", fleet]},
        {"id": "per-gpu-million", "argv": [*check, million, "--fleet", FLEET_2XH100]},
        {"id": "per-gpu-1e30", "argv": [*check, e30, "--fleet", FLEET_2XH100]},
        {"id": "per-gpu-4000-digits", "argv": [*check, digits, "--fleet", FLEET_2XH100]},
        {
            "id": "compact-million-mps",
            "argv": [*check, "a=1000000x mps:1%", "--fleet", FLEET_2XH100],
        },
    ]


EXPECTED = {
    "alias-bomb-plan": "expands to more than 100000 YAML nodes",
    "alias-bomb-fleet": "expands to more than 100000 YAML nodes",
    "dev-zero-plan": "it is a character device",
    "dev-urandom-plan": "it is a character device",
    "dev-zero-fleet": "it is a character device",
    "dev-urandom-fleet-env": "it is a character device",
    "fifo-plan": "it is a FIFO",
    "fifo-fleet": "it is a FIFO",
    "9mb-400000-pools": "larger than the 1024 KiB",
    "fleet-10x100000": "less than or equal to 1024",
    "per-gpu-million": "less than or equal to 256",
    "per-gpu-1e30": "less than or equal to 256",
    "per-gpu-4000-digits": "an integer of more than 60 digits",
    "compact-million-mps": "less than or equal to 256",
}


def test_inputs_that_ran_away_are_refused_in_bounded_time_and_memory(
    tmp_path: Path, write: Write, run_batch: RunBatch
) -> None:
    results = run_batch(_runaway_cases(tmp_path, write))
    assert set(results) == set(EXPECTED)
    for case, words in EXPECTED.items():
        result = results[case]
        assert not result["traceback"], (case, result["exception"], result["tail"])
        assert result["code"] == 2, (case, result["tail"])
        assert words in result["tail"], (case, result["tail"])
        assert result["seconds"] < REFUSED_SECONDS, (case, result["seconds"])
    peak = max(r["maxrss_kib"] for r in results.values())
    assert peak < REFUSED_PEAK_KIB, f"peak RSS {peak} KiB"


def _worst_accepted(write: Write) -> list[dict[str, Any]]:
    """Inputs at the limits that gpuslice still accepts."""
    fleet = write(
        "1024-mig.yaml",
        f"gpus:\n  - {{model: A100-40GB, count: {limits.MAX_FLEET_GPUS}, mig: [{', '.join(['1g.5gb'] * 7)}]}}\n",
    )
    # A plan near the size bound (comments), with as many slices as a layout may have:
    # 1024 GPUs x 7 instances x 2 MPS clients = 14,336 slices.
    padding = "# a long comment that a real plan never has\n" * 20_000
    plan = write(
        "near-limits.yaml",
        padding[: limits.MAX_SOURCE_BYTES - 200]
        + "version: 1\npools:\n  a: {mig: {profile: 1g.5gb, per_instance: 2, "
        "mps: {compute: 50, memory: 1GiB}}}\n",
    )
    return [
        {"id": "fleet-1024-gpus-7168-mig", "argv": ["gpus", "--fleet", fleet, "--json"]},
        {
            "id": "plan-1mib-14336-slices",
            "argv": ["plan", "show", plan, "--fleet", fleet, "--json"],
        },
    ]


#: The worst accepted inputs: bounded, but they build a 1,024-GPU inventory and a
#: 14,336-slice layout and print it as JSON.
ACCEPTED_PEAK_KIB = 400 * 1024
ACCEPTED_SECONDS = 60.0


def test_the_worst_accepted_inputs_stay_bounded(write: Write, run_batch: RunBatch) -> None:
    results = run_batch(_worst_accepted(write), timeout=180.0)
    for case, result in results.items():
        assert not result["traceback"], (case, result["exception"], result["tail"])
        assert result["code"] == 0, (case, result["tail"])
        assert result["seconds"] < ACCEPTED_SECONDS, (case, result["seconds"])
    peak = max(r["maxrss_kib"] for r in results.values())
    assert peak < ACCEPTED_PEAK_KIB, f"peak RSS {peak} KiB"
