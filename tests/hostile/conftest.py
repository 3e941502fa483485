"""Helpers for the hostile-input tests: files of hostile bytes and a bounded child runner."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "src" / "gpuslice" / "examples"
FLEET_2XH100 = str(EXAMPLES / "fleet-2xh100.yaml")

#: Address space a child batch may use. The CLI needs about 300 MiB of it (Python, pydantic,
#: rich, click); the inputs that ran away before this work reached 5-6 GB.
CHILD_ADDRESS_SPACE = 1 << 30


def _limit_child() -> None:  # pragma: no cover - runs in the child
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))


RunBatch = Callable[..., dict[str, dict[str, Any]]]


@pytest.fixture
def run_batch(tmp_path: Path) -> RunBatch:
    """Run CLI cases in one child process under an address-space limit; results by id."""

    def run(cases: list[dict[str, Any]], timeout: float = 120.0) -> dict[str, dict[str, Any]]:
        given = tmp_path / "cases.json"
        out = tmp_path / "results.json"
        given.write_text(json.dumps(cases))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            [sys.executable, "-m", "tests.hostile.runner", str(given), str(out)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_limit_child,
            check=False,
        )
        assert proc.returncode == 0, (
            f"the runner failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        )
        return {r["id"]: r for r in json.loads(out.read_text())}

    return run


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, bytes | str], str]:
    """Write bytes or text to a file under tmp_path; return its path."""

    def make(name: str, content: bytes | str) -> str:
        path = tmp_path / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    return make
