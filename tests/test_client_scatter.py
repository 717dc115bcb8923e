"""Putting the caller's data on workers (zfutures.client_scatter), through
the client's core against a real center (see client_sim.py); last, with a
real worker's core too, data scattered again as its old copy is let go of."""
from __future__ import annotations

import concurrent.futures

import pytest
from client_sim import (
    A1,
    A2,
    W1,
    W2,
    C,
    Client,
    client_fixture,  # noqa: F401 (the fixture "client")
    from_center,
    scattered_to_a1,
    stored,
    wire,
)

from zfutures import Future, serialize
from zfutures.client_scatter import plan
from zfutures.errors import ConnectionError, ProtocolError
from zfutures.messages import (
    Compute,
    DataStored,
    Heartbeat,
    MissingData,
    PutData,
    ReleaseKeys,
    Sync,
    Synced,
    UpdateData,
    WhoHas,
    WorkersLeft,
    op_of,
)
from zfutures.protocol import unpack_items
from zfutures.scheduler import Scheduler
from zfutures.worker_state import WorkerState


def scatter_a_and_b(client: Client) -> tuple[list[Future], concurrent.futures.Future]:
    """Start a scatter of "a" to A1 and "b" to A2: its futures, and its call's."""
    futures = [Future("a", None), Future("b", None)]
    done: concurrent.futures.Future = concurrent.futures.Future()
    client.core.scatter({A1: [("a", [b"1"])], A2: [("b", [b"2"])]}, futures, done, 0.0)
    return futures, done


def test_a_plan_deals_the_data_to_the_workers_in_turn_or_to_each_with_broadcast():
    where, keys = plan(["a", 1, "a"], [A1, A2], broadcast=False)
    assert keys[0] == keys[2] != keys[1] and keys[0].startswith("str-")  # (a token of the bytes)
    assert [[key for key, _ in where[a]] for a in (A1, A2)] == [[keys[0], keys[2]], [keys[1]]]
    assert serialize.loads(where[A2][0][1]) == 1
    where, _ = plan(["a", 1], [A1, A2], broadcast=True)
    assert [len(where[a]) for a in (A1, A2)] == [2, 2]


def test_a_scatter_takes_back_a_release_of_its_key_still_waiting(client):
    old = Future("data-1", None)
    client.core.scatter({A1: [("data-1", [b"v"])]}, [old], concurrent.futures.Future(), 0.0)
    stored(client, A1, {"data-1": 8})
    client.center_hears()
    client.core.unref("data-1", client.now)  # let go of, its release waits ...
    done: concurrent.futures.Future = concurrent.futures.Future()
    new = Future("data-1", None)
    client.core.scatter({A1: [("data-1", [b"v"])]}, [new], done, 0.0)  # ... scattered again
    stored(client, A1, {"data-1": 8})
    client.now += 1
    client.core.tick(client.now)
    assert "release" not in client.center_hears()
    assert done.done() and new.status == "finished"
    assert client.s.who_has(["data-1"]) == {"data-1": [A1]}


def test_a_part_of_a_scatter_whose_worker_left_goes_to_another_worker(client):
    futures, done = scatter_a_and_b(client)
    client.core.to_workers.clear()
    client.s.remove_worker(W1)
    client.center_speaks()                   # a's part goes to A2 instead ...
    ((address, msg, _),) = client.core.to_workers
    assert (address, type(msg)) == (A2, PutData) and [i.key for i in msg.items] == ["a"]
    requests = sorted(client.core.requests.worker_requests)
    for request_id, keys in zip(requests, (["b"], ["a"])):
        client.core.worker_message(A2, *wire(DataStored(request_id, {key: 8 for key in keys})),
                                   client.now)
    assert done.result(0) is None            # ... and the center hears of both there
    client.center_hears()
    assert client.s.who_has(["a", "b"]) == {"a": [A2], "b": [A2]}
    assert all(f.status == "finished" for f in futures)


def test_a_scatter_ends_when_the_center_falls_silent_without_trying_other_workers(client):
    client.core.welcomed = True
    futures, done = scatter_a_and_b(client)
    client.center_hears()
    client.core.to_workers.clear()
    client.now += client.core.reconnect_deadline + 1
    client.core.tick(client.now)             # nothing heard from the center since
    with pytest.raises(ConnectionError, match="silent"):
        done.result(0)
    assert client.core.to_workers == []      # no part sent elsewhere meanwhile


def test_a_scatter_with_no_worker_left_fails_and_tells_where_the_rest_went(client):
    futures, done = scatter_a_and_b(client)
    stored(client, A2, {"b": 8})
    client.s.remove_worker(W1)
    client.s.remove_worker(W2)
    client.center_speaks()
    with pytest.raises(ConnectionError, match="left the cluster"):
        done.result(0)
    assert futures[0].status == "lost"
    assert "update-data" in client.center_hears()  # (b's copy is known, so let go of)


def test_a_part_of_a_scatter_is_not_sent_to_a_worker_that_left_in_the_same_message(client):
    futures, done = scatter_a_and_b(client)
    client.core.to_workers.clear()
    client.s.remove_worker(W1)
    client.s.remove_worker(W2)
    client.center_speaks()                   # workers-left: A1 and A2
    assert client.core.to_workers == []      # (a's part was not sent on to A2)
    with pytest.raises(ConnectionError, match="left the cluster"):
        done.result(0)


def test_a_scatter_two_of_whose_workers_leave_together_ends_once(client):
    # b is stored on A2; a's part is still out to A1; both leave in one message:
    # a's part, sent on to A2, fails at once, which must not end the scatter a
    # second time when the first failure goes on.
    futures, done = scatter_a_and_b(client)
    client.core.to_workers.clear()
    stored(client, A2, {"b": 8})
    client.core.center_message(*wire(WorkersLeft([A1, A2])), client.now)
    told = [msg for msg, _ in client.core.to_center if type(msg) is UpdateData]
    assert len(told) == 1 and [item.key for item in told[0].items] == ["b"]
    with pytest.raises(ConnectionError, match="left the cluster"):
        done.result(0)


def test_data_scattered_to_workers_that_left_together_names_none_of_them(client):
    # k is broadcast to A1 and A2; A2 stored it, A1 has not answered; both leave
    # in one message: the scatter ends then, and k must not be held on A2.
    k = Future("k", None)
    done: concurrent.futures.Future = concurrent.futures.Future()
    client.core.scatter({A1: [("k", [b"1"])], A2: [("k", [b"1"])]}, [k], done, 0.0)
    client.core.to_workers.clear()
    stored(client, A2, {"k": 8})
    client.core.center_message(*wire(WorkersLeft([A1, A2])), client.now)
    assert client.core.keys["k"].who_has == []
    client.core.to_workers.clear()
    client.fetch("k")
    assert [address for address, _, _ in client.core.to_workers] == []  # nowhere to ask


def test_an_unexpected_message_from_a_worker_is_a_protocol_error(client):
    # (the shell drops it through its rate-limited log: a worker may send many)
    with pytest.raises(ProtocolError, match="unexpected 'heartbeat'"):
        client.core.worker_message(A1, *wire(Heartbeat()), client.now)


def test_scattering_lost_data_again_makes_it_whole(client):
    s = client.s
    first = scattered_to_a1(client)
    s.remove_worker(W1)
    client.center_speaks()
    assert first.status == "lost"
    again = Future("data", None)
    done: concurrent.futures.Future = concurrent.futures.Future()
    client.core.scatter({A2: [("data", [b"v"])]}, [again], done, 0.0)
    assert not again.done()
    stored(client, A2, {"data": 8})
    assert done.result(0) is None and again.status == "finished"
    client.center_hears()
    client.center_speaks()
    assert again.status == "finished" and s.who_has(["data"]) == {"data": [A2]}


def test_news_of_a_lost_copy_does_not_fail_the_copy_scattered_again(client):
    # The worker holding the first copy dies as the same data is scattered
    # again elsewhere; the center hears of the death first, and its word that
    # the key is lost reaches us after our new copy was stored.
    s = client.s
    scattered_to_a1(client)
    s.remove_worker(W1)                      # (its word waits)
    again = Future("data", None)
    done: concurrent.futures.Future = concurrent.futures.Future()
    client.core.scatter({A2: [("data", [b"v"])]}, [again], done, 0.0)
    client.center_speaks()                   # key-erred, of the first copy: stale
    assert again.status == "finished"        # (as far as we know, the data is there)
    stored(client, A2, {"data": 8})
    client.center_hears()
    client.center_speaks()
    assert again.status == "finished" and done.result(0) is None
    assert s.who_has(["data"]) == {"data": [A2]}


def test_a_scatter_that_stored_nothing_leaves_the_keys_news_as_it_was(client):
    s = client.s
    first = scattered_to_a1(client)
    s.remove_worker(W2)
    client.center_speaks()
    failed: concurrent.futures.Future = concurrent.futures.Future()
    client.core.scatter({A2: [("data", [b"v"])]}, [Future("data", None)], failed, 0.0)
    with pytest.raises(ConnectionError):
        failed.result(0)
    s.remove_worker(W1)       # the one copy goes: the center's word of it counts
    client.center_speaks()
    assert first.status == "lost"


# --------------------------------------------------------------------------- with a worker's core


class HandWorker:
    """A real WorkerState at A1 (W1) whose messages are carried by hand:
    what the center sends it waits in ``from_center`` until delivered, so a
    client's put-data may overtake it, as it may between two connections."""

    def __init__(self, client: Client):
        self.client = client
        self.state = WorkerState(A1, nthreads=1)
        self.from_center: list[tuple[object, list]] = []

    def center_speaks(self) -> None:
        """The center's messages: the client's delivered, the worker's queued."""
        for ident, msg, frames in self.client.s.outbox.take():
            msg, frames = from_center(msg, frames)
            if ident == self.client.ident:
                self.client.core.center_message(msg, frames, self.client.now)
            else:
                assert ident == W1
                self.from_center.append((msg, frames))

    def hears_center(self) -> None:
        """Deliver what the center sent, in order (as Worker.center_handlers)."""
        while self.from_center:
            msg, frames = self.from_center.pop(0)
            if type(msg) is ReleaseKeys:
                self.state.release(msg.keys)
            elif type(msg) is Compute:
                for item, payload in unpack_items(msg.tasks, frames):
                    self.state.compute(item, payload, self.client.now)
            elif type(msg) is Synced:
                self.state.synced(msg.keys)
            else:
                raise AssertionError(f"unexpected {op_of(msg)!r} to the worker")
        self.answers_client()

    def hears_client(self) -> None:
        """Take the client's put-data and answer it (as DataServer._put_data)."""
        core = self.client.core
        sent = core.to_workers[:]
        core.to_workers.clear()
        for address, msg, frames in sent:
            assert (address, type(msg)) == (A1, PutData)
            msg, frames = wire(msg, frames)
            values = {item.key: (serialize.loads(value_frames), 8)
                      for item, value_frames in unpack_items(msg.items, frames)}
            self.state.put_data(self.client.ident, msg.id, values, {})
        self.answers_client()

    def answers_client(self) -> None:
        """Say which data is stored (as Worker._flush)."""
        stored = self.state.stored[:]
        self.state.stored.clear()
        for _, answer in stored:
            self.client.core.worker_message(A1, *wire(answer), self.client.now)

    def reports(self) -> None:
        """Deliver the worker's reports to the center."""
        sent = self.state.take_reports(self.client.now)
        for report, _ in sent:
            if type(report) is Sync:
                self.client.s.sync(W1, report.keys)
            elif type(report) is MissingData:
                self.client.s.missing_data(W1, report)
            else:
                raise AssertionError(f"unexpected {report!r} to the center")


def test_data_scattered_again_stays_when_it_reaches_its_worker_before_the_release():
    # The user lets go of scattered data and scatters the same data again at
    # once. The release reaches the center first (the scatter's own request
    # to the center sends it), and the center tells the worker to drop the
    # key; the new copy goes from the client straight to the worker, over
    # another connection, and may get there before that word.
    s = Scheduler()
    s.add_worker(W1, A1, "w1", 1)
    s.add_client(C, "c")
    client, data = Client(s), serialize.dumps("the data")
    worker = HandWorker(client)
    first = Future("data", None)
    client.core.scatter({A1: [("data", data)]}, [first], concurrent.futures.Future(), 0.0)
    worker.hears_client()
    client.center_hears()
    worker.center_speaks()
    client.core.unref("data", client.now)   # (first is dropped)
    asked: concurrent.futures.Future = concurrent.futures.Future()
    client.core.rpc(WhoHas, {"keys": ["data"]}, asked)  # (as scatter asks for workers)
    assert client.center_hears() == ["release", "who-has"]
    client.center_answers()
    worker.center_speaks()                  # release-keys, on its way to the worker ...
    again = Future("data", None)
    done: concurrent.futures.Future = concurrent.futures.Future()
    client.core.scatter({A1: [("data", data)]}, [again], done, client.now)
    worker.hears_client()                   # ... overtaken by the new copy
    worker.hears_center()
    for _ in range(3):                      # everything else in turn, till all is said
        worker.reports()
        client.center_hears()
        worker.center_speaks()
        worker.hears_client()
        worker.hears_center()
    assert done.result(0) is None and again.status == "finished"
    assert s.who_has(["data"]) == {"data": [A1]}
    assert "data" in worker.state.data      # the center and the worker agree
    total = client.submit("total", "data")
    client.center_hears()
    worker.center_speaks()
    worker.hears_center()
    worker.reports()
    client.center_hears()
    worker.center_speaks()
    assert [t.key for t in worker.state.to_execute] == ["total"]  # its input is here
    assert again.status == "finished" and not total.done()
