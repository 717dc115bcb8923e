"""The dashboard process, as the center's command starts it (never by hand)::

    python -m zfutures.dashboard --center tcp://H:P --listen-fd FD
                                 [--keys DIR] [--log-level LEVEL]

The parent binds the listening socket and passes its descriptor (so the
link is known, and a busy port an error, before this process starts); this
process serves HTTP on it, watches the center as a client, and stops
cleanly on SIGTERM or SIGINT, on a center that refuses it, and when the
process named by $ZFUTURES_PARENT_PID is no longer its parent. The token
(a cluster with keys) comes in $ZFUTURES_DASHBOARD_TOKEN.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from typing import Any

from aiohttp import web

from ..addressing import is_loopback
from ..processes import die_with_parent
from .center_link import CenterLink
from .launch import TOKEN_ENV
from .model import Model
from .server import make_app

logger = logging.getLogger("zfutures.dashboard")

#: Seconds the server waits for open requests when it stops (the live page's
#: streams end at once).
SHUTDOWN_TIMEOUT = 2.0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m zfutures.dashboard",
                                     description="The zfutures dashboard (started by zfut-center).")
    parser.add_argument("--center", required=True, help="the center's address, tcp://HOST:PORT")
    parser.add_argument("--listen-fd", required=True, type=int,
                        help="a listening TCP socket's descriptor, inherited")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                        help=f"the token every route but /health needs (default: ${TOKEN_ENV}, "
                             "which other users cannot read, unlike the command line)")
    parser.add_argument("--keys", help="the cluster's keys directory (CURVE to the center)")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the dashboard until told to stop; the exit status."""
    args = parse(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    security = None
    if args.keys:
        from ..security import Security

        security = Security(args.keys)
    listening = socket.socket(fileno=args.listen_fd)
    return asyncio.run(serve(args.center, listening, args.token, security))


async def serve(center: str, listening: socket.socket, token: str | None,
                security: object = None) -> int:
    """Serve on ``listening`` and watch ``center`` until stopped; 0, or 1 if
    the center refused the dashboard."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    refusals: list[str] = []

    def refused(reason: str) -> None:
        refusals.append(reason)
        stop.set()

    model = Model()
    link = CenterLink(model, center, security, on_refused=refused)
    # On loopback without a token, only requests for a loopback name: another
    # web page may rebind its own name to 127.0.0.1 to read this one.
    local_only = token is None and is_loopback(listening.getsockname()[0])
    runner = web.AppRunner(make_app(model, link, token, local_only), handle_signals=False,
                           access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    await web.SockSite(runner, listening).start()
    link.start()
    die_with_parent(lambda: _call_soon(loop, stop.set))
    logger.info("dashboard serving on %s for the center at %s", listening.getsockname(), center)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await link.close()
    return 1 if refusals else 0


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any) -> None:
    """``fn`` in ``loop``, from another thread; nothing if the loop is over."""
    with contextlib.suppress(RuntimeError):  # (closed: the process is ending anyway)
        loop.call_soon_threadsafe(fn)


if __name__ == "__main__":
    sys.exit(main())
