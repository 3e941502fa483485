"""Which function a profile belongs to: its qualified name and a hash of its code.

A profile is valid for one version of one function on one GPU model. The function is named
``module:qualname`` (what ``gpuslice profile MODULE:FUNC`` takes), and its version is a hash of
its source text (``inspect.getsource``), so moving it in its file keeps the profile while any
edit to its body is a new version. Where the source cannot be read (a function built at run
time, a compiled extension) the hash covers its bytecode, constants and names instead.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import sys
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gpuslice.errors import UsageError

__all__ = ["Call", "FunctionId", "function_id", "load_call", "load_function", "module_root"]


@dataclass(frozen=True)
class FunctionId:
    """A function's name and code version: one part of a profile's key.

    Attributes:
        name: ``module:qualname``, e.g. ``mypkg.infer:predict``.
        code_hash: first 16 hex digits of the SHA-256 of its source (or bytecode).
    """

    name: str
    code_hash: str


def unwrap(func: Callable[..., Any]) -> Callable[..., Any]:
    """The user's function behind gpuslice and functools wrappers (``GpuApp``, ``in_slice``)."""
    seen = 0
    while seen < 16:
        inner = getattr(func, "func", None) if not isinstance(func, types.FunctionType) else None
        if inner is None or not callable(inner):
            inner = getattr(func, "__wrapped__", None)
        if inner is None or not callable(inner):
            return func
        func = inner
        seen += 1
    return func


def _code_digest(code: types.CodeType, digest: Any) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, digest)
        else:
            digest.update(repr(const).encode())


def function_id(func: Callable[..., Any]) -> FunctionId:
    """The name and code hash of ``func`` (wrappers are looked through).

    Raises:
        UsageError: ``func`` has no module and name to import it by.
    """
    func = unwrap(func)
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not module or not qualname:
        raise UsageError(
            f"{func!r} has no __module__/__qualname__, so a profile could not be found again; "
            "profile a function defined with `def` in an importable module"
        )
    digest = hashlib.sha256()
    try:
        digest.update(textwrap.dedent(inspect.getsource(func)).encode())
    except (OSError, TypeError):
        code = getattr(func, "__code__", None)
        if code is None:
            digest.update(repr(func).encode())
        else:
            _code_digest(code, digest)
    return FunctionId(f"{module}:{qualname}", digest.hexdigest()[:16])


def load_function(spec: str) -> Callable[..., Any]:
    """Import ``MODULE:FUNC`` (``FUNC`` may be dotted, e.g. ``mod:Class.method``).

    The current directory is searched first, as ``python -c 'import mod'`` would.

    Raises:
        UsageError: the spec is malformed, the module cannot be imported, or the name is not
            a callable in it.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(
            f"function {spec!r} is not MODULE:FUNC; write e.g. mypkg.infer:predict "
            "(the module as you would import it, a colon, the function's name)"
        )
    if module_name.endswith(".py") or "/" in module_name:
        raise UsageError(
            f"{module_name!r} in {spec!r} is a file path; MODULE is the module's import name "
            f"(e.g. {Path(module_name).stem}:{attr}, run from the folder that holds it)"
        )
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UsageError(
            f"cannot import module {module_name!r} for {spec!r} ({err}); run from the folder "
            "that holds it, or install its package in this environment"
        ) from err
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(
                f"module {module_name!r} has no {attr!r} (for {spec!r}); "
                "check the name after the colon"
            ) from None
    if not callable(target):
        raise UsageError(f"{spec!r} is a {type(target).__name__}, not a function")
    return unwrap(target)


def module_root(func: Callable[..., Any]) -> str | None:
    """The folder a worker must have on ``sys.path`` to import ``func``'s module, when known."""
    func = unwrap(func)
    module = sys.modules.get(getattr(func, "__module__", "") or "")
    path = getattr(module, "__file__", None)
    if module is None or path is None:
        return None
    root = Path(path).resolve().parent
    # A package module a.b.c lives in <root>/a/b/c.py: climb one folder per dot.
    for _ in range(module.__name__.count(".")):
        root = root.parent
    return str(root)


@dataclass(frozen=True)
class Call:
    """Arguments to profile a function with.

    Attributes:
        args: positional arguments.
        kwargs: keyword arguments.
    """

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None

    def digest(self) -> str:
        """A short hash of the arguments (recorded with a profile, not part of its key)."""
        text = json.dumps([list(self.args), self.kwargs or {}], sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_call(path: str | Path | None) -> Call:
    """Arguments from a JSON or YAML file (``--args-from``).

    The file holds ``{args: [...], kwargs: {...}}`` (either key optional), a list (positional
    arguments) or any other mapping (keyword arguments). No file: no arguments.

    Raises:
        UsageError: the file cannot be read or parsed.
    """
    if path is None:
        return Call()
    try:
        text = Path(path).read_text()
        data = yaml.safe_load(text)  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"--args-from {path}: {err}") from err
    if data is None:
        return Call()
    if isinstance(data, list):
        return Call(tuple(data))
    if not isinstance(data, dict):
        raise UsageError(
            f"--args-from {path}: expected a list (positional arguments) or a mapping "
            "(keyword arguments, or {args: [...], kwargs: {...}}), got a "
            f"{type(data).__name__}"
        )
    if set(data) <= {"args", "kwargs"} and data:
        args = data.get("args") or []
        kwargs = data.get("kwargs") or {}
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise UsageError(f"--args-from {path}: args must be a list and kwargs a mapping")
        return Call(tuple(args), {str(k): v for k, v in kwargs.items()})
    return Call((), {str(k): v for k, v in data.items()})
