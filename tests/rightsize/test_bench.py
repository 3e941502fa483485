"""The benchmark pieces right-sizing adds: synthetic functions, named tasks, suggested, tenants."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuslice.bench import synthetic
from gpuslice.bench.arrangements import by_name
from gpuslice.bench.mixtasks import (
    function_for,
    llm_medium,
    surrogate_infer_large,
    surrogate_train_medium,
)
from gpuslice.bench.tenants import (
    Setup,
    Tenant,
    TenantRun,
    TenantStats,
    arrivals,
    baseline_setups,
    markdown_table,
    run_setup,
)
from gpuslice.emulate.kernel import kernel
from gpuslice.errors import UsageError
from gpuslice.hardware.inventory import discover
from gpuslice.plan.resolve import resolve
from gpuslice.rightsize.identity import function_id
from gpuslice.rightsize.store import STORE_ENV, ProfileStore
from tests.parsl.conftest import emulated_environment
from tests.rightsize import funcs
from tests.rightsize.helpers import point, profile_of

REPO = Path(__file__).resolve().parents[2]
FLEET = str(REPO / "src/gpuslice/examples/fleet-1xh100.yaml")


@pytest.fixture
def emulated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GPUSLICE_EMULATE_DIR", str(tmp_path / "emu"))
    monkeypatch.setenv("GPUSLICE_EMULATED", "1")
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_a_synthetic_function_runs_its_shape(emulated_env: None) -> None:
    out = synthetic.tiny()
    assert out["mode"] == "exclusive"
    assert out["ms"] >= synthetic.SHAPES["tiny"].work_ms * 0.99


def test_a_bandwidth_demand_is_passed_on_or_refused(
    emulated_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    shaped = synthetic.Shape(5, 0.5, 0.5, 64, bandwidth=0.5)
    monkeypatch.setitem(synthetic.SHAPES, "tiny", shaped)
    if "bandwidth" in inspect.signature(kernel).parameters:
        assert synthetic.tiny()["ms"] >= 5 * 0.99
    else:
        with pytest.raises(UsageError, match="does not model bandwidth"):
            synthetic.tiny()
    with pytest.raises(UsageError, match="no synthetic function"):
        synthetic.run_shape("nothing")


def test_named_tasks_run_the_harness_workload(emulated_env: None) -> None:
    assert function_for("llm", "medium") is llm_medium
    out = llm_medium()
    assert out["workload"] == "llm"
    assert out["end"] > out["start"]
    with pytest.raises(UsageError, match="no profiled-task function"):
        function_for("llm", "full")


@pytest.fixture
def mix_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ProfileStore:
    store = ProfileStore(tmp_path / "p.sqlite")
    monkeypatch.setenv(STORE_ENV, str(store.path))
    return store


def test_suggested_needs_the_mix_profiles_and_names_the_command(mix_store: ProfileStore) -> None:
    with pytest.raises(
        UsageError,
        match=r"gpuslice plan suggest --functions gpuslice\.bench\.mixtasks:surrogate_infer_large",
    ):
        by_name("suggested", 81920)
    with pytest.raises(UsageError, match="no workload mix 'video'"):
        by_name("suggested-video", 81920)


def test_suggested_packs_the_stored_profiles_and_routes_each_workload(
    mix_store: ProfileStore,
) -> None:
    for func in (surrogate_infer_large, surrogate_train_medium):
        fid = function_id(func)
        points = [
            point(1, 100, 132, p50=30.0),
            point(2, 50, 66, p50=60.0),
            point(4, 25, 32, p50=124.0),
        ]
        mix_store.put(profile_of(fid.name, points, code_hash=fid.code_hash))
    arrangement = by_name("suggested", 81920)
    assert arrangement.name == "suggested"
    assert set(arrangement.routes) == {"surrogate_infer", "surrogate_train"}
    assert set(arrangement.routes.values()) == set(arrangement.plan["pools"])
    layout = resolve(json.dumps(arrangement.plan), discover(FLEET))
    assert sum(s.compute or 0 for s in layout.slices) <= 100
    # 3/4 of the calls are inference: it gets more of the GPU than retraining
    compute = {p.name: sum(s.compute or 0 for s in p.slices) for p in layout.pools}
    assert (
        compute[arrangement.routes["surrogate_infer"]]
        > compute[arrangement.routes["surrogate_train"]]
    )
    with pytest.raises(UsageError, match="needs a profile"):
        by_name("suggested", 40960)  # no profile on a GPU with that memory


def test_arrivals_are_seeded_poisson_streams() -> None:
    tenants = [Tenant("a", funcs.quick, 20.0), Tenant("b", funcs.quick, 5.0)]
    one = arrivals(tenants, 30.0, seed=3)
    assert one == arrivals(tenants, 30.0, seed=3)
    assert one != arrivals(tenants, 30.0, seed=4)
    assert [t for t, _ in one] == sorted(t for t, _ in one)
    counts = {n: sum(1 for _, m in one if m == n) for n in ("a", "b")}
    # 600 and 150 expected; a Poisson count is within 5 standard deviations
    assert abs(counts["a"] - 600) < 5 * 600**0.5
    assert abs(counts["b"] - 150) < 5 * 150**0.5
    assert all(0 <= t < 30 for t, _ in one)


def test_baseline_setups_have_the_same_workers_shared_or_per_tenant() -> None:
    inventory = discover(FLEET)
    memory = inventory.gpus[0].memory_mib
    setups = {s.name: s for s in baseline_setups({"infer": 3, "heavy": 1}, memory)}
    assert set(setups) == {"timeshare", "mps-unlimited", "equal", "mps-unlimited-pools"}
    for name in ("timeshare", "mps-unlimited", "equal"):
        layout = resolve(json.dumps(setups[name].plan), inventory)
        assert {p.name: len(p.slices) for p in layout.pools} == {"gpu": 4}
        assert setups[name].routes == {"infer": "gpu", "heavy": "gpu"}
    equal = resolve(json.dumps(setups["equal"].plan), inventory)
    assert {s.compute for s in equal.slices} == {25}
    pools = resolve(json.dumps(setups["mps-unlimited-pools"].plan), inventory)
    assert {p.name: len(p.slices) for p in pools.pools} == {"infer": 3, "heavy": 1}
    assert all(s.compute is None for s in pools.slices)


def test_a_burst_tenant_submits_everything_at_the_start() -> None:
    tenants = [Tenant("a", funcs.quick, 2.0), Tenant("b", funcs.quick, 3.0, burst=True)]
    schedule = arrivals(tenants, 10.0, seed=2)
    assert [t for t, n in schedule if n == "b"] == [0.0] * 30


def test_the_tenant_table_has_a_row_per_arrangement() -> None:
    stats = TenantStats(10, 10, 0, 100.0, 150.0, 90.0, 120.0, 5.0)
    run = TenantRun("equal", "equal slices", {}, 4, 2.0, 10.0, {"infer": stats, "heavy": stats}, [])
    assert TenantRun.from_dict(run.to_dict()) == run
    table = markdown_table([run], "infer", "heavy")
    assert (
        "| equal slices (`equal`) | 4 | 100 | 150 | 120 | 5.00 | 5.00 | 150 | 10.00 | 0 |" in table
    )


@pytest.fixture
def emulated_root() -> Iterator[Path]:
    with emulated_environment() as root:
        yield root


@pytest.mark.slow
def test_a_tenant_run_completes_every_call_and_times_it(emulated_root: Path) -> None:
    tenants = [Tenant("a", funcs.quick, 10.0), Tenant("b", funcs.quick, 4.0)]
    schedule = arrivals(tenants, 2.0, seed=1)
    setup = Setup(
        "two",
        "two pools",
        {"version": 1, "pools": {"a": {"mps": {"compute": 50}}, "b": {"mps": {"compute": 50}}}},
        {"a": "a", "b": "b"},
    )
    run = run_setup(setup, tenants, schedule, discover(FLEET))
    assert run.errors == []
    assert run.workers == 2
    for name in ("a", "b"):
        got = run.tenants[name]
        assert got.completed == got.submitted == sum(1 for _, n in schedule if n == name)
        assert got.p95_ms >= got.p50_ms >= got.in_slice_p50_ms >= 19  # 20 ms alone, never faster
    assert run.tasks_per_s == pytest.approx(len(schedule) / run.wall_s)


@pytest.mark.slow
def test_the_gpu_script_profiles_and_writes_its_summary(
    emulated_root: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gpu"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/rightsize_gpu.py"), "--fleet", FLEET,
         "--functions", "tests.rightsize.funcs:quick", "--max-per-gpu", "2", "--samples", "4",
         "--skip-bench", "--out", str(out)],
        capture_output=True, text=True, timeout=280, check=False, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert "emulated" in summary["device"]
    assert summary["profiles"]["quick"]["kind"] == "mps"
    assert (out / "quick.png").stat().st_size > 0
    assert json.loads((out / "quick.json").read_text())["function"] == "tests.rightsize.funcs:quick"
