"""The sqlite profile store: hits, the three kinds of miss, the path, broken files."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gpuslice.errors import UsageError
from gpuslice.rightsize.identity import FunctionId
from gpuslice.rightsize.store import STORE_ENV, ProfileStore, default_store_path
from tests.rightsize.helpers import point, profile_of

NAME = "mypkg.infer:predict"


def _stored(tmp_path: Path) -> ProfileStore:
    store = ProfileStore(tmp_path / "sub" / "profiles.sqlite")
    store.put(profile_of(NAME, [point(1, 100, 132, p50=10.0)], code_hash="aaaa"))
    return store


def test_a_stored_profile_is_found_for_the_same_code_and_gpu_model(tmp_path: Path) -> None:
    store = _stored(tmp_path)
    found = store.lookup(FunctionId(NAME, "aaaa"), "H100-80GB")
    assert found.hit
    assert found.profile is not None
    assert found.profile.source == "store"
    assert found.profile.points[0].p50_ms == pytest.approx(10.0)
    assert found.profile.recommended.per_gpu == 1


def test_changed_code_is_a_miss_that_says_so(tmp_path: Path) -> None:
    found = _stored(tmp_path).lookup(FunctionId(NAME, "bbbb"), "H100-80GB")
    assert found.status == "code-changed"
    assert found.profile is None
    assert "changed since" in found.reason
    assert "aaaa" in found.reason


def test_another_gpu_model_is_a_miss_that_names_the_profiled_models(tmp_path: Path) -> None:
    found = _stored(tmp_path).lookup(FunctionId(NAME, "aaaa"), "A100-40GB")
    assert found.status == "other-gpu"
    assert "H100-80GB" in found.reason


def test_a_function_never_profiled_is_a_miss(tmp_path: Path) -> None:
    found = _stored(tmp_path).lookup(FunctionId("other:f", "aaaa"), "H100-80GB")
    assert found.status == "never"


def test_reading_a_missing_store_finds_nothing_and_creates_no_file(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "none.sqlite")
    assert store.lookup(FunctionId(NAME, "aaaa"), "H100-80GB").status == "never"
    assert store.all() == []
    assert not store.path.exists()


def test_a_new_profile_of_the_same_key_replaces_the_old_one(tmp_path: Path) -> None:
    store = _stored(tmp_path)
    store.put(profile_of(NAME, [point(1, 100, 132, p50=20.0)], code_hash="aaaa"))
    store.put(profile_of(NAME, [point(1, 100, 132, p50=30.0)], code_hash="cccc"))
    assert len(store.all()) == 2
    assert [p.code_hash for p in store.for_code(FunctionId(NAME, "aaaa"))] == ["aaaa"]
    found = store.lookup(FunctionId(NAME, "aaaa"), "H100-80GB")
    assert found.profile is not None
    assert found.profile.points[0].p50_ms == pytest.approx(20.0)


def test_the_store_uses_the_rollback_journal_not_wal(tmp_path: Path) -> None:
    store = _stored(tmp_path)
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1


def test_the_default_path_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "shared.sqlite"))
    assert default_store_path() == tmp_path / "shared.sqlite"
    assert ProfileStore().path == tmp_path / "shared.sqlite"
    monkeypatch.delenv(STORE_ENV)
    assert default_store_path().name == "profiles.sqlite"
    assert "gpuslice" in str(default_store_path())


def test_a_file_that_is_not_a_store_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sqlite"
    bad.write_text("not a database at all, just text " * 100)
    with pytest.raises(UsageError, match="not a usable profile store"):
        ProfileStore(bad).lookup(FunctionId(NAME, "aaaa"), "H100-80GB")


def test_a_store_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 7")
    with pytest.raises(UsageError, match="schema version 7"):
        ProfileStore(path).all()
