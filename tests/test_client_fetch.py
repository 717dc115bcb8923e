"""The client's fetching of results, driven by hand against a real Scheduler.

No thread runs the client's loop here: its handlers are called directly, its
requests to the center are answered by the Scheduler, and its data requests
to workers are only recorded (the sockets never connect), so each ordering
of events is played exactly.
"""
from __future__ import annotations

import concurrent.futures
import time

import pytest

from zfutures import Future, FutureLostError, protocol, serialize
from zfutures.client_io import FINISHED, ClientIO, _Key
from zfutures.scheduler import Scheduler

A1, A2 = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"
W1, W2, C = b"w1", b"w2", b"c"


class Client:
    """A ClientIO whose center is ``scheduler``, handled by hand."""

    def __init__(self, scheduler: Scheduler):
        self.s = scheduler
        self.io = ClientIO("tcp://127.0.0.1:9", C.decode())
        self.rpcs: list = []
        self.io._cmd_rpc = lambda op, fields, result: self.rpcs.append((op, fields, result))

    def holds(self, key: str, *holders: str) -> _Key:
        """The client holds a finished future for ``key``."""
        info = self.io.keys[key] = _Key(key)
        info.status, info.who_has, info.refs = FINISHED, list(holders), 1
        return info

    def fetch(self, key: str) -> concurrent.futures.Future:
        result: concurrent.futures.Future = concurrent.futures.Future()
        self.io._cmd_fetch([key], result)
        return result

    def requests_to(self, address: str) -> list[list[str]]:
        return [keys for _, worker, keys, _ in self.io.gathers.values() if worker == address]

    def center_speaks(self) -> None:
        """Deliver what the center sent this client, in order."""
        for ident, op, fields, frames in self.s.outbox.take():
            if ident == C:
                self.io._on_center_message(protocol.encode(op, frames, **fields))

    def center_answers(self) -> None:
        """The center answers the who-has requests asked so far."""
        asked, self.rpcs = self.rpcs, []
        for op, fields, result in asked:
            assert op == "who-has"
            result.set_result(self.s.who_has(fields["keys"]))

    def worker_answers(self, address: str, key: str, value: object) -> None:
        """``address`` answers the client's pending request for ``key``."""
        (request_id,) = [i for i, (_, worker, keys, _) in self.io.gathers.items()
                         if worker == address and key in keys]
        frames = serialize.dumps(value)
        header = {"op": "data", "id": request_id, "missing": [],
                  "items": [{"key": key, "nframes": len(frames)}]}
        self.io._on_data(address, header, frames)

    def close(self) -> None:
        self.io.context.destroy(linger=0)


@pytest.fixture
def cluster():
    s = Scheduler()
    s.add_worker(W1, A1, "w1", 1)
    s.add_worker(W2, A2, "w2", 1)
    s.add_client(C, "c")
    client = Client(s)
    yield s, client
    client.close()


def finished_on(s: Scheduler, key: str, address: str) -> None:
    """``key`` was computed on the worker at ``address`` (any other may run it again)."""
    s.submit(C, [{"key": key, "deps": [], "priority": 0, "nframes": 1, "workers": [address],
                  "allow_other_workers": True}], [b"payload"])
    ts = s.tasks[key]
    s.task_finished(ts.processing_on.ident, key, 8, run=ts.run)
    assert s.who_has([key]) == {key: [address]}
    s.outbox.take()


def test_a_fetch_from_a_worker_that_died_waits_for_the_key_computed_again(cluster):
    s, client = cluster
    finished_on(s, "x", A1)
    client.holds("x", A1)
    result = client.fetch("x")
    assert client.requests_to(A1) == [["x"]]

    s.remove_worker(W1)                      # x is computed again, on W2
    client.center_speaks()                   # workers-left: the request goes at once ...
    assert client.requests_to(A1) == []
    client.center_answers()                  # ... the center holds x nowhere yet
    assert not result.done()
    s.task_finished(W2, "x", 8, run=s.tasks["x"].run)
    client.center_speaks()                   # x is back: fetched from its new holder
    assert client.requests_to(A2) == [["x"]]
    client.worker_answers(A2, "x", 42)
    assert serialize.loads(result.result(0)["x"]) == 42
    assert client.io.awaiting == {}


def test_a_fetch_fails_when_the_lost_key_errs_before_the_center_answers(cluster):
    s, client = cluster
    s.update_data(C, [{"key": "data", "nbytes": 8, "workers": [A1]}])  # scattered
    s.outbox.take()
    client.holds("data", A1).scattered = True
    result = client.fetch("data")

    s.remove_worker(W1)            # scattered data cannot be computed again: it errs ...
    client.center_speaks()         # ... and the client hears it before the who-has answer
    client.center_answers()
    with pytest.raises(FutureLostError, match="lost with the worker"):
        result.result(0)
    assert client.io.awaiting == {} and client.io.gathers == {}


def test_a_key_handed_on_twice_is_asked_for_again(cluster):
    s, client = cluster
    finished_on(s, "x", A1)
    client.holds("x", A1)
    result = client.fetch("x")
    s.keys_added(W2, "x", 8)                 # W1 handed x on to W2, and left
    s.remove_worker(W1)
    client.center_speaks()
    client.center_answers()
    assert client.requests_to(A2) == [["x"]]
    s.add_worker(b"w3", "tcp://127.0.0.1:3", "w3", 1)
    s.keys_added(b"w3", "x", 8)              # W2 handed it on to W3, and left too
    s.remove_worker(W2)
    client.center_speaks()
    client.center_answers()                  # a second question, with a new answer
    assert client.requests_to("tcp://127.0.0.1:3") == [["x"]]
    assert not result.done()


# --------------------------------------------------------------------------- straight from a worker

def submit_alone(client: Client, key: str, own_key: bool) -> tuple[Future, dict]:
    """Submit ``key`` as a lone task with a worker to send it to; return its
    future and the item the center is told of."""
    client.io._direct_worker = A1
    future = Future(key, None)
    item = {"key": key, "deps": [], "priority": 0}
    client.io._cmd_submit([(item, [b"payload"], future)], False, own_key)
    ((op, (sent,), _, _),) = client.io._outgoing
    assert op == "submit" and sent["direct_worker"] == A1
    return future, sent


def worker_answers_straight(client: Client, key: str, run: int, value: object) -> None:
    client.io._direct_result(A1, {"key": key, "run": run, "nbytes": 8},
                             serialize.dumps(value))


def test_a_direct_result_for_a_key_the_executor_made_counts_at_once(cluster):
    # The center counts every run its worker does not refuse: no need to wait
    # for the center's word.
    _, client = cluster
    future, sent = submit_alone(client, "made-here", own_key=True)
    assert "direct_ack" not in sent
    worker_answers_straight(client, "made-here", sent["direct_run"], 3)
    assert future.result(0) == 3 and client.io.direct_answers == 1


def test_a_direct_result_for_a_key_the_caller_chose_waits_for_the_centers_word(cluster):
    # The center may hold that key already, from another run: the worker's
    # answer counts only once the center says the run is the task's.
    s, client = cluster
    future, sent = submit_alone(client, "chosen", own_key=False)
    assert sent["direct_ack"] is True
    worker_answers_straight(client, "chosen", sent["direct_run"], 3)
    assert not future.done()
    s.submit(C, [dict(sent, nframes=1)], [b"payload"])
    client.center_speaks()  # direct-accepted
    assert future.result(0) == 3 and client.io.direct_answers == 1


def test_a_caller_sends_a_lone_task_itself_and_leaves_its_submit_for_the_next_turn(cluster):
    # No I/O thread runs here: the lock is free, so the calling thread does
    # the work. The task leaves for its worker at once; the center's copy of
    # the submit waits for the loop's next turn (when the answer comes), and
    # the I/O thread is told to wait on the socket made for that worker.
    _, client = cluster
    client.io._direct_worker = A1
    future = Future("alone", None)
    item = {"key": "alone", "deps": [], "priority": 0}
    client.io.call_now("submit", [(item, [b"payload"], future)], False, True)
    assert A1 in client.io.workers and client.io.keys["alone"].direct is not None
    ((op, (sent,), _, _),) = client.io._outgoing
    assert op == "submit" and sent["direct_worker"] == A1
    assert client.io.waker.pending
    client.io.lock.acquire()  # the I/O thread is at the sockets: it is handed over
    try:
        client.io.call_now("submit", [({"key": "next", "deps": [], "priority": 0},
                                        [b"payload"], Future("next", None))], False, True)
        assert "next" not in client.io.keys and not client.io.commands.empty()
    finally:
        client.io.lock.release()


def test_direct_submits_wait_a_moment_for_the_answers_and_go_together(cluster):
    # The center then need not send the results this client has already.
    _, client = cluster
    first, sent = submit_alone(client, "first", own_key=True)
    now = time.monotonic()
    assert client.io._holds(now)
    assert not client.io._holds(now + 1.0)  # (not for long)
    worker_answers_straight(client, "first", sent["direct_run"], 3)
    assert first.result(0) == 3 and sent["direct_answered"] is True
    assert client.io._holds(now)  # the next may join it
    client.io._direct_worker = A1
    client.io._cmd_submit([({"key": "next", "deps": [], "priority": 0}, [b"payload"],
                            Future("next", None))], False, True)
    ((op, items, _, _),) = client.io._outgoing
    assert [item["key"] for item in items] == ["first", "next"] and client.io._holds(now)
    client.io._cmd_submit([({"key": "burst", "deps": [], "priority": 0}, [b"payload"],
                            Future("burst", None))], False, True)  # (one is in flight)
    assert not client.io._holds(now)  # a submit through the center goes at once


def test_a_direct_submit_that_waits_for_the_centers_word_is_not_held(cluster):
    _, client = cluster
    submit_alone(client, "chosen", own_key=False)
    assert not client.io._holds(time.monotonic())


def test_the_io_thread_ends_as_soon_as_it_is_closed():
    # Not at its next heartbeat: an Executor's shutdown waits for it.
    io = ClientIO("tcp://127.0.0.1:9", "c", heartbeat_interval=600)
    io.center.connect(io.address)  # (nobody answers: no matter)
    io.thread.start()
    io.stop(timeout=10)
    assert not io.thread.is_alive()


def test_a_burst_of_submits_goes_to_the_io_thread_after_the_first(cluster):
    # The first may go straight to a worker, sent by the caller; the others
    # cannot while it is in flight, and the I/O thread sends them together.
    _, client = cluster
    client.io._direct_worker = A1
    for key in ("first", "second", "third"):
        client.io.submit({"key": key, "deps": [], "priority": 0}, [b"payload"],
                         Future(key, None), own_key=True)
    assert client.io.keys["first"].direct is not None
    assert "second" not in client.io.keys and client.io.waker.pending
    client.io._take_commands()  # (the I/O thread's turn)
    ((op, items, _, _),) = client.io._outgoing
    assert [item["key"] for item in items] == ["first", "second", "third"]


def test_news_of_a_key_let_go_of_and_submitted_again_is_not_taken_for_the_new_one(cluster):
    # The center's word that x finished, sent before it heard that we let x
    # go, reaches us after we submitted x again: x is then about to be
    # dropped where that word says it is, and the new x is not done.
    s, client = cluster
    io = client.io

    def center_hears():  # what the client sent, in order, to the real Scheduler
        for op, frames, fields in sent:
            if op == "submit":
                s.submit(C, fields["tasks"], frames, fields["seq"])
            elif op == "release":
                s.release(C, fields["keys"])
        sent.clear()

    sent: list = []
    io._send = lambda op, frames=None, **fields: sent.append((op, frames or [], fields))
    first = Future("x", None)
    io._cmd_submit([({"key": "x", "deps": [], "priority": 0}, [b"payload"], first)])
    io._flush()
    center_hears()
    worker = s.tasks["x"].processing_on
    s.task_finished(worker.ident, "x", 8, run=s.tasks["x"].run)  # (its word waits)
    io._cmd_unref("x")
    second = Future("x", None)
    io._cmd_submit([({"key": "x", "deps": [], "priority": 0}, [b"payload"], second)])
    io._flush()  # (the release, then the submit)
    center_hears()
    client.center_speaks()
    assert not second.done()
    s.task_finished(s.tasks["x"].processing_on.ident, "x", 8, run=s.tasks["x"].run)
    client.center_speaks()
    assert second.done()
    assert io.keys["x"].who_has == [ws.address for ws in s.tasks["x"].who_has]
