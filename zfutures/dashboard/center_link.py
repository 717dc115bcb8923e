"""The dashboard's link to its center: a client that watches.

One DEALER, driven by zmq.asyncio in the web server's own event loop: the
link's work is a few small messages a second, and sharing the loop means
the model is only ever touched from one thread, with no lock between the
"events" that change it and the pages that read it.

The link registers as a client named "zfutures-dashboard", heartbeats, and
watches: with the task stream while someone has the live page open
(:meth:`CenterLink.want_stream`), counts only otherwise (Prometheus needs no
more). A restarted center asks it to register again ("reregister"); it
does, and watches again. A center that refuses it ends the process.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from .. import protocol
from ..addressing import configure
from ..errors import ProtocolError
from ..messages import (
    CloseClient,
    DescribeKey,
    Events,
    GetLogs,
    Heartbeat,
    Logs,
    Refused,
    RegisterClient,
    Reply,
    Reregister,
    Unwatch,
    Watch,
    Welcome,
)
from .model import Model

logger = logging.getLogger("zfutures.dashboard")

#: The name the center knows the dashboard by (see scheduler_info's clients).
CLIENT_NAME = "zfutures-dashboard"
#: Seconds between heartbeats: the center's own interval, so that it never
#: takes the dashboard for a client gone silent.
HEARTBEAT_INTERVAL = 0.5
#: Seconds a page waits for the center to describe a key.
DESCRIBE_TIMEOUT = 5.0
#: Milliseconds the goodbye may take to leave when the dashboard stops.
CLOSE_LINGER_MS = 200

#: Seconds without a request (and no live page open) after which the
#: dashboard stops watching: the center then observes nothing again, until
#: the next request watches anew.
IDLE_UNWATCH = 300.0
#: Messages queued for a center that is not there (a restart): past this, drop.
SEND_HWM = 100


class CenterLink:
    """A client of the center that feeds ``model`` with its "events".

    ``security``: a :class:`~zfutures.security.Security` for a cluster with
    keys, else None. ``on_refused`` is called (with the reason) when the
    center refuses the dashboard; the process then stops.
    """

    def __init__(self, model: Model, address: str, security: Any = None, *,
                 on_refused: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.model = model
        self.address = address
        self.on_refused = on_refused
        self.clock = clock
        self.context = zmq.asyncio.Context()
        self.security = security
        self.socket = configure(self.context.socket(zmq.DEALER), security)
        self.socket.sndhwm = SEND_HWM  # (a center away: heartbeats and watches are dropped)
        self.socket.connect(address)
        #: welcomed by the center (and not asked to register again since)
        self.registered = False
        #: the local clock when the center was last heard (None: never)
        self.last_heard: float | None = None
        self.stream = False
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._first_events = asyncio.Event()
        #: watching the center (not since IDLE_UNWATCH seconds without a request)
        self.watching = True
        self.last_used = clock()
        self._tasks: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        """Register, and start receiving and heartbeating (in the running loop)."""
        self._register()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._receive()), loop.create_task(self._heartbeat())]

    async def close(self) -> None:
        """Say goodbye (the center forgets the dashboard, and its watch, at once),
        stop the tasks, close the socket and its context (once: closing again
        does nothing)."""
        if self.socket.closed:
            return
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.registered:
            self._send(CloseClient())
        for future in self._replies.values():
            future.cancel()
        # A moment for the goodbye to leave; a center that is gone must not
        # hold the process up.
        self.socket.close(linger=CLOSE_LINGER_MS)
        self.context.term()

    # ------------------------------------------------------------------ asks

    def want_stream(self, stream: bool) -> None:
        """Watch with the task stream (someone has the live page open) or without."""
        if stream != self.stream:
            self.stream = stream
            if self.registered and self.watching:
                self._send(Watch(stream=stream))

    def used(self) -> None:
        """A request came: watch again if the dashboard stopped for idling
        (then what the model held is stale: it starts over, and pages wait
        for the first events, see :meth:`heard`)."""
        self.last_used = self.clock()
        if not self.watching:
            self.watching = True
            self.model.clear()
            self._first_events.clear()
            if self.registered:
                self._send(Watch(stream=self.stream))

    def _check_idle(self) -> None:
        if self.watching and not self.stream and \
                self.clock() - self.last_used > IDLE_UNWATCH:
            logger.info("nobody looked for %.0f s: no longer watching the center",
                        IDLE_UNWATCH)
            self.watching = False
            if self.registered:
                self._send(Unwatch())

    async def heard(self, timeout: float) -> None:
        """Return once the center's first events came, or after ``timeout``
        seconds (then what the model holds is all there is)."""
        if not self._first_events.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._first_events.wait(), timeout)

    async def describe(self, key: str, timeout: float = DESCRIBE_TIMEOUT) -> dict[str, Any] | None:
        """What the center knows of ``key`` (None if nothing); raises
        TimeoutError if it does not answer within ``timeout``."""
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[ident] = future
        try:
            self._send(DescribeKey(ident, key))
            result = await asyncio.wait_for(future, timeout)
        finally:
            self._replies.pop(ident, None)
        return result if isinstance(result, dict) else None

    async def worker_logs(self, address: str, timeout: float = DESCRIBE_TIMEOUT
                          ) -> list[str] | None:
        """The recent log lines of the worker at ``address``, asked of its data
        server (with the cluster's keys); None if it does not answer well
        within ``timeout`` seconds."""
        sock = configure(self.context.socket(zmq.DEALER), self.security)
        try:
            sock.connect(address)
            await sock.send_multipart(protocol.encode_message(GetLogs(1)))
            frames = await asyncio.wait_for(sock.recv_multipart(), timeout)
            msg, _ = protocol.decode_message(frames)
        except (asyncio.TimeoutError, ProtocolError, zmq.ZMQError) as e:
            logger.debug("no log lines from %s: %s", address, e)
            return None
        finally:
            sock.close(linger=0)
        return msg.lines if isinstance(msg, Logs) else None

    # ------------------------------------------------------------------ wire

    def _register(self) -> None:
        self.registered = False
        self._send(RegisterClient(protocol=protocol.PROTOCOL_VERSION, name=CLIENT_NAME))

    def _send(self, msg: Any) -> None:
        sent = self.socket.send_multipart(protocol.encode_message(msg), flags=zmq.NOBLOCK)
        # With NOBLOCK the future is done at once; a full queue (no center
        # there) drops the message: heartbeats and watches are sent again.
        error = sent.exception() if isinstance(sent, asyncio.Future) and sent.done() else None
        if error is not None:
            logger.debug("dropped %s to the center: %s", type(msg).__name__, error)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            self._send(Heartbeat())
            self._check_idle()

    async def _receive(self) -> None:
        while True:
            frames = await self.socket.recv_multipart(copy=False)
            try:
                msg, _ = protocol.decode_message(frames)
            except ProtocolError as e:
                logger.warning("dropped a malformed message from the center: %s", e)
                continue
            self.last_heard = self.clock()
            self.handle(msg)

    def handle(self, msg: Any) -> None:
        """Act on one message from the center."""
        if isinstance(msg, Events):
            self.model.apply(msg, self.clock())
            self._first_events.set()
        elif isinstance(msg, Reply):
            future = self._replies.get(msg.id)
            if future is not None and not future.done():
                future.set_result(msg.result)
        elif isinstance(msg, Welcome):
            self.registered = True
            logger.info("registered with the center at %s", self.address)
            if self.watching:
                self._send(Watch(stream=self.stream))
        elif isinstance(msg, Reregister):
            # A restarted center: what the model holds is of the old one.
            logger.info("the center asked to register again (it restarted?)")
            self.model.clear()
            self._register()
        elif isinstance(msg, Refused):
            logger.error("the center refused the dashboard: %s", msg.reason)
            self.registered = False
            if self.on_refused is not None:
                self.on_refused(msg.reason)
        elif not isinstance(msg, Heartbeat):
            logger.debug("ignored %s from the center", type(msg).__name__)
