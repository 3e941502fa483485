"""The hostile-input corpus of issue 14: every input path ends in exit 2 with a located message.

Each case names the command, the input, the exit code and words of the message. Cases that
merely crashed before (a traceback, exit 1) run in this process; cases that ran away (GBs of
memory, minutes, a blocked read) run in :mod:`tests.hostile.test_bounds` in a child process
under an address-space limit.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpuslice.cli import cli

from .conftest import FLEET_2XH100

Write = Callable[[str, bytes | str], str]

PLAN_OK = "version: 1\npools:\n  a: {share: {}}\n"
LATIN1_PLAN = b"version: 1\npools:\n  caf\xe9: {share: {}}\n"
LATIN1_FLEET = b"gpus:\n  - {model: H100-80GB}  # \xe9t\xe9\n"
RANDOM_BYTES = bytes(range(1, 256)) * 4  # every byte but NUL: never valid UTF-8
BINARY = bytes(range(256)) * 4
DIGITS = "9" * 5000


@dataclass(frozen=True)
class Case:
    """One hostile input: the command (``{file}`` is the input written to disk, ``{F}`` a
    two-H100 fleet), the file's content, the expected exit code and message fragments."""

    id: str
    argv: tuple[str, ...]
    content: bytes | str | None = None
    code: int = 2
    says: tuple[str, ...] = ()
    never: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


def _yaml_plan(pool: str) -> str:
    return f"version: 1\npools:\n  a: {pool}\n"


CASES = [
    # -- encodings: UnicodeDecodeError tracebacks before ---------------------------------
    Case(
        "latin1-plan-check",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        LATIN1_PLAN,
        says=("line 3, column 6", "not UTF-8 text", "save it as UTF-8"),
    ),
    Case(
        "latin1-plan-show",
        ("plan", "show", "{file}", "--fleet", "{F}"),
        LATIN1_PLAN,
        says=("not UTF-8 text",),
    ),
    Case(
        "latin1-env",
        ("env", "{file}", "a", "--fleet", "{F}"),
        LATIN1_PLAN,
        says=("not UTF-8 text",),
    ),
    Case(
        "latin1-fleet",
        ("gpus", "--fleet", "{file}"),
        LATIN1_FLEET,
        says=("fleet file", "not UTF-8 text"),
    ),
    Case(
        "utf16-without-bom",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        PLAN_OK.encode("utf-16-le"),
        says=("NUL bytes", "UTF-16 without a byte-order mark"),
    ),
    Case(
        "utf16-with-bom-is-read",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        codecs.BOM_UTF16_LE + PLAN_OK.encode("utf-16-le"),
        code=0,
        says=("ok: 1 pool",),
    ),
    Case(
        "utf8-bom-is-read",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        codecs.BOM_UTF8 + PLAN_OK.encode(),
        code=0,
        says=("ok: 1 pool",),
    ),
    Case(
        "random-bytes-plan",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        RANDOM_BYTES,
        says=("not UTF-8 text",),
    ),
    Case(
        "random-bytes-fleet", ("gpus", "--fleet", "{file}"), RANDOM_BYTES, says=("not UTF-8 text",)
    ),
    Case(
        "binary-plan",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        BINARY,
        says=("NUL bytes", "binary"),
    ),
    Case(
        "nul-byte-in-yaml",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        b"version: 1\x00\npools: {}\n",
        says=("NUL bytes",),
    ),
    # -- huge numbers: ValueError (4300-digit limit) and OverflowError tracebacks before ---
    Case(
        "5000-digit-version",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        f"version: {DIGITS}\npools:\n  a: {{share: {{}}}}\n",
        says=("line 1, column 10", "5000 characters", "4096"),
    ),
    Case(
        "5000-digit-per-gpu",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        _yaml_plan(f"{{share: {{}}, per_gpu: {DIGITS}}}"),
        says=("5000 characters",),
    ),
    Case(
        "5000-digit-gpu-in-compact",
        ("plan", "check", f"a=share@{DIGITS}", "--fleet", "{F}"),
        says=("pools.a.gpus", "far too large"),
    ),
    Case(
        "5000-digit-count-in-compact",
        ("plan", "check", f"a={DIGITS}x share", "--fleet", "{F}"),
        says=("pools.a.count", "far too large"),
    ),
    Case(
        "5000-digit-percent-in-compact",
        ("plan", "check", f"a=mps:{DIGITS}%", "--fleet", "{F}"),
        says=("pools.a.mps.compute", "far too large"),
    ),
    Case(
        "memory-inf",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        _yaml_plan("{mps: {memory: .inf}}"),
        says=("pools.a.mps.memory", "not a memory size"),
    ),
    Case(
        "memory-nan",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        _yaml_plan("{mps: {memory: .nan}}"),
        says=("pools.a.mps.memory", "not a memory size"),
    ),
    Case(
        "memory-1e308-mib",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        _yaml_plan("{mps: {memory: 1.0e+308}}"),
        says=("pools.a.mps.memory", "1 PiB"),
    ),
    Case(
        "memory-huge-tib",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        _yaml_plan(f'{{mps: {{memory: "{"9" * 300}TiB"}}}}'),
        says=("pools.a.mps.memory", "not a memory size"),
    ),
    Case(
        "memory-huge-gib-in-compact",
        ("plan", "check", f"a=mps:10%/{'9' * 400}GiB", "--fleet", "{F}"),
        says=("pools.a.mps.memory", "not a memory size"),
    ),
    Case(
        "memory-20-digit-gib-in-compact",
        ("plan", "check", "a=mps:10%/99999999999999999999GiB", "--fleet", "{F}"),
        says=("pools.a.mps.memory", "1 PiB"),
    ),
    Case(
        "date-out-of-range",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        "version: 2001-13-45\npools:\n  a: {share: {}}\n",
        says=("cannot be read",),
    ),
    # -- structure: TypeError and RecursionError tracebacks before -------------------------
    Case(
        "complex-key",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        "version: 1\npools:\n  ? [a, b]\n  : {share: {}}\n",
        says=("line 3, column 5", "mapping key is a list"),
    ),
    Case(
        "complex-key-in-fleet",
        ("gpus", "--fleet", "{file}"),
        "gpus:\n  - {? {x: 1} : H100-80GB}\n",
        says=("mapping key",),
    ),
    Case(
        "alias-as-key",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        "x: &k a\nversion: 1\npools:\n  *k : {share: {}}\n",
        says=("mapping key",),
    ),
    Case(
        "100000-brackets",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        "[" * 100_000,
        says=("nested more than 32 deep",),
    ),
    Case(
        "3000-nested-mappings",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        "{a: " * 3000,
        says=("nested more than 32 deep",),
    ),
    Case(
        "deep-fleet",
        ("gpus", "--fleet", "{file}"),
        "gpus: " + "[" * 5000,
        says=("nested more than 32 deep",),
    ),
    Case(
        "key-with-brackets",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        'version: 1\npools:\n  a: {share: {}}\n"0[": 1\n',
        says=("0[ (line 4, column 1): unknown key '0['",),
    ),
    Case(
        "duplicate-key",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        "version: 1\nversion: 1\npools:\n  a: {share: {}}\n",
        says=("duplicate key",),
    ),
    Case(
        "python-tag",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        "version: !!python/object/apply:os.system ['true']\npools: {}\n",
        says=("malformed YAML",),
    ),
    Case(
        "many-documents",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        PLAN_OK + "---\n" + PLAN_OK,
        says=("malformed YAML",),
    ),
    Case(
        "too-many-aliases",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        "x: &a 1\nl: [" + ", ".join(["*a"] * 300) + "]\n",
        says=("more than 256 aliases",),
    ),
    # -- counts: accepted before with millions of slices ------------------------------------
    Case(
        "mig-count-million",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        _yaml_plan("{mig: {profile: 1g.10gb, count: 1000000}}"),
        says=("pools.a.mig.count", "less than or equal to 7"),
    ),
    Case(
        "129-pools",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        "version: 1\npools:\n" + "".join(f"  p{i}: {{share: {{}}}}\n" for i in range(129)),
        says=("129 pools, more than the 128",),
    ),
    Case(
        "129-pools-compact",
        ("plan", "check", ", ".join(f"p{i}=share" for i in range(129)), "--fleet", "{F}"),
        says=("129 entries, more than the 128",),
    ),
    Case(
        "too-many-slices",
        ("plan", "check", "{file}", "--fleet", "{file2}"),
        "version: 1\npools:\n"
        + "".join(f"  p{i}: {{share: {{}}, per_gpu: 9}}\n" for i in range(2)),
        says=("more than 16384 slices",),
    ),
    Case(
        "contexts-beyond-memory",
        ("plan", "check", "a=200x share", "--fleet", "{F}"),
        says=("cannot hold 200 CUDA contexts", "at most 159 contexts fit"),
    ),
    Case(
        "fleet-1025-gpus",
        ("gpus", "--fleet", "{file}"),
        "gpus:\n" + "  - {model: H100-80GB, count: 1000}\n  - {model: L4, count: 25}\n",
        says=("1025 GPUs, more than the 1024",),
    ),
    # -- fleet messages about the fleet's own keys --------------------------------------------
    Case(
        "fleet-count-0",
        ("gpus", "--fleet", "{file}"),
        "gpus: [{model: H100-80GB, count: 0}]\n",
        says=("gpus.0.count (line 1", "greater than or equal to 1", "GPUs of this model"),
        never=("gpus: all",),
    ),
    Case(
        "fleet-no-gpus",
        ("gpus", "--fleet", "{file}"),
        "gpus: []\n",
        says=("the fleet lists no GPU",),
        never=("gpus: all",),
    ),
    Case(
        "fleet-gpus-not-a-list",
        ("gpus", "--fleet", "{file}"),
        "gpus: 3\n",
        says=("gpus must be a list",),
        never=("gpus: all",),
    ),
    Case(
        "fleet-compute-mode-shell",
        ("gpus", "--fleet", "{file}"),
        'gpus: [{model: H100-80GB, compute_mode: "$(reboot)"}]\n',
        says=("gpus.0.compute_mode", "unknown compute mode", "Exclusive_Process"),
    ),
    Case(
        "fleet-count-string",
        ("gpus", "--fleet", "{file}"),
        'gpus: [{model: H100-80GB, count: "2"}]\n',
        says=("valid integer", "without quotes"),
    ),
    Case(
        "fleet-mig-on-unknown-table",
        ("gpus", "--fleet", "{file}"),
        "gpus: [{model: B200, mig: [1g.23gb]}]\n",
        says=("no MIG profile table for B200",),
    ),
    # -- fixes that can work ----------------------------------------------------------------
    Case(
        "mig-on-v100",
        ("plan", "check", "t=mig:1g.10gb", "--fleet", "{file}"),
        "gpus: [{model: V100-16GB}]\n",
        says=("pools.t.mig", "no GPU here supports MIG (V100-16GB)", "mps:"),
        never=("mig apply",),
    ),
    Case(
        "mig-mode-off",
        ("plan", "check", "t=mig:1g.10gb", "--fleet", "{F}"),
        says=("no GPU here is in MIG mode", "nvidia-smi -i N -mig 1"),
    ),
    # -- MPS roots: accepted by plan check before, refused later --------------------------
    Case(
        "mps-dir-semicolon",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        "version: 1\nmps_dir: /tmp/a;b\npools:\n  a: {mps: {compute: 10}}\n",
        says=("mps_dir (line 2", "';'"),
    ),
    Case(
        "mps-dir-too-long",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        f"version: 1\nmps_dir: /tmp/{'x' * 80}\npools:\n  a: {{mps: {{compute: 10}}}}\n",
        says=("mps_dir", "107-byte unix socket path limit", "at most 42 bytes"),
    ),
    Case(
        "mps-dir-relative",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        "version: 1\nmps_dir: rel/dir\npools:\n  a: {mps: {compute: 10}}\n",
        says=("mps_dir", "not an absolute path"),
    ),
    Case(
        "mps-root-env-too-long",
        ("plan", "check", "a=mps:10%", "--fleet", "{F}"),
        env={"GPUSLICE_MPS_ROOT": "/tmp/" + "y" * 80},
        says=("GPUSLICE_MPS_ROOT", "107-byte"),
    ),
    # -- types: silently converted before -----------------------------------------------------
    Case(
        "per-gpu-true",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        _yaml_plan("{share: {}, per_gpu: true}"),
        says=("pools.a.per_gpu", "valid integer"),
    ),
    Case(
        "per-gpu-string",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        _yaml_plan('{share: {}, per_gpu: "2"}'),
        says=("pools.a.per_gpu", "without quotes"),
    ),
    Case(
        "oversubscribe-yes",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        "version: 1\noversubscribe: 'yes'\npools:\n  a: {share: {}}\n",
        says=("oversubscribe", "valid boolean"),
    ),
    Case(
        "gpus-true",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        "version: 1\ngpus: [true]\npools:\n  a: {share: {}}\n",
        says=("gpus (line 2", "GPU indices or UUIDs"),
    ),
    Case(
        "memory-fraction-of-mib",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        _yaml_plan("{mps: {memory: 10.9}}"),
        says=("not a whole number of MiB", "10.9GiB"),
    ),
    Case(
        "memory-fraction-in-compact",
        ("plan", "check", "a=mps:10%/10.9", "--fleet", "{F}"),
        says=("not a whole number of MiB",),
    ),
    Case(
        "mig-profile-shell",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        _yaml_plan('{mig: "1g.10gb; reboot"}'),
        says=("not a MIG profile name",),
    ),
    Case(
        "pool-name-newline",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        'version: 1\npools:\n  "a\\nb": {share: {}}\n',
        says=("invalid pool name",),
    ),
    Case(
        "gpu-uuid-shell",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        'version: 1\ngpus: ["GPU-$(reboot)"]\npools:\n  a: {share: {}}\n',
        says=("gpus must be",),
    ),
    # -- files that are not files ----------------------------------------------------------------
    Case(
        "directory-as-plan",
        ("plan", "check", "{dir}", "--fleet", "{F}"),
        says=("it is a directory",),
    ),
    Case(
        "missing-plan-file",
        ("plan", "check", "{dir}/none.yaml", "--fleet", "{F}"),
        says=("cannot read plan file", "No such file"),
    ),
    Case("directory-as-fleet", ("gpus", "--fleet", "{dir}"), says=("is a directory",)),
    Case(
        "fleet-from-env-is-checked",
        ("gpus",),
        "gpus: []\n",
        env={"GPUSLICE_FLEET": "{file}"},
        says=("the fleet lists no GPU",),
    ),
    # -- a flood of problems is counted, not printed -------------------------------------------
    Case(
        "a-thousand-problems",
        ("plan", "check", "{file}", "--fleet", "{F}"),
        "version: 1\npools:\n  a: {share: {}, gpus: [" + ", ".join(["GPU-x"] * 1000) + "]}\n",
        says=("has 1000 problems", "… and 950 more"),
    ),
    # -- exclusive process: MPS beside a time-shared worker ------------------------------------
    Case(
        "exclusive-process-mps-and-share",
        ("plan", "check", "a=mps:50%, b=share", "--fleet", "{file}"),
        "gpus: [{model: H100-80GB, compute_mode: Exclusive_Process}]\n",
        says=("pools.a+b", "Exclusive_Process", "cannot run beside it"),
    ),
]


def _argv(case: Case, tmp_path: Path, write: Write) -> tuple[list[str], dict[str, str]]:
    name = write(f"{case.id}.yaml", case.content) if case.content is not None else ""
    second = write(f"{case.id}-fleet.yaml", "gpus: [{model: H100-80GB, count: 1024}]\n")
    subs = {"{file}": name, "{F}": FLEET_2XH100, "{dir}": str(tmp_path), "{file2}": second}

    def fill(text: str) -> str:
        for key, value in subs.items():
            text = text.replace(key, value)
        return text

    return [fill(a) for a in case.argv], {k: fill(v) for k, v in case.env.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_exits_cleanly_with_a_located_message(
    case: Case, tmp_path: Path, write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GPUSLICE_MPS_ROOT", raising=False)
    argv, env = _argv(case, tmp_path, write)
    result = CliRunner().invoke(cli, argv, env=env)
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in output
    assert result.exit_code == case.code, output[-2000:]
    for words in case.says:
        assert words in output, output[-2000:]
    for words in case.never:
        assert words not in output, output[-2000:]
