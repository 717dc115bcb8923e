"""Pieces every poll loop shares: a wake-up other threads can use, draining
in slices, and a clock to judge a peer's silence by.

Each zfutures process runs one poll loop per role (the center, a worker, a
client's I/O thread) that owns its sockets. A turn of the loop handles what
came for at most one slice of time (``SLICE``), then runs its timers: sends
heartbeats, checks deadlines, sends what the turn produced.
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable

import zmq

from .errors import ProtocolError


class Waker:
    """A pipe a zmq poll loop watches; any thread may :meth:`wake` it.

    ZeroMQ sockets belong to one thread, but a file descriptor can be polled
    beside them, and ``os.write`` is safe from any thread and from finalizers.
    Repeated wakes before the loop drains cost one syscall each; the loop
    reads them all at once.
    """

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._pending = False

    def wake(self) -> None:
        if self._pending:  # the loop has not drained the last wake yet
            return
        self._pending = True
        try:
            os.write(self._write_fd, b"x")
        except (BlockingIOError, OSError):
            pass  # pipe full (the loop will wake anyway) or closed at shutdown

    @property
    def pending(self) -> bool:
        """Woken since the last :meth:`drain`."""
        return self._pending

    def drain(self) -> None:
        """Called by the loop before it looks for work.

        The pipe is emptied before the flag is cleared: a wake that lands in
        between skips its write, but its work is already queued and the loop
        is about to look.
        """
        try:
            while os.read(self.read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        self._pending = False

    def close(self) -> None:
        fds, self.read_fd, self._write_fd = (self.read_fd, self._write_fd), -1, -1
        self._pending = True  # a late wake() writes nowhere, not to a reused descriptor
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


#: Seconds of messages a loop handles before it runs its timers and sends
#: what is due. A message may take long (a submit of 1,000 tasks costs the
#: center about 12 ms), so a count alone does not bound a turn: 10,000 of
#: them kept a center from its heartbeats for seconds, and its workers took
#: it for dead. A tenth of the default heartbeat interval, and long enough
#: that what a turn sends still goes in few, large batches.
SLICE = 0.05


def drain(sock: zmq.Socket[Any], handle: Callable[[list[Any]], Any], dropped: Any,
          limit: int = 1000, until: float | None = None) -> None:
    """Handle what is waiting on ``sock``: at most ``limit`` messages, and none
    begun after the monotonic time ``until`` but the first (so that every
    socket of a loop is read at each turn).

    A message that is malformed, or fails to load or to apply, is dropped and
    logged through ``dropped`` (a RateLimitedLog): no message stops the loop.
    """
    for _ in range(limit):
        frames = receive(sock)
        if frames is None:
            return
        try:
            handle(frames)
        except ProtocolError as e:
            dropped.warning("dropped a malformed message", str(e))
        except Exception as e:
            dropped.warning("dropped a message that failed to load or apply",
                            f"{type(e).__name__}: {e}")
        if until is not None and time.monotonic() >= until:
            return


class ListeningClock:
    """Seconds a poll loop has listened: the time a peer's silence is measured in.

    A loop busy with its own work (a long message, a garbage collection, its
    process stopped or starved of CPU) reads nothing meanwhile: its peers'
    messages wait unread, and in wall time a healthy peer would look silent,
    be declared dead for the loop's own delay, and its work be done twice.
    This clock runs with wall time while the loop polls, and for the first
    ``slack`` seconds of each stretch of work between two polls; beyond, it
    stands still. A turn that keeps to its slice loses nothing.

    >>> clock = ListeningClock(slack=0.5, now=0.0)
    >>> clock.polling(10.0)          # worked 10 s since: 9.5 s not listening
    >>> clock.time(12.0)             # polled for 2 s since
    2.5
    """

    def __init__(self, slack: float, now: float):
        self.slack = slack
        self._lost = 0.0  # seconds of work past the slack, so far
        self._working_since: float | None = now

    def working(self, now: float) -> None:
        """The loop's poll returned: a stretch of work starts."""
        self._working_since = now

    def polling(self, now: float) -> None:
        """The loop is about to poll: the stretch of work ends."""
        if self._working_since is not None:
            self._lost += max(0.0, now - self._working_since - self.slack)
            self._working_since = None

    def time(self, now: float) -> float:
        """Listening time at the monotonic time ``now``."""
        if self._working_since is None:
            return now - self._lost
        return now - self._lost - max(0.0, now - self._working_since - self.slack)


# Plain ints: pyzmq's flag enums cost microseconds to combine, per frame.
EVENTS, POLLIN, _NOBLOCK, _SNDMORE = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK), \
    int(zmq.SNDMORE)
#: Frames at least this big are sent without a copy; smaller ones are cheaper copied.
_ZERO_COPY_FROM = 64 * 1024


def receive(sock: zmq.Socket[Any]) -> list[Any] | None:
    """The next message waiting on ``sock`` (a list of zmq Frames), or None.

    Asks the socket whether a message waits rather than catching zmq.Again,
    whose exception costs more than the receive itself.
    """
    # (EVENTS is an int option; pyzmq types every option's value as int | bytes)
    if not sock.getsockopt(EVENTS) & POLLIN:  # type: ignore[operator]
        return None
    try:
        return sock.recv_multipart(_NOBLOCK, copy=False)
    except zmq.Again:  # (announced but gone: rare)
        return None


def close_drained(sock: zmq.Socket[Any], poller: zmq.Poller, handle: Callable[[list[Any]], Any],
                  dropped: Any) -> None:
    """Handle what ``sock`` has received already, then stop polling it and close
    it: a peer that left may have answered before it went."""
    drain(sock, handle, dropped)
    poller.unregister(sock)
    sock.close(linger=0)


def send_frames(sock: zmq.Socket[Any], frames: list[Any], flags: int = 0) -> None:
    """Send a multipart message: big frames zero-copy, small ones copied (cheaper)."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        more = _SNDMORE if i < last else 0
        if isinstance(frame, bytes) and len(frame) < _ZERO_COPY_FROM:
            sock.send(frame, flags | more)
        else:
            sock.send(frame, flags | more, copy=memoryview(frame).nbytes < _ZERO_COPY_FROM)


def send(sock: zmq.Socket[Any], frames: list[Any], dropped: Any, what: str) -> bool:
    """Send ``frames`` on a DEALER without blocking; False if it could not.

    A DEALER queues messages for a peer that is away, but holds no queue at
    all for one that refused it (a failed CURVE handshake): a blocking send
    would then hang the loop for good, so such a message is dropped, logged,
    and left to the retries and timeouts every request already has.
    """
    try:
        send_frames(sock, frames, _NOBLOCK)
        return True
    except zmq.Again:
        dropped.warning(f"could not send {what}: no connection (refused by the peer?)")
        return False
