"""``performance_report``: a self-contained HTML file of what ran inside a ``with``.

The report watches the center on a connection of its own
(:class:`~zfutures.watching.Watcher`) and appends each batch of task runs
and transfers to the file as a small ``<script>`` as it comes. The file
carries the drawing code with it (the dashboard's ``taskstream.js``), and
draws once the browser has read it all: a report opens with no network, and
a client killed in the middle of a run still leaves a file that opens and
shows what ran until then.
"""
from __future__ import annotations

import contextlib
import html
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .messages import Events
from .watching import Watcher

STATIC = Path(__file__).parent / "dashboard" / "static"

#: Seconds to wait, when the ``with`` ends, for the center's events of what
#: ran inside it.
CATCH_UP_TIMEOUT = 5.0

#: Task runs a report draws at most (about 80 bytes each in the file): a
#: browser opens a file of that size; the runs past it are counted.
MAX_RUNS = 1_000_000


@contextlib.contextmanager
def performance_report(filename: str | os.PathLike = "zfutures-report.html",
                       executor: Any = None) -> Iterator[ReportWriter]:
    """Write a self-contained HTML report of the tasks run inside the ``with``.

    The report has the task stream (every run on every worker thread, and the
    transfers between workers), and the time spent per task group. It is
    written as the run goes: a client killed in the middle leaves a file
    that still opens and shows what ran until then. ``executor``: whose
    cluster to report on (default: the Executor opened last and still open).

    >>> from zfutures import Executor, performance_report
    >>> with Executor() as ex, performance_report("report.html"):   # doctest: +SKIP
    ...     ex.gather(ex.map(inc, range(1000)))
    """
    if executor is None:
        from .executor import latest_executor

        executor = latest_executor()
        if executor is None:
            raise RuntimeError("performance_report() needs an open Executor: open one "
                               "first, or pass it as executor=")
    writer = ReportWriter(filename)
    try:
        watcher = Watcher(executor.address, executor.security, writer.add,
                          name="zfutures-performance-report", stream=True)
        try:
            watcher.start(timeout=10)
            yield writer
            watcher.catch_up(CATCH_UP_TIMEOUT)
        finally:
            watcher.stop()
    finally:
        writer.close()


class ReportWriter:
    """Writes the report's file: a head with the drawing code, a ``<script>``
    per batch of events, and a closing part once the run is over."""

    def __init__(self, filename: str | os.PathLike):
        self.path = Path(filename)
        self.started = time.time()
        self.runs = 0
        self.left_out = 0  # runs past MAX_RUNS
        # Appended to with one write() per part: a reader (or a kill) sees
        # whole parts, never half of one.
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND,
                           0o644)
        self._write(_head(self.started))

    def add(self, events: Events) -> None:
        """One batch of the center's events: its runs and transfers (up to
        MAX_RUNS runs in all; the rest are counted, not drawn)."""
        runs, room = events.runs, MAX_RUNS - self.runs
        if len(runs) > room:
            self.left_out += len(runs) - max(room, 0)
            runs = runs[:max(room, 0)]
        self.runs += len(runs)
        if runs or events.transfers:
            part = {"runs": runs, "transfers": events.transfers}
            self._write(f"<script>zfReport.add({_json(part)});</script>\n")

    def close(self) -> None:
        """End the file (a file left without its end still opens)."""
        if self._fd < 0:
            return
        info = {"stopped": time.time(), "left_out": self.left_out}
        self._write(f"<script>zfReport.finish({_json(info)});</script>\n</body></html>\n")
        os.close(self._fd)
        self._fd = -1

    def _write(self, text: str) -> None:
        os.write(self._fd, text.encode())


#: What JSON may hold that HTML's script parsing would read: escaped, the
#: text between <script> and </script> is data whatever a key says.
_SCRIPT_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
                              "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _json(value: Any) -> str:
    """``value`` as JSON safe inside a <script> element."""
    return json.dumps(value, separators=(",", ":")).translate(_SCRIPT_SAFE)


def _head(started: float) -> str:
    css = (STATIC / "dashboard.css").read_text()
    drawing = (STATIC / "taskstream.js").read_text()
    report = (STATIC / "report.js").read_text()
    when = html.escape(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f"<title>zfutures performance report, {when}</title>\n"
        f"<style>\n{css}\n</style>\n<script>\n{drawing}\n</script>\n"
        f"<script>\n{report}\n</script>\n</head>\n<body>\n"
        f"<main class=\"report\"><h1>zfutures performance report</h1>\n"
        f"<p id=\"summary\">Started {when}.</p>\n"
        "<section class=\"wide\"><h2>Task stream <small>(a row per worker thread; "
        "transfers in red)</small></h2>\n"
        "<canvas id=\"task-stream\" data-bars=\"0\" height=\"120\"></canvas></section>\n"
        "<section class=\"wide\"><h2>Time per task group</h2>\n"
        "<table id=\"groups\"><thead><tr><th>group</th><th>runs</th><th>failed</th>"
        "<th>seconds in all</th><th>mean</th><th>longest</th></tr></thead>"
        "<tbody></tbody></table></section>\n"
        "<section class=\"wide\"><h2>Transfers between workers</h2>\n"
        "<p id=\"transfers\">None.</p></section></main>\n"
        f"<script>zfReport.begin({_json({'started': started})});</script>\n")
