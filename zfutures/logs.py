"""Logging helpers: rate-limited warnings, so a flood cannot fill a disk;
a process's recent log lines, kept for the dashboard."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

#: Longest reason or detail logged, in characters.
MAX_TEXT = 300


def _shorten(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class RateLimitedLog:
    """Log each distinct reason at most once per ``interval`` seconds.

    Counts what it held back and says so the next time the reason is logged.
    """

    def __init__(self, logger: logging.Logger, interval: float = 10.0, max_reasons: int = 1000):
        self.logger = logger
        self.interval = interval
        self.max_reasons = max_reasons
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, reason: str, detail: str = "") -> None:
        # What a peer sent may be in reason or detail: a line stays short whatever it is.
        reason, detail = _shorten(reason), _shorten(detail)
        now = time.monotonic()
        last, held = self._last.get(reason, (-1e9, 0))
        if now - last < self.interval:
            self._last[reason] = (last, held + 1)
            return
        if len(self._last) >= self.max_reasons:  # bound the memory of reasons too
            self._last.clear()
        self._last[reason] = (now, 0)
        more = f" ({held} more like it not logged)" if held else ""
        self.logger.warning("%s%s%s", reason, f": {detail}" if detail else "", more)


#: Log lines a worker keeps for the dashboard's page of it, and the longest
#: kept whole (a traceback in a log line can be long).
RECENT_LINES = 200
RECENT_LINE_CHARS = 4000

_recent: deque[str] = deque(maxlen=RECENT_LINES)
_recent_lock = threading.Lock()


class _RecentLines(logging.Handler):
    """Keeps the last RECENT_LINES records of this process, formatted."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _recent.append(_shorten(self.format(record), RECENT_LINE_CHARS))
        except Exception:  # (a record whose message cannot be formatted)
            self.handleError(record)


def keep_recent_lines() -> None:
    """From now on, keep this process's recent log lines (at INFO and above,
    as far as its loggers let them through; a task's own too): see
    :func:`recent_lines`. ``zfut-worker`` calls it as its worker process
    starts, after setting up logging (a handler on the root logger would
    otherwise stand in for Python's last-resort output to stderr); once per
    process, however many times."""
    with _recent_lock:
        root = logging.getLogger()
        if not any(isinstance(h, _RecentLines) for h in root.handlers):
            root.addHandler(_RecentLines())


def recent_lines() -> list[str]:
    """This process's recent log lines, oldest first."""
    return list(_recent)
