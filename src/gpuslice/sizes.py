"""Memory sizes: parse what users write (``10GiB``, ``512MB``, ``4096``) into MiB and back.

One rule everywhere (YAML plans, the compact form, fleet files, Python callers):

- a bare number is **MiB**, whether written as a number (``memory: 4096``) or as text
  (``memory: "4096"``, ``mps:25%/4096``), and must be a whole number of MiB: ``10.9`` is
  refused rather than silently cut to 10;
- a number with a unit is converted exactly and rounded **down** to whole MiB, so a cap
  never exceeds what was written: ``1.5GiB`` is 1536 MiB, ``10GB`` (decimal) is 9536 MiB;
- single letters follow nvidia-smi and MPS, where ``4G`` means 4 GiB;
- sizes below 1 MiB or above :data:`MAX_MIB` are refused.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from fractions import Fraction

_MIB = 1024 * 1024
#: Bytes per unit, exact.
_UNIT_BYTES: dict[str, int] = {
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": _MIB,
    "mb": 1000**2,
    "mib": _MIB,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
#: The largest size gpuslice accepts: 1 PiB, far above any GPU's memory.
MAX_MIB = 1 << 30
#: The longest number accepted (digits and a point): more could not be a real size.
_MAX_NUMBER_CHARS = 24
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")

#: How sizes are written, for error messages and docs.
SIZE_RULE = (
    "a bare number is whole MiB (4096); otherwise a number and a unit such as 10GiB, 512MiB, "
    "1.5GiB or 20GB (decimal), rounded down to whole MiB"
)


def _whole_mib(value: Fraction, shown: str) -> int:
    if value.denominator != 1:
        raise ValueError(
            f"{shown} is not a whole number of MiB; a bare number means MiB, so write "
            f"{math.floor(value)} or {math.ceil(value)}, or give a unit, e.g. {shown}GiB"
        )
    return int(value)


def _checked(mib: int, shown: str) -> int:
    if mib < 1:
        raise ValueError(f"{shown} is less than 1 MiB; {SIZE_RULE}")
    if mib > MAX_MIB:
        raise ValueError(f"{shown} is more than the 1 PiB gpuslice accepts; {SIZE_RULE}")
    return mib


def parse_size_mib(text: str | int | float) -> int:
    """Parse a memory size into whole MiB (see the module docstring for the one rule).

    Args:
        text: ``"10GiB"``, ``"10G"`` (binary), ``"10GB"`` (decimal), ``"512MiB"``; a bare
            number (int, float or text) is MiB.

    Raises:
        ValueError: the text is not a size, not whole MiB, below 1 MiB or above 1 PiB; the
            message says which forms are accepted.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a memory size; {SIZE_RULE}")  # noqa: TRY004
    if isinstance(text, int):
        return _checked(text, repr(text) if abs(text) < 10**30 else "the number given")
    if isinstance(text, float):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"{text!r} is not a memory size; {SIZE_RULE}")
        shown = repr(text)
        return _checked(_whole_mib(Fraction(text), shown), shown)
    if not isinstance(text, str):
        raise ValueError(  # noqa: TRY004 - pydantic turns ValueError into a located problem
            f"a value of type {type(text).__name__} is not a memory size; {SIZE_RULE}"
        )
    shown = repr(text) if len(text) <= 40 else repr(text[:40] + "…")
    match = _SIZE.match(text) if len(text) <= 64 else None
    unit = match.group(2).lower() if match else ""
    if match is None or (unit and unit not in _UNIT_BYTES):
        raise ValueError(f"{shown} is not a memory size; {SIZE_RULE}")
    number = match.group(1)
    if len(number) > _MAX_NUMBER_CHARS:
        raise ValueError(f"{shown} is more than the 1 PiB gpuslice accepts; {SIZE_RULE}")
    value = Fraction(Decimal(number))
    if not unit:
        return _checked(_whole_mib(value, number), shown)
    return _checked(math.floor(value * _UNIT_BYTES[unit] / _MIB), shown)


def format_mib(mib: int) -> str:
    """Render MiB for people: ``10240`` -> ``10GiB``, ``1536`` -> ``1.5GiB``."""
    if mib >= 1024:
        gib = mib / 1024
        return f"{gib:.0f}GiB" if gib == int(gib) else f"{gib:.2f}".rstrip("0").rstrip(".") + "GiB"
    return f"{mib}MiB"
