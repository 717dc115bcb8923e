"""The dashboard's HTTP side: routes, the token check, the live page's stream.

Every route reads the model (or asks the center about one key); none
changes anything on the cluster, and only GET and HEAD are served. With a
token (a cluster with keys), every route but /health needs it: in the URL
(``?token=``, which also sets a cookie so the page's own requests carry it),
in the cookie, or as ``Authorization: Bearer``.

Routes::

    /                 -> /status
    /status           the live page (static/status.html, drawn by status.js)
    /events           server-sent events for it: a snapshot, then deltas
    /workers          /workers/{address}    /tasks    /task/{key}
    /metrics          Prometheus text       /api/v1/state   the same, as JSON
    /health           "ok"                  /static/...
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from . import metrics, pages
from .model import Model

logger = logging.getLogger("zfutures.dashboard")

#: Where the page's script, style and HTML are (shipped in the package).
STATIC = Path(__file__).parent / "static"
#: The cookie that carries the token after a first visit with ``?token=``
#: is named after the token (see cookie_name): a browser keeps one cookie
#: per host name, whatever the port, and two dashboards on one host must not
#: overwrite each other's.
COOKIE_PREFIX = "zfutures_token_"

#: Host names a dashboard on loopback without a token answers to: another
#: name that resolves to 127.0.0.1 is a web page rebinding its own name to
#: read this one (DNS rebinding).
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
#: Seconds between the deltas of /events: the page redraws at most twice a second.
EVENTS_INTERVAL = 0.5

FORBIDDEN = ("This dashboard needs its token: open the link the center printed "
             "(zfut-center dashboard at ...).\n")

#: The page loads nothing from elsewhere and runs no inline script.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Link(Protocol):
    """What the server needs of the link to the center (see CenterLink)."""

    registered: bool

    def want_stream(self, stream: bool) -> None: ...

    def used(self) -> None: ...

    async def describe(self, key: str, timeout: float = ...) -> dict[str, Any] | None: ...

    async def heard(self, timeout: float) -> None: ...

    async def worker_logs(self, address: str, timeout: float = ...) -> list[str] | None: ...


MODEL = web.AppKey("model", Model)
LINK = web.AppKey("link", Link)
CLOSING = web.AppKey("closing", asyncio.Event)
STREAMS = web.AppKey("streams", list)


def cookie_name(token: str) -> str:
    """The token's cookie, named after the token itself (see COOKIE_PREFIX)."""
    return COOKIE_PREFIX + hashlib.sha256(token.encode()).hexdigest()[:12]


def make_app(model: Model, link: Link, token: str | None = None,
             local_only: bool = False) -> web.Application:
    """The dashboard's aiohttp application over ``model`` and ``link``.
    ``local_only``: answer only requests addressed to a loopback name (a
    dashboard on loopback without a token: see LOCAL_HOSTS)."""
    middlewares = [_token_middleware(token)]
    if local_only:
        middlewares.insert(0, _local_host_middleware)
    app = web.Application(middlewares=middlewares)
    app[MODEL] = model
    app[LINK] = link
    app[CLOSING] = asyncio.Event()
    app[STREAMS] = []
    registry = metrics.registry_for(model)

    async def metrics_route(request: web.Request) -> web.Response:
        await _first_events(request)
        return web.Response(body=metrics.render(registry),
                            headers={"Content-Type": metrics.CONTENT_TYPE})

    app.router.add_get("/", _root)
    app.router.add_get("/status", _status)
    app.router.add_get("/events", _events)
    app.router.add_get("/workers", _workers)
    app.router.add_get("/workers/{address:.+}", _worker)
    app.router.add_get("/tasks", _tasks)
    app.router.add_get("/task/{key:.+}", _task)
    app.router.add_get("/metrics", metrics_route)
    app.router.add_get("/health", _health)
    app.router.add_get("/favicon.ico", _favicon)  # (asked for by browsers whatever the page says)
    app.router.add_get("/api/v1/state", _state)
    app.router.add_static("/static", STATIC)
    app.on_response_prepare.append(_add_headers)
    app.on_shutdown.append(_close_streams)
    return app


@web.middleware
async def _local_host_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
    if host.lower() not in LOCAL_HOSTS:
        raise web.HTTPMisdirectedRequest(text="This dashboard answers to localhost or "
                                              "127.0.0.1 only.\n")
    return await handler(request)


def _token_middleware(token: str | None) -> Any:
    expected = token.encode() if token is not None else None
    cookie = cookie_name(token) if token is not None else ""

    def matches(given: str | None) -> bool:
        return given is not None and expected is not None and \
            hmac.compare_digest(given.encode(), expected)

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None or request.path == "/health":
            return await handler(request)
        in_query = matches(request.query.get("token"))
        authorization = request.headers.get("Authorization", "")
        bearer = authorization[7:] if authorization.startswith("Bearer ") else None
        if not (in_query or matches(request.cookies.get(cookie)) or matches(bearer)):
            raise web.HTTPForbidden(text=FORBIDDEN)
        response = await handler(request)
        if in_query and not response.prepared:
            response.set_cookie(cookie, token or "", httponly=True, samesite="Strict", path="/")
        return response

    return check_token


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)


# ---------------------------------------------------------------------- routes

async def _root(request: web.Request) -> web.StreamResponse:
    # The query string goes along: a first visit's token sets the cookie there.
    raise web.HTTPFound(request.rel_url.with_path("/status").with_query(request.query))


async def _status(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "status.html", headers={"Cache-Control": "no-cache"})


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _favicon(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "favicon.svg", headers={"Content-Type": "image/svg+xml"})


#: Seconds a page waits for the center's first events: the process starts
#: with the first connection, and a page made before it heard the center
#: would show an empty cluster.
FIRST_EVENTS_WAIT = 3.0


async def _first_events(request: web.Request) -> None:
    link = request.app[LINK]
    link.used()  # (watching again, if it stopped for idling)
    await link.heard(FIRST_EVENTS_WAIT)


async def _state(request: web.Request) -> web.Response:
    await _first_events(request)
    return web.json_response(request.app[MODEL].state())


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


async def _workers(request: web.Request) -> web.Response:
    await _first_events(request)
    return _html(pages.workers_page(request.app[MODEL]))


async def _worker(request: web.Request) -> web.Response:
    await _first_events(request)
    address = request.match_info["address"]
    model = request.app[MODEL]
    # (only a worker the center knows is asked: the page connects nowhere else)
    logs = await request.app[LINK].worker_logs(address) if address in model.workers else None
    page = pages.worker_page(model, address, logs)
    if page is None:
        return _html(pages.layout("No such worker", f"<p>No worker {pages.escape(address)} "
                                  "is connected.</p>"), status=404)
    return _html(page)


async def _tasks(request: web.Request) -> web.Response:
    await _first_events(request)
    return _html(pages.tasks_page(request.app[MODEL]))


async def _task(request: web.Request) -> web.Response:
    await _first_events(request)  # (registered by then, if the center answers)
    key = request.match_info["key"]
    link = request.app[LINK]
    if not link.registered:
        return _html(pages.layout(f"Task {key}", "<p>Not connected to the center.</p>"),
                     status=503)
    try:
        info = await link.describe(key)
    except (asyncio.TimeoutError, TimeoutError):
        return _html(pages.layout(f"Task {key}", "<p>The center did not answer.</p>"),
                     status=504)
    return _html(pages.task_page(key, info))


async def _events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: a snapshot of what the page draws, then a delta
    every EVENTS_INTERVAL, until the page goes or the server stops."""
    app = request.app
    model, link, closing, streams = app[MODEL], app[LINK], app[CLOSING], app[STREAMS]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    streams.append(response)
    link.used()
    link.want_stream(True)
    try:
        message, cursor = model.snapshot()
        while True:
            await response.write(b"data: " + json.dumps(message, separators=(",", ":")).encode()
                                 + b"\n\n")
            try:
                await asyncio.wait_for(closing.wait(), EVENTS_INTERVAL)
                break
            except (asyncio.TimeoutError, TimeoutError):
                pass
            message, cursor = model.delta(cursor)
    except ConnectionResetError:
        pass  # the page went away
    finally:
        streams.remove(response)
        if not streams:
            link.want_stream(False)
    return response


async def _close_streams(app: web.Application) -> None:
    app[CLOSING].set()
