"""Read user files and YAML within the bounds of :mod:`gpuslice.plan.limits`.

The one place plan, fleet and layout text is read from disk and parsed:

- :func:`read_text` opens without blocking, refuses anything that is not a regular file
  (``/dev/zero``, a FIFO, a terminal), reads at most :data:`~limits.MAX_SOURCE_BYTES` plus
  one byte, and decodes UTF-8 (or UTF-16 with a byte-order mark, as YAML allows), naming the
  line and column of the first undecodable byte otherwise.
- :func:`read_yaml` first walks PyYAML's event stream, which is produced iteratively, to
  bound nesting depth, aliases, scalar length and the node count with every alias expanded,
  and to refuse collections used as mapping keys; only then is the document composed and
  constructed (with duplicate keys refused), so "billion laughs", deep nesting and huge
  integers end as a located problem before anything large is built.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from gpuslice.errors import PlanError, Problem, UsageError
from gpuslice.plan import limits

Marks = dict[tuple[str, ...], tuple[int, int]]

_KIB = 1024


def _kind_of(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _decode(data: bytes, source: str) -> str:
    if b"\x00" in data and not data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise PlanError(
            [
                Problem(
                    "<file>",
                    "the file holds NUL bytes: it is binary, or UTF-16 without a byte-order mark",
                    "save it as UTF-8 (plans and fleet files are YAML text)",
                )
            ],
            source=source,
        )
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        before = data[: err.start]
        line = before.count(b"\n") + 1
        column = err.start - (before.rfind(b"\n") + 1) + 1
        raise PlanError(
            [
                Problem(
                    f"<file> line {line}, column {column}",
                    f"the file is not {'UTF-16' if encoding == 'utf-16' else 'UTF-8'} text "
                    f"(byte 0x{data[err.start]:02x} cannot be decoded)",
                    "save it as UTF-8 (plans and fleet files are YAML text)",
                )
            ],
            source=source,
        ) from err


def read_text(path: str | Path, what: str) -> str:
    """The text of a plan, fleet or layout file, within the size bound.

    Args:
        path: the file.
        what: what the file is for messages, e.g. ``plan file`` or ``fleet file``.

    Raises:
        UsageError: the file cannot be opened, is not a regular file, or is larger than
            :data:`~gpuslice.plan.limits.MAX_SOURCE_BYTES`.
        PlanError: the bytes are not UTF-8 (or UTF-16 with a byte-order mark).
    """
    name = str(path)
    shown = repr(name) if len(name) <= 200 else repr(name[:200] + "…")
    try:
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        reason = "it is a directory" if err.errno == errno.EISDIR else err.strerror
        raise UsageError(f"cannot read {what} {shown}: {reason}") from err
    except ValueError as err:  # an embedded NUL byte in the path
        raise UsageError(f"cannot read {what} {shown}: {err}") from err
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UsageError(
                f"cannot read {what} {shown}: it is {_kind_of(mode)}; give a regular YAML file"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= limits.MAX_SOURCE_BYTES:
            chunk = os.read(fd, limits.MAX_SOURCE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as err:
        raise UsageError(f"cannot read {what} {shown}: {err.strerror}") from err
    finally:
        os.close(fd)
    if len(data) > limits.MAX_SOURCE_BYTES:
        raise UsageError(
            f"cannot read {what} {shown}: it is larger than the "
            f"{limits.MAX_SOURCE_BYTES // _KIB} KiB gpuslice reads; a real {what} is a few KB"
        )
    return _decode(data, source=f"{what} {name}")


def check_length(text: str, source: str) -> None:
    """Refuse text (a plan or compact string given inline) above the size bound.

    Raises:
        PlanError: the text is longer than :data:`~gpuslice.plan.limits.MAX_SOURCE_BYTES`.
    """
    if len(text) > limits.MAX_SOURCE_BYTES:
        raise PlanError(
            [
                Problem(
                    "<text>",
                    f"{len(text)} characters, more than the {limits.MAX_SOURCE_BYTES // _KIB} "
                    "KiB gpuslice reads",
                    "a real plan is a few hundred characters; check what was passed",
                )
            ],
            source=source,
        )


#: LibYAML's parser when PyYAML was built with it (the wheels are): about 15 times faster
#: than the pure-Python one, which matters at the node bound. Same events, same safe types.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[misc,valid-type]
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Hashable, Any]:
    seen: dict[Hashable, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found duplicate key {_short(key)} "
                f"(first at line {seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    mapping: dict[Hashable, Any] = loader.construct_mapping(node)
    return mapping


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**limit else "<huge int>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _at(mark: Any) -> str:
    return f"<yaml> line {mark.line + 1}, column {mark.column + 1}" if mark else "<yaml>"


class _Frame:
    """An open collection on the event stream: its size so far and, for mappings, whose turn."""

    __slots__ = ("anchor", "expect_key", "is_mapping", "size")

    def __init__(self, anchor: str | None, is_mapping: bool) -> None:
        self.anchor = anchor
        self.is_mapping = is_mapping
        self.expect_key = True
        self.size = 1


def _bound(where: Any, message: str, hint: str) -> Problem:
    return Problem(_at(where), message, hint)


def _too_deep(where: Any) -> Problem:
    return _bound(
        where,
        f"collections nested more than {limits.MAX_DEPTH} deep",
        "a plan needs 5 levels (pools.NAME.mig.mps.memory); check the brackets and indentation",
    )


def scan_yaml(text: str, source: str) -> None:
    """Walk the YAML event stream and refuse what would be costly or crash later.

    Checks nesting depth, alias count, scalar length, the node count with aliases expanded
    and non-scalar mapping keys, in one pass and in memory proportional to the depth.

    Raises:
        PlanError: the first bound exceeded, with its line and column, or malformed YAML.
    """
    stack: list[_Frame] = []
    anchors: dict[str, int] = {}
    aliases = 0
    total = 0

    def refuse(problem: Problem) -> PlanError:
        return PlanError([problem], source=source)

    def count(size: int, event: yaml.Event) -> None:
        # ``total`` counts nodes as a consumer of the data would visit them: every alias
        # counts the whole subtree of its anchor again.
        nonlocal total
        total += size
        if total > limits.MAX_NODES:
            raise refuse(
                _bound(
                    event.start_mark,
                    f"the document expands to more than {limits.MAX_NODES} YAML nodes "
                    "(aliases counted every time they are used)",
                    "write the plan out plainly; anchors and aliases that repeat each other "
                    "multiply its size",
                )
            )

    def grow(size: int) -> None:
        if stack:
            stack[-1].size += size

    def node_starts(event: yaml.NodeEvent, collection: bool) -> None:
        if stack and stack[-1].is_mapping:
            frame = stack[-1]
            if frame.expect_key and (collection or isinstance(event, yaml.AliasEvent)):
                raise refuse(
                    _bound(
                        event.start_mark,
                        "a mapping key is a list, a mapping or an alias",
                        "keys must be plain names such as `pools` or `small`",
                    )
                )
            frame.expect_key = not frame.expect_key

    try:
        for event in yaml.parse(text, Loader=_SafeLoader):
            if isinstance(event, yaml.ScalarEvent):
                node_starts(event, collection=False)
                if len(event.value) > limits.MAX_SCALAR_CHARS:
                    raise refuse(
                        _bound(
                            event.start_mark,
                            f"a value of {len(event.value)} characters, more than the "
                            f"{limits.MAX_SCALAR_CHARS} gpuslice reads",
                            "shorten it; no field of a plan or fleet file needs that much",
                        )
                    )
                if event.anchor is not None:
                    anchors[event.anchor] = 1
                count(1, event)
                grow(1)
            elif isinstance(event, yaml.AliasEvent):
                node_starts(event, collection=False)
                aliases += 1
                if aliases > limits.MAX_ALIASES:
                    raise refuse(
                        _bound(
                            event.start_mark,
                            f"more than {limits.MAX_ALIASES} aliases (*name)",
                            "write the repeated parts out, or use fewer aliases",
                        )
                    )
                # An unknown anchor is a composer error, reported with its place below.
                size = anchors.get(event.anchor or "", 1)
                count(size, event)
                grow(size)
            elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                node_starts(event, collection=True)
                if len(stack) >= limits.MAX_DEPTH:
                    raise refuse(_too_deep(event.start_mark))
                count(1, event)
                stack.append(_Frame(event.anchor, isinstance(event, yaml.MappingStartEvent)))
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                frame = stack.pop()
                if frame.anchor is not None:
                    anchors[frame.anchor] = frame.size
                grow(frame.size)
    except yaml.YAMLError as err:
        raise _malformed(err, source) from err


def _malformed(err: yaml.YAMLError, source: str) -> PlanError:
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        problem = " ".join(p for p in (err.context, err.problem) if p)
        if "nesting depth" in problem:  # LibYAML's own bound (1000), met while scanning ahead
            return PlanError([_too_deep(mark)], source=source)
        return PlanError(
            [Problem(_at(mark), f"malformed YAML: {problem}", "fix the YAML syntax at that place")],
            source=source,
        )
    return PlanError([Problem("<yaml>", f"malformed YAML: {err}")], source=source)


def read_yaml(text: str, source: str) -> tuple[Any, Marks]:
    """Parse YAML within the bounds, refusing duplicate keys; return data and each path's place.

    Raises:
        PlanError: malformed YAML or a bound exceeded, with its line and column.
    """
    check_length(text, source)
    scan_yaml(text, source)
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        raise _malformed(err, source) from err
    except ValueError as err:
        # int() of a numeric scalar too long for Python's integer conversion, or a date
        # outside datetime's range: the scan bounds scalar length, this is the backstop.
        raise PlanError(
            [Problem("<yaml>", f"a value cannot be read: {err}", "write an ordinary number")],
            source=source,
        ) from err
    finally:
        loader.dispose()
    marks: Marks = {}
    if node is not None:
        _collect_marks(node, (), marks)
    return data, marks


def _collect_marks(node: yaml.Node, path: tuple[str, ...], marks: Marks) -> None:
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, str(key.value))
            _collect_marks(value, child, marks)
            marks[child] = (key.start_mark.line + 1, key.start_mark.column + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_marks(item, (*path, str(index)), marks)
