"""What an MPS limit gives a client: the SM count it will see inside CUDA.

NVIDIA: "If the active thread percentage is used for partitioning, the limit will be
internally rounded down to the nearest hardware supported thread count limit"
(https://docs.nvidia.com/deploy/mps/ , "Volta MPS Execution Resource Provisioning").
SMs are grouped in pairs (texture processing clusters) on Volta and later, so gpuslice
rounds down to an even SM count and never below one pair. The granularity was observed by
third parties, not documented by NVIDIA: a worker on a real GPU therefore accepts its limit
within one granule of this prediction (see gpuslice.parsl.worker).
"""

from __future__ import annotations

import math

#: SMs per hardware allocation unit assumed for MPS limits (one TPC = 2 SMs, Volta+).
SM_GRANULARITY = 2


def visible_sm_count(sm_count: int, percentage: float | None) -> int:
    """SMs a client sees (``cudaDevAttrMultiProcessorCount``) under a thread percentage.

    Args:
        sm_count: SMs of the device (whole GPU or MIG instance).
        percentage: ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``, or None for no limit.
    """
    if percentage is None or percentage >= 100:
        return sm_count
    granted = math.floor(sm_count * percentage / 100 / SM_GRANULARITY) * SM_GRANULARITY
    return max(min(SM_GRANULARITY, sm_count), granted)
