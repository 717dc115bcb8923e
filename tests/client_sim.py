"""The client's core driven by hand against a real center, for the tests of
the client's core and its parts (tests/test_client_*.py).

Its center is a real :class:`Scheduler`, fed what the core sends (checked
against the wire protocol on the way, as the shell would encode it) and
answering through the same encoding; workers are played by hand. Time is
an argument, so timeouts are tested by passing a later ``now``.
"""
from __future__ import annotations

import concurrent.futures
from typing import Any

import pytest

from zfutures import Future, serialize
from zfutures.client_records import FINISHED, KeyRecord
from zfutures.client_state import ClientCore
from zfutures.messages import (
    Data,
    DataStored,
    DirectResult,
    DoneItem,
    OfferedItem,
    Release,
    Reply,
    Submit,
    TaskItem,
    UpdateData,
    WhoHas,
    op_of,
)
from zfutures.protocol import decode_message, encode_message
from zfutures.scheduler import Scheduler

A1, A2 = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"
W1, W2, C, C2 = b"w1", b"w2", b"c", b"c2"


def cluster() -> Scheduler:
    """A center with two workers (W1 at A1, W2 at A2) and two clients (C, C2)."""
    s = Scheduler()
    s.add_worker(W1, A1, "w1", 1)
    s.add_worker(W2, A2, "w2", 1)
    s.add_client(C, "c")
    s.add_client(C2, "c2")
    return s


def wire(msg: Any, frames: list | tuple = ()) -> tuple[Any, list]:
    """A message as the other end decodes it (checked against the protocol)."""
    return decode_message(encode_message(msg, frames))


def from_center(msg: Any, frames: list) -> tuple[Any, list]:
    """A message the center's scheduler sends, as the client decodes it."""
    return wire(msg, frames)


class Client:
    """A ClientCore whose center is ``scheduler``, driven by hand."""

    def __init__(self, scheduler: Scheduler, ident: bytes = C):
        self.s = scheduler
        self.ident = ident
        self.now = 0.0
        self.core = ClientCore(ident.decode(), now=self.now)
        self.asked: list[tuple[int, list[str]]] = []  # who-has requests not answered yet

    def submit(self, key: str, *deps: str, own_key: bool = True, eager: bool = False,
               future: Future | None = None) -> Future:
        future = future or Future(key, None)
        item = TaskItem(key, list(deps), 0, 1)
        self.core.submit([(item, [f"payload of {key}".encode()], future)], self.now, eager,
                         own_key)
        return future

    def holds(self, key: str, *holders: str) -> KeyRecord:
        """The client holds a finished future for ``key``."""
        info = self.core.keys[key] = KeyRecord(key)
        info.status, info.who_has, info.refs = FINISHED, list(holders), 1
        return info

    def fetch(self, key: str) -> concurrent.futures.Future:
        result: concurrent.futures.Future = concurrent.futures.Future()
        self.core.fetch([key], result, self.now)
        return result

    def center_hears(self) -> list[str]:
        """Deliver what the client sent to the center, in order; return the ops.
        who-has requests wait for :meth:`center_answers`."""
        self.core.flush_all()
        sent = self.core.to_center[:]
        self.core.to_center.clear()
        for msg, frames in sent:
            msg, frames = wire(msg, frames)
            kind = type(msg)
            if kind is Submit:
                self.s.submit(self.ident, msg.tasks, frames, msg.seq)
            elif kind is Release:
                self.s.release(self.ident, msg.keys)
            elif kind is UpdateData:
                self.s.update_data(self.ident, msg.items, msg.seq)
            elif kind is WhoHas:
                self.asked.append((msg.id, msg.keys))
            elif op_of(msg) not in ("heartbeat", "register-client", "close-client"):
                raise AssertionError(f"unexpected {op_of(msg)!r} to the center")
        return [op_of(msg) for msg, _ in sent]

    def center_answers(self) -> None:
        """The center answers the who-has requests asked so far."""
        asked, self.asked = self.asked, []
        for request_id, keys in asked:
            self.core.center_message(*wire(Reply(request_id, self.s.who_has(keys))), self.now)

    def center_speaks(self) -> None:
        """Deliver what the center sent this client, in order."""
        for ident, msg, frames in self.s.outbox.take():
            if ident == self.ident:
                self.core.center_message(*from_center(msg, frames), self.now)

    def requests_to(self, address: str) -> list[list[str]]:
        return [f.keys for f in self.core.gathers.fetches.values() if f.address == address]

    def worker_answers(self, address: str, key: str, value: object) -> None:
        """``address`` answers the client's pending request for ``key``."""
        (request_id,) = [i for i, f in self.core.gathers.fetches.items()
                         if f.address == address and key in f.keys]
        frames = serialize.dumps(value)
        self.core.worker_message(address, *wire(Data(request_id, [OfferedItem(key, len(frames))],
                                                     []), frames), self.now)

    def answers_straight(self, key: str, run: int, value: object) -> None:
        self.core.worker_message(A1, *wire(DirectResult(key, run, 8), serialize.dumps(value)),
                                 self.now)


@pytest.fixture(name="client")
def client_fixture() -> Client:
    """The fixture ``client``: a client (C) of a center with two workers (see
    :func:`cluster`). The test files of the client's core import it."""
    return Client(cluster())


def finish(s: Scheduler, key: str, value: object = None, nbytes: int = 8) -> None:
    """The worker running ``key`` finished it (its small value rides along if given)."""
    ts = s.tasks[key]
    frames = serialize.dumps(value) if value is not None else None
    s.task_finished(ts.processing_on.ident,
                    DoneItem(key, nbytes, ts.run, nframes=len(frames) if frames else 0), frames)


def finished_on(s: Scheduler, key: str, address: str) -> None:
    """``key`` was computed on the worker at ``address`` (any other may run it again)."""
    s.submit(C, [TaskItem(key, [], 0, nframes=1, workers=[address], allow_other_workers=True)],
             [b"payload"])
    finish(s, key)
    assert s.who_has([key]) == {key: [address]}
    s.outbox.take()


def submit_alone(client: Client, key: str, own_key: bool) -> tuple[Future, TaskItem]:
    """Submit ``key`` as a lone task with a worker to send it to; return its
    future and the item the center is told of."""
    client.core.direct.worker = A1
    future = client.submit(key, own_key=own_key)
    ((address, msg, _),) = client.core.to_workers
    assert (address, op_of(msg)) == (A1, "run-task") and msg.key == key
    client.core.to_workers.clear()
    ((cls, (sent,)),) = client.core.outbox.queued()
    assert cls is Submit and sent.direct_worker == A1
    return future, sent


def queued_item(client: Client, key: str) -> TaskItem:
    """``key``'s item in the submits queued (items change there: they are immutable)."""
    (item,) = [item for cls, items in client.core.outbox.queued() if cls is Submit
               for item in items if item.key == key]
    return item


def stored(client: Client, address: str, nbytes: dict[str, int]) -> None:
    """``address`` answers the client's pending put-data (the only one to it)."""
    requests = client.core.requests.worker_requests
    (request_id,) = [i for i, (a, _, _) in requests.items() if a == address]
    client.core.worker_message(address, *wire(DataStored(request_id, nbytes)), client.now)


def scattered_to_a1(client: Client) -> Future:
    """A future of data the client scattered to A1; the center knows (and said so)."""
    first = Future("data", None)
    client.core.scatter({A1: [("data", [b"v"])]}, [first], concurrent.futures.Future(), 0.0)
    stored(client, A1, {"data": 8})
    client.center_hears()
    client.center_speaks()
    return first
