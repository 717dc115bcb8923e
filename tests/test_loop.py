"""The pieces every poll loop shares (loop.py): the waker, draining in slices,
sending without blocking. Real ZeroMQ sockets in one process; every wait bounded.

(The listening clock's test is in test_busy_loops.py, with the loops it serves.)
"""
from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
import pytest
import zmq

from zfutures.errors import ProtocolError
from zfutures.logs import RateLimitedLog
from zfutures.loop import Waker, close_drained, drain, receive, send, send_frames


@pytest.fixture
def pair():
    """A connected DEALER (sending) and ROUTER (receiving), over TCP."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = context.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    yield dealer, router
    context.destroy(linger=0)


def wait_readable(sock: zmq.Socket, timeout: float = 5.0) -> None:
    assert sock.poll(int(1000 * timeout)), f"nothing arrived within {timeout}s"


class Collect:
    """A message handler that keeps what it was given, failing on request."""

    def __init__(self, fail_on: tuple[bytes, ...] = ()):
        self.handled: list[bytes] = []
        self.fail_on = fail_on

    def __call__(self, frames: list) -> None:
        body = frames[-1].bytes
        if body == b"malformed":
            raise ProtocolError("a malformed message")
        if body in self.fail_on:
            raise KeyError(body)
        self.handled.append(body)


@pytest.fixture
def dropped(caplog):
    caplog.set_level(logging.WARNING, logger="test_loop")
    return RateLimitedLog(logging.getLogger("test_loop"))


# ----------------------------------------------------------------------------- Waker

def test_a_wake_from_another_thread_makes_the_read_end_readable_until_drained():
    waker = Waker()
    try:
        poller = zmq.Poller()
        poller.register(waker.read_fd, zmq.POLLIN)
        assert poller.poll(0) == []
        thread = threading.Thread(target=lambda: [waker.wake() for _ in range(100)])
        thread.start()
        thread.join(5)
        assert waker.pending
        assert poller.poll(5000)                     # many wakes, one readable pipe
        waker.drain()
        assert not waker.pending and poller.poll(0) == []
        waker.wake()                                 # and again, after a drain
        assert poller.poll(5000)
    finally:
        waker.close()


def test_a_wake_after_close_writes_nowhere():
    waker = Waker()
    waker.close()
    reused = os.pipe()  # may take the numbers the waker had
    try:
        waker.wake()
        waker.drain()
        os.set_blocking(reused[0], False)
        with pytest.raises(BlockingIOError):
            os.read(reused[0], 1)
    finally:
        for fd in reused:
            os.close(fd)


# ----------------------------------------------------------------------------- drain

def test_drain_handles_what_waits_up_to_its_limit(pair, dropped):
    dealer, router = pair
    for i in range(10):
        dealer.send(b"%d" % i)
    handle = Collect()
    deadline = time.monotonic() + 5
    while len(handle.handled) < 3 and time.monotonic() < deadline:
        wait_readable(router)
        drain(router, handle, dropped, limit=3 - len(handle.handled))
    assert handle.handled == [b"0", b"1", b"2"]
    while len(handle.handled) < 10 and time.monotonic() < deadline:
        wait_readable(router)
        drain(router, handle, dropped)
    assert handle.handled == [b"%d" % i for i in range(10)]


def test_drain_stops_after_its_slice_but_handles_one_message_at_least(pair, dropped):
    dealer, router = pair
    for i in range(5):
        dealer.send(b"%d" % i)
    deadline = time.monotonic() + 5
    while router.getsockopt(zmq.EVENTS) & zmq.POLLIN == 0 and time.monotonic() < deadline:
        router.poll(100)
    handle = Collect()
    drain(router, handle, dropped, until=time.monotonic() - 1)  # the slice is over already
    assert handle.handled == [b"0"]


def test_a_message_that_fails_is_dropped_logged_and_the_next_one_handled(pair, dropped,
                                                                         caplog):
    dealer, router = pair
    for body in [b"malformed", b"fails", b"fine", b"malformed", b"fails", b"also fine"]:
        dealer.send(body)
    handle = Collect(fail_on=(b"fails",))
    deadline = time.monotonic() + 5
    while len(handle.handled) < 2 and time.monotonic() < deadline:
        wait_readable(router)
        drain(router, handle, dropped)
    assert handle.handled == [b"fine", b"also fine"]
    logged = [r.getMessage() for r in caplog.records if r.name == "test_loop"]
    # Once each reason: the second of each kind is held back (rate-limited).
    assert len(logged) == 2, logged
    assert any(m.startswith("dropped a malformed message") for m in logged)
    assert any("failed to load or apply" in m and "KeyError" in m for m in logged)


def test_receive_says_none_when_nothing_waits(pair):
    dealer, router = pair
    assert receive(router) is None
    dealer.send(b"x")
    wait_readable(router)
    frames = receive(router)
    assert frames is not None and frames[-1].bytes == b"x"
    assert receive(router) is None


def test_close_drained_handles_what_came_before_closing(pair, dropped):
    dealer, router = pair
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    dealer.send(b"last words")
    wait_readable(router)
    handle = Collect()
    close_drained(router, poller, handle, dropped)
    assert handle.handled == [b"last words"]
    assert router.closed and poller.sockets == []


# ----------------------------------------------------------------------------- sending

def test_send_frames_sends_small_and_big_frames_alike(pair):
    dealer, router = pair
    big = np.arange(100_000, dtype=np.float64)  # over the zero-copy size
    frames = [b"header", bytearray(b"mutable"), memoryview(big), b"x" * 70_000]
    send_frames(dealer, frames)
    wait_readable(router)
    _, *received = router.recv_multipart()
    assert received == [bytes(f) for f in frames]


def test_send_to_no_peer_at_all_fails_at_once_and_says_so(pair, dropped, caplog):
    lonely = pair[0].context.socket(zmq.DEALER)  # connected nowhere: none would take it
    assert send(lonely, [b"hello"], dropped, "a greeting") is False
    assert any("could not send a greeting" in r.getMessage() for r in caplog.records)

