"""A function's name and code hash, loading MODULE:FUNC, and arguments from a file."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest

from gpuslice.errors import UsageError
from gpuslice.parsl.app import gpu_app
from gpuslice.rightsize.identity import function_id, load_call, load_function, module_root
from tests.rightsize import funcs


def _module(tmp_path: Path, name: str, body: str) -> object:
    (tmp_path / f"{name}.py").write_text(body)
    sys.path.insert(0, str(tmp_path))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def test_the_id_names_module_and_function_and_is_stable() -> None:
    first = function_id(funcs.quick)
    assert first.name == "tests.rightsize.funcs:quick"
    assert len(first.code_hash) == 16
    assert function_id(funcs.quick) == first
    assert function_id(funcs.hungry).code_hash != first.code_hash


def test_an_edited_body_changes_the_hash_but_moving_it_does_not(tmp_path: Path) -> None:
    one = _module(tmp_path, "rs_one", "def f(x):\n    return x + 1\n")
    two = _module(tmp_path, "rs_two", "\n\n# moved down\ndef f(x):\n    return x + 1\n")
    three = _module(tmp_path, "rs_three", "def f(x):\n    return x + 2\n")
    h1, h2, h3 = (function_id(m.f).code_hash for m in (one, two, three))  # type: ignore[attr-defined]
    assert h1 == h2
    assert h1 != h3


def test_wrappers_are_looked_through() -> None:
    app = gpu_app(pool="p")(funcs.quick)
    wrapped = functools.wraps(funcs.quick)(lambda: None)
    assert function_id(app) == function_id(funcs.quick)
    assert function_id(wrapped) == function_id(funcs.quick)


def test_load_function_imports_module_colon_name() -> None:
    assert load_function("tests.rightsize.funcs:quick") is funcs.quick


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.rightsize.funcs.quick", "is not MODULE:FUNC"),
        ("no_such_module_xyz:f", "cannot import module"),
        ("tests.rightsize.funcs:nothing", "has no 'nothing'"),
        ("tests.rightsize.funcs:__name__", "not a function"),
    ],
)
def test_load_function_errors_name_the_fix(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_function(spec)


def test_the_module_root_is_the_folder_above_the_package() -> None:
    root = module_root(funcs.quick)
    assert root == str(Path(funcs.__file__).resolve().parents[2])


def test_arguments_from_json_or_yaml(tmp_path: Path) -> None:
    both = tmp_path / "both.json"
    both.write_text('{"args": [1, 2], "kwargs": {"scale": 0.5}}')
    call = load_call(both)
    assert call.args == (1, 2)
    assert call.kwargs == {"scale": 0.5}
    positional = tmp_path / "list.yaml"
    positional.write_text("- 3\n- four\n")
    assert load_call(positional).args == (3, "four")
    keywords = tmp_path / "kw.yaml"
    keywords.write_text("scale: 2\n")
    assert load_call(keywords).kwargs == {"scale": 2}
    assert load_call(None).args == ()
    assert load_call(both).digest() != load_call(keywords).digest()


def test_bad_argument_files_are_usage_errors(tmp_path: Path) -> None:
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(UsageError, match="expected a list"):
        load_call(scalar)
    broken = tmp_path / "broken.yaml"
    broken.write_text("args: [1, 2\n")
    with pytest.raises(UsageError, match="--args-from"):
        load_call(broken)


def test_a_file_path_instead_of_a_module_is_explained() -> None:
    with pytest.raises(
        UsageError,
        match=r"is a file path; MODULE is the module's import name \(e\.g\. infer:predict",
    ):
        load_function("src/infer.py:predict")
