"""The benchmark workloads gpuslice sends through Parsl, and what each would cost on an H100.

Each workload is a plain function a scientist could have written: it takes a ``size`` knob
and a ``device`` (``"cuda"`` when CUDA is available, else ``"cpu"``), does its work with
torch, times itself inside the task (with ``torch.cuda.synchronize`` on CUDA) and returns a
small JSON-serialisable dict, because results travel back through Parsl.

- ``llm_generate``: greedy decoding with a KV cache in a decoder-only transformer of GPT-2
  shape (random, seeded weights; nothing is downloaded), one prompt per task, as a FaaS
  inference request would be.
- ``surrogate_infer`` / ``surrogate_train``: a message-passing neural network scoring
  random molecular graphs, and retraining it, as in an active-learning molecular design loop.
- ``science_kernel``: a dense matmul chain (compute-bound) or a 2-D Jacobi stencil
  (memory-bound) returning a checksum.

torch is optional: it is imported inside the functions, so this module (and the rest of
gpuslice) imports without it.

Emulated cost model (``emulated_cost``)
=======================================
**These numbers are estimates from a paper model, to be replaced by measurements on a real
H100.** They let the emulated GPU (``gpuslice.emulate``) give a workload a plausible duration,
duty, SM occupancy and memory footprint on machines without a GPU.

A task is modelled as a sequence of kernel groups. For one kernel that does ``F`` floating
point operations, moves ``B`` bytes to or from device memory and launches ``blocks`` thread
blocks::

    exec_s   = max(F / (PEAK_FLOPS[dtype] * COMPUTE_EFFICIENCY),
                   B / (HBM_BANDWIDTH * memory_efficiency))
    kernel_s = max(exec_s, LAUNCH_OVERHEAD_S)
    busy     = min(1, blocks / H100_SM_COUNT)

``work_ms`` is the sum of ``kernel_s`` over all kernels: the task's time alone on an
H100-80GB SXM. The floor ``LAUNCH_OVERHEAD_S`` stands for PyTorch eager dispatch plus the
CUDA launch; it dominates the small decode steps of LLM inference, during which the GPU
mostly waits for the host. The emulated GPU (docs/emulation-model.md) describes a task by
two fractions of that time, because they share a GPU differently:

- ``duty = sum(exec_s) / sum(kernel_s)``: the fraction of ``work_ms`` during which one of
  the task's kernels runs; the rest (``kernel_s - exec_s`` per launch-bound kernel) is host
  time, a gap another process's kernels can fill even without MPS.
- ``occupancy = sum(busy * exec_s) / sum(exec_s)``: the fraction of the SMs its kernels keep
  busy while they run; what an MPS percentage limit caps and what MPS lets others use.

``parallelism = duty * occupancy = sum(busy * exec_s) / sum(kernel_s)`` is the SM fraction
averaged over ``work_ms``, the one number the model used before it had two (unchanged by the
split, except that it is no longer floored at one SM's share for the tiny sizes).

A third fraction says how much of the device's memory bandwidth the kernels move while they
run, which concurrent kernels of one context share as they share the SMs:

- ``bandwidth = sum(B) / (sum(exec_s) * HBM_BANDWIDTH * MEMORY_EFFICIENCY)``, at most 1: the
  bytes moved per second of kernel time, over the bandwidth a streaming kernel achieves
  (``MEMORY_EFFICIENCY`` of the datasheet's peak, taken as all the bandwidth kernels can get,
  together or alone). A memory-bound kernel counts 1, a gather at ``GATHER_EFFICIENCY``
  0.5 / 0.8, a compute-bound GEMM its bytes over its compute time. This is the roofline view
  (Williams, Waterman and Patterson, "Roofline: an insightful visual performance model for
  multicore architectures", Communications of the ACM 52(4), 2009,
  https://doi.org/10.1145/1498765.1498785): a kernel's time is the larger of its compute time
  and its memory time, and a kernel whose arithmetic intensity (flops per byte) is below the
  device's ridge point (989.4 TFLOPS / 3.35 TB/s = 295 flops per byte for bf16 on an H100)
  is bound by bandwidth.

What that gives, for example: a GPT-2-medium decode step reads the 354 M parameters of its 24
layers and its output projection (0.71 GB in bf16) and a KV cache of 2 x 24 layers x about 160
positions x 1024 x 2 bytes = 16 MB, for about 1 flop per byte: every decode kernel streams
memory, so ``bandwidth`` is 1.0, on about 40% of the SMs (LLM decoding is memory-bound:
"Mastering LLM Techniques: Inference Optimization", NVIDIA technical blog,
https://developer.nvidia.com/blog/mastering-llm-techniques-inference-optimization/). At 0.8 x
3.35 TB/s that is 0.27 ms of kernel time per token against about 1.6 ms of launches (about 320
kernels at ``LAUNCH_OVERHEAD_S``), hence the decode's low duty: one request streams memory only
a sixth of its time. The MPNN's gathers and atomic scatters are bound by latency rather than
bandwidth (0.5 / 0.8 = 0.625 each) and its dense layers by compute, about 0.5 over the
``large`` inference task; the matmul chain's GEMMs at n = 4096 do 2 x 4096^3 flops on
3 x 4096^2 x 4 bytes, 683 flops per byte, far above the fp32 ridge (66.9 TFLOPS / 3.35 TB/s =
20), so the task uses 0.04 of the bandwidth; the Jacobi stencil does 4 flops on 12 bytes per
point and is all bandwidth (1.0).
A kernel busy on all SMs for its whole duration counts 1 in both, a launch-bound kernel
lowers the duty, a small-grid kernel the occupancy (at least one SM: ``1 / H100_SM_COUNT``).
Thread blocks per kernel follow stated rules rather than the libraries' real heuristics:
GEMMs tile their output in 128x128 blocks (64-column tiles when M <= 16, the GEMV-like
decode case); element-wise and reduction kernels use one block per 1024 elements
(256 threads x 4 elements); attention launches one block per head per 128 queries;
``index_add_`` scatters are element-wise over the messages.

What the sizes span: ``science`` and ``stencil`` go from a launch-bound tiny loop to a full
GPU, ``surrogate_*`` from a few SMs to all of them; ``llm`` decodes one prompt at a time,
so even its largest size keeps well under a quarter of the SMs busy (the case the seed paper
found gains most from sharing a GPU).

``memory_mib`` counts the task's tensors (weights, KV cache, activations kept for the
backward pass, optimizer state, inputs) plus ``CUDA_CONTEXT_MIB`` for the CUDA context and
library workspaces.

Numbers and sources:

- 132 SMs on H100 SXM5; 989.4 TFLOPS dense FP16/BF16 Tensor Core (the datasheet prints
  1,979 "with sparsity"; dense is half); 66.9 TFLOPS FP32 (non-tensor); 3.35 TB/s HBM3.
  Source: NVIDIA H100 Tensor Core GPU datasheet, https://www.nvidia.com/en-us/data-center/h100/
  (H100 SXM column). NVIDIA's page itself was not in the search index when this was written;
  the numbers were confirmed through https://glennklockwood.com/garden/processors/h100
  (tabulated from NVIDIA's Hopper whitepaper, with the SM count) and
  https://www.codesota.com/hardware/h100 ("dense FP16 from the NVIDIA datasheet").
- ``COMPUTE_EFFICIENCY`` = 0.6 of peak for GEMMs and ``MEMORY_EFFICIENCY`` = 0.8 of peak
  bandwidth for streaming kernels (0.5 for gathers and atomic scatters): assumptions, not
  measurements.
- ``LAUNCH_OVERHEAD_S`` = 5 us per kernel: the low end of the 5-20 us per launch quoted at
  https://devbytes.co.in/news/reducing-cuda-kernel-launch-overhead ; NVIDIA's Nsight
  Systems guide measured about 20 us for a PyTorch element-wise kernel round trip on a
  V100 (as reported at https://groundy.com/articles/every-cuda-kernel-pays-a-launch-tax-the-host-to-device-walkthrough/).
  A modern host with an H100 is taken to be at the low end.
- ``CUDA_CONTEXT_MIB`` = 512: an assumption for the CUDA context with PyTorch's cuBLAS
  workspace; measure with ``torch.cuda.mem_get_info`` before and after start-up.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from gpuslice.errors import UsageError

# ---------------------------------------------------------------------------------------
# H100-80GB SXM facts and model assumptions (sources in the module docstring)
# ---------------------------------------------------------------------------------------
H100_SM_COUNT = 132
PEAK_FLOPS: dict[str, float] = {
    "bf16": 989.4e12,  # dense Tensor Core
    "fp16": 989.4e12,  # dense Tensor Core
    "fp32": 66.9e12,  # CUDA cores; PyTorch leaves TF32 off for matmuls by default
}
HBM_BANDWIDTH = 3.35e12  # bytes/s
COMPUTE_EFFICIENCY = 0.6
MEMORY_EFFICIENCY = 0.8
GATHER_EFFICIENCY = 0.5
LAUNCH_OVERHEAD_S = 5e-6
CUDA_CONTEXT_MIB = 512

_DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class EmulatedCost:
    """What one task of a workload would cost on a whole H100-80GB SXM (an estimate).

    Attributes:
        work_ms: time of the task alone on the whole GPU (kernels and the host gaps between
            them), in milliseconds.
        duty: fraction of ``work_ms`` during which one of its kernels runs, in (0, 1].
        occupancy: fraction of the SMs its kernels keep busy while they run, in (0, 1].
        memory_mib: device memory the task needs, CUDA context included.
        bandwidth: fraction of the device's usable memory bandwidth its kernels move while
            they run, in [0, 1] (see the module docstring).
    """

    work_ms: float
    duty: float
    occupancy: float
    memory_mib: int
    bandwidth: float = 0.0

    @property
    def parallelism(self) -> float:
        """Fraction of the SMs it keeps busy averaged over ``work_ms``: duty x occupancy."""
        return self.duty * self.occupancy


@dataclass(frozen=True)
class Workload:
    """A named benchmark workload the harness can look up and run.

    Attributes:
        name: registry key, e.g. ``llm``.
        description: one line for tables and ``--help``.
        function: the task itself; called with keyword arguments, returns a small dict.
        defaults: keyword arguments used when neither a preset nor the caller sets them.
        sizes: named presets (``tiny`` for tests, ``small``, ``medium``, ``large``,
            ``full``), each a dict of keyword arguments over ``defaults``.
    """

    name: str
    description: str
    function: Callable[..., dict[str, Any]]
    defaults: dict[str, Any]
    sizes: dict[str, dict[str, Any]]

    def params(self, preset: str | None = None, /, **overrides: Any) -> dict[str, Any]:
        """The keyword arguments of one task: defaults, then the named preset, then overrides.

        ``preset`` is positional-only, so an override may itself be called ``size`` (the
        model size of ``llm``).

        Raises:
            UsageError: ``preset`` is not one of :attr:`sizes`, or an override is not a
                parameter of the workload.
        """
        merged = dict(self.defaults)
        if preset is not None:
            if preset not in self.sizes:
                raise UsageError(
                    f"workload {self.name!r} has no size {preset!r}; "
                    f"choose one of {', '.join(self.sizes)}"
                )
            merged.update(self.sizes[preset])
        _check_names(self.name, overrides, self.defaults)
        merged.update(overrides)
        return merged

    def run(self, preset: str | None = None, /, **overrides: Any) -> dict[str, Any]:
        """Run one task here, in this process (the harness sends ``function`` through Parsl)."""
        return self.function(**self.params(preset, **overrides))

    def cost(self, preset: str | None = None, /, **overrides: Any) -> EmulatedCost:
        """The emulated H100 cost of one task of this workload (see :func:`emulated_cost`)."""
        return emulated_cost(self.name, **self.params(preset, **overrides))


def _check_names(workload: str, given: Mapping[str, Any], known: Iterable[str]) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise UsageError(
            f"workload {workload!r} has no parameter {', '.join(unknown)}; "
            f"its parameters are {', '.join(sorted(known))}"
        )


# ---------------------------------------------------------------------------------------
# Shared helpers for the torch workloads
# ---------------------------------------------------------------------------------------
def default_device() -> str:
    """``"cuda"`` when torch sees a CUDA device, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_device(device: str | None) -> str:
    return default_device() if device is None else device


def _sync(device: str) -> None:
    # Kernels run asynchronously on CUDA: time only what has finished.
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------
# 1. LLM inference: GPT-2-shaped decoder, greedy decoding with a KV cache
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GptShape:
    """Shape of a decoder-only transformer.

    Attributes:
        layers: transformer blocks.
        d_model: width of the residual stream.
        heads: attention heads (``d_model`` must be a multiple).
        vocab: vocabulary size (GPT-2's BPE has 50257 tokens).
        context: longest sequence, prompt plus generated tokens.
    """

    layers: int
    d_model: int
    heads: int
    vocab: int
    context: int

    @property
    def params(self) -> int:
        """Parameter count, with an output projection of its own (see :func:`gpt_weights`)."""
        d = self.d_model
        per_layer = 12 * d * d + 13 * d  # qkv, proj, fc, fc2 weights and biases, 2 layer norms
        return self.layers * per_layer + 2 * self.vocab * d + self.context * d + 2 * d


#: Model sizes of ``llm_generate``: ``small`` … ``xl`` are GPT-2's published shapes.
GPT_SHAPES: dict[str, GptShape] = {
    "tiny": GptShape(layers=2, d_model=64, heads=4, vocab=512, context=128),
    "small": GptShape(layers=12, d_model=768, heads=12, vocab=50257, context=1024),
    "medium": GptShape(layers=24, d_model=1024, heads=16, vocab=50257, context=1024),
    "large": GptShape(layers=36, d_model=1280, heads=20, vocab=50257, context=1024),
    "xl": GptShape(layers=48, d_model=1600, heads=25, vocab=50257, context=1024),
}
_WEIGHT_SEED = 20240501
# Parsl workers are long-lived: build each model once per process.
_GPT_CACHE: dict[tuple[str, str, str], dict[str, Any]] = {}


def _gpt_shape(size: str) -> GptShape:
    if size not in GPT_SHAPES:
        raise UsageError(f"llm size {size!r} is unknown; choose one of {', '.join(GPT_SHAPES)}")
    return GPT_SHAPES[size]


def _llm_dtype_name(device: str, dtype: str | None) -> str:
    if dtype is not None:
        if dtype not in _DTYPE_BYTES:
            raise UsageError(f"dtype {dtype!r} is unknown; choose one of {', '.join(_DTYPE_BYTES)}")
        return dtype
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def _torch_dtype(name: str) -> Any:
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def gpt_weights(size: str, device: str, dtype: str) -> dict[str, Any]:
    """The weights of the ``size`` model on ``device`` in ``dtype``, built once per process.

    Weights are random with GPT-2's initialisation (normal, std 0.02; residual projections
    scaled by 1/sqrt(2 * layers)) from a fixed seed, drawn on ``device`` (so CPU and CUDA
    models differ, but each is the same in every process). Unlike GPT-2, the output
    projection is not tied to the token embedding: with random weights a tied head mostly
    predicts the input token again, and the generated text would be one repeated token.
    """
    key = (size, device, dtype)
    cached = _GPT_CACHE.get(key)
    if cached is not None:
        return cached
    import torch

    shape = _gpt_shape(size)
    d, tdtype = shape.d_model, _torch_dtype(dtype)
    gen = torch.Generator(device=device)
    gen.manual_seed(_WEIGHT_SEED)

    def normal(*dims: int, std: float = 0.02) -> Any:
        w = torch.randn(*dims, generator=gen, device=device, dtype=torch.float32) * std
        return w.to(tdtype)

    def const(value: float, *dims: int) -> Any:
        return torch.full(dims, value, device=device, dtype=tdtype)

    proj_std = 0.02 / math.sqrt(2 * shape.layers)
    weights: dict[str, Any] = {
        "wte": normal(shape.vocab, d),
        "head": normal(shape.vocab, d),
        "wpe": normal(shape.context, d, std=0.01),
        "lnf.w": const(1.0, d),
        "lnf.b": const(0.0, d),
    }
    for i in range(shape.layers):
        p = f"h{i}."
        weights |= {
            p + "ln1.w": const(1.0, d),
            p + "ln1.b": const(0.0, d),
            p + "attn.w": normal(3 * d, d),
            p + "attn.b": const(0.0, 3 * d),
            p + "proj.w": normal(d, d, std=proj_std),
            p + "proj.b": const(0.0, d),
            p + "ln2.w": const(1.0, d),
            p + "ln2.b": const(0.0, d),
            p + "fc.w": normal(4 * d, d),
            p + "fc.b": const(0.0, 4 * d),
            p + "fc2.w": normal(d, 4 * d, std=proj_std),
            p + "fc2.b": const(0.0, d),
        }
    _GPT_CACHE[key] = weights
    return weights


def _gpt_forward(
    weights: dict[str, Any],
    shape: GptShape,
    idx: Any,
    cache: list[tuple[Any, Any]] | None,
    pos: int,
) -> Any:
    """Logits of the last position for tokens ``idx`` (B, T) placed at positions pos…pos+T-1.

    With ``cache`` (per layer, key and value buffers of shape (B, heads, length, head_dim)),
    the new keys and values are written at ``pos`` and attention reads the whole prefix;
    callers use either a prefill at ``pos=0`` or single-token steps, so the causal mask is
    needed exactly when T > 1.
    """
    import torch.nn.functional as F  # noqa: N812 (the usual torch spelling)

    d, heads = shape.d_model, shape.heads
    b, t = idx.shape[0], idx.shape[1]
    x = F.embedding(idx, weights["wte"]) + weights["wpe"][pos : pos + t]
    for i in range(shape.layers):
        p = f"h{i}."
        h = F.layer_norm(x, (d,), weights[p + "ln1.w"], weights[p + "ln1.b"])
        qkv = F.linear(h, weights[p + "attn.w"], weights[p + "attn.b"])
        q, k, v = qkv.view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k_buf, v_buf = cache[i]
            k_buf[:, :, pos : pos + t] = k
            v_buf[:, :, pos : pos + t] = v
            k, v = k_buf[:, :, : pos + t], v_buf[:, :, : pos + t]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        y = y.transpose(1, 2).reshape(b, t, d)
        x = x + F.linear(y, weights[p + "proj.w"], weights[p + "proj.b"])
        h = F.layer_norm(x, (d,), weights[p + "ln2.w"], weights[p + "ln2.b"])
        h = F.gelu(F.linear(h, weights[p + "fc.w"], weights[p + "fc.b"]), approximate="tanh")
        x = x + F.linear(h, weights[p + "fc2.w"], weights[p + "fc2.b"])
    last = F.layer_norm(x[:, -1], (d,), weights["lnf.w"], weights["lnf.b"])
    return F.linear(last, weights["head"])


def llm_generate(
    size: str = "small",
    prompt_tokens: int = 64,
    new_tokens: int = 32,
    device: str | None = None,
    dtype: str | None = None,
    seed: int = 0,
    use_cache: bool = True,
    batch: int = 1,
) -> dict[str, Any]:
    """Generate ``new_tokens`` tokens greedily for one random prompt (one inference request).

    Args:
        size: model shape, a key of :data:`GPT_SHAPES` (``small`` is GPT-2 small).
        prompt_tokens: length of the prompt (random token ids drawn from ``seed``).
        new_tokens: tokens to generate; prompt plus new tokens must fit the context.
        device: torch device; ``cuda`` when available, else ``cpu``.
        dtype: ``bf16``, ``fp16`` or ``fp32``; default bf16 on CUDA (fp16 where bf16 is
            missing), fp32 on CPU.
        seed: seed of the prompt (the weights have their own fixed seed).
        use_cache: keep a KV cache (as real servers do); False recomputes the whole
            sequence at every step (for checking the cache).
        batch: prompts decoded together in one batch (1 is one FaaS request; the benchmark's
            batched ceiling uses more). ``tokens`` reports the first sequence.

    Returns:
        ``workload``, ``device``, ``dtype``, ``seconds`` (prefill and decoding, measured in
        the task), ``build_seconds`` (0 when the model was already in this process),
        ``prefill_seconds``, ``tokens_per_second`` and the generated ``tokens``.

    Raises:
        UsageError: unknown size or dtype, or a sequence longer than the context.
    """
    import torch

    shape = _gpt_shape(size)
    if prompt_tokens < 1 or new_tokens < 1 or batch < 1:
        raise UsageError("prompt_tokens, new_tokens and batch must be at least 1")
    if prompt_tokens + new_tokens > shape.context:
        raise UsageError(
            f"prompt_tokens + new_tokens = {prompt_tokens + new_tokens} exceeds the context "
            f"of llm size {size!r} ({shape.context}); ask for fewer tokens"
        )
    dev = _resolve_device(device)
    dt = _llm_dtype_name(dev, dtype)
    start = time.perf_counter()
    weights = gpt_weights(size, dev, dt)
    _sync(dev)
    build_seconds = time.perf_counter() - start

    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, shape.vocab, (batch, prompt_tokens), generator=gen).to(dev)
    out = torch.empty(batch, new_tokens, dtype=torch.long, device=dev)
    head_dim = shape.d_model // shape.heads
    length = prompt_tokens + new_tokens
    with torch.inference_mode():
        _sync(dev)
        t0 = time.perf_counter()
        cache = None
        if use_cache:
            cache = [
                (
                    torch.empty(
                        batch, shape.heads, length, head_dim, device=dev, dtype=_torch_dtype(dt)
                    ),
                    torch.empty(
                        batch, shape.heads, length, head_dim, device=dev, dtype=_torch_dtype(dt)
                    ),
                )
                for _ in range(shape.layers)
            ]
        logits = _gpt_forward(weights, shape, prompt, cache, 0)
        token = logits.argmax(-1)
        out[:, 0] = token
        _sync(dev)
        prefill_seconds = time.perf_counter() - t0
        for step in range(1, new_tokens):
            if cache is not None:
                logits = _gpt_forward(
                    weights, shape, token.view(batch, 1), cache, prompt_tokens + step - 1
                )
            else:
                seq = torch.cat([prompt, out[:, :step]], dim=1)
                logits = _gpt_forward(weights, shape, seq, None, 0)
            token = logits.argmax(-1)
            out[:, step] = token
        _sync(dev)
        seconds = time.perf_counter() - t0
    return {
        "workload": "llm",
        "device": dev,
        "dtype": dt,
        "size": size,
        "seconds": seconds,
        "build_seconds": build_seconds,
        "prefill_seconds": prefill_seconds,
        "batch": batch,
        "tokens_per_second": batch * new_tokens / seconds if seconds > 0 else float("inf"),
        "tokens": [int(x) for x in out[0].tolist()],
    }


# ---------------------------------------------------------------------------------------
# 2. Surrogate model over molecules: random molecular graphs and a message-passing network
# ---------------------------------------------------------------------------------------
#: Heavy-atom types (C, N, O, F, P, S, Cl, Br, I) and how often each is drawn.
ATOM_TYPES = ("C", "N", "O", "F", "P", "S", "Cl", "Br", "I")
_ATOM_FREQ = (0.62, 0.12, 0.13, 0.03, 0.01, 0.04, 0.03, 0.01, 0.01)
#: Bond types: single, double, triple, aromatic.
BOND_TYPES = 4
MIN_ATOMS, MAX_ATOMS = 10, 40
_MEAN_ATOMS = (MIN_ATOMS + MAX_ATOMS) / 2
_TARGET_SEED = 7
_SURROGATE_SEED = 11
_SURROGATE_CACHE: dict[tuple[int, int, str], list[Any]] = {}


def _edges_per_molecule(atoms: float) -> float:
    """Directed edges of a molecule: a spanning tree plus atoms // 8 ring closures, both ways."""
    return 2 * ((atoms - 1) + atoms / 8)


def random_molecules(n_molecules: int, seed: int, device: str = "cpu") -> dict[str, Any]:
    """A batch of random molecular graphs with a known property to learn.

    Each molecule has 10-40 heavy atoms, a random spanning tree of bonds and ``atoms // 8``
    ring-closing bonds, all drawn from ``seed``. The target is a group-additivity property
    (Benson-style): a contribution per atom type, per bond type and per bonded pair of atom
    types, from a fixed seed, standardised by constants.

    Returns:
        Tensors ``atoms`` (N,), ``mol`` (N,) molecule of each atom, ``src``/``dst`` (E,)
        directed bonds, ``bond`` (E,) bond type, ``target`` (n_molecules,), and ``count``.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    n_atoms = torch.randint(MIN_ATOMS, MAX_ATOMS + 1, (n_molecules,), generator=gen)
    total = int(n_atoms.sum())
    mol = torch.repeat_interleave(torch.arange(n_molecules), n_atoms)
    offset = torch.cumsum(n_atoms, 0) - n_atoms
    local = torch.arange(total) - offset[mol]
    atoms = torch.multinomial(torch.tensor(_ATOM_FREQ), total, replacement=True, generator=gen)
    child = torch.nonzero(local > 0).squeeze(1)
    parent = offset[mol[child]] + (torch.rand(child.numel(), generator=gen) * local[child]).long()
    rings = n_atoms // 8
    ring_mol = torch.repeat_interleave(torch.arange(n_molecules), rings)
    size = n_atoms[ring_mol]
    a = offset[ring_mol] + (torch.rand(ring_mol.numel(), generator=gen) * size).long()
    b = offset[ring_mol] + (torch.rand(ring_mol.numel(), generator=gen) * size).long()
    keep = a != b
    u = torch.cat([child, a[keep]])
    v = torch.cat([parent, b[keep]])
    bond = torch.multinomial(torch.tensor([0.7, 0.12, 0.03, 0.15]), u.numel(), True, generator=gen)

    tgen = torch.Generator().manual_seed(_TARGET_SEED)
    per_atom = torch.randn(len(ATOM_TYPES), generator=tgen)
    per_bond = torch.randn(BOND_TYPES, generator=tgen)
    per_pair = torch.randn(len(ATOM_TYPES), len(ATOM_TYPES), generator=tgen)
    per_pair = (per_pair + per_pair.T) / 2
    contrib = per_bond[bond] + per_pair[atoms[u], atoms[v]]
    target = torch.zeros(n_molecules).index_add(0, mol, per_atom[atoms])
    target = target.index_add(0, mol[u], contrib)
    # Constants rather than batch statistics, so every batch shares one scale.
    target = (target - 5.0) / 12.0
    batch = {
        "atoms": atoms,
        "mol": mol,
        "src": torch.cat([u, v]),
        "dst": torch.cat([v, u]),
        "bond": torch.cat([bond, bond]),
        "target": target,
    }
    moved: dict[str, Any] = {k: t.to(device) for k, t in batch.items()}
    moved["count"] = n_molecules
    return moved


def surrogate_weights(
    hidden: int, layers: int, device: str, seed: int = _SURROGATE_SEED
) -> list[Any]:
    """Parameters of the message-passing network, a flat list in :func:`surrogate_forward` order."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def linear(n_in: int, n_out: int) -> list[Any]:
        bound = 1 / math.sqrt(n_in)
        w = (torch.rand(n_out, n_in, generator=gen) * 2 - 1) * bound
        return [w, torch.zeros(n_out)]

    params: list[Any] = [torch.randn(len(ATOM_TYPES), hidden, generator=gen)]
    for _ in range(layers):
        params.append(torch.randn(BOND_TYPES, hidden, generator=gen))  # bond embedding
        params += linear(hidden, hidden)  # edge network -> filter
        params += linear(hidden, hidden)[:1]  # message transform (no bias)
        params += linear(2 * hidden, hidden) + linear(hidden, hidden)  # update MLP
    params += linear(hidden, hidden) + linear(hidden, 1)  # readout MLP
    return [p.to(device) for p in params]


def surrogate_forward(params: list[Any], batch: Mapping[str, Any], layers: int) -> Any:
    """Scores of the molecules in ``batch``: MPNN with edge-network filters and sum pooling.

    Per layer, a message is the transformed sender state gated by a filter computed from
    the bond type (an edge network, as in SchNet's continuous filters), summed into the
    receiver with ``index_add``; a residual MLP updates each atom from its state and its
    incoming sum. Molecule embeddings are the sums of their atoms' states.
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    it = iter(params)
    h = F.embedding(batch["atoms"], next(it))
    src, dst = batch["src"], batch["dst"]
    for _ in range(layers):
        bond_emb, we, be, wm = next(it), next(it), next(it), next(it)
        u1, c1, u2, c2 = next(it), next(it), next(it), next(it)
        gate = F.linear(F.silu(F.embedding(batch["bond"], bond_emb)), we, be)
        message = F.linear(h, wm)[src] * gate
        incoming = torch.zeros_like(h).index_add(0, dst, message)
        h = h + F.linear(F.silu(F.linear(torch.cat([h, incoming], 1), u1, c1)), u2, c2)
    pooled = h.new_zeros(batch["count"], h.shape[1]).index_add(0, batch["mol"], h)
    r1, d1, r2, d2 = next(it), next(it), next(it), next(it)
    return F.linear(F.silu(F.linear(pooled, r1, d1)), r2, d2).squeeze(-1)


def surrogate_infer(
    batch_size: int = 256,
    hidden: int = 128,
    layers: int = 3,
    device: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Score a batch of candidate molecules with the surrogate model.

    Args:
        batch_size: molecules to score (each 10-40 atoms).
        hidden: width of the atom states.
        layers: message-passing layers.
        device: torch device; ``cuda`` when available, else ``cpu``.
        seed: seed of the candidate molecules (the model's weights have a fixed seed and
            are built once per process).

    Returns:
        ``workload``, ``device``, ``seconds`` (the forward pass), ``molecules``, ``atoms``
        and a summary of the scores: ``score_mean``, ``score_std``, ``score_max``, ``best``
        (index of the best-scoring molecule).
    """
    import torch

    if batch_size < 1:
        raise UsageError("batch_size must be at least 1")
    dev = _resolve_device(device)
    key = (hidden, layers, dev)
    if key not in _SURROGATE_CACHE:
        _SURROGATE_CACHE[key] = surrogate_weights(hidden, layers, dev)
    params = _SURROGATE_CACHE[key]
    batch = random_molecules(batch_size, seed, dev)
    with torch.inference_mode():
        _sync(dev)
        t0 = time.perf_counter()
        scores = surrogate_forward(params, batch, layers)
        summary = torch.stack([scores.mean(), scores.std(unbiased=False), scores.max()])
        best = int(scores.argmax())
        mean, std, top = (float(x) for x in summary.tolist())
        seconds = time.perf_counter() - t0  # argmax/tolist synchronised already
    return {
        "workload": "surrogate_infer",
        "device": dev,
        "seconds": seconds,
        "molecules": batch_size,
        "atoms": int(batch["atoms"].numel()),
        "score_mean": mean,
        "score_std": std,
        "score_max": top,
        "best": best,
    }


def surrogate_train(
    n_molecules: int = 1024,
    epochs: int = 3,
    batch_size: int = 128,
    hidden: int = 64,
    layers: int = 3,
    lr: float = 3e-3,
    device: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Retrain the surrogate from scratch on ``n_molecules`` labelled molecules (Adam, MSE).

    Args:
        n_molecules: size of the training set, cut into mini-batches of ``batch_size``.
        epochs: passes over the training set (batches shuffled each epoch).
        batch_size: molecules per optimiser step.
        hidden: width of the atom states.
        layers: message-passing layers.
        lr: Adam learning rate.
        device: torch device; ``cuda`` when available, else ``cpu``.
        seed: seed of the molecules and of the batch order.

    Returns:
        ``workload``, ``device``, ``seconds`` (the training loop), ``steps``, ``losses``
        (mean loss of each epoch), ``loss_first`` and ``loss_final``.
    """
    import torch

    if n_molecules < 1 or epochs < 1 or batch_size < 1:
        raise UsageError("n_molecules, epochs and batch_size must be at least 1")
    dev = _resolve_device(device)
    n_batches = max(1, math.ceil(n_molecules / batch_size))
    sizes = [min(batch_size, n_molecules - i * batch_size) for i in range(n_batches)]
    data = [random_molecules(n, seed * 100_003 + i, dev) for i, n in enumerate(sizes)]
    params = [p.requires_grad_() for p in surrogate_weights(hidden, layers, dev)]
    optimiser = torch.optim.Adam(params, lr=lr)
    order_gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(epochs):
        total = torch.zeros((), device=dev)
        for i in torch.randperm(n_batches, generator=order_gen).tolist():
            batch = data[i]
            loss: Any = torch.nn.functional.mse_loss(
                surrogate_forward(params, batch, layers), batch["target"]
            )
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.detach() * batch["count"]
        losses.append(float(total) / n_molecules)  # one synchronisation per epoch
    _sync(dev)
    seconds = time.perf_counter() - t0
    return {
        "workload": "surrogate_train",
        "device": dev,
        "seconds": seconds,
        "steps": epochs * n_batches,
        "losses": losses,
        "loss_first": losses[0],
        "loss_final": losses[-1],
    }


# ---------------------------------------------------------------------------------------
# 3. Science kernel: matmul chain or 2-D Jacobi stencil
# ---------------------------------------------------------------------------------------
SCIENCE_KINDS = ("matmul", "jacobi")


def _check_kind(kind: str) -> None:
    if kind not in SCIENCE_KINDS:
        raise UsageError(
            f"science kernel kind {kind!r} is unknown; choose one of {', '.join(SCIENCE_KINDS)}"
        )


def science_kernel(
    n: int = 4096,
    iterations: int = 20,
    kind: str = "matmul",
    device: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """A dense fp32 kernel loop of size ``n`` returning a checksum.

    ``matmul``: ``x <- A @ x`` with random n x n ``A`` and ``x``, rescaled by its largest
    entry each iteration (a power iteration on a block of vectors; compute-bound).
    ``jacobi``: Jacobi relaxation of Laplace's equation on an n x n grid whose top edge
    is held at 1 (memory-bound).

    Args:
        n: matrix or grid side.
        iterations: loop iterations.
        kind: ``matmul`` or ``jacobi``.
        device: torch device; ``cuda`` when available, else ``cpu``.
        seed: seed of the matmul operands (the stencil starts from a fixed state).

    Returns:
        ``workload``, ``device``, ``kind``, ``n``, ``iterations``, ``seconds`` (the loop),
        ``checksum`` (sum of the final array, in float64) and ``gflops`` (work done).
    """
    import torch

    _check_kind(kind)
    if n < 3 or iterations < 1:
        raise UsageError("n must be at least 3 and iterations at least 1")
    dev = _resolve_device(device)
    if kind == "matmul":
        gen = torch.Generator().manual_seed(seed)
        a = (torch.randn(n, n, generator=gen) / math.sqrt(n)).to(dev)
        x = torch.randn(n, n, generator=gen).to(dev)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(iterations):
            x = a @ x
            x.div_(torch.linalg.vector_norm(x, ord=math.inf))
        flops = 2.0 * n**3 * iterations
    else:
        x = torch.zeros(n, n, device=dev)
        x[0, :] = 1.0
        y = x.clone()
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(iterations):
            t = x[:-2, 1:-1] + x[2:, 1:-1]
            t += x[1:-1, :-2]
            t += x[1:-1, 2:]
            y[1:-1, 1:-1] = t.mul_(0.25)
            x, y = y, x
        flops = 4.0 * (n - 2) ** 2 * iterations
    checksum = float(x.double().sum())
    _sync(dev)
    seconds = time.perf_counter() - t0
    return {
        "workload": "science",
        "device": dev,
        "kind": kind,
        "n": n,
        "iterations": iterations,
        "seconds": seconds,
        "checksum": checksum,
        "gflops": flops / 1e9,
    }


# ---------------------------------------------------------------------------------------
# Emulated cost on an H100 (model and sources in the module docstring)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Kernels:
    """``count`` launches of one kernel, each with these flops, bytes and thread blocks."""

    count: float
    flops: float
    bytes: float
    blocks: float
    dtype: str = "fp32"
    memory_efficiency: float = MEMORY_EFFICIENCY


def _gemm(count: float, m: float, k: float, n: float, dtype: str) -> _Kernels:
    size = _DTYPE_BYTES[dtype]
    tile_n = 64 if m <= 16 else 128
    blocks = math.ceil(m / 128) * math.ceil(n / tile_n)
    return _Kernels(count, 2 * m * k * n, (m * k + k * n + m * n) * size, blocks, dtype)


def _elementwise(
    count: float, elements: float, arrays: float, dtype: str, efficiency: float = MEMORY_EFFICIENCY
) -> _Kernels:
    """A kernel touching ``arrays`` arrays (inputs and output) of ``elements`` elements each."""
    size = _DTYPE_BYTES[dtype]
    return _Kernels(
        count, elements, elements * arrays * size, math.ceil(elements / 1024), dtype, efficiency
    )


def _repeat(kernels: Iterable[_Kernels], times: float) -> list[_Kernels]:
    return [replace(k, count=k.count * times) for k in kernels]


def _total(kernels: Iterable[_Kernels], memory_bytes: float) -> EmulatedCost:
    work_s = run_s = busy_s = moved = 0.0
    for k in kernels:
        if k.count <= 0:
            continue
        exec_s = max(
            k.flops / (PEAK_FLOPS[k.dtype] * COMPUTE_EFFICIENCY),
            k.bytes / (HBM_BANDWIDTH * k.memory_efficiency),
        )
        work_s += k.count * max(exec_s, LAUNCH_OVERHEAD_S)
        run_s += k.count * exec_s
        busy_s += k.count * exec_s * min(1.0, max(k.blocks, 1) / H100_SM_COUNT)
        moved += k.count * k.bytes
    if run_s <= 0:
        raise UsageError("the task launches no kernel that does work; give it a positive size")
    duty = min(1.0, run_s / work_s)
    occupancy = min(1.0, max(busy_s / run_s, 1.0 / H100_SM_COUNT))
    bandwidth = min(1.0, moved / (run_s * HBM_BANDWIDTH * MEMORY_EFFICIENCY))
    memory_mib = CUDA_CONTEXT_MIB + math.ceil(memory_bytes / 2**20)
    return EmulatedCost(
        work_ms=work_s * 1e3,
        duty=duty,
        occupancy=occupancy,
        memory_mib=memory_mib,
        bandwidth=bandwidth,
    )


def _gpt_pass(
    shape: GptShape, tokens: float, context: float, dtype: str, batch: int = 1
) -> list[_Kernels]:
    """Kernels of one forward pass over ``tokens`` new tokens (per sequence, ``batch``
    sequences) attending to ``context`` keys."""
    d, layers, size = shape.d_model, shape.layers, _DTYPE_BYTES[dtype]
    m = tokens * batch
    return [
        _elementwise(3, m * d, 3, dtype),  # embedding gathers and add
        _gemm(layers, m, d, 3 * d, dtype),  # qkv
        _gemm(layers, m, d, d, dtype),  # attention output projection
        _gemm(layers, m, d, 4 * d, dtype),  # fc
        _gemm(layers, m, 4 * d, d, dtype),  # fc2
        # Attention: reads the cached keys and values once, one block per head per 128 queries.
        _Kernels(
            layers,
            4 * m * context * d,
            (2 * batch * context * d + 2 * m * d) * size,
            shape.heads * batch * math.ceil(tokens / 128),
            dtype,
        ),
        _elementwise(2 * layers, m * d, 2, dtype),  # KV-cache writes
        _elementwise(layers, m * d, 2, dtype),  # head transpose
        _elementwise(2 * layers, m * d, 2, dtype),  # layer norms
        _elementwise(2 * layers, m * d, 3, dtype),  # residual adds
        _elementwise(layers, 4 * m * d, 2, dtype),  # gelu
        _elementwise(1, batch * d, 2, dtype),  # final layer norm (last position only)
        _gemm(1, batch, d, shape.vocab, dtype),  # logits of the last position
        _elementwise(2, batch * shape.vocab, 1, dtype),  # argmax, token write
    ]


def _llm_cost(
    size: str, prompt_tokens: int, new_tokens: int, dtype: str | None, batch: int = 1
) -> EmulatedCost:
    shape = _gpt_shape(size)
    dt = dtype or "bf16"  # what llm_generate picks on an H100
    if dt not in _DTYPE_BYTES:
        raise UsageError(f"dtype {dt!r} is unknown; choose one of {', '.join(_DTYPE_BYTES)}")
    kernels = _gpt_pass(shape, prompt_tokens, prompt_tokens, dt, batch)
    steps = new_tokens - 1
    if steps > 0:
        mean_context = prompt_tokens + (new_tokens + 1) / 2
        kernels += _repeat(_gpt_pass(shape, 1, mean_context, dt, batch), steps)
    size_b = _DTYPE_BYTES[dt]
    length = prompt_tokens + new_tokens
    memory = (
        shape.params * size_b
        + batch * 2 * shape.layers * length * shape.d_model * size_b  # KV cache
        + batch * 8 * prompt_tokens * shape.d_model * size_b  # prefill activations (fc: 4d)
        + batch * shape.heads * prompt_tokens * prompt_tokens * size_b  # unfused scores
    )
    return _total(kernels, memory)


def _molecule_bytes(molecules: float) -> float:
    """Device bytes of a batch's graphs: 2 int64 per atom, 3 int64 per directed bond."""
    return molecules * (_MEAN_ATOMS * 16 + _edges_per_molecule(_MEAN_ATOMS) * 24)


def _surrogate_pass(molecules: float, hidden: int, layers: int) -> list[_Kernels]:
    """Kernels of one forward pass of the surrogate over ``molecules`` molecules."""
    atoms = molecules * _MEAN_ATOMS
    edges = molecules * _edges_per_molecule(_MEAN_ATOMS)
    h = hidden
    return [
        _elementwise(1, atoms * h, 2, "fp32", GATHER_EFFICIENCY),  # atom embedding
        _elementwise(layers, edges * h, 2, "fp32", GATHER_EFFICIENCY),  # bond embedding
        _elementwise(layers, edges * h, 2, "fp32"),  # silu
        _gemm(layers, edges, h, h, "fp32"),  # edge network
        _gemm(layers, atoms, h, h, "fp32"),  # message transform
        _elementwise(layers, edges * h, 2, "fp32", GATHER_EFFICIENCY),  # gather senders
        _elementwise(layers, edges * h, 3, "fp32"),  # gate
        _elementwise(layers, atoms * h, 1, "fp32"),  # zeros
        _elementwise(layers, edges * h, 2, "fp32", GATHER_EFFICIENCY),  # index_add (atomics)
        _elementwise(layers, 2 * atoms * h, 2, "fp32"),  # cat
        _gemm(layers, atoms, 2 * h, h, "fp32"),  # update 1
        _elementwise(layers, atoms * h, 2, "fp32"),  # silu
        _gemm(layers, atoms, h, h, "fp32"),  # update 2
        _elementwise(layers, atoms * h, 3, "fp32"),  # residual
        _elementwise(2, atoms * h, 2, "fp32", GATHER_EFFICIENCY),  # pooling zeros + index_add
        _gemm(1, molecules, h, h, "fp32"),  # readout 1
        _elementwise(1, molecules * h, 2, "fp32"),  # silu
        _gemm(1, molecules, h, 1, "fp32"),  # readout 2
    ]


def _surrogate_params(hidden: int, layers: int) -> int:
    h = hidden
    per_layer = BOND_TYPES * h + (h * h + h) + h * h + (2 * h * h + h) + (h * h + h)
    return len(ATOM_TYPES) * h + layers * per_layer + (h * h + h) + (h + 1)


def _surrogate_infer_cost(batch_size: int, hidden: int, layers: int) -> EmulatedCost:
    kernels = _surrogate_pass(batch_size, hidden, layers)
    kernels.append(_elementwise(4, batch_size, 1, "fp32"))  # score summary reductions
    atoms = batch_size * _MEAN_ATOMS
    edges = batch_size * _edges_per_molecule(_MEAN_ATOMS)
    # Inference frees each layer's tensors before the next: peak is one layer's worth.
    live = 4 * (4 * edges * hidden + 5 * atoms * hidden)
    params = 4 * _surrogate_params(hidden, layers)
    return _total(kernels, params + _molecule_bytes(batch_size) + live)


def _surrogate_train_cost(
    n_molecules: int, epochs: int, batch_size: int, hidden: int, layers: int
) -> EmulatedCost:
    steps_per_epoch = max(1, math.ceil(n_molecules / batch_size))
    step_molecules = n_molecules / steps_per_epoch
    forward = _surrogate_pass(step_molecules, hidden, layers)
    n_params = _surrogate_params(hidden, layers)
    tensors = 1 + 8 * layers + 4
    per_step = (
        forward
        # Backward: two GEMMs per forward GEMM, about twice the element-wise traffic.
        + _repeat(forward, 2)
        + [
            _elementwise(3, step_molecules, 3, "fp32"),  # MSE loss and its gradient
            # Adam with PyTorch's multi-tensor (foreach) kernels: ~10 launches per step.
            _Kernels(10, 10 * n_params, 16 * 4 * n_params, math.ceil(n_params / 1024) + tensors),
        ]
    )
    kernels = _repeat(per_step, epochs * steps_per_epoch)
    atoms = step_molecules * _MEAN_ATOMS
    edges = step_molecules * _edges_per_molecule(_MEAN_ATOMS)
    saved = 4 * layers * (6 * edges * hidden + 6 * atoms * hidden)  # kept for backward
    # Weights, gradients and two Adam moments; the batch's saved activations; all batches.
    return _total(kernels, 4 * 4 * n_params + saved + _molecule_bytes(n_molecules))


def _science_cost(n: int, iterations: int, kind: str) -> EmulatedCost:
    _check_kind(kind)
    elements = float(n) * n
    if kind == "matmul":
        kernels = [
            _gemm(iterations, n, n, n, "fp32"),
            _elementwise(iterations, elements, 1, "fp32"),  # max-norm reduction
            _elementwise(iterations, elements, 2, "fp32"),  # rescale in place
            _elementwise(1, elements, 1, "fp32"),  # checksum
        ]
        return _total(kernels, 3 * 4 * elements)
    kernels = [
        _elementwise(3 * iterations, elements, 3, "fp32"),  # the three additions
        _elementwise(iterations, elements, 2, "fp32"),  # scale by 1/4
        _elementwise(iterations, elements, 2, "fp32"),  # copy into the interior
        _elementwise(1, elements, 1, "fp32"),  # checksum
    ]
    return _total(kernels, 3 * 4 * elements)


def emulated_cost(workload: str, **params: Any) -> EmulatedCost:
    """Estimated cost of one task of ``workload`` on a whole H100-80GB SXM.

    Estimates from the documented model at the top of this module, to be replaced by
    measurements on a real GPU. ``device`` and ``seed`` are accepted and ignored.

    Args:
        workload: a key of :data:`WORKLOADS`.
        **params: the task's keyword arguments; missing ones take the workload's defaults.

    Raises:
        UsageError: unknown workload or parameter.
    """
    if workload not in WORKLOADS:
        raise UsageError(f"workload {workload!r} is unknown; choose one of {', '.join(WORKLOADS)}")
    p = WORKLOADS[workload].params(**params)
    if workload == "llm":
        return _llm_cost(p["size"], p["prompt_tokens"], p["new_tokens"], p["dtype"], p["batch"])
    if workload == "surrogate_infer":
        return _surrogate_infer_cost(p["batch_size"], p["hidden"], p["layers"])
    if workload == "surrogate_train":
        return _surrogate_train_cost(
            p["n_molecules"], p["epochs"], p["batch_size"], p["hidden"], p["layers"]
        )
    return _science_cost(p["n"], p["iterations"], p["kind"])


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            name="llm",
            description="greedy KV-cache decoding, GPT-2-shaped transformer, one prompt per task",
            function=llm_generate,
            defaults={
                "size": "small",
                "prompt_tokens": 64,
                "new_tokens": 32,
                "device": None,
                "dtype": None,
                "seed": 0,
                "use_cache": True,
                "batch": 1,
            },
            sizes={
                "tiny": {"size": "tiny", "prompt_tokens": 8, "new_tokens": 4},
                "small": {"size": "small", "prompt_tokens": 64, "new_tokens": 32},
                "medium": {"size": "medium", "prompt_tokens": 128, "new_tokens": 64},
                "large": {"size": "large", "prompt_tokens": 256, "new_tokens": 64},
                "full": {"size": "xl", "prompt_tokens": 512, "new_tokens": 128},
            },
        ),
        Workload(
            name="surrogate_infer",
            description="message-passing network scoring a batch of random molecules",
            function=surrogate_infer,
            defaults={"batch_size": 256, "hidden": 128, "layers": 3, "device": None, "seed": 0},
            sizes={
                "tiny": {"batch_size": 16, "hidden": 32, "layers": 2},
                "small": {"batch_size": 256, "hidden": 128, "layers": 3},
                "medium": {"batch_size": 2048, "hidden": 128, "layers": 4},
                "large": {"batch_size": 8192, "hidden": 256, "layers": 4},
                "full": {"batch_size": 32768, "hidden": 256, "layers": 6},
            },
        ),
        Workload(
            name="surrogate_train",
            description="retraining the molecular surrogate for a few epochs (Adam, MSE)",
            function=surrogate_train,
            defaults={
                "n_molecules": 1024,
                "epochs": 3,
                "batch_size": 128,
                "hidden": 64,
                "layers": 3,
                "lr": 3e-3,
                "device": None,
                "seed": 0,
            },
            sizes={
                "tiny": {
                    "n_molecules": 64,
                    "epochs": 6,
                    "batch_size": 16,
                    "hidden": 32,
                    "layers": 2,
                },
                "small": {
                    "n_molecules": 1024,
                    "epochs": 3,
                    "batch_size": 128,
                    "hidden": 64,
                    "layers": 3,
                },
                "medium": {
                    "n_molecules": 4096,
                    "epochs": 5,
                    "batch_size": 256,
                    "hidden": 128,
                    "layers": 3,
                },
                "large": {
                    "n_molecules": 16384,
                    "epochs": 5,
                    "batch_size": 512,
                    "hidden": 128,
                    "layers": 4,
                },
                "full": {
                    "n_molecules": 65536,
                    "epochs": 5,
                    "batch_size": 1024,
                    "hidden": 256,
                    "layers": 4,
                },
            },
        ),
        Workload(
            name="science",
            description="fp32 matmul chain (power iteration on a block of vectors), compute-bound",
            function=science_kernel,
            defaults={"n": 4096, "iterations": 20, "kind": "matmul", "device": None, "seed": 0},
            sizes={
                "tiny": {"n": 64, "iterations": 3},
                "small": {"n": 1024, "iterations": 20},
                "medium": {"n": 2048, "iterations": 20},
                "large": {"n": 4096, "iterations": 20},
                "full": {"n": 8192, "iterations": 20},
            },
        ),
        Workload(
            name="stencil",
            description="2-D Jacobi relaxation of Laplace's equation in fp32, memory-bound",
            function=science_kernel,
            defaults={"n": 4096, "iterations": 100, "kind": "jacobi", "device": None, "seed": 0},
            sizes={
                "tiny": {"n": 64, "iterations": 5},
                "small": {"n": 1024, "iterations": 100},
                "medium": {"n": 4096, "iterations": 100},
                "large": {"n": 8192, "iterations": 100},
                "full": {"n": 16384, "iterations": 100},
            },
        ),
    )
}
