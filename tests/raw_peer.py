"""Helpers for the tests that speak to zfutures as a raw peer would.

Not tests: the shared pieces of the tests that feed real processes, or a
Center driven by hand, messages no zfutures peer would send
(test_hostile.py, test_center.py, test_data_server.py). A raw DEALER that
reads replies by op (:class:`RawPeer`), a center and workers started as
processes without nannies (:func:`start_cluster`), a Center whose every
message goes through its handler (:class:`CenterUnderTest`), and headers
built by hand (:data:`h`, :func:`raw`).

The task functions here go to the workers by reference: the workers of
:func:`start_cluster` import this module (see conftest.Processes).
"""
from __future__ import annotations

import logging
import time
from typing import Any

import msgpack
import raw_wire
import zmq
from conftest import read_line, wait_for

from zfutures import Executor, protocol
from zfutures.center import Center
from zfutures.messages import Data, op_of
from zfutures.protocol import PROTOCOL_VERSION

#: The packed header of an op with any fields, unchecked (see raw_wire.header).
h = raw_wire.header

#: register-worker's fields, for a fake worker that registers by hand.
REGISTER_WORKER = {"protocol": PROTOCOL_VERSION, "address": "tcp://127.0.0.1:9", "name": "fake",
                   "nthreads": 1, "memory_limit": 0, "resources": {}, "keys": []}


def raw(obj: Any) -> bytes:
    """msgpack bytes of any object: headers the encoder would never make."""
    return msgpack.packb(obj, use_bin_type=True)


# ----------------------------------------------------------------------------- tasks

def make(n):
    return list(range(n))


def total(xs):
    return sum(xs)


# ----------------------------------------------------------------------------- raw peers

class RawPeer:
    """A raw DEALER: sends the frames it is given, reads replies by op."""

    def __init__(self, context: zmq.Context, address: str, *, rcvhwm: int | None = None,
                 rcvbuf: int | None = None):
        self.socket = context.socket(zmq.DEALER)
        self.socket.linger = 0
        self.socket.sndtimeo = 20_000  # a send that blocks this long fails the test
        if rcvhwm is not None:
            self.socket.rcvhwm = rcvhwm
        if rcvbuf is not None:
            self.socket.setsockopt(zmq.RCVBUF, rcvbuf)
        self.socket.connect(address)

    def send(self, *frames: bytes) -> None:
        self.socket.send_multipart(list(frames))

    def recv(self, timeout: float = 10) -> tuple[Any, list] | None:
        """The next message (header, payload frames), or None after ``timeout``."""
        if not self.socket.poll(1000 * timeout):
            return None
        return decode_reply(self.socket.recv_multipart())

    def expect(self, op: str, timeout: float = 10, skip=("heartbeat",)) -> tuple[Any, list]:
        """Wait for a message of ``op``, skipping heartbeats; fail on anything else."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.recv(max(0.0, deadline - time.monotonic()))
            assert message is not None, f"no {op!r} within {timeout}s"
            if op_of(message[0]) in skip:
                continue
            assert op_of(message[0]) == op, f"expected {op!r}, got {message[0]}"
            return message

    def register_client(self, name: str = "hostile") -> None:
        self.send(h("register-client", protocol=PROTOCOL_VERSION, name=name))
        self.expect("welcome")

    def request(self, op: str, request_id: int, timeout: float = 10, **fields) -> Any:
        """A request to the center from a registered raw client; its result."""
        self.send(h(op, id=request_id, **fields))
        header, _ = self.expect("reply", timeout)
        assert header.id == request_id
        return header.result

    def close(self) -> None:
        self.socket.close(linger=0)


def decode_reply(frames: list) -> tuple[Any, list]:
    """The message and payload of a reply, packed small frames cut apart if need be."""
    header, payload = protocol.decode_message(frames)
    return header, [bytes(f) for f in payload]


def fetch(peer: RawPeer, request_id: int, keys: list) -> tuple[Data, list]:
    """get-data from a worker's data server with a raw DEALER."""
    peer.send(h("get-data", id=request_id, keys=keys))
    assert peer.socket.poll(10_000), "the data server did not answer"
    header, payload = decode_reply(peer.socket.recv_multipart())
    assert type(header) is Data and header.id == request_id
    return header, payload


# ----------------------------------------------------------------------------- processes

def start_cluster(processes, tmp_path, nworkers: int = 1, center_args: tuple = ()):
    """A center and ``nworkers`` workers without nannies, each logging to a file.

    Returns (center process, address, center log path, [(worker, data address, log)]).
    """
    center_log = tmp_path / "center.log"
    with open(center_log, "w") as f:
        center, address = processes.center(*center_args, stderr=f)
    workers = []
    for i in range(nworkers):
        log = tmp_path / f"worker{i}.log"
        with open(log, "w") as f:
            worker = processes.worker(address, "--no-nanny", "--name", f"w{i}", stderr=f)
        data_address = read_line(worker, r"serving at (tcp://\S+) for").group(1)
        workers.append((worker, data_address, log))
    return center, address, center_log, workers


def connected_executor(address: str, nworkers: int) -> Executor:
    """An Executor on the center at ``address``, once ``nworkers`` workers are in."""
    ex = Executor(address, timeout=20)
    wait_for(lambda: len(ex.nthreads()) == nworkers, timeout=20,
             message="the workers did not register")
    return ex


def lines(path, needle: str = "") -> list[str]:
    """The lines of the log at ``path`` that contain ``needle``."""
    return [line for line in path.read_text().splitlines() if needle in line]


def assert_alive(*procs) -> None:
    """Fail if any of the processes ``procs`` has exited."""
    for proc in procs:
        assert proc.poll() is None, f"{proc.args} exited with status {proc.poll()}"


# ----------------------------------------------------------------------------- a center by hand

class CenterUnderTest:
    """A Center driven by hand: no run() loop; every message goes through _handle.

    Sends are recorded, as (ident, op, message) (and still made: to identities
    that are not connected, they fail and are logged, as for a peer that is
    gone). Errors the center logs, as when a handler raises and _handle's
    catch-all drops the message, are kept too.
    """

    def __init__(self):
        self.center = Center("127.0.0.1", 0)
        # Runs counted from 0, so fuzzed reports (small ints often) name real runs.
        placement = self.center.scheduler.placement
        placement.first_run = placement.next_run = 0
        self.sent: list[tuple[bytes, str, Any]] = []
        send = self.center._send

        def recording_send(ident, msg, frames=()):
            self.sent.append((ident, op_of(msg), msg))
            send(ident, msg, frames)

        self.center._send = recording_send
        self.errors: list[str] = []
        self._handler = _ErrorCollector(self.errors)
        logging.getLogger("zfutures").addHandler(self._handler)

    def handle(self, ident: bytes, header: bytes, *payload: bytes) -> None:
        self.center._handle([zmq.Frame(ident), zmq.Frame(header), *map(zmq.Frame, payload)])
        self.center._flush()

    def send_op(self, ident: bytes, op: str, *payload: bytes, **fields) -> None:
        self.handle(ident, h(op, **fields), *payload)

    def close(self) -> None:
        logging.getLogger("zfutures").removeHandler(self._handler)
        center = self.center
        center.socket.disable_monitor()
        center.monitor.close(linger=0)
        center.socket.close(linger=0)
        center.context.term()
        center.waker.close()


class _ErrorCollector(logging.Handler):
    def __init__(self, errors: list):
        super().__init__(logging.ERROR)
        self.errors = errors

    def emit(self, record: logging.LogRecord) -> None:
        trace = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        self.errors.append(f"{record.getMessage()}\n{trace}")
