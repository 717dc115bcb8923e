"""A fake center for tests of the processes that talk to one: a ROUTER socket
the test reads (:meth:`FakeCenter.expect`) and writes (:meth:`FakeCenter.send`),
in the message classes of zfutures.messages."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import zmq

from zfutures import protocol
from zfutures.loop import send_frames
from zfutures.messages import Heartbeat, RegisterWorker, Welcome


class FakeCenter:
    """A ROUTER where a center would be: what its peers send is read with
    :meth:`expect`; :meth:`send` answers the peer last heard."""

    def __init__(self, context: zmq.Context):
        self.socket = context.socket(zmq.ROUTER)
        self.socket.linger = 0
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.peer: bytes | None = None  # the routing id of the peer last heard
        self.payload: list = []  # the payload frames of the message expect returned last

    def expect(self, cls: type, timeout: float = 10, skip: tuple[type, ...] = (Heartbeat,)
               ) -> Any:
        """The next message, of class ``cls`` (skipping those of the classes
        of ``skip``); its payload frames are then :attr:`payload`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and self.socket.poll(int(1000 * left)), \
                f"no {cls.__name__} within {timeout}s"
            ident, *frames = self.socket.recv_multipart()
            msg, payload = protocol.decode_message(frames)
            self.peer = ident
            if type(msg) in skip:
                continue
            assert type(msg) is cls, f"expected a {cls.__name__}, got {msg}"
            self.payload = payload
            return msg

    def sent_within(self, seconds: float, skip: tuple[type, ...] = (Heartbeat,)) -> list[type]:
        """The classes of the messages sent within ``seconds``, but those of ``skip``."""
        kinds, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.socket.poll(int(1000 * left)):
                _, *frames = self.socket.recv_multipart()
                kind = type(protocol.decode_message(frames)[0])
                if kind not in skip:
                    kinds.append(kind)
        return kinds

    def send(self, msg: Any, frames: list | tuple = ()) -> None:
        send_frames(self.socket, [self.peer, *protocol.encode_message(msg, frames)])

    def send_raw(self, *frames: bytes) -> None:
        self.socket.send_multipart([self.peer, *frames])

    def register(self, timeout: float = 10) -> RegisterWorker:
        """Take a worker's registration and welcome it."""
        registration = self.expect(RegisterWorker, timeout)
        self.send(Welcome(protocol.PROTOCOL_VERSION))
        return registration


@contextmanager
def running() -> Iterator[FakeCenter]:
    """A fake center, its socket closed at the end."""
    context = zmq.Context()
    try:
        yield FakeCenter(context)
    finally:
        context.destroy(linger=0)
