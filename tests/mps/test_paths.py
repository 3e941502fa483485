"""Where MPS directories go, and which directories on the way are refused (issue 9, item 7)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from gpuslice.mps import paths


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(paths.ROOT_ENV, raising=False)
    monkeypatch.delenv(paths.RUNTIME_ENV, raising=False)
    return monkeypatch


def test_gpuslice_mps_root_wins(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(paths.ROOT_ENV, "/scratch/me/mps")
    clean_env.setenv(paths.RUNTIME_ENV, "/run/user/1000")

    assert paths.default_root() == Path("/scratch/me/mps")


def test_a_private_runtime_dir_is_preferred_to_the_shared_tmp(
    clean_env: pytest.MonkeyPatch, mps_root: str
) -> None:
    runtime = Path(mps_root, "run")
    runtime.mkdir(mode=0o700)
    clean_env.setenv(paths.RUNTIME_ENV, str(runtime))

    assert paths.default_root() == runtime / "gpuslice" / "mps"


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o711])
def test_a_runtime_dir_open_to_others_is_not_used(
    clean_env: pytest.MonkeyPatch, mps_root: str, mode: int
) -> None:
    runtime = Path(mps_root, "run")
    runtime.mkdir()
    runtime.chmod(mode)
    clean_env.setenv(paths.RUNTIME_ENV, str(runtime))

    assert paths.default_root() == Path(tempfile.gettempdir()) / f"gpuslice-{os.getuid()}" / "mps"


def test_a_missing_or_relative_runtime_dir_is_not_used(
    clean_env: pytest.MonkeyPatch, mps_root: str
) -> None:
    fallback = Path(tempfile.gettempdir()) / f"gpuslice-{os.getuid()}" / "mps"
    clean_env.setenv(paths.RUNTIME_ENV, str(Path(mps_root, "absent")))
    assert paths.default_root() == fallback
    clean_env.setenv(paths.RUNTIME_ENV, "run/user")
    assert paths.default_root() == fallback


def test_a_runtime_dir_too_long_for_sockets_is_not_used(
    clean_env: pytest.MonkeyPatch, mps_root: str
) -> None:
    runtime = Path(mps_root, "r" * 60)
    runtime.mkdir(mode=0o700)
    clean_env.setenv(paths.RUNTIME_ENV, str(runtime))

    assert paths.default_root() == paths.tmp_root_top() / "mps"


def test_nothing_unsafe_on_the_way_to_a_private_directory(mps_root: str) -> None:
    pipe = Path(mps_root, "GPU-a", "pipe")
    pipe.mkdir(parents=True, mode=0o700)
    Path(mps_root, "GPU-a").chmod(0o700)

    assert paths.unsafe_ancestors(str(pipe), private_from=mps_root) == []


def test_a_sticky_world_writable_ancestor_is_fine(mps_root: str) -> None:
    shared = Path(mps_root, "shared")
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "mine").mkdir(mode=0o700)
    pipe = shared / "mine" / "pipe"
    pipe.mkdir(mode=0o700)

    assert paths.unsafe_ancestors(str(pipe), private_from=str(shared / "mine")) == []


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_a_writable_ancestor_without_the_sticky_bit_is_named(mps_root: str, mode: int) -> None:
    shared = Path(mps_root, "shared")
    shared.mkdir()
    shared.chmod(mode)
    pipe = shared / "pipe"
    pipe.mkdir(mode=0o700)

    (problem,) = paths.unsafe_ancestors(str(pipe))

    assert problem.startswith(f"{shared} is writable by group or others without the sticky bit")
    assert f"chmod go-w {shared}" in problem


def test_an_ancestor_symlink_above_gpuslices_levels_is_judged_by_its_target(mps_root: str) -> None:
    real = Path(mps_root, "real")
    (real / "pipe").mkdir(parents=True, mode=0o700)
    link = Path(mps_root, "link")
    link.symlink_to(real)

    assert paths.unsafe_ancestors(str(link / "pipe")) == []


def test_every_private_level_must_be_closed(mps_root: str) -> None:
    top = Path(mps_root, "top")
    pipe = top / "dev" / "pipe"
    pipe.mkdir(parents=True, mode=0o700)
    top.chmod(0o700)
    (top / "dev").chmod(0o750)

    (problem,) = paths.unsafe_ancestors(str(pipe), private_from=str(top))

    assert problem.startswith(f"{top / 'dev'} is open to group or others (mode 0750)")


def test_a_pipe_dir_too_long_for_the_daemons_sockets_is_named() -> None:
    pipe = "/tmp/" + "p" * 84  # 89 bytes + "/control_privileged" = 108 > 107

    (problem,) = paths.pipe_dir_problems(pipe)

    assert "107-byte unix socket path limit by 1 bytes" in problem
    assert paths.pipe_dir_problems(pipe[:-1]) == []
