"""Sizes for people: written the same on every page that shows one, and
read the same from the command line and from Python."""
from __future__ import annotations

import re
from typing import Union

_MEMORY = re.compile(r"^(?P<value>\d+(?:\.\d*)?(?:e\d+)?)\s*(?P<unit>[kmgt]i?b|b)?$")
_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(value: Union[str, int, float], total: int) -> int:
    """Bytes from a size: ``"4GB"``, ``"300 MiB"``, a number of bytes, or a
    share of ``total`` (a number from 0 to 1: ``0.5``, ``"0.5"``). ValueError
    (TypeError for what is not a size at all) says what to write instead.

    >>> parse_memory("300MB", total=8 * 10**9), parse_memory(0.5, total=8 * 10**9)
    (300000000, 4000000000)
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"a memory size is bytes, a share of this machine's memory or a "
                        f"string such as '4GB', not {type(value).__name__}")
    if isinstance(value, str):
        match = _MEMORY.match(value.strip().lower())
        if match is None:
            raise ValueError(f"{value!r} is not a memory size: use e.g. '4GB', '300MB' or "
                             "'0.8' (a share of this machine's memory)")
        number, unit = float(match["value"]), match["unit"]
        if unit:
            return int(number * _UNITS[unit])
        value = number
    if not 0 <= value < 2**63 or (value > 1 and value != int(value)):  # (NaN fails too)
        raise ValueError(f"a memory size cannot be {value!r}: use a whole number of bytes, "
                         "or a share of this machine's memory from 0 to 1")
    return int(value * total) if value <= 1 else int(value)


def format_bytes(n: float) -> str:
    """``n`` bytes in binary units.

    >>> format_bytes(1536 * 1024)
    '1.5 MiB'
    >>> format_bytes(100)
    '100 B'
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
