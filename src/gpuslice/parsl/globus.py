"""One pool as a Globus Compute endpoint: the endpoint's ``config.yaml``.

A single-user Globus Compute endpoint reads ``~/.globus_compute/<name>/config.yaml``; when it
has an ``engine:`` stanza the endpoint runs tasks itself (``UserEndpointConfig``), and
``GlobusComputeEngine`` wraps Parsl's HighThroughputExecutor, taking its options
(``max_workers_per_node``, ``available_accelerators``) and a ``provider:`` stanza with the
provider's ``type`` and arguments, ``worker_init`` included. Format: Globus Compute docs,
"Configuration Reference"
(https://globus-compute.readthedocs.io/en/stable/endpoints/config_reference.html) and the
``config.yaml`` loader of globus-compute-endpoint 4.19 (``load_config_yaml``: a document with
``engine`` is a user endpoint; ``engine.type`` and ``provider.type`` pick the classes).

The engine's workers are started as a gpuslice configuration's are: its ``launch_cmd`` (a
HighThroughputExecutor option the engine passes through) is ``gpuslice node-run`` for this one
pool (:mod:`gpuslice.parsl.node`), which resolves the plan on the endpoint's node, starts the MPS
daemons and one Parsl worker pool per device with the slice's environment exported. A plain
function sent to the endpoint therefore runs in its slice, connected to its MPS daemon. The
engine reformats ``launch_cmd`` (``shlex.split`` then a plain join, then ``str.format`` twice),
so every word of it is free of spaces, quotes and braces: the node spec travels base64-encoded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from gpuslice.errors import UsageError
from gpuslice.parsl.config import (
    LOCAL_ADDRESS,
    SLOT_PREFIX,
    gpuslice_command,
    layout_of,
    node_spec,
    register_emulated_devices,
)
from gpuslice.parsl.executor import worker_pool_command
from gpuslice.parsl.group import NodeGroup
from gpuslice.parsl.node import encode_spec
from gpuslice.plan.layout import Layout
from gpuslice.plan.schema import Plan

__all__ = ["endpoint_config", "endpoint_yaml", "launch_command", "write_endpoint_config"]


class _Literal(str):
    """A string YAML writes as a ``|`` block (readable multi-line worker_init)."""

    __slots__ = ()


class _Dumper(yaml.SafeDumper):
    pass


def _literal(dumper: yaml.SafeDumper, text: _Literal) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(text), style="|")


_Dumper.add_representer(_Literal, _literal)


def launch_command(
    plan_or_layout: Layout | Plan | str | Path,
    layout: Layout,
    pool: str,
    *,
    fleet: str | Path | None = None,
) -> str:
    """The engine's ``launch_cmd``: ``gpuslice node-run`` for one pool, Parsl's template after.

    Raises:
        UsageError: the pool is not in the plan.
    """
    try:
        the_pool = layout.pool(pool)
    except KeyError as err:
        raise UsageError(str(err.args[0])) from err
    spec = node_spec(plan_or_layout, layout, group=NodeGroup.new_id(), fleet=fleet)
    spec = dataclasses.replace(spec, pools={pool: len(the_pool.slices)})
    words = [gpuslice_command(), "node-run", "--spec", encode_spec(spec), "--pool", pool, "--"]
    return " ".join([*words, worker_pool_command()])


def _config(
    plan_or_layout: Layout | Plan | str | Path,
    layout: Layout,
    pool: str,
    *,
    fleet: str | Path | None,
    worker_init: str,
    display_name: str | None,
) -> dict[str, Any]:
    launch = launch_command(plan_or_layout, layout, pool, fleet=fleet)
    the_pool = layout.pool(pool)
    if layout.emulated:
        register_emulated_devices(layout)
    provider: dict[str, Any] = {
        "type": "LocalProvider",
        "init_blocks": 1,
        "min_blocks": 1,
        "max_blocks": 1,
    }
    if worker_init.strip():
        provider["worker_init"] = worker_init.rstrip("\n") + "\n"
    return {
        "display_name": display_name or f"gpuslice {the_pool.name}",
        "engine": {
            "type": "GlobusComputeEngine",
            "max_workers_per_node": len(the_pool.slices),
            "available_accelerators": [f"{SLOT_PREFIX}{s.rank}" for s in the_pool.slices],
            "launch_cmd": launch,
            "address": LOCAL_ADDRESS,  # its LocalProvider's workers are on this host
            "provider": provider,
        },
    }


def endpoint_config(
    plan_or_layout: Layout | Plan | str | Path,
    pool: str,
    *,
    fleet: str | Path | None = None,
    worker_init: str = "",
    display_name: str | None = None,
) -> dict[str, Any]:
    """The endpoint configuration of one pool, as the mapping ``config.yaml`` holds.

    Args:
        plan_or_layout: a layout, plan, plan file, YAML text or compact form.
        pool: the pool the endpoint serves.
        fleet: fleet file describing the GPUs (emulated); default NVML.
        worker_init: the user's own lines (e.g. activating the Python environment); they run
            before gpuslice's.
        display_name: the endpoint's display name; default ``gpuslice <pool>``.

    Raises:
        UsageError: the pool is not in the plan.
        PlanError: the plan does not fit the GPUs.
    """
    layout = layout_of(plan_or_layout, fleet)
    return _config(
        plan_or_layout,
        layout,
        pool,
        fleet=fleet,
        worker_init=worker_init,
        display_name=display_name,
    )


def endpoint_yaml(
    plan_or_layout: Layout | Plan | str | Path,
    pool: str,
    *,
    fleet: str | Path | None = None,
    worker_init: str = "",
    display_name: str | None = None,
) -> str:
    """:func:`endpoint_config` as ``config.yaml`` text, with a header naming the plan."""
    layout = layout_of(plan_or_layout, fleet)
    config = _config(
        plan_or_layout,
        layout,
        pool,
        fleet=fleet,
        worker_init=worker_init,
        display_name=display_name,
    )
    provider = config["engine"]["provider"]
    if "worker_init" in provider:
        provider["worker_init"] = _Literal(provider["worker_init"])
    header = (
        f"# Globus Compute endpoint for gpuslice pool {pool!r}\n"
        f"# plan: {layout.plan_text}\n"
        f"# GPUs: {layout.inventory_source} (device UUIDs belong to this node)\n"
    )
    body = yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    return header + body


def write_endpoint_config(
    plan_or_layout: Layout | Plan | str | Path,
    pool: str,
    out: str | Path | None = None,
    *,
    fleet: str | Path | None = None,
) -> str:
    """Write (or return) a pool's endpoint ``config.yaml``; what ``gpuslice globus-compute`` does.

    Args:
        plan_or_layout: a layout, plan, plan file, YAML text or compact form.
        pool: the pool the endpoint serves.
        out: file to write; None only returns the text.
        fleet: fleet file describing the GPUs (emulated); default NVML.

    Returns:
        The YAML text.

    Raises:
        UsageError: the pool is not in the plan, or the file cannot be written.
    """
    text = endpoint_yaml(plan_or_layout, pool, fleet=fleet)
    if out is not None:
        try:
            Path(out).write_text(text)
        except OSError as err:
            raise UsageError(f"cannot write {str(out)!r}: {err.strerror}") from err
    return text
