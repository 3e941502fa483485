"""Property tests: random bytes, random text and random YAML thrown at every loader.

Whatever the input, a loader returns or raises a :class:`~gpuslice.errors.GpusliceError`
whose exit code is 2 (a user error), never another exception (which the CLI would print as
a traceback), and each input is handled within a time bound. A last test replays a batch of
seeded random inputs through the real ``gpuslice`` command in a child process under an
address-space limit and reads its peak RSS. All of this runs in well under a minute.
"""

from __future__ import annotations

import copy
import json
import random
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, example, find, given, settings
from hypothesis import strategies as st

from gpuslice import GpusliceError, Layout, discover, load_plan, resolve
from gpuslice.hardware.fleet import load_fleet
from gpuslice.mps.env import slice_environment
from gpuslice.mps.paths import root_problems
from gpuslice.plan.schema import Plan

from .conftest import FLEET_2XH100, RunBatch

#: Seconds one input may take in-process (most take milliseconds; the machine is shared).
PER_INPUT_SECONDS = 5.0
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
# Removed when the test process exits (TemporaryDirectory's finalizer).
_TMP = tempfile.TemporaryDirectory(prefix="gs-fuzz-")
_DIR = Path(_TMP.name)
_FLEETS = [
    discover(FLEET_2XH100),
    discover(Path(FLEET_2XH100).with_name("fleet-mixed.yaml")),
]


def _within_bounds(call: Callable[[], object]) -> object:
    """Run one loader call: it returns, or raises a user error (exit 2), within the bound."""
    start = time.perf_counter()
    outcome: object
    try:
        outcome = call()
    except GpusliceError as err:
        outcome = err
    assert time.perf_counter() - start < PER_INPUT_SECONDS
    if isinstance(outcome, GpusliceError):
        assert outcome.exit_code == 2, repr(outcome)
        assert str(outcome)  # the message renders
    return outcome


def _accepted_everywhere(layout: object) -> None:
    """A layout resolve accepted: JSON loads it back, and every pool's MPS environment (what
    parsl_config exports and the workers read) builds, under an MPS root the daemons accept."""
    if not isinstance(layout, Layout):
        return
    assert Layout.from_dict(json.loads(json.dumps(layout.to_dict()))) == layout
    for the_slice in layout.slices:
        slice_environment(the_slice)
    for daemon in layout.daemons:
        assert not root_problems(daemon.pipe_dir.rsplit("/", 2)[0])


def _file(content: bytes) -> Path:
    path = _DIR / "input.yaml"
    path.write_bytes(content)
    return path


# -- raw bytes and text -----------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_as_a_plan_file(content: bytes) -> None:
    _within_bounds(lambda: load_plan(_file(content)))


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_as_a_fleet_file(content: bytes) -> None:
    _within_bounds(lambda: load_fleet(_file(content)))


YAML_SOUP = "[]{}:,-&*!?|>#'\" \n\tabcdeg019.%/=@+x"


@FUZZ
@given(st.text(alphabet=YAML_SOUP, max_size=400))
@example("0[:")  # a key with a bracket once lost its location (IndexError)
def test_yaml_token_soup_as_plan_text(text: str) -> None:
    _within_bounds(lambda: load_plan(text))


@FUZZ
@given(st.text(max_size=300))
def test_any_unicode_text_as_a_plan(text: str) -> None:
    _within_bounds(lambda: load_plan(text))


COMPACT_SOUP = "abms=x :%/@+,.0123456789GiBMTk-igrhe"


@FUZZ
@given(st.text(alphabet=COMPACT_SOUP, min_size=1, max_size=120).filter(lambda t: "=" in t))
def test_compact_soup_resolves_or_is_refused(text: str) -> None:
    plan = _within_bounds(lambda: load_plan(text))
    if isinstance(plan, Plan):
        for inventory in _FLEETS:
            _accepted_everywhere(_within_bounds(lambda inv=inventory: resolve(plan, inv)))  # type: ignore[misc]


# -- random YAML documents over the plan's and fleet's own vocabulary --------------------------

KEYS = [
    "version",
    "gpus",
    "pools",
    "mps",
    "mig",
    "share",
    "compute",
    "memory",
    "per_gpu",
    "oversubscribe",
    "mps_dir",
    "profile",
    "count",
    "per_instance",
    "model",
    "compute_mode",
    "node",
    "a",
    "small",
    "p-1",
    "1bad",
    "a\nb",
    "$(reboot)",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, 1, 2, 7, 48, 100, 101, 256, 257, 1024, 10**6]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "all",
            "25%",
            "10GiB",
            "10.9",
            "4096",
            "1g.10gb",
            "3g.40gb",
            "1g.5gb",
            "H100-80GB",
            "A100-40GB",
            "V100-16GB",
            "B200",
            "Exclusive_Process",
            "Prohibited",
            "/tmp/gs-f",
            "/tmp/a;b",
            "rel",
            "GPU-nope",
            "$(reboot)",
            "a\nb",
            "9" * 400,
            "",
        ]
    ),
    st.text(max_size=20),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    ),
    max_leaves=25,
)
GOOD_POOLS = st.one_of(
    st.fixed_dictionaries(
        {
            "mps": st.fixed_dictionaries(
                {},
                optional={
                    "compute": st.integers(1, 100),
                    "memory": st.sampled_from(["1GiB", "8GiB", "4096", "20GB"]),
                },
            )
        },
        optional={"per_gpu": st.integers(1, 8)},
    ),
    st.fixed_dictionaries({"share": st.just({})}, optional={"per_gpu": st.integers(1, 8)}),
    st.sampled_from([{"mig": "1g.10gb"}, {"mig": {"profile": "3g.20gb", "count": 1}}]),
)
NOISY_POOLS = st.builds(
    lambda kind, spec, extra: {kind: spec, **extra},
    st.sampled_from(["mps", "mig", "share"]),
    VALUES,
    st.fixed_dictionaries({}, optional={"per_gpu": SCALARS, "gpus": VALUES}),
)
PLANS = st.fixed_dictionaries(
    {
        "version": st.one_of(st.just(1), SCALARS),
        "pools": st.one_of(
            st.dictionaries(
                st.one_of(st.sampled_from(["a", "small", "p-1", "big_2"]), st.sampled_from(KEYS)),
                st.one_of(GOOD_POOLS, GOOD_POOLS, NOISY_POOLS, VALUES),
                min_size=1,
                max_size=4,
            ),
            VALUES,
        ),
    },
    optional={
        "gpus": st.one_of(st.just("all"), VALUES),
        "mps_dir": SCALARS,
        "oversubscribe": SCALARS,
    },
)
FLEET_DOCS = st.fixed_dictionaries(
    {
        "gpus": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "model": st.one_of(
                            st.sampled_from(["H100-80GB", "A100-40GB", "L4"]), SCALARS
                        )
                    },
                    optional={"count": SCALARS, "mig": VALUES, "compute_mode": SCALARS},
                ),
                max_size=4,
            ),
            VALUES,
        )
    },
    optional={"node": SCALARS},
)


def _dump(document: Any) -> str:
    return yaml.safe_dump(document, allow_unicode=True)


def test_the_document_strategies_reach_accepted_plans_and_fleets() -> None:
    # Guard against a vacuous property: the generated space holds documents that load.
    def loads(document: dict[str, Any]) -> bool:
        try:
            load_plan(_dump(document))
        except GpusliceError:
            return False
        return True

    def fleet_loads(document: dict[str, Any]) -> bool:
        try:
            load_fleet(_file(_dump(document).encode()))
        except GpusliceError:
            return False
        return True

    # The first document found is enough: no shrinking.
    quick = settings(max_examples=500, database=None, phases=[Phase.generate])
    assert find(PLANS, loads, settings=quick)
    assert find(FLEET_DOCS, fleet_loads, settings=quick)


@FUZZ
@given(PLANS)
def test_random_plan_documents_resolve_or_are_refused(document: dict[str, Any]) -> None:
    text = _dump(document)
    plan = _within_bounds(lambda: load_plan(text))
    if isinstance(plan, Plan):
        for inventory in _FLEETS:
            _accepted_everywhere(_within_bounds(lambda inv=inventory: resolve(plan, inv)))  # type: ignore[misc]


@FUZZ
@given(FLEET_DOCS)
def test_random_fleet_documents_load_or_are_refused(document: dict[str, Any]) -> None:
    path = _file(_dump(document).encode())
    _within_bounds(lambda: load_fleet(path))


# -- layouts loaded back from JSON --------------------------------------------------------------

_LAYOUTS = [
    resolve("a=2x mps:30%/8GiB, b=share, c=mps:10%", _FLEETS[0]).to_dict(),
    resolve(Path(FLEET_2XH100).with_name("plan-mixed.yaml"), _FLEETS[1]).to_dict(),
]
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**20), max_value=10**20),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(
            ["a\nb", "$(reboot)", "GPU-x", "/tmp/x;y", "mps", "share", "mig", "`id`", "a'b"]
        ),
        st.text(max_size=12),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_SAFE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_SAFE_DEVICE = re.compile(r"(GPU|MIG)-[0-9a-fA-F-]{36}")


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


@FUZZ
@given(st.sampled_from(_LAYOUTS), st.data())
def test_edited_layout_json_is_accepted_only_when_safe(
    original: dict[str, Any], data: st.DataObject
) -> None:
    layout = copy.deepcopy(original)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(layout)[1:]))
        parent = layout
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = data.draw(JSON_VALUES)
    loaded = _within_bounds(lambda: Layout.from_dict(json.loads(json.dumps(layout))))
    if not isinstance(loaded, Layout):
        return
    # Accepted: what reaches shell text and environments is plain, and the MPS environment
    # of every pool can be built (the rules parsl_config and the workers apply).
    for pool in loaded.pools:
        assert _SAFE_NAME.fullmatch(pool.name)
        for the_slice in pool.slices:
            slice_environment(the_slice)
        for s in pool.slices:
            assert _SAFE_DEVICE.fullmatch(s.device)
            for directory in (s.mps_pipe_dir, s.mps_log_dir):
                assert directory is None or not re.search(r"[;=\x00-\x1f\x7f]", directory)
    assert not re.search(r"[\x00-\x1f\x7f]", loaded.plan_text)


# -- the real command, in a bounded child ----------------------------------------------------------


def _random_inputs(seed: int, write: Callable[[str, bytes | str], str]) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    valid = (Path(FLEET_2XH100).with_name("plan-two-pools.yaml")).read_bytes()
    cases: list[dict[str, Any]] = []
    for i in range(40):
        kind = i % 4
        if kind == 0:  # random bytes
            content = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
        elif kind == 1:  # a valid plan with bytes flipped
            flipped = bytearray(valid)
            for _ in range(rng.randrange(1, 8)):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            content = bytes(flipped)
        elif kind == 2:  # YAML token soup
            content = "".join(rng.choice(YAML_SOUP) for _ in range(rng.randrange(1, 800))).encode()
        else:  # nested anchors and aliases of random shape
            width, levels = rng.randrange(2, 12), rng.randrange(2, 12)
            lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
            lines += [
                f"a{j}: &a{j} [" + ", ".join([f"*a{j - 1}"] * width) + "]" for j in range(1, levels)
            ]
            content = ("\n".join(lines) + "\n").encode()
        name = write(f"random-{i}.yaml", content)
        command = ["gpus", "--fleet", name] if i % 5 == 0 else ["plan", "check", name]
        if command[0] == "plan":
            command += ["--fleet", FLEET_2XH100]
        cases.append({"id": f"random-{i}", "argv": command})
    for i in range(20):
        text = "".join(rng.choice(COMPACT_SOUP) for _ in range(rng.randrange(1, 60))) + "=share"
        cases.append(
            {"id": f"compact-{i}", "argv": ["plan", "show", text, "--fleet", FLEET_2XH100]}
        )
    return cases


def test_random_inputs_through_the_command_stay_bounded(
    write: Callable[[str, bytes | str], str], run_batch: RunBatch
) -> None:
    results = run_batch(_random_inputs(seed=14, write=write))
    for case, result in results.items():
        assert not result["traceback"], (case, result["exception"], result["tail"])
        assert result["code"] in (0, 2), (case, result["tail"])
        assert result["seconds"] < 10.0, (case, result["seconds"])
    assert max(r["maxrss_kib"] for r in results.values()) < 200 * 1024
