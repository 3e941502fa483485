"""Layouts loaded back from JSON (``plan show --json``) are validated as a resolved plan is."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from gpuslice import Layout, PlanError, discover, resolve

FLEET = Path(__file__).resolve().parents[2] / "src" / "gpuslice" / "examples" / "fleet-2xh100.yaml"


@pytest.fixture
def layout_json() -> dict[str, Any]:
    layout = resolve(
        "version: 1\nmps_dir: /tmp/gs-j\npools:\n  a: {mps: {compute: 30, memory: 8GiB}, per_gpu: 2}\n  b: {share: {}}\n",
        discover(FLEET),
    )
    data: dict[str, Any] = json.loads(json.dumps(layout.to_dict()))
    return data


def refused(data: Any) -> list[str]:
    with pytest.raises(PlanError) as caught:
        Layout.from_dict(data)
    return [str(p) for p in caught.value.problems]


def test_plan_show_json_loads_back_unchanged(layout_json: dict[str, Any]) -> None:
    layout = Layout.from_dict(layout_json)
    assert layout.to_dict() == layout_json


def _edit(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    edited = copy.deepcopy(data)
    target = edited
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return edited


@pytest.mark.parametrize(
    ("path", "value", "where", "says"),
    [
        (("pools", 0, "name"), "a\ntouch /tmp/x", "pools.0.name", "invalid pool name"),
        (("pools", 0, "name"), "b", "pools.1.name", "appears twice"),
        (
            ("pools", 0, "slices", 0, "device"),
            "$(reboot)",
            "pools.0.slices.0.device",
            "not a GPU- UUID",
        ),
        (
            ("pools", 0, "slices", 0, "gpu_uuid"),
            "GPU-`id`",
            "pools.0.slices.0.gpu_uuid",
            "not a GPU UUID",
        ),
        (
            ("pools", 0, "slices", 0, "mps_pipe_dir"),
            "/tmp/x;y/pipe",
            "pools.0.slices.0.mps_pipe_dir",
            "must be <root>/<device>/pipe",
        ),
        (("pools", 0, "slices", 0, "compute"), 500, "pools.0.slices.0.compute", "not a percentage"),
        (("pools", 0, "slices", 0, "compute"), True, "pools.0.slices.0.compute", "valid integer"),
        (
            ("pools", 0, "slices", 0, "memory_mib"),
            10**9,
            "pools.0.slices.0.memory_mib",
            "within the device's memory",
        ),
        (("pools", 0, "slices", 0, "rank"), 7, "pools.0.slices.0.rank", "slice is number 0"),
        (("pools", 0, "slices", 0, "kind"), "share", "pools.0.slices.0.kind", "its pool is 'mps'"),
        (
            ("pools", 0, "slices", 0, "mps_pipe_dir"),
            None,
            "pools.0.slices.0.mps_pipe_dir",
            "needs its daemon's pipe directory",
        ),
        (
            ("pools", 0, "slices", 0, "expected_sms"),
            1000,
            "pools.0.slices.0.expected_sms",
            "within the device's 132 SMs",
        ),
        (
            ("pools", 1, "slices", 0, "compute"),
            20,
            "pools.1.slices.0.kind",
            "a share slice has no MPS limits",
        ),
        (("pools", 0, "oversubscribe"), "yes", "pools.0.oversubscribe", "valid boolean"),
        (("pools", 0, "kind"), "rm", "pools.0.kind", "Input should be"),
        (("plan",), "a=share\nrm -rf ~", "plan", "control characters"),
        (("inventory_source",), "fleet:/x\n/y", "inventory_source", "control characters"),
        (("pools", 0, "extra"), 1, "pools.0.extra", "unknown key 'extra'"),
    ],
)
def test_an_edited_field_is_refused_with_its_location(
    layout_json: dict[str, Any], path: tuple[Any, ...], value: Any, where: str, says: str
) -> None:
    found = refused(_edit(layout_json, path, value))
    assert any(p.startswith(where) and says in p for p in found), found


def test_a_root_moved_consistently_is_still_checked(layout_json: dict[str, Any]) -> None:
    data = copy.deepcopy(layout_json)
    for s in data["pools"][0]["slices"]:
        for key in ("mps_pipe_dir", "mps_log_dir"):
            s[key] = s[key].replace("/tmp/gs-j", "/tmp/a=b")
    assert any("the MPS root '/tmp/a=b' contains '='" in p for p in refused(data))


def test_a_device_with_two_pipe_directories_is_refused(layout_json: dict[str, Any]) -> None:
    data = copy.deepcopy(layout_json)
    first = data["pools"][0]["slices"][0]
    first["mps_pipe_dir"] = first["mps_pipe_dir"].replace("/tmp/gs-j", "/tmp/gs-k")
    first["mps_log_dir"] = first["mps_log_dir"].replace("/tmp/gs-j", "/tmp/gs-k")
    assert any("has two MPS pipe directories" in p for p in refused(data))


@pytest.mark.parametrize("data", [[], "layout", None, {"pools": []}, {"inventory_source": "nvml"}])
def test_what_is_not_a_layout_is_refused(data: Any) -> None:
    assert refused(data)
