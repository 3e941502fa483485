"""Workers import this package's test functions (``tests.rightsize.funcs``) by name."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _workers_find_the_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks inherit this environment; node-run passes it to the worker pools it starts.
    monkeypatch.setenv("PYTHONPATH", str(REPO))
