"""A fake center for tests of the processes that talk to one: a ROUTER socket
the test reads (:meth:`FakeCenter.expect`) and writes (:meth:`FakeCenter.send`)."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import zmq

from zfutures import protocol
from zfutures.loop import send_frames


class FakeCenter:
    """A ROUTER where a center would be: what its peers send is read with
    :meth:`expect`; :meth:`send` answers the peer last heard."""

    def __init__(self, context: zmq.Context):
        self.socket = context.socket(zmq.ROUTER)
        self.socket.linger = 0
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.peer: bytes | None = None  # the routing id of the peer last heard

    def expect(self, op: str, timeout: float = 10, skip=("heartbeat",)) -> dict:
        """The next message of ``op`` (skipping those of ``skip``), with its
        payload frames under ``"payload"``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and self.socket.poll(int(1000 * left)), f"no {op!r} within {timeout}s"
            ident, *frames = self.socket.recv_multipart()
            header, payload = protocol.decode(frames)
            self.peer = ident
            if header["op"] in skip:
                continue
            assert header["op"] == op, f"expected {op!r}, got {header}"
            header["payload"] = payload
            return header

    def ops_within(self, seconds: float, skip=("heartbeat",)) -> list[str]:
        """The ops sent within ``seconds``, but those of ``skip``."""
        ops, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.socket.poll(int(1000 * left)):
                _, *frames = self.socket.recv_multipart()
                op = protocol.decode(frames)[0]["op"]
                if op not in skip:
                    ops.append(op)
        return ops

    def send(self, op: str, frames: list | tuple = (), **fields: Any) -> None:
        send_frames(self.socket, [self.peer, *protocol.encode(op, frames, **fields)])

    def send_raw(self, *frames: bytes) -> None:
        self.socket.send_multipart([self.peer, *frames])

    def register(self, timeout: float = 10) -> dict:
        """Take a worker's registration and welcome it."""
        header = self.expect("register-worker", timeout)
        self.send("welcome", protocol=protocol.PROTOCOL_VERSION)
        return header


@contextmanager
def running() -> Iterator[FakeCenter]:
    """A fake center, its socket closed at the end."""
    context = zmq.Context()
    try:
        yield FakeCenter(context)
    finally:
        context.destroy(linger=0)
