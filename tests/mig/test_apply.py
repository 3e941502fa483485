"""`plan_commands` and `apply`: the nvidia-smi commands, and every refusal before running them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gpuslice.errors import MigError
from gpuslice.hardware.inventory import Inventory
from gpuslice.mig.apply import apply, plan_commands
from gpuslice.mig.check import assert_layout

Fleet = Callable[..., Inventory]


def real(inv: Inventory) -> Inventory:
    """The same GPUs as if read through NVML (apply may run commands for these)."""
    return replace(inv, emulated=False, source="nvml")


def never_run(command: Sequence[str], **_: Any) -> subprocess.CompletedProcess[str]:
    raise AssertionError(f"nothing may run here, but {list(command)} was")


def idle(_uuid: str) -> list[int]:
    return []


class Recorder:
    """A runner that records the commands and answers like a successful nvidia-smi."""

    def __init__(self, returncode: int = 0, stderr: str = "") -> None:
        self.calls: list[list[str]] = []
        self.kwargs: list[dict[str, Any]] = []
        self.returncode = returncode
        self.stderr = stderr

    def __call__(self, command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(command))
        self.kwargs.append(kwargs)
        return subprocess.CompletedProcess(list(command), self.returncode, "", self.stderr)


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def test_missing_instances_become_one_create_command_per_gpu_largest_first(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "count": 2, "mig": ["1g.5gb"]})
    plan = "version: 1\npools:\n  t: {mig: {profile: 1g.5gb, count: 2}}\n  m: {mig: {profile: 3g.20gb, count: 1}}\n"
    commands = plan_commands(assert_layout(plan, inv), inv)
    assert commands == [
        ["nvidia-smi", "mig", "-i", "0", "-cgi", "3g.20gb,1g.5gb", "-C"],
        ["nvidia-smi", "mig", "-i", "1", "-cgi", "3g.20gb,1g.5gb", "-C"],
    ]


def test_nothing_missing_means_no_command(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": ["3g.20gb", "1g.5gb"]})
    assert plan_commands(assert_layout("tiny=mig:1g.5gb", inv), inv) == []


def test_instances_blocked_by_placement_are_refused_naming_what_blocks(fleet: Fleet) -> None:
    # 4g.20gb may only start at memory slice 0, where the 1g.5gb sits; by counts it would fit.
    inv = fleet({"model": "A100-40GB", "mig": ["1g.5gb"]})
    diff = assert_layout("big=mig:4g.20gb", inv)
    with pytest.raises(MigError, match="do not fit beside") as err:
        plan_commands(diff, inv)
    assert "GPU instance 1 (1g.5gb at memory slice 0" in str(err.value)
    assert "never destroys" in str(err.value)


def test_too_many_slices_names_the_fewest_instances_to_destroy(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": ["2g.10gb", "2g.10gb", "2g.10gb"]})
    with pytest.raises(MigError) as err:
        plan_commands(assert_layout("big=mig:4g.20gb", inv), inv)
    message = str(err.value)
    assert "GPU instance 1 (2g.10gb at memory slice 0" in message
    assert "GPU instance 2 (2g.10gb at memory slice 2" in message
    assert "GPU instance 3" not in message


def test_instances_that_cannot_fit_even_on_an_empty_gpu_are_refused(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": []})
    with pytest.raises(MigError, match="cannot fit on one GPU even when empty"):
        plan_commands(assert_layout("big=3x mig:3g.20gb", inv), inv)


def test_a_plan_that_cannot_fit_with_what_it_keeps_is_refused_as_a_whole(fleet: Fleet) -> None:
    # 2x 3g.20gb + 1g.5gb need 9 memory slices: no instance is worth destroying.
    inv = fleet({"model": "A100-40GB", "mig": ["3g.20gb", "1g.5gb"]})
    with pytest.raises(
        MigError, match=r"1g\.5gb, 3g\.20gb, 3g\.20gb on this GPU, which cannot fit"
    ):
        plan_commands(assert_layout("a=2x mig:3g.20gb, b=mig:1g.5gb", inv), inv)


def test_only_instances_the_plan_does_not_use_are_named_to_destroy(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": ["2g.10gb", "1g.5gb", "1g.5gb", "3g.20gb"]})
    with pytest.raises(MigError) as err:
        plan_commands(assert_layout("a=2x mig:3g.20gb", inv), inv)
    message = str(err.value)
    assert "3g.20gb at memory slice 4" not in message  # the plan keeps using that one
    assert message.count("GPU instance") == 3  # the 2g.10gb and both 1g.5gb in slices 0-3


def test_unknown_placements_are_checked_by_counts_and_said_so(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": ["1g.5gb"]})
    gpu = inv.gpus[0]
    unplaced = tuple(replace(d, placement_start=None) for d in gpu.mig_devices)
    inv = replace(inv, gpus=(replace(gpu, mig_devices=unplaced),))
    said: list[str] = []
    report = apply("big=mig:4g.20gb", inv, runner=never_run, echo=said.append)
    assert report.commands == (("nvidia-smi", "mig", "-i", "0", "-cgi", "4g.20gb", "-C"),)
    assert any("checked by counts only" in line for line in said)


def test_mig_mode_off_is_refused_with_the_command_for_the_admin(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB"})
    with pytest.raises(MigError, match="sudo nvidia-smi -i 0 -mig 1"):
        apply("tiny=mig:1g.5gb", inv, dry_run=True, runner=never_run, echo=lambda _: None)


def test_emulated_fleet_is_always_a_dry_run(fleet: Fleet) -> None:
    inv = fleet({"model": "A100-40GB", "mig": ["3g.20gb", "1g.5gb"]})
    said: list[str] = []
    report = apply("tiny=2x mig:1g.5gb", inv, runner=never_run, echo=said.append)
    assert report.dry_run
    assert not report.ran
    assert report.emulated
    assert report.commands == (("nvidia-smi", "mig", "-i", "0", "-cgi", "1g.5gb", "-C"),)
    assert "emulated GPUs" in said[0]
    assert "  nvidia-smi mig -i 0 -cgi 1g.5gb -C" in said


def test_dry_run_needs_no_root_and_runs_nothing(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    inv = real(fleet({"model": "A100-40GB", "mig": ["3g.20gb", "1g.5gb"]}))
    report = apply("tiny=2x mig:1g.5gb", inv, dry_run=True, runner=never_run, echo=lambda _: None)
    assert report.dry_run
    assert not report.emulated
    assert len(report.commands) == 1


def test_not_root_is_refused(fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    inv = real(fleet({"model": "A100-40GB", "mig": ["3g.20gb", "1g.5gb"]}))
    with pytest.raises(MigError, match="needs root"):
        apply("tiny=2x mig:1g.5gb", inv, runner=never_run, processes=idle, echo=lambda _: None)


@pytest.mark.usefixtures("as_root")
def test_gpu_with_compute_processes_is_refused(fleet: Fleet) -> None:
    inv = real(fleet({"model": "A100-40GB", "mig": ["3g.20gb", "1g.5gb"]}))
    busy_uuid = inv.gpus[0].mig_devices[0].uuid

    def processes(uuid: str) -> list[int]:
        return [4242] if uuid == busy_uuid else []

    with pytest.raises(MigError, match="GPU 0: PID 4242"):
        apply("tiny=2x mig:1g.5gb", inv, runner=never_run, processes=processes, echo=lambda _: None)


@pytest.mark.usefixtures("as_root")
def test_as_root_on_idle_gpus_each_command_is_printed_then_run(fleet: Fleet) -> None:
    inv = real(fleet({"model": "A100-40GB", "mig": ["3g.20gb", "1g.5gb"]}))
    after = real(fleet({"model": "A100-40GB", "mig": ["3g.20gb", "1g.5gb", "1g.5gb"]}))
    events: list[str] = []
    runner = Recorder()

    def run(command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        events.append("ran " + " ".join(command))
        return runner(command, **kwargs)

    report = apply(
        "tiny=2x mig:1g.5gb",
        inv,
        runner=run,
        processes=idle,
        echo=events.append,
        reread=lambda: after,
    )
    assert runner.calls == [["nvidia-smi", "mig", "-i", "0", "-cgi", "1g.5gb", "-C"]]
    printed = events.index("$ nvidia-smi mig -i 0 -cgi 1g.5gb -C")
    assert events[printed + 1] == "ran nvidia-smi mig -i 0 -cgi 1g.5gb -C"
    assert report.ran
    assert report.after is not None
    assert report.after.satisfied


@pytest.mark.usefixtures("as_root")
def test_commands_reach_a_real_executable(fleet: Fleet, tmp_path: Path) -> None:
    log = tmp_path / "argv"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f'#!/bin/sh\necho "$@" > {log}\necho "Successfully created GPU instance"\n')
    fake.chmod(0o755)

    def runner(command: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        assert kwargs == {"capture_output": True, "text": True, "check": False}
        return subprocess.run(
            [str(fake), *command[1:]], capture_output=True, text=True, check=False
        )

    inv = real(fleet({"model": "A100-40GB", "mig": ["3g.20gb", "1g.5gb"]}))
    said: list[str] = []
    apply("tiny=2x mig:1g.5gb", inv, runner=runner, processes=idle, echo=said.append)
    assert log.read_text().split() == ["mig", "-i", "0", "-cgi", "1g.5gb", "-C"]
    assert "Successfully created GPU instance" in said


@pytest.mark.usefixtures("as_root")
def test_a_failing_command_is_reported_and_nothing_else_runs(fleet: Fleet) -> None:
    inv = real(fleet({"model": "A100-40GB", "count": 2, "mig": ["3g.20gb"]}))
    runner = Recorder(returncode=6, stderr="Insufficient Resources")
    with pytest.raises(MigError, match="exit code 6: Insufficient Resources"):
        apply("tiny=mig:1g.5gb", inv, runner=runner, processes=idle, echo=lambda _: None)
    assert len(runner.calls) == 1


@pytest.mark.usefixtures("as_root")
def test_declining_the_question_runs_nothing(fleet: Fleet) -> None:
    inv = real(fleet({"model": "A100-40GB", "mig": ["3g.20gb"]}))
    with pytest.raises(MigError, match="not confirmed"):
        apply(
            "tiny=mig:1g.5gb",
            inv,
            runner=never_run,
            processes=idle,
            echo=lambda _: None,
            confirm=lambda _: False,
        )


@pytest.mark.usefixtures("as_root")
def test_applying_a_satisfied_plan_changes_nothing(fleet: Fleet) -> None:
    inv = real(fleet({"model": "A100-40GB", "mig": ["3g.20gb", "1g.5gb"]}))
    report = apply("tiny=mig:1g.5gb", inv, runner=never_run, processes=idle, echo=lambda _: None)
    assert report.nothing_to_do
    assert report.commands == ()
    assert not report.ran
