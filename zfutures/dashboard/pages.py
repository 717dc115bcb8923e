"""The dashboard's server-made pages: workers, one worker, task groups, one key.

Plain HTML from the model, no script: each page is right when loaded (reload
for news; the live page is /status). Every value that came from the cluster
(keys, names, addresses, errors) is escaped, since a key is whatever string a
client chose.
"""
from __future__ import annotations

import time
from html import escape
from typing import Any
from urllib.parse import quote

from ..units import format_bytes
from .errors import error_text
from .model import STATES, Model

#: The pages, in the order of the bar of links on each.
NAV = (("/status", "Status"), ("/workers", "Workers"), ("/tasks", "Tasks"),
       ("/metrics", "Metrics"))


def layout(title: str, body: str) -> str:
    """A whole page: head, the bar of links, ``body`` (already HTML)."""
    links = " ".join(f'<a href="{href}">{name}</a>' for href, name in NAV)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)} - zfutures</title>"
        '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/static/dashboard.css"></head>\n'
        f'<body><nav>{links}</nav><main><h1>{escape(title)}</h1>\n{body}</main></body></html>\n')


def worker_link(address: str) -> str:
    return f'<a href="/workers/{quote(address, safe="")}">{escape(address)}</a>'


def key_link(key: str) -> str:
    return f'<a href="/task/{quote(key, safe="")}">{escape(key)}</a>'


def _table(headers: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    """A table of HTML cells (already escaped); columns from ``numeric_from`` right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>"
                         for i, c in enumerate(row)) + "</tr>\n"
        for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n"


# ---------------------------------------------------------------------- pages

def workers_page(model: Model) -> str:
    rows = [[worker_link(w.address), escape(w.name), str(w.nthreads), format_bytes(w.memory),
             format_bytes(w.managed), format_bytes(w.spilled),
             format_bytes(w.memory_limit) if w.memory_limit else "none",
             f"{w.cpu:.0f}%", str(w.executing), str(w.queued), str(w.keys),
             "paused" if w.paused else "", f"{w.silent:.1f} s"]
            for _, w in sorted(model.workers.items())]
    headers = ["Address", "Name", "Threads", "Memory", "Managed", "Spilled", "Limit", "CPU",
               "Executing", "Queued", "Keys", "", "Silent"]
    body = f"<p>{len(rows)} workers, {sum(w.nthreads for w in model.workers.values())} threads.</p>"
    return layout("Workers", body + _table(headers, rows))


def worker_page(model: Model, address: str, logs: list[str] | None = None) -> str | None:
    """One worker's page, or None if the model has no such worker; ``logs``:
    its recent log lines (None: it did not say)."""
    w = model.workers.get(address)
    if w is None:
        return None
    fields = _table(["Field", "Value"], [[escape(k), escape(str(v))]
                                         for k, v in w._asdict().items()])
    runs = list(model.worker_runs.get(address, ()))
    runs.reverse()
    run_rows = [[key_link(r.key), str(r.thread), _clock(r.start), f"{r.stop - r.start:.3f} s",
                 "ok" if r.ok else "failed"] for r in runs]
    if logs is None:
        log_part = "<p>The worker did not answer.</p>"
    elif not logs:
        log_part = "<p>None yet.</p>"
    else:
        log_part = f'<pre id="worker-logs">{escape(chr(10).join(logs))}</pre>'
    body = (fields + f"<h2>Latest runs ({len(runs)})</h2>\n"
            + _table(["Key", "Thread", "Started", "Took", ""], run_rows)
            + "\n<h2>Log</h2>\n" + log_part)
    return layout(f"Worker {address}", body)


def tasks_page(model: Model) -> str:
    rows = []
    for name, group in sorted(model.groups.items()):
        c = group.counts
        mean = f"{c.seconds / c.finished:.3f} s" if c.finished else ""
        rows.append([escape(name)] + [str(getattr(c, s)) for s in STATES]
                    + [str(c.finished), str(c.failed), mean])
    tasks = model.tasks()
    finished, failed = model.finished()
    rows.append(["<b>all</b>"] + [str(tasks[s]) for s in STATES] + [str(finished), str(failed), ""])
    headers = ["Group", *STATES, "finished", "failed", "mean run"]
    return layout("Task groups", _table(headers, rows))


def task_page(key: str, info: dict[str, Any] | None) -> str:
    """A key's page from the center's description of it (None: unknown key)."""
    if info is None:
        return layout(f"Task {key}", "<p>The center does not know this key (never "
                                     "submitted, or released and forgotten).</p>")
    rows = []
    for name in ("state", "group", "priority", "nbytes", "processing_on", "clients", "retries"):
        value = info.get(name)
        if name == "processing_on" and value:
            cell = worker_link(str(value))
        elif name == "nbytes" and isinstance(value, int):
            cell = format_bytes(value)
        else:
            cell = escape(str(value))
        rows.append([escape(name), cell])
    rows.append(["who_has", ", ".join(worker_link(str(a)) for a in info.get("who_has") or [])])
    for name in ("waiting_on", "dependencies", "dependents"):
        rows.append([escape(name), ", ".join(key_link(str(k)) for k in info.get(name) or [])])
    body = _table(["Field", "Value"], rows, numeric_from=9)
    error = info.get("error")
    if error:
        body += "<h2>Error</h2>\n<pre>" + escape(error_text(error)) + "</pre>\n"
    return layout(f"Task {key}", body)


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"
