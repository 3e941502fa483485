"""The benchmark harness: task lists, batching, busy time, and a real smoke run on the emulated GPU."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuslice.bench.arrangements import POOL, by_name, standard
from gpuslice.bench.harness import TaskSpec, _batches, _union_busy, task_list
from gpuslice.bench.task import batched_params, run_task
from gpuslice.cli import cli
from gpuslice.errors import UsageError


def test_task_list_keeps_the_mix_proportions_interleaved() -> None:
    tasks = task_list("surrogate", 8)
    kinds = [t.workload for t in tasks]
    assert kinds.count("surrogate_infer") == 6
    assert kinds.count("surrogate_train") == 2
    assert kinds[:4].count("surrogate_train") == 1  # spread out, not all at the end


def test_unknown_mix_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown workload mix"):
        task_list("video", 3)


def test_batches_group_equal_tasks_in_order() -> None:
    tasks = task_list("surrogate", 8)
    calls = _batches(tasks, 4)
    assert sorted(i for _, idx in calls for i in idx) == list(range(8))
    assert all(len({tasks[i].workload for i in idx}) == 1 for _, idx in calls)
    assert [len(idx) for _, idx in calls] == [4, 2, 2]


def test_union_busy_counts_overlaps_once() -> None:
    assert _union_busy([(0, 2), (1, 3), (5, 6)], 0, 10) == pytest.approx(4)
    assert _union_busy([(0, 2)], 1, 10) == pytest.approx(1)


def test_batched_params_scale_the_batch_knob() -> None:
    assert batched_params("llm", {"size": "tiny"}, 4)["batch"] == 4
    assert batched_params("surrogate_infer", {"batch_size": 16}, 3)["batch_size"] == 48


def test_arrangements_by_name_and_the_standard_set() -> None:
    memory = 81920
    # (81920 MiB - 512 MiB for each of 4 clients and the MPS server) / 4 = 19840 MiB
    assert by_name("gpuslice-4", memory).plan["pools"][POOL]["mps"] == {
        "compute": 25,
        "memory": "19840MiB",
    }
    assert by_name("mps-unlimited-3", memory).plan["oversubscribe"] is True
    assert by_name("batched-7", memory).batch == 7
    names = [a.name for a in standard(memory)]
    assert names[0] == "one-per-gpu"
    assert names[-1] == "batched-7"
    assert len(names) == 1 + 3 * 4 + 1
    with pytest.raises(ValueError, match="unknown arrangement"):
        by_name("gpuslice-zero", memory)


def test_run_task_on_the_emulated_gpu_reports_its_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUSLICE_EMULATE_DIR", str(tmp_path))
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    out = run_task("llm", {"size": "small"}, emulated=True)
    assert out["mode"] == "exclusive"
    assert 0.02 < out["end"] - out["start"] < 1.0  # llm small: ~27 ms of modelled GPU time


@pytest.fixture
def mps_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short private MPS root (unix socket paths are limited to about 107 bytes)."""
    root = Path(tempfile.mkdtemp(prefix="gsb-", dir="/tmp"))
    monkeypatch.setenv("GPUSLICE_MPS_ROOT", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.usefixtures("mps_root")
def test_bench_smoke_runs_every_arrangement_through_parsl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUSLICE_EMULATE_DIR", str(tmp_path / "emulate"))
    fleet = (
        Path(__file__).resolve().parents[2] / "src" / "gpuslice" / "examples" / "fleet-1xh100.yaml"
    )
    result = CliRunner().invoke(
        cli,
        [
            "bench",
            "--smoke",
            "--fleet",
            str(fleet),
            "--tasks",
            "16",
            "--out",
            str(tmp_path),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    paths = json.loads(result.stdout)
    data = json.loads(Path(paths["json"]).read_text())
    assert data["emulated"] is True
    assert [a["name"] for a in data["arrangements"]] == [
        "one-per-gpu",
        "timeshare-4",
        "mps-unlimited-4",
        "gpuslice-4",
        "batched-4",
    ]
    for arrangement in data["arrangements"]:
        assert arrangement["failed"] == 0, arrangement["errors"]
        assert arrangement["tasks"] == 16
        assert arrangement["throughput"] > 0
    by = {a["name"]: a for a in data["arrangements"]}
    # The emulation model (docs/emulation-model.md): LLM decoding runs kernels about 17% of
    # its time (duty) on about 40% of the SMs (occupancy). Four MPS slices run requests
    # concurrently; so do four time-shared workers, whose kernels fill each other's host gaps
    # (duties sum to 0.67 < 1). A 25% slice caps the 40% occupancy, which the model says
    # costs each request about 10% (rate 0.90), so gpuslice-4 is close to timeshare-4, not
    # 1.5x ahead of it; both are far ahead of one task per GPU (about 3.6x in the model).
    one = by["one-per-gpu"]["throughput"]
    assert by["gpuslice-4"]["throughput"] > 1.5 * one
    assert by["timeshare-4"]["throughput"] > 1.5 * one
    assert by["gpuslice-4"]["throughput"] > 0.75 * by["timeshare-4"]["throughput"]
    assert Path(paths["png"]).stat().st_size > 10_000
    assert "| gpuslice: 4 slices/GPU" in Path(paths["md"]).read_text()
    assert data["comparisons"]["best_gpuslice"] == "gpuslice-4"


@pytest.mark.slow
@pytest.mark.usefixtures("mps_root")
def test_demo_reports_both_runs_and_their_ratio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUSLICE_EMULATE_DIR", str(tmp_path / "emulate"))
    monkeypatch.delenv("GPUSLICE_FLEET", raising=False)
    result = CliRunner().invoke(cli, ["demo", "--tasks", "12", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["one_per_gpu"]["per_pool"] == {"gpu": 12}
    assert data["plan_run"]["per_pool"] == {"llm": 8, "surrogate": 4}
    assert data["one_per_gpu"]["failed"] == data["plan_run"]["failed"] == 0
    assert data["throughput_ratio"] == pytest.approx(
        data["plan_run"]["throughput"] / data["one_per_gpu"]["throughput"]
    )


def test_taskspec_is_plain_data() -> None:
    spec = TaskSpec("llm", {"size": "tiny"})
    assert json.loads(json.dumps(spec.__dict__)) == {"workload": "llm", "params": {"size": "tiny"}}
