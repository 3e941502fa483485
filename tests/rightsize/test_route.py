"""pool="auto": the loaded pool a function's profile recommends, and the unprofiled fallback."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpuslice.errors import UsageError
from gpuslice.hardware.inventory import discover
from gpuslice.parsl.executor import SliceExecutor
from gpuslice.plan.resolve import resolve
from gpuslice.rightsize import route
from gpuslice.rightsize.identity import function_id
from gpuslice.rightsize.profile import Profile
from gpuslice.rightsize.route import PoolFacts, auto_pool, choose_pool
from gpuslice.rightsize.store import ProfileStore
from tests.rightsize import funcs
from tests.rightsize.helpers import point, profile_of

FLEET = str(Path(__file__).resolve().parents[2] / "src/gpuslice/examples/fleet-1xh100.yaml")
POOLS = [
    PoolFacts("small", "mps", sms=18, memory_mib=8192, slices=4, gpu_model="H100-80GB"),
    PoolFacts("mid", "mps", sms=42, memory_mib=20480, slices=1, gpu_model="H100-80GB"),
    PoolFacts("big", "share", sms=132, memory_mib=81920, slices=1, gpu_model="H100-80GB"),
]


def _profile(sms_point: tuple[int, int, int], peak: int = 1000) -> object:
    n, c, s = sms_point
    return profile_of(
        "m:f",
        [point(1, 100, 132, p50=10.0, peak=peak), point(n, c, s, p50=20.0, peak=peak)],
        per_gpu=n,
    )


@pytest.mark.parametrize(
    ("recommended", "pool"),
    [((5, 20, 26), "mid"), ((7, 14, 18), "small"), ((12, 8, 10), "small"), ((1, 100, 132), "big")],
)
def test_the_smallest_pool_at_least_as_large_as_recommended_wins(
    recommended: tuple[int, int, int], pool: str
) -> None:
    assert choose_pool(_profile(recommended), POOLS).label == pool  # type: ignore[arg-type]


def test_pools_too_small_for_the_memory_are_skipped() -> None:
    assert choose_pool(_profile((12, 8, 10), peak=10_000), POOLS).label == "mid"  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="needs 90000 MiB"):
        choose_pool(_profile((12, 8, 10), peak=90_000), POOLS)  # type: ignore[arg-type]


def test_every_pool_smaller_than_recommended_gives_the_largest() -> None:
    assert choose_pool(_profile((2, 50, 66)), POOLS[:2]).label == "mid"  # type: ignore[arg-type]


def test_unprofiled_and_no_pools() -> None:
    assert choose_pool(None, POOLS).label == "big"
    with pytest.raises(UsageError, match="no gpuslice pool"):
        choose_pool(None, [])


def _dfk(plan: dict[str, object]) -> SimpleNamespace:
    layout = resolve(json.dumps(plan), discover(FLEET))
    executors: dict[str, object] = {
        p.name: SliceExecutor(pool=p.name, layout=layout, label=p.name) for p in layout.pools
    }
    executors["_parsl_internal"] = SimpleNamespace()
    return SimpleNamespace(executors=executors)


def recommending(name: str, code_hash: str, per_gpu: int) -> Profile:
    """A profile of ``name`` whose choice is ``per_gpu`` slices: 7 x 14% (18 SMs) or 12 x 8%
    (10 SMs), beside the whole GPU (at half the throughput)."""
    sizes = {7: (14, 18), 12: (8, 10)}
    compute, sms = sizes[per_gpu]
    points = [point(1, 100, 132, p50=10.0), point(per_gpu, compute, sms, p50=20.0)]
    return profile_of(name, points, code_hash=code_hash, per_gpu=per_gpu)


PLAN = {
    "version": 1,
    "pools": {
        "tiny": {"mps": {"compute": 10, "memory": "4GiB"}, "per_gpu": 4},
        "half": {"mps": {"compute": 50, "memory": "20GiB"}, "per_gpu": 1},
    },
}


def test_auto_pool_reads_the_store_for_the_functions_current_code(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite")
    fid = function_id(funcs.quick)
    # recommended: 7 slices of 14% (18 SMs): the 50% pool (66 SMs) is the smallest that holds it
    store.put(recommending(fid.name, fid.code_hash, per_gpu=7))
    assert auto_pool(funcs.quick, _dfk(PLAN), store) == "half"
    # 12 slices of 8% (10 SMs): the 10% pool (12 SMs each) holds it
    store.put(recommending(fid.name, fid.code_hash, per_gpu=12))
    assert auto_pool(funcs.quick, _dfk(PLAN), store) == "tiny"


def test_an_unprofiled_function_goes_to_the_largest_pool_with_one_warning(tmp_path: Path) -> None:
    route._WARNED.discard(function_id(funcs.where).name)
    store = ProfileStore(tmp_path / "empty.sqlite")
    with pytest.warns(UserWarning, match="has no profile for H100-80GB"):
        assert auto_pool(funcs.where, _dfk(PLAN), store) == "half"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert auto_pool(funcs.where, _dfk(PLAN), store) == "half"


def test_a_profile_of_older_code_does_not_count(tmp_path: Path) -> None:
    route._WARNED.discard(function_id(funcs.hungry).name)
    store = ProfileStore(tmp_path / "old.sqlite")
    fid = function_id(funcs.hungry)
    store.put(recommending(fid.name, "0" * 16, per_gpu=12))
    with pytest.warns(UserWarning, match="no profile"):
        assert auto_pool(funcs.hungry, _dfk(PLAN), store) == "half"


@pytest.mark.slow
def test_gpu_app_auto_runs_calls_in_the_recommended_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpuslice.parsl.app import gpu_app
    from tests.parsl.conftest import emulated_environment, loaded

    store = ProfileStore(tmp_path / "p.sqlite")
    fid = function_id(funcs.where)
    store.put(recommending(fid.name, fid.code_hash, per_gpu=12))
    monkeypatch.setenv("GPUSLICE_PROFILE_STORE", str(store.path))
    plan = "tiny=2x mps:10%/4GiB, half=1x mps:50%/20GiB"
    with emulated_environment() as root, loaded(plan, root, fleet=FLEET):
        app = gpu_app(pool="auto")(funcs.where)
        assert {app().result() for _ in range(4)} == {"tiny"}
        assert app.label == "tiny"
