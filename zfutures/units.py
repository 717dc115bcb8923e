"""Sizes written for people, the same on every page that shows one."""
from __future__ import annotations


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
