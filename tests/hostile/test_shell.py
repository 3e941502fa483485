"""Nothing user-supplied reaches shell text unchecked, whatever object it came through.

Layouts from ``resolve`` and from JSON are checked (tests/plan/test_layout_json.py), and so is a
``Layout`` built by hand in Python, when ``parsl_config`` takes it. What gpuslice writes into a
job's shell text (the node-run command) is quoted word by word whatever it holds
(tests/parsl/test_config.py checks a hostile layout's command word by word).
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
from parsl.providers import LocalProvider

from gpuslice import PlanError, discover, resolve
from gpuslice.parsl.config import parsl_config
from gpuslice.plan.layout import Layout, layout_problems

from .conftest import FLEET_2XH100


def _hand_built(name: str) -> Layout:
    good = resolve("a=share", discover(FLEET_2XH100))
    pool = good.pools[0]
    renamed = dataclasses.replace(
        pool, name=name, slices=tuple(dataclasses.replace(s, pool=name) for s in pool.slices)
    )
    return dataclasses.replace(good, pools=(renamed,))


def test_layout_problems_names_the_bad_pool_of_a_hand_built_layout() -> None:
    problems = layout_problems(_hand_built("a\ntouch /tmp/x;#"))
    assert [p.location for p in problems] == ["pools.0.name"]


def test_parsl_config_refuses_a_hand_built_layout_with_a_shell_pool_name() -> None:
    with pytest.raises(PlanError):
        parsl_config(_hand_built("a\ntouch /tmp/x;#"))


def test_the_job_command_of_a_hostile_layout_runs_no_injected_command(tmp_path: Path) -> None:
    # Past every loader (a layout built by hand, unchecked): the shell still sees quoted words.
    from gpuslice.parsl.group import NodeGroup, _Node
    from gpuslice.parsl.node import NodeSpec

    marker = tmp_path / "injected"
    name = f"a\ntouch {marker};#"
    pool_command = f"worker $(touch {marker}); touch {marker}"
    spec = NodeSpec(group="g", pools={name: 1}, layout=_hand_built(name).to_dict())
    # The job's command with `printf '%s\0'` in place of gpuslice: it prints the words it got.
    group = NodeGroup(LocalProvider(), spec, ["printf", "%s\\0"])
    command = group.node_command(_Node(index=0, created=0.0, commands={name: pool_command}))

    done = subprocess.run(
        ["bash", "-c", command], check=False, capture_output=True, text=True, timeout=30
    )

    assert done.returncode == 0
    assert not marker.exists()
    words = done.stdout.split("\0")[:-1]
    assert words[0] == "--spec"
    assert words[2:] == ["--pool", f"{name}={pool_command}"]
