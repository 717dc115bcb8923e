"""The client's core, driven one event at a time: no sockets, threads or sleeps.

Its center is a real :class:`Scheduler`, fed what the core sends (checked
against the wire protocol on the way, as the shell would encode it) and
answering through the same encoding; workers are played by hand. Time is
an argument, so timeouts are tested by passing a later ``now``.
"""
from __future__ import annotations

import concurrent.futures
import gc
import pickle
import weakref

import pytest

from zfutures import Future, FutureLostError, protocol, serialize
from zfutures.client_outbox import RELEASE_DELAY
from zfutures.client_records import FINISHED, PRUNE_SLACK, KeyRecord
from zfutures.client_state import ClientCore
from zfutures.errors import ConnectionError
from zfutures.scheduler import Scheduler

A1, A2 = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"
W1, W2, C, C2 = b"w1", b"w2", b"c", b"c2"


def wire(op: str, fields: dict, frames: list) -> tuple[dict, list]:
    """A message as the other end decodes it (checked against the protocol)."""
    return protocol.decode(protocol.encode(op, frames, **fields))


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
        item = {"key": key, "deps": list(deps), "priority": 0}
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
        for op, fields, frames in sent:
            header, frames = wire(op, fields, frames)
            if op == "submit":
                self.s.submit(self.ident, header["tasks"], frames, header.get("seq"))
            elif op == "release":
                self.s.release(self.ident, header["keys"])
            elif op == "update-data":
                self.s.update_data(self.ident, header["items"], header.get("seq"))
            elif op == "who-has":
                self.asked.append((header["id"], header["keys"]))
            elif op in ("heartbeat", "register-client", "close-client"):
                pass
            else:
                raise AssertionError(f"unexpected {op!r} to the center")
        return [op for op, _, _ in sent]

    def center_answers(self) -> None:
        """The center answers the who-has requests asked so far."""
        asked, self.asked = self.asked, []
        for request_id, keys in asked:
            self.core.center_message(*wire("reply", {"id": request_id,
                                                     "result": self.s.who_has(keys)}, []),
                                     self.now)

    def center_speaks(self) -> None:
        """Deliver what the center sent this client, in order."""
        for ident, op, fields, frames in self.s.outbox.take():
            if ident == self.ident:
                self.core.center_message(*wire(op, fields, frames), self.now)

    def requests_to(self, address: str) -> list[list[str]]:
        return [f.keys for f in self.core.fetches.values() if f.address == address]

    def worker_answers(self, address: str, key: str, value: object) -> None:
        """``address`` answers the client's pending request for ``key``."""
        (request_id,) = [i for i, f in self.core.fetches.items()
                         if f.address == address and key in f.keys]
        frames = serialize.dumps(value)
        self.core.worker_message(address, *wire("data", {
            "id": request_id, "missing": [],
            "items": [{"key": key, "nframes": len(frames)}]}, frames), self.now)

    def answers_straight(self, key: str, run: int, value: object) -> None:
        self.core.worker_message(A1, *wire("direct-result", {"key": key, "run": run,
                                                             "nbytes": 8},
                                           serialize.dumps(value)), self.now)


@pytest.fixture
def s():
    s = Scheduler()
    s.add_worker(W1, A1, "w1", 1)
    s.add_worker(W2, A2, "w2", 1)
    s.add_client(C, "c")
    s.add_client(C2, "c2")
    return s


@pytest.fixture
def client(s):
    return Client(s)


def finish(s: Scheduler, key: str, value: object = None, nbytes: int = 8) -> None:
    """The worker running ``key`` finished it (its small value rides along if given)."""
    ts = s.tasks[key]
    frames = serialize.dumps(value) if value is not None else None
    s.task_finished(ts.processing_on.ident, key, nbytes, value=frames, run=ts.run)


def finished_on(s: Scheduler, key: str, address: str) -> None:
    """``key`` was computed on the worker at ``address`` (any other may run it again)."""
    s.submit(C, [{"key": key, "deps": [], "priority": 0, "nframes": 1, "workers": [address],
                  "allow_other_workers": True}], [b"payload"])
    finish(s, key)
    assert s.who_has([key]) == {key: [address]}
    s.outbox.take()


# --------------------------------------------------------------------------- futures and keys


def test_a_submitted_key_finishes_its_future_with_the_value_that_came_along(client):
    x = client.submit("x")
    assert client.center_hears() == ["submit"]
    finish(client.s, "x", value=42)
    client.center_speaks()
    assert x.result(0) == 42 and client.core.keys["x"].status == FINISHED


def test_a_burst_of_submits_goes_in_one_message(client):
    for i in range(5):
        client.submit(f"k{i}")
    client.core.flush_all()
    ((op, fields, _),) = client.core.to_center
    assert op == "submit" and [t["key"] for t in fields["tasks"]] == [f"k{i}" for i in range(5)]


def test_two_futures_of_one_key_cancelling_one_leaves_the_other_waiting(client):
    a = client.submit("x")
    b = client.submit("x")
    assert client.center_hears() == ["submit"]  # (once: the second joins the first)
    assert a.cancel() is True                  # (detached: no executor to tell)
    client.core.unref("x", client.now)         # what a.cancel() tells the executor
    client.now += 2 * RELEASE_DELAY
    client.core.tick(client.now)
    assert "release" not in client.center_hears()  # b still wants x
    finish(client.s, "x", value=3)
    client.center_speaks()
    assert b.result(0) == 3 and a.cancelled()


def test_a_key_is_released_once_its_last_future_goes(client):
    client.submit("x")
    client.center_hears()
    client.core.unref("x", client.now)
    client.core.tick(client.now)
    assert client.center_hears() == []  # (it waits RELEASE_DELAY for others)
    client.now += RELEASE_DELAY
    client.core.tick(client.now)
    assert client.center_hears() == ["release"]
    assert "x" not in client.s.tasks and client.core.keys == {}


def test_another_clients_future_of_a_cancelled_key_still_gets_its_value(s):
    one, two = Client(s, C), Client(s, C2)
    mine, theirs = one.submit("x"), two.submit("x")
    one.center_hears(), two.center_hears()
    mine.cancel()
    one.core.unref("x", one.now)
    one.now += RELEASE_DELAY
    one.core.tick(one.now)
    one.center_hears()
    finish(s, "x", value=5)
    two.center_speaks()
    assert theirs.result(0) == 5


def test_a_cancel_that_lost_the_race_to_the_result_returns_false_and_keeps_the_key(client):
    x = client.submit("x")
    client.center_hears()
    finish(client.s, "x")
    client.center_speaks()        # finished first: the cancel comes too late
    assert x.cancel() is False and x.status == "finished"
    assert client.core.keys["x"].refs == 1


def test_a_cancelled_call_submitted_again_is_released_first_then_runs_again(client):
    first = client.submit("x")
    client.center_hears()
    assert first.cancel()
    client.core.unref("x", client.now)
    second = client.submit("x")  # before the release went: it goes first
    assert client.center_hears() == ["release", "submit"]
    finish(client.s, "x", value=1)
    client.center_speaks()
    assert second.result(0) == 1 and first.cancelled()


def test_news_of_a_key_let_go_of_and_submitted_again_is_not_taken_for_the_new_one(client):
    # The center's word that x finished, sent before it heard that we let x
    # go, reaches us after we submitted x again: x is then about to be
    # dropped where that word says it is, and the new x is not done.
    s = client.s
    client.submit("x")
    client.center_hears()
    finish(s, "x")                       # (its word waits)
    client.core.unref("x", client.now)
    second = client.submit("x")
    assert client.center_hears() == ["release", "submit"]
    client.center_speaks()
    assert not second.done()
    finish(s, "x")
    client.center_speaks()
    assert second.done()
    assert client.core.keys["x"].who_has == [ws.address for ws in s.tasks["x"].who_has]


def test_future_references_of_a_long_lived_key_stay_bounded(client):
    keep = client.submit("x")
    client.center_hears()
    finish(client.s, "x")
    client.center_speaks()
    for _ in range(1000):  # a loop that makes and drops futures of the same key
        other = Future("x", None)
        client.core.ref(other)
        del other
        client.core.unref("x", client.now)
    info = client.core.keys["x"]
    assert info.refs == 1 and len(info.futures) <= 2 + PRUNE_SLACK + 1
    assert keep.done()


def test_a_value_whose_loading_raises_system_exit_fails_its_future_alone(client):
    class Exits:
        def __reduce__(self):
            return (exit_on_load, ())

    bad, good = client.submit("bad"), client.submit("good")
    client.center_hears()
    finish(client.s, "bad", value=Exits())
    finish(client.s, "good", value=7)
    client.center_speaks()  # (the loading runs here: it must not raise)
    with pytest.raises(RuntimeError, match="SystemExit"):
        bad.result(0)
    assert good.result(0) == 7


def exit_on_load():
    raise SystemExit(3)


# --------------------------------------------------------------------------- fetching


def test_a_fetch_from_a_worker_that_died_waits_for_the_key_computed_again(client):
    s = client.s
    finished_on(s, "x", A1)
    client.holds("x", A1)
    result = client.fetch("x")
    assert client.requests_to(A1) == [["x"]]

    s.remove_worker(W1)                      # x is computed again, on W2
    client.center_speaks()                   # workers-left: the request goes at once ...
    assert client.requests_to(A1) == []
    client.center_hears()
    client.center_answers()                  # ... the center holds x nowhere yet
    assert not result.done()
    finish(s, "x")
    client.center_speaks()                   # x is back: fetched from its new holder
    assert client.requests_to(A2) == [["x"]]
    client.worker_answers(A2, "x", 42)
    assert serialize.loads(result.result(0)["x"]) == 42
    assert client.core.awaiting == {}


def test_a_fetch_fails_when_the_lost_key_errs_before_the_center_answers(client):
    s = client.s
    s.update_data(C, [{"key": "data", "nbytes": 8, "workers": [A1]}])  # scattered
    s.outbox.take()
    client.holds("data", A1).scattered = True
    result = client.fetch("data")
    s.remove_worker(W1)            # scattered data cannot be computed again: it errs ...
    client.center_speaks()         # ... and the client hears it before the who-has answer
    client.center_hears()
    client.center_answers()
    with pytest.raises(FutureLostError, match="lost with the worker"):
        result.result(0)
    assert client.core.awaiting == {} and client.core.fetches == {}


def test_a_key_handed_on_twice_is_asked_for_again(client):
    s = client.s
    finished_on(s, "x", A1)
    client.holds("x", A1)
    result = client.fetch("x")
    s.keys_added(W2, "x", 8)                 # W1 handed x on to W2, and left
    s.remove_worker(W1)
    client.center_speaks()
    client.center_hears()
    client.center_answers()
    assert client.requests_to(A2) == [["x"]]
    s.add_worker(b"w3", "tcp://127.0.0.1:3", "w3", 1)
    s.keys_added(b"w3", "x", 8)              # W2 handed it on to W3, and left too
    s.remove_worker(W2)
    client.center_speaks()
    client.center_hears()
    client.center_answers()                  # a second question, with a new answer
    assert client.requests_to("tcp://127.0.0.1:3") == [["x"]]
    assert not result.done()


def test_a_fetch_that_times_out_asks_another_holder(client):
    finished_on(client.s, "x", A1)
    client.holds("x", A1, A2)
    result = client.fetch("x")
    assert client.requests_to(A1) == [["x"]]
    client.now += client.core.fetch_timeout + 1
    client.core.tick(client.now)
    assert client.requests_to(A1) == [] and client.requests_to(A2) == [["x"]]
    client.worker_answers(A2, "x", 1)
    assert serialize.loads(result.result(0)["x"]) == 1


def test_a_fetch_the_caller_stopped_waiting_for_is_forgotten(client):
    client.holds("x", A1)
    result = client.fetch("x")
    client.core.forget_fetch(result)
    assert client.core.fetches == {} and result.done()


def test_a_gather_waiting_for_a_released_key_ends(client):
    s = client.s
    finished_on(s, "x", A1)
    client.holds("x", A1)
    result = client.fetch("x")
    s.remove_worker(W1)
    client.center_speaks()
    client.center_hears()
    client.center_answers()
    assert "x" in client.core.awaiting
    client.core.unref("x", client.now)  # the last future went while it waited
    assert client.core.awaiting == {}
    with pytest.raises(FutureLostError):
        result.result(0)


def test_an_eager_future_gets_its_value_and_lets_go_of_its_key(client):
    # (A PoolExecutor's: its futures stay readable after the cluster forgot them.)
    small, big = client.submit("small", eager=True), client.submit("big", eager=True)
    client.center_hears()
    finish(client.s, "small", value="S")              # (came along)
    finish(client.s, "big", nbytes=100_000)          # (to fetch)
    client.center_speaks()
    assert small.result(0) == "S" and not big.done()
    (fetch,) = client.core.fetches.values()
    client.worker_answers(fetch.address, "big", "B")
    assert big.result(0) == "B"
    assert client.core.keys == {}
    client.now += RELEASE_DELAY
    client.core.tick(client.now)
    assert client.center_hears() == ["release"] and client.s.tasks == {}


def test_one_value_that_cannot_leave_its_worker_fails_only_its_own_eager_future(client):
    # Results that finish together are fetched together (a PoolExecutor's).
    client.s.remove_worker(W2)  # (all on one worker)
    futures = {key: client.submit(key, eager=True) for key in ("a", "b", "c")}
    client.center_hears()
    for key in futures:
        finish(client.s, key, nbytes=100_000)  # (too big to come along)
    client.center_speaks()
    ((request_id, fetch),) = client.core.fetches.items()
    assert sorted(fetch.keys) == ["a", "b", "c"]
    a, c = serialize.dumps("A"), serialize.dumps("C")
    error = pickle.dumps((TypeError("cannot pickle '_thread.lock' object"), "tb"))
    items = [{"key": "a", "nframes": len(a)}, {"key": "c", "nframes": len(c)}]
    client.core.worker_message(fetch.address, *wire("data", {
        "id": request_id, "missing": [], "items": items,
        "errors": [{"key": "b", "nframes": 1}]}, [*a, *c, error]), client.now)
    assert futures["a"].result(0) == "A" and futures["c"].result(0) == "C"
    with pytest.raises(TypeError, match="pickle"):
        futures["b"].result(0)


# --------------------------------------------------------------------------- straight from a worker


def submit_alone(client: Client, key: str, own_key: bool) -> tuple[Future, dict]:
    """Submit ``key`` as a lone task with a worker to send it to; return its
    future and the item the center is told of."""
    client.core.direct.worker = A1
    future = client.submit(key, own_key=own_key)
    ((address, op, fields, _),) = client.core.to_workers
    assert (address, op) == (A1, "run-task") and fields["key"] == key
    client.core.to_workers.clear()
    ((op, (sent,)),) = client.core.outbox.queued()
    assert op == "submit" and sent["direct_worker"] == A1
    return future, sent


def test_a_direct_result_for_a_key_the_executor_made_counts_at_once(client):
    # The center counts every run its worker does not refuse: no need to wait
    # for the center's word.
    future, sent = submit_alone(client, "made-here", own_key=True)
    assert "direct_ack" not in sent
    client.answers_straight("made-here", sent["direct_run"], 3)
    assert future.result(0) == 3 and client.core.direct_answers == 1


def test_a_direct_result_for_a_key_the_caller_chose_waits_for_the_centers_word(client):
    # The center may hold that key already, from another run: the worker's
    # answer counts only once the center says the run is the task's.
    future, sent = submit_alone(client, "chosen", own_key=False)
    assert sent["direct_ack"] is True
    client.answers_straight("chosen", sent["direct_run"], 3)
    assert not future.done()
    client.center_hears()
    client.center_speaks()  # direct-accepted
    assert future.result(0) == 3 and client.core.direct_answers == 1


def test_direct_submits_wait_a_moment_for_the_answers_and_go_together(client):
    # The center then need not send the results this client has already.
    first, sent = submit_alone(client, "first", own_key=True)
    now = client.now
    assert client.core.outbox.defers(now)
    assert not client.core.outbox.defers(now + 1.0)  # (not for long)
    client.answers_straight("first", sent["direct_run"], 3)
    assert first.result(0) == 3 and sent["direct_answered"] is True
    assert client.core.outbox.defers(now)  # the next may join it
    client.core.direct.worker = A1
    client.submit("next")
    ((op, items),) = client.core.outbox.queued()
    assert [item["key"] for item in items] == ["first", "next"] and client.core.outbox.defers(now)
    client.submit("burst")  # (one is in flight)
    assert not client.core.outbox.defers(now)  # a submit through the center goes at once


def test_a_direct_submit_that_waits_for_the_centers_word_is_not_held(client):
    submit_alone(client, "chosen", own_key=False)
    assert not client.core.outbox.defers(client.now)


def test_a_direct_task_that_could_not_be_sent_goes_through_the_center(client):
    future, _ = submit_alone(client, "x", own_key=True)
    client.core.direct.unsent("x")
    client.core.flush_all()
    ((op, fields, _),) = client.core.to_center
    assert op == "submit" and "direct_worker" not in fields["tasks"][0]
    assert not client.core.direct.in_flight()


def test_who_has_includes_the_worker_that_answered_before_the_center_heard(client):
    future, sent = submit_alone(client, "x", own_key=True)
    client.answers_straight("x", sent["direct_run"], 3)
    assert future.result(0) == 3
    client.center_hears()  # the submit; the worker's report is still on its way
    reply = concurrent.futures.Future()
    client.core.rpc("who-has", {"keys": ["x"]}, reply)
    client.center_hears()
    client.center_answers()
    assert reply.result(0) == {"x": [A1]}


# --------------------------------------------------------------------------- scatter


def stored(client: Client, address: str, nbytes: dict[str, int]) -> None:
    """``address`` answers the client's pending put-data (the only one to it)."""
    (request_id,) = [i for i, (a, _, _) in client.core.worker_requests.items() if a == address]
    client.core.worker_message(address, *wire("data-stored", {"id": request_id,
                                                              "nbytes": nbytes}, []), client.now)


def scattered_to_a1(client: Client) -> Future:
    """A future of data the client scattered to A1; the center knows (and said so)."""
    first = Future("data", None)
    client.core.scatter({A1: [("data", [b"v"])]}, [first], concurrent.futures.Future(), 0.0)
    stored(client, A1, {"data": 8})
    client.center_hears()
    client.center_speaks()
    return first


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
    futures = [Future("a", None), Future("b", None)]
    done: concurrent.futures.Future = concurrent.futures.Future()
    client.core.scatter({A1: [("a", [b"1"])], A2: [("b", [b"2"])]}, futures, done, 0.0)
    client.core.to_workers.clear()
    client.s.remove_worker(W1)
    client.center_speaks()                   # a's part goes to A2 instead ...
    ((address, op, fields, _),) = client.core.to_workers
    assert (address, op) == (A2, "put-data") and [i["key"] for i in fields["items"]] == ["a"]
    requests = sorted(client.core.worker_requests)
    for request_id, keys in zip(requests, (["b"], ["a"])):
        client.core.worker_message(A2, *wire("data-stored", {
            "id": request_id, "nbytes": {key: 8 for key in keys}}, []), client.now)
    assert done.result(0) is None            # ... and the center hears of both there
    client.center_hears()
    assert client.s.who_has(["a", "b"]) == {"a": [A2], "b": [A2]}
    assert all(f.status == "finished" for f in futures)


def test_a_scatter_with_no_worker_left_fails_and_tells_where_the_rest_went(client):
    futures = [Future("a", None), Future("b", None)]
    done: concurrent.futures.Future = concurrent.futures.Future()
    client.core.scatter({A1: [("a", [b"1"])], A2: [("b", [b"2"])]}, futures, done, 0.0)
    stored(client, A2, {"b": 8})
    client.s.remove_worker(W1)
    client.s.remove_worker(W2)
    client.center_speaks()
    with pytest.raises(ConnectionError, match="left the cluster"):
        done.result(0)
    assert futures[0].status == "lost"
    assert "update-data" in client.center_hears()  # (b's copy is known, so let go of)


def test_a_request_to_a_worker_that_left_already_fails_at_once(client):
    client.s.remove_worker(W1)
    client.center_speaks()
    ran: concurrent.futures.Future = concurrent.futures.Future()
    client.core.run([A1], [b""], ran, client.now)
    with pytest.raises(ConnectionError, match="left the cluster"):
        ran.result(0)


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


def test_each_future_of_an_erred_key_gets_an_exception_of_its_own(client):
    # One raised to a caller carries frames that may hold its futures: shared,
    # the record would keep them alive, and the key with them.
    a, b = client.submit("x"), client.submit("x")
    client.center_hears()
    ts = client.s.tasks["x"]
    client.s.task_erred(ts.processing_on.ident, "x",
                        serialize.dumps((ValueError("bad"), "tb")), run=ts.run)
    client.center_speaks()
    assert isinstance(a.exception(0), ValueError) and a.exception(0) is not b.exception(0)
    with pytest.raises(ValueError):
        a.result(0)
    ref = weakref.ref(a)
    del a
    assert ref() is None  # (no garbage collection needed)


# --------------------------------------------------------------------------- the end


def test_after_close_every_call_ends_at_once(client):
    pending = client.submit("x")
    client.core.close(client.now)
    assert pending.cancelled()
    assert "close-client" in client.center_hears()
    late = client.submit("late")
    assert late.cancelled()
    for call in (lambda r: client.core.fetch(["x"], r, 0.0),
                 lambda r: client.core.rpc("who-has", {"keys": []}, r),
                 lambda r: client.core.run([A1], [b""], r, 0.0),
                 lambda r: client.core.scatter({A1: []}, [], r, 0.0)):
        result: concurrent.futures.Future = concurrent.futures.Future()
        call(result)
        with pytest.raises(ConnectionError, match="shut down"):
            result.result(0)


def test_a_silent_center_fails_every_wait_after_the_reconnect_deadline(client):
    client.core.welcomed = True
    pending = client.submit("x")
    ran: concurrent.futures.Future = concurrent.futures.Future()
    client.core.run([A1], [b""], ran, 0.0)
    client.now += client.core.reconnect_deadline + 1
    client.core.tick(client.now)
    with pytest.raises(ConnectionError, match="silent"):
        pending.result(0)
    with pytest.raises(ConnectionError, match="silent"):
        ran.result(0)


def test_a_worker_that_leaves_fails_the_calls_waiting_on_it(client):
    ran: concurrent.futures.Future = concurrent.futures.Future()
    client.core.run([A1, A2], [b""], ran, 0.0)
    client.s.remove_worker(W1)
    client.center_speaks()
    with pytest.raises(ConnectionError, match="left the cluster"):
        ran.result(0)


def test_the_core_keeps_nothing_of_keys_let_go_of(client):
    s = client.s
    for i in range(2000):
        f = client.submit(f"k{i}")
        client.center_hears()
        finish(s, f"k{i}", value=i)
        client.center_speaks()
        assert f.result(0) == i
        ref = weakref.ref(f)
        del f
        gc.collect() if i % 500 == 0 else None
        assert ref() is None
        client.core.unref(f"k{i}", client.now)
        client.now += RELEASE_DELAY
        client.core.tick(client.now)
    client.center_hears()
    core = client.core
    assert core.keys == {} and core.fetches == {} and core.awaiting == {}
    assert core.rpcs == {} and core.worker_requests == {} and core.outbox.release_due is None
    assert s.tasks == {}


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


def test_a_fetch_of_each_key_gives_the_error_of_one_that_cannot_be_had_in_its_place(client):
    s = client.s
    finished_on(s, "x", A2)
    client.holds("x", A2)
    s.update_data(C, [{"key": "data", "nbytes": 8, "workers": [A1]}])  # scattered
    s.outbox.take()
    client.holds("data", A1).scattered = True
    result: concurrent.futures.Future = concurrent.futures.Future()
    client.core.fetch(["x", "data"], result, client.now, each=True)
    s.remove_worker(W1)                       # data is lost with it
    client.center_speaks()
    client.center_hears()
    client.center_answers()
    client.worker_answers(A2, "x", 1)
    values = result.result(0)
    assert serialize.loads(values["x"]) == 1 and isinstance(values["data"], FutureLostError)


def test_a_running_pool_future_submitted_after_close_ends_with_an_error(client):
    client.core.close(client.now)
    future = Future("late", None)
    assert future.set_running_or_notify_cancel()  # (a PoolExecutor's, once handed over)
    client.submit("late", future=future)
    with pytest.raises(ConnectionError, match="shut down"):
        future.result(0)
