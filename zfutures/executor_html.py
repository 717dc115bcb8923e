"""How an Executor shows itself in a notebook (``Executor._repr_html_``)."""
from __future__ import annotations

from html import escape
from typing import Any

from .messages import SchedulerInfo
from .units import format_bytes

#: Seconds a notebook waits for the center before showing what it knows.
_INFO_TIMEOUT = 2.0


def executor_html(executor: Any) -> str:
    """A small HTML table: center, workers, threads, memory and the dashboard
    link. Every value from the cluster is escaped (a worker's name is
    whatever its owner chose)."""
    kind = " (local cluster)" if executor.cluster is not None else ""
    rows = [("Center", escape(executor.address) + kind)]
    info = _info(executor)
    if info is None:
        rows.append(("Workers", "unknown (the center did not answer)"
                     if not executor._closed else "shut down"))
    else:
        workers = info.get("workers", {})
        limits = [w.get("memory_limit") or 0 for w in workers.values()]
        spilled = sum(w.get("spilled") or 0 for w in workers.values())
        rows += [("Workers", str(len(workers))),
                 ("Threads", str(sum(w.get("nthreads", 0) for w in workers.values()))),
                 ("Memory", f"{format_bytes(sum(w.get('memory', 0) for w in workers.values()))} "
                            "used" + (f" of {format_bytes(sum(limits))}" if all(limits) and limits
                                      else "")
                            + (f", {format_bytes(spilled)} spilled to disk" if spilled else ""))]
    link = executor.dashboard_link
    if link:
        safe = escape(link, quote=True)
        rows.append(("Dashboard", f'<a href="{safe}" target="_blank" '
                                  f'rel="noopener">{safe}</a>'))
    else:
        rows.append(("Dashboard", "none"))
    cells = "".join(f'<tr><th style="text-align:left">{name}</th>'
                    f'<td style="text-align:left">{value}</td></tr>' for name, value in rows)
    return f"<div><strong>zfutures Executor</strong><table>{cells}</table></div>"


def _info(executor: Any) -> dict[str, Any] | None:
    """The center's scheduler info, or None if closed or too slow to answer."""
    if executor._closed or executor._io.failed:
        return None
    try:
        info: dict[str, Any] = executor._io.request(SchedulerInfo, _INFO_TIMEOUT)
    except Exception:  # a notebook's display must not raise: show less instead
        return None
    return info
