"""Run gpuslice CLI cases in this process and report exit codes, time and peak memory.

Used by the hostile-input tests as a child process (``python -m tests.hostile.runner IN OUT``)
so that each batch runs under an address-space limit and its peak RSS can be read with
``resource.getrusage``: a runaway input then fails the test instead of exhausting the
shared machine. ``IN`` is a JSON list of ``{"id", "argv", "env"}``; ``OUT`` receives, per
case, the exit code, whether a traceback was printed, the seconds taken, the output's tail
and the process's peak RSS (KiB) after the case.

Peak RSS is ``VmHWM`` from ``/proc/self/status``: it belongs to this program's address
space. ``getrusage``'s ``ru_maxrss`` would also count the parent's pages shared at ``fork``
before ``exec`` (a pytest process that has imported torch holds about 300 MiB).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from gpuslice.cli import cli


def peak_rss_kib() -> int:
    """This process's peak resident set since ``exec``, in KiB."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def run_cases(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Invoke each case's argv on the ``gpuslice`` command and describe what happened."""
    results: list[dict[str, Any]] = []
    runner = CliRunner()
    for case in cases:
        argv = [str(a) for a in case["argv"]]
        env = {str(k): str(v) for k, v in (case.get("env") or {}).items()}
        start = time.perf_counter()
        result = runner.invoke(cli, argv, env=env)
        elapsed = time.perf_counter() - start
        output = result.output
        crashed = result.exception is not None and not isinstance(result.exception, SystemExit)
        results.append(
            {
                "id": case["id"],
                "code": result.exit_code,
                "traceback": crashed or "Traceback" in output,
                "exception": repr(result.exception)[:300] if crashed else "",
                "seconds": elapsed,
                "tail": output[-600:],
                "maxrss_kib": peak_rss_kib(),
            }
        )
    return results


def main() -> None:
    """``python -m tests.hostile.runner CASES.json RESULTS.json``."""
    cases = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(json.dumps(run_cases(cases)))


if __name__ == "__main__":
    main()
