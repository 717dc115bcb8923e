"""A connection of its own to a center, in a thread, that hears its "events".

A :class:`Watcher` registers as a client, asks for the center's events
(:class:`~zfutures.messages.Events`: task groups, workers, every task run
and transfer) and hands each to a callback in its own thread. It submits
nothing and holds no keys: it only listens. A performance report
(:mod:`zfutures.report`) is one.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import zmq

from . import protocol
from .addressing import configure
from .errors import ProtocolError
from .loop import Waker, receive, send_frames
from .messages import (
    CloseClient,
    DescribeKey,
    Events,
    Heartbeat,
    Refused,
    RegisterClient,
    Reply,
    Reregister,
    Watch,
    Welcome,
)

logger = logging.getLogger(__name__)

#: Seconds between the watcher's heartbeats to the center.
HEARTBEAT_INTERVAL = 0.5

#: Milliseconds the goodbye may take to leave when the watcher stops.
CLOSE_LINGER_MS = 200


class Watcher:
    """Hear a center's events in a thread of its own.

    >>> watcher = Watcher("tcp://127.0.0.1:8787", None, print)   # doctest: +SKIP
    >>> watcher.start(timeout=10)                                # doctest: +SKIP
    >>> watcher.catch_up(timeout=2)                              # doctest: +SKIP
    >>> watcher.stop()                                           # doctest: +SKIP

    ``on_events`` is called in the watcher's thread with each Events, in
    order; an exception it raises is logged and the watcher goes on.
    """

    def __init__(self, address: str, security: Any, on_events: Callable[[Events], None],
                 *, name: str = "zfutures-watcher", stream: bool = True):
        self.address = address
        self.on_events = on_events
        self.name = name
        self.stream = stream
        self.context = zmq.Context()
        self.socket = configure(self.context.socket(zmq.DEALER), security)
        self.waker = Waker()
        self.refusal: str | None = None
        self._welcomed = threading.Event()
        self._stopping = False
        self._commands: list[Any] = []  # messages to send, from other threads
        self._lock = threading.Lock()
        self._heard = threading.Condition()
        self._events_heard = 0
        self._caught_up_after: int | None = None  # events heard when the mark came back
        self._mark = 0
        self._thread = threading.Thread(target=self._run, daemon=True, name=name)

    # ------------------------------------------------------------------ from the caller

    def start(self, timeout: float) -> None:
        """Connect and register; ConnectionError if no welcome within ``timeout``."""
        self.socket.connect(self.address)
        self._thread.start()
        self._post(RegisterClient(protocol.PROTOCOL_VERSION, self.name))
        if not self._welcomed.wait(timeout) or self.refusal is not None:
            reason = self.refusal or f"no answer within {timeout}s"
            self.stop()
            raise ConnectionError(f"could not watch the center at {self.address}: {reason}")

    def catch_up(self, timeout: float) -> bool:
        """Wait until the events of everything the center had heard by now
        have come; False if that took longer than ``timeout`` seconds.

        The center sends what changed once per tick: asking to watch again
        makes the next events certain, and a describe-key answered after
        that request marks where they start (the center answers in order).
        """
        deadline = time.monotonic() + timeout
        with self._heard:
            self._mark += 1
            mark = self._mark
            self._caught_up_after = None
        self._post(Watch(stream=self.stream))
        self._post(DescribeKey(id=-mark, key=""))
        with self._heard:
            while True:
                after = self._caught_up_after
                if after is not None and self._events_heard > after:
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._heard.wait(left)

    def stop(self, timeout: float = 5.0) -> None:
        """Say goodbye to the center and end the thread."""
        if self._thread.is_alive():
            self._stopping = True
            self.waker.wake()
            self._thread.join(timeout)
        if not self._thread.is_alive():
            # A moment for the goodbye to leave (the center then stops the
            # stream at once); a center that is gone holds nothing up.
            self.socket.close(linger=CLOSE_LINGER_MS)
            self.context.term()
            self.waker.close()

    def _post(self, msg: Any) -> None:
        with self._lock:
            self._commands.append(msg)
        self.waker.wake()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.waker.read_fd, zmq.POLLIN)
        next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL
        try:
            while not self._stopping:
                wait = max(0.0, next_heartbeat - time.monotonic())
                ready = dict(poller.poll(int(1000 * wait) + 1))
                if self.waker.read_fd in ready:
                    self.waker.drain()
                with self._lock:
                    commands, self._commands = self._commands, []
                for msg in commands:
                    self._send(msg)
                while (frames := receive(self.socket)) is not None:
                    self._handle(frames)
                if time.monotonic() >= next_heartbeat:
                    self._send(Heartbeat())
                    next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL
            self._send(CloseClient())
        except Exception:  # a bug must leave a clear trace, and the caller unblocked
            logger.exception("the watcher of %s stopped", self.address)
        finally:
            self._welcomed.set()
            with self._heard:
                self._heard.notify_all()

    def _send(self, msg: Any) -> None:
        try:
            send_frames(self.socket, protocol.encode_message(msg), zmq.NOBLOCK)
        except zmq.ZMQError as e:  # (the center is away: heartbeats tell, it asks again)
            logger.debug("could not send %r to the center: %s", msg, e)

    def _handle(self, frames: list) -> None:
        try:
            msg, _ = protocol.decode_message(frames)
        except ProtocolError as e:
            logger.warning("dropped a malformed message from the center: %s", e)
            return
        kind = type(msg)
        if kind is Events:
            try:
                self.on_events(msg)
            except Exception:
                logger.exception("handling the center's events failed; going on")
            with self._heard:
                self._events_heard += 1
                self._heard.notify_all()
        elif kind is Welcome:
            self._send(Watch(stream=self.stream))
            self._welcomed.set()
        elif kind is Reply:
            if msg.id < 0:
                with self._heard:
                    if -msg.id == self._mark:
                        self._caught_up_after = self._events_heard
        elif kind is Reregister:  # a restarted center: register and watch again
            self._send(RegisterClient(protocol.PROTOCOL_VERSION, self.name))
        elif kind is Refused:
            self.refusal = msg.reason
            self._stopping = True
            self._welcomed.set()
