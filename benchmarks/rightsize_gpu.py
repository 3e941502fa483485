"""Owed on a real GPU: profile the LLM and surrogate workloads and right-size them (H100).

On a machine with an NVIDIA GPU (MPS usable by this user), after ``make test``::

    .venv/bin/python benchmarks/rightsize_gpu.py

It profiles, through real Parsl workers in MPS slices of the real GPU, the benchmark's LLM
request (``gpuslice.bench.mixtasks:llm_medium``, GPT-2-medium shape, 64 new tokens; under
``--llm-p95-ms``) and the surrogate pair (``surrogate_infer_large``, ``surrogate_train_medium``),
each timed with ``torch.cuda.synchronize`` and its peak memory read with
``torch.cuda.max_memory_reserved`` inside the slice (:mod:`gpuslice.rightsize.measure`). Then it
suggests the plan for the surrogate mix and, unless ``--skip-bench``, runs ``gpuslice bench
--workload surrogate`` with equal slices, MPS without limits and the ``suggested`` plan.

Writes under ``--out`` (default ``benchmarks/results/rightsize-gpu/``): ``<function>.json`` and
``.png`` per profile, ``surrogate-plan.yaml``, ``summary.json`` (device, driver, CUDA, torch,
date) and the bench output. The profiles also go to a store in that folder.

``--fleet FILE`` runs the same orchestration on the emulated GPU, so the script is tested on
machines without one (its numbers then restate the emulation model); ``--functions`` profiles
other functions instead (tests use it to keep the check short).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT = (
    "gpuslice.bench.mixtasks:llm_medium",
    "gpuslice.bench.mixtasks:surrogate_infer_large",
    "gpuslice.bench.mixtasks:surrogate_train_medium",
)
SURROGATE_MIX = {"surrogate_infer_large": 0.75, "surrogate_train_medium": 0.25}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", default=None, help="fleet file: the emulated GPU instead")
    parser.add_argument("--functions", default=",".join(DEFAULT), help="MODULE:FUNC list")
    parser.add_argument("--llm-p95-ms", type=float, default=None, help="bound for llm_medium")
    parser.add_argument("--max-per-gpu", type=int, default=None, help="most slices per GPU")
    parser.add_argument("--samples", type=int, default=24, help="timed calls per size")
    parser.add_argument("--skip-bench", action="store_true", help="profiles and plan only")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "rightsize-gpu")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(dir="/tmp", prefix="gsrg-"))
    if args.fleet is not None:  # the emulated GPU: private state, like every benchmark here
        os.environ.setdefault("GPUSLICE_EMULATE_DIR", str(scratch / "emu"))
        os.environ.setdefault("GPUSLICE_MPS_ROOT", str(scratch / "mps"))
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["GPUSLICE_PROFILE_STORE"] = str(args.out / "profiles.sqlite")

    from gpuslice.bench.report import provenance
    from gpuslice.hardware.inventory import discover
    from gpuslice.rightsize.identity import load_function
    from gpuslice.rightsize.profiler import profile
    from gpuslice.rightsize.report import plot_profile, summary_line
    from gpuslice.rightsize.store import ProfileStore
    from gpuslice.rightsize.suggest import suggest_plan

    inventory = discover(args.fleet)
    store = ProfileStore()
    profiles: dict[str, Any] = {}
    for spec in [s for s in args.functions.split(",") if s]:
        short = spec.split(":")[-1]
        bound = args.llm_p95_ms if short == "llm_medium" else None
        print(f"profiling {spec} ...", flush=True)
        result = profile(
            load_function(spec),
            fleet=args.fleet,
            p95_ms=bound,
            max_per_gpu=args.max_per_gpu,
            store=store,
            refresh=True,
            samples=args.samples,
            on_event=lambda e: (
                print(f"  {e.message}", flush=True) if e.kind == "measured" else None
            ),
        )
        (args.out / f"{short}.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        plot_profile(result, args.out / f"{short}.png")
        print(summary_line(result), flush=True)
        profiles[short] = result
    summary: dict[str, Any] = {
        **provenance(inventory),
        "benchmark": "rightsize_gpu",
        "profiles": {
            k: v.to_dict()["recommended"] | {"profiling_s": v.profiling_s}
            for k, v in profiles.items()
        },
    }
    if all(name in profiles for name in SURROGATE_MIX):
        suggestion = suggest_plan([profiles[name] for name in SURROGATE_MIX], SURROGATE_MIX, gpus=1)
        (args.out / "surrogate-plan.yaml").write_text(suggestion.yaml)
        summary["surrogate_plan"] = suggestion.yaml
        if not args.skip_bench:
            command = [
                str(Path(sys.executable).parent / "gpuslice"), "bench", "--workload", "surrogate",
                "--plans", "one-per-gpu,gpuslice-2,gpuslice-3,gpuslice-4,gpuslice-7,"
                "mps-unlimited-4,suggested", "--out", str(args.out),
            ]  # fmt: skip
            if args.fleet is not None:
                command += ["--fleet", args.fleet]
            subprocess.run(command, check=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
