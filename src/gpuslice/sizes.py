"""Memory sizes: parse what users write (``10GiB``, ``512MB``, ``4g``) into MiB and back."""

from __future__ import annotations

import re

_UNITS_MIB: dict[str, float] = {
    "": 1.0 / (1024 * 1024),  # a bare number is bytes
    "b": 1.0 / (1024 * 1024),
    "k": 1.0 / 1024,
    "kb": 1000 / (1024 * 1024),
    "kib": 1.0 / 1024,
    "m": 1.0,
    "mb": 1000 * 1000 / (1024 * 1024),
    "mib": 1.0,
    "g": 1024.0,
    "gb": 1000**3 / (1024 * 1024),
    "gib": 1024.0,
    "t": 1024.0 * 1024,
    "tb": 1000**4 / (1024 * 1024),
    "tib": 1024.0 * 1024,
}
# ``4g`` and ``4G`` follow nvidia-smi and MPS, where a single letter means a binary unit.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size_mib(text: str | int | float) -> int:
    """Parse a memory size into whole MiB (rounded down).

    Args:
        text: ``"10GiB"``, ``"10G"`` (binary), ``"10GB"`` (decimal), ``"512MiB"``; an int is MiB.

    Raises:
        ValueError: the text is not a size; the message says which forms are accepted.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a memory size")  # noqa: TRY004 - pydantic wants ValueError
    if isinstance(text, (int, float)):
        if text < 0:
            raise ValueError(f"{text!r} is negative")
        return int(text)
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS_MIB:
        raise ValueError(
            f"{text!r} is not a memory size; "
            "write a number and a unit such as 10GiB, 512MiB or 20GB"
        )
    return int(float(match.group(1)) * _UNITS_MIB[unit])


def format_mib(mib: int) -> str:
    """Render MiB for people: ``10240`` -> ``10GiB``, ``1536`` -> ``1.5GiB``."""
    if mib >= 1024:
        gib = mib / 1024
        return f"{gib:.0f}GiB" if gib == int(gib) else f"{gib:.2f}".rstrip("0").rstrip(".") + "GiB"
    return f"{mib}MiB"
