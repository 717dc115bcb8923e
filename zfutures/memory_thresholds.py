"""A worker's memory thresholds: shares of its memory limit, each one a
decision of :class:`~zfutures.worker_memory.MemoryManager` (or off)."""
from __future__ import annotations

import dataclasses

_OFF = ("false", "off", "none", "no")


def parse_fraction(text: str) -> float | None:
    """A threshold from the command line: a share of the memory limit, or None (off).

    >>> parse_fraction("0.6"), parse_fraction("false")
    (0.6, None)
    """
    if text.strip().lower() in _OFF:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise ValueError(f"memory threshold {text!r}: pass a share of the memory limit, "
                         f"a number in (0, 1] such as 0.6, or 'false' to turn it off")
    return value


@dataclasses.dataclass(frozen=True)
class MemoryThresholds:
    """Shares of the memory limit, each in (0, 1], or None (off).

    target: results (``managed``) above it go to disk, least recently used first;
    spill: the process above it (memory zfutures does not count too) writes more;
    pause: the process above it starts no new task; terminate: the nanny restarts it.

    >>> MemoryThresholds(target=None).spill
    0.7
    >>> MemoryThresholds(spill=0.9)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: memory thresholds out of order: spill 0.9 > pause 0.8 (each must be ...
    """
    target: float | None = 0.6
    spill: float | None = 0.7
    pause: float | None = 0.8
    terminate: float | None = 0.95

    def __post_init__(self) -> None:
        named = [(name, getattr(self, name)) for name in ("target", "spill", "pause", "terminate")]
        for name, value in named:
            if value is not None and not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise ValueError(f"memory threshold {name}={value!r}: a number in (0, 1], "
                                 f"or None to turn it off")
        on = [(name, value) for name, value in named if value is not None]
        for (low, a), (high, b) in zip(on, on[1:]):
            if a > b:
                raise ValueError(f"memory thresholds out of order: {low} {a} > {high} {b} "
                                 f"(each must be at most the next: target <= spill <= pause "
                                 f"<= terminate, those set)")
