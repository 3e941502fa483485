"""Bounds on everything gpuslice reads: one table, checked before anything large is built.

Plans, compact strings, fleet files and ``--json`` layouts come from users, from scripts and,
on shared clusters, from other people's files. Every reader checks these bounds first (on
the bytes, then on the YAML event stream, then on counts in the parsed data) so hostile
input ends in a located message, in bounded time and memory, never in a traceback. Each
bound is far above what a real node or workflow needs and is named in its error message.
"""

from __future__ import annotations

#: Largest plan, fleet or layout text read, in bytes (a 100-pool plan is about 10 KB).
MAX_SOURCE_BYTES = 1 << 20
#: Deepest nesting of YAML/JSON collections (a plan needs 5: pools.NAME.mig.mps.memory).
MAX_DEPTH = 32
#: YAML aliases (``*name``) in one document.
MAX_ALIASES = 256
#: YAML nodes of a document counted with every alias expanded (stops "billion laughs").
MAX_NODES = 100_000
#: Longest single scalar (a key or value) in characters.
MAX_SCALAR_CHARS = 4096
#: Pools in one plan (each is a Parsl executor with its own interchange process).
MAX_POOLS = 128
#: Workers one pool puts on one GPU or MIG instance (``per_gpu``, ``mig.per_instance``).
MAX_SLICES_PER_GPU = 256
#: MIG instances one pool takes on one GPU (``mig.count``): a GPU has at most 7.
MAX_MIG_INSTANCES = 7
#: GPUs one fleet file describes, and GPU entries in a ``gpus:`` list.
MAX_FLEET_GPUS = 1024
#: Slices of one resolved layout (all pools, all GPUs).
MAX_SLICES = 16_384
#: SMs of one device (the largest GPU today has 148; MIG instances fewer).
MAX_SM_COUNT = 1024
