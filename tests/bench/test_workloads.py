"""The benchmark workloads run for real on the CPU at their tiny size; their cost model is sane."""

from __future__ import annotations

import ast
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpuslice.bench import workloads
from gpuslice.bench.workloads import WORKLOADS, EmulatedCost, emulated_cost
from gpuslice.errors import UsageError

torch = pytest.importorskip("torch")

SIZES = ("tiny", "small", "medium", "large", "full")


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    # Small tensors: one thread avoids the cost of waking a thread pool on a 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run_tiny(name: str, **overrides: Any) -> dict[str, Any]:
    return WORKLOADS[name].run("tiny", device="cpu", **overrides)


# --- the module itself ------------------------------------------------------------------


def test_module_has_no_top_level_torch_import() -> None:
    tree = ast.parse(Path(workloads.__file__).read_text())
    top_level = [
        node
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        and any(
            "torch" in (alias.name if isinstance(node, ast.Import) else (node.module or ""))
            for alias in node.names
        )
    ]
    assert top_level == []


def test_registry_and_cost_model_work_without_torch() -> None:
    # sys.modules[name] = None makes `import torch` raise ImportError in that process.
    code = (
        "import sys, json; sys.modules['torch'] = None\n"
        "from gpuslice.bench.workloads import WORKLOADS, emulated_cost\n"
        "print(json.dumps({n: emulated_cost(n).work_ms for n in WORKLOADS}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert set(json.loads(out.stdout)) == set(WORKLOADS)


def test_every_workload_has_the_five_named_sizes() -> None:
    for workload in WORKLOADS.values():
        assert tuple(workload.sizes) == SIZES, workload.name


def test_presets_only_set_parameters_the_function_takes() -> None:
    for workload in WORKLOADS.values():
        for preset in workload.sizes.values():
            assert set(preset) <= set(workload.defaults), workload.name


def test_unknown_preset_is_refused_with_the_choices() -> None:
    with pytest.raises(UsageError, match="tiny, small, medium, large, full"):
        WORKLOADS["llm"].params("huge")


def test_unknown_parameter_is_refused_by_name() -> None:
    with pytest.raises(UsageError, match="batchsize"):
        WORKLOADS["surrogate_infer"].params("tiny", batchsize=3)


def test_llm_model_size_can_be_overridden_next_to_a_preset() -> None:
    params = WORKLOADS["llm"].params("full", size="tiny")
    assert params["size"] == "tiny"
    assert params["prompt_tokens"] == 512


# --- results of real runs on the CPU ------------------------------------------------------


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_tiny_result_is_small_json_with_device_and_timing(name: str) -> None:
    result = _run_tiny(name)
    text = json.dumps(result)
    assert len(text) < 2000
    assert result["device"] == "cpu"
    assert result["seconds"] > 0


def test_llm_generates_the_requested_number_of_tokens_within_the_vocabulary() -> None:
    result = _run_tiny("llm", new_tokens=7)
    vocab = workloads.GPT_SHAPES["tiny"].vocab
    assert len(result["tokens"]) == 7
    assert all(0 <= t < vocab for t in result["tokens"])
    assert result["dtype"] == "fp32"


def test_llm_kv_cache_gives_the_same_tokens_as_recomputing_the_sequence() -> None:
    cached = _run_tiny("llm", new_tokens=10, use_cache=True)["tokens"]
    recomputed = _run_tiny("llm", new_tokens=10, use_cache=False)["tokens"]
    assert cached == recomputed
    assert len(set(cached)) > 1  # a constant sequence would match trivially


def test_llm_builds_the_model_once_per_process() -> None:
    _run_tiny("llm")
    again = _run_tiny("llm")
    assert again["build_seconds"] < 0.01
    assert ("tiny", "cpu", "fp32") in workloads._GPT_CACHE


def test_llm_same_seed_same_tokens_other_seed_other_tokens() -> None:
    first = _run_tiny("llm", seed=1)["tokens"]
    assert _run_tiny("llm", seed=1)["tokens"] == first
    assert _run_tiny("llm", seed=2)["tokens"] != first


def test_llm_refuses_a_sequence_longer_than_the_context() -> None:
    with pytest.raises(UsageError, match="context"):
        _run_tiny("llm", prompt_tokens=100, new_tokens=100)


def test_gpt2_small_shape_has_gpt2_small_parameter_count_plus_untied_head() -> None:
    shape = workloads.GPT_SHAPES["small"]
    # GPT-2 small has 124,439,808 parameters with a tied head; ours adds vocab x d_model.
    assert shape.params == 124_439_808 + 50257 * 768


def test_random_molecules_have_10_to_40_atoms_and_symmetric_bonds() -> None:
    batch = workloads.random_molecules(50, seed=3)
    counts = torch.bincount(batch["mol"], minlength=50)
    assert int(counts.min()) >= 10
    assert int(counts.max()) <= 40
    pairs = set(zip(batch["src"].tolist(), batch["dst"].tolist(), strict=True))
    assert all((d, s) in pairs for s, d in pairs)
    assert bool((batch["mol"][batch["src"]] == batch["mol"][batch["dst"]]).all())


def test_surrogate_infer_scores_every_molecule_with_finite_summary() -> None:
    result = _run_tiny("surrogate_infer", batch_size=12)
    assert result["molecules"] == 12
    assert 0 <= result["best"] < 12
    assert all(math.isfinite(result[k]) for k in ("score_mean", "score_std", "score_max"))
    assert result["score_max"] >= result["score_mean"]


def test_surrogate_training_loss_decreases_over_epochs() -> None:
    result = _run_tiny("surrogate_train")
    assert len(result["losses"]) == WORKLOADS["surrogate_train"].sizes["tiny"]["epochs"]
    assert all(math.isfinite(loss) for loss in result["losses"])
    assert result["loss_final"] < 0.5 * result["loss_first"]


def test_surrogate_training_is_reproducible_with_a_fixed_seed() -> None:
    first = _run_tiny("surrogate_train", epochs=2)["losses"]
    assert _run_tiny("surrogate_train", epochs=2)["losses"] == first


def test_matmul_chain_checksum_matches_a_float64_reference() -> None:
    result = _run_tiny("science", n=32, iterations=4, seed=5)
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(32, 32, generator=gen) / math.sqrt(32)
    x = torch.randn(32, 32, generator=gen)
    a, x = a.double(), x.double()
    for _ in range(4):
        x = a @ x
        x = x / x.abs().max()
    assert result["checksum"] == pytest.approx(float(x.sum()), rel=1e-4)


def test_jacobi_stencil_spreads_the_hot_edge_into_the_grid() -> None:
    few = _run_tiny("stencil", n=16, iterations=2)["checksum"]
    many = _run_tiny("stencil", n=16, iterations=50)["checksum"]
    assert 16 < few < many  # the edge holds 16 (corners included) and heat only flows in


def test_unknown_science_kind_is_refused() -> None:
    with pytest.raises(UsageError, match="matmul, jacobi"):
        _run_tiny("science", kind="fft")


# --- emulated cost ----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_emulated_cost_grows_with_size(name: str) -> None:
    costs = [WORKLOADS[name].cost(size) for size in SIZES]
    work = [c.work_ms for c in costs]
    memory = [c.memory_mib for c in costs]
    assert work == sorted(work)
    assert len(set(work)) == len(work)
    assert memory == sorted(memory)


@pytest.mark.parametrize("name", sorted(WORKLOADS))
@pytest.mark.parametrize("size", SIZES)
def test_emulated_parallelism_is_a_fraction_of_the_sms(name: str, size: str) -> None:
    cost = WORKLOADS[name].cost(size)
    assert isinstance(cost, EmulatedCost)
    assert 0 < cost.parallelism <= 1
    assert cost.work_ms > 0
    assert cost.memory_mib > workloads.CUDA_CONTEXT_MIB


@pytest.mark.parametrize("name", sorted(WORKLOADS))
@pytest.mark.parametrize("size", SIZES)
def test_emulated_duty_and_occupancy_are_fractions_whose_product_is_parallelism(
    name: str, size: str
) -> None:
    cost = WORKLOADS[name].cost(size)
    assert 0 < cost.duty <= 1
    # Every kernel keeps at least one SM busy while it runs.
    assert 1 / workloads.H100_SM_COUNT <= cost.occupancy <= 1
    assert cost.parallelism == pytest.approx(cost.duty * cost.occupancy)


def test_duty_counts_launch_overhead_as_host_time_and_occupancy_weights_by_run_time() -> None:
    bandwidth = workloads.HBM_BANDWIDTH * workloads.MEMORY_EFFICIENCY
    launch = workloads.LAUNCH_OVERHEAD_S
    # A 10 us kernel on all SMs, and a launch-bound one running 2.5 us of its 5 us on a quarter.
    full = workloads._Kernels(1, 0, 2 * launch * bandwidth, workloads.H100_SM_COUNT)
    small = workloads._Kernels(1, 0, launch / 2 * bandwidth, workloads.H100_SM_COUNT / 4)
    cost = workloads._total([full, small], 0)
    assert cost.work_ms == pytest.approx(15e-3)
    assert cost.duty == pytest.approx(12.5 / 15)
    assert cost.occupancy == pytest.approx((10 + 2.5 / 4) / 12.5)
    assert cost.parallelism == pytest.approx((10 + 2.5 / 4) / 15)


def test_bandwidth_is_bytes_per_kernel_second_over_what_a_streaming_kernel_achieves() -> None:
    launch = workloads.LAUNCH_OVERHEAD_S
    usable = workloads.HBM_BANDWIDTH * workloads.MEMORY_EFFICIENCY  # 2.68 TB/s
    # A streaming kernel moving 10 us worth of bytes, and a compute-bound fp32 one: 40.14 GFLOP
    # at 0.6 x 66.9 TFLOPS takes 1 ms while its 268 MB would take 0.1 ms at the usable rate.
    stream = workloads._Kernels(1, 0, 2 * launch * usable, workloads.H100_SM_COUNT)
    compute = workloads._Kernels(1, 0.6 * 66.9e12 * 1e-3, 0.1e-3 * usable, 1000)
    assert workloads._total([stream], 0).bandwidth == pytest.approx(1.0)
    assert workloads._total([compute], 0).bandwidth == pytest.approx(0.1)
    # Together: bytes of 0.11 ms at the usable rate over 1.01 ms of kernels.
    assert workloads._total([stream, compute], 0).bandwidth == pytest.approx(0.11 / 1.01)
    # A gather at 50% of peak moves 0.5 / 0.8 of what a streaming kernel does.
    gather = workloads._Kernels(1, 0, 1e9, 1000, memory_efficiency=0.5)
    assert workloads._total([gather], 0).bandwidth == pytest.approx(0.625)


def test_memory_bound_workloads_stream_memory_and_the_matmul_chain_barely_does() -> None:
    # Decode: ~1 flop per byte; Jacobi: 4 flops per 12 bytes; both far below the ridge point.
    assert WORKLOADS["llm"].cost("medium").bandwidth == pytest.approx(1.0)
    assert WORKLOADS["stencil"].cost("medium").bandwidth == pytest.approx(1.0)
    # n = 4096 fp32 GEMM: 3 x 4096^2 x 4 B = 201 MB in 2 x 4096^3 / (0.6 x 66.9e12) = 3.42 ms,
    # 0.022 of 2.68 TB/s; the norm and rescale kernels (75 us of every 3.5 ms) stream at 1.
    assert WORKLOADS["science"].cost("large").bandwidth == pytest.approx(0.043, rel=0.05)


def test_llm_decoding_mostly_waits_for_the_host() -> None:
    # One prompt at a time: every size's kernels run well under half of the task's time.
    for size in SIZES:
        assert WORKLOADS["llm"].cost(size).duty < 0.4, size
    assert WORKLOADS["llm"].cost("medium").occupancy > 0.3  # its GEMVs do spread over SMs


def test_full_science_kernel_fills_the_gpu_and_tiny_one_does_not() -> None:
    full = WORKLOADS["science"].cost("full")
    assert (full.duty, full.occupancy, full.parallelism) == (1.0, 1.0, 1.0)
    assert WORKLOADS["science"].cost("tiny").parallelism < 0.1


def test_llm_decoding_is_far_from_filling_the_gpu() -> None:
    # One prompt at a time: small GEMVs and launch overhead, the case MPS sharing helps.
    assert WORKLOADS["llm"].cost("small").parallelism < 0.25


def test_large_matmul_cost_is_near_its_flop_count_over_fp32_peak() -> None:
    n, iterations = 8192, 20
    ideal_ms = 2 * n**3 * iterations / workloads.PEAK_FLOPS["fp32"] * 1e3
    cost = emulated_cost("science", n=n, iterations=iterations)
    assert ideal_ms < cost.work_ms < 2 * ideal_ms


def test_llm_memory_holds_the_bf16_weights() -> None:
    shape = workloads.GPT_SHAPES["xl"]
    cost = emulated_cost("llm", size="xl", prompt_tokens=16, new_tokens=16)
    assert cost.memory_mib > shape.params * 2 / 2**20


def test_emulated_cost_refuses_an_unknown_workload_with_the_choices() -> None:
    with pytest.raises(UsageError, match="llm"):
        emulated_cost("bert")


def test_workload_functions_pickle_by_reference_for_parsl() -> None:
    for workload in WORKLOADS.values():
        assert pickle.loads(pickle.dumps(workload.function)) is workload.function


def test_llm_batch_decodes_every_prompt_like_a_single_request() -> None:
    from gpuslice.bench.workloads import llm_generate

    single = llm_generate(size="tiny", prompt_tokens=6, new_tokens=4, device="cpu", seed=3)
    batched = llm_generate(
        size="tiny", prompt_tokens=6, new_tokens=4, device="cpu", seed=3, batch=3
    )
    assert batched["batch"] == 3
    assert len(batched["tokens"]) == 4
    # Row 0 of the batch is drawn first from the same generator as the single prompt.
    assert batched["tokens"] == single["tokens"]


def test_llm_batched_cost_is_cheaper_than_separate_requests() -> None:
    from gpuslice.bench.workloads import emulated_cost

    one = emulated_cost("llm", size="small")
    eight = emulated_cost("llm", size="small", batch=8)
    assert one.work_ms < eight.work_ms < 8 * one.work_ms
    assert eight.parallelism > one.parallelism
