"""Right-sizing: profile a function in slices, choose its slice, propose a plan, route to it.

- :func:`profile` (:mod:`~gpuslice.rightsize.profiler`) measures a function through real Parsl
  workers in MPS slices of a few sizes, chosen by a knee search (:mod:`~gpuslice.rightsize.search`),
  and returns a :class:`Profile` with its recommended slice (:mod:`~gpuslice.rightsize.choice`).
- :class:`ProfileStore` (:mod:`~gpuslice.rightsize.store`) keeps profiles in sqlite, keyed by
  function, code hash and GPU model.
- :func:`suggest_plan` (:mod:`~gpuslice.rightsize.suggest`) packs profiled functions onto GPUs
  in proportion to their share of calls and writes a v1 plan.
- :func:`auto_pool` (:mod:`~gpuslice.rightsize.route`) is what ``@gpu_app(pool="auto")`` calls
  to pick a loaded pool for a function.

Names are imported on first use, so ``import gpuslice.rightsize`` does not import Parsl.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpuslice.rightsize.choice import Recommendation, recommend
    from gpuslice.rightsize.measure import Point
    from gpuslice.rightsize.profile import Profile
    from gpuslice.rightsize.profiler import ProfileError, profile
    from gpuslice.rightsize.route import auto_pool
    from gpuslice.rightsize.store import Lookup, ProfileStore
    from gpuslice.rightsize.suggest import Suggestion, suggest_plan

__all__ = [
    "Lookup",
    "Point",
    "Profile",
    "ProfileError",
    "ProfileStore",
    "Recommendation",
    "Suggestion",
    "auto_pool",
    "profile",
    "recommend",
    "suggest_plan",
]

_LAZY = {
    "Lookup": "gpuslice.rightsize.store",
    "Point": "gpuslice.rightsize.measure",
    "Profile": "gpuslice.rightsize.profile",
    "ProfileError": "gpuslice.rightsize.profiler",
    "ProfileStore": "gpuslice.rightsize.store",
    "Recommendation": "gpuslice.rightsize.choice",
    "Suggestion": "gpuslice.rightsize.suggest",
    "auto_pool": "gpuslice.rightsize.route",
    "profile": "gpuslice.rightsize.profiler",
    "recommend": "gpuslice.rightsize.choice",
    "suggest_plan": "gpuslice.rightsize.suggest",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gpuslice.rightsize' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
