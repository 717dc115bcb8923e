"""The client's core as a whole, driven one event at a time against a real
center (see client_sim.py): no sockets, threads or sleeps. Its parts have
test files of their own (tests/test_client_*.py)."""
from __future__ import annotations

import concurrent.futures
import gc
import weakref

import pytest
from client_sim import (
    A1,
    C2,
    C,
    Client,
    client_fixture,  # noqa: F401 (the fixture "client")
    cluster,
    finish,
)

from zfutures import Future, serialize
from zfutures.client_outbox import RELEASE_DELAY
from zfutures.client_records import FINISHED, PRUNE_SLACK
from zfutures.errors import ConnectionError
from zfutures.messages import FailedItem, Submit, WhoHas

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
    ((msg, _),) = client.core.to_center
    assert type(msg) is Submit and [t.key for t in msg.tasks] == [f"k{i}" for i in range(5)]


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


def test_another_clients_future_of_a_cancelled_key_still_gets_its_value():
    s = cluster()
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


def test_each_future_of_an_erred_key_gets_an_exception_of_its_own(client):
    # One raised to a caller carries frames that may hold its futures: shared,
    # the record would keep them alive, and the key with them.
    a, b = client.submit("x"), client.submit("x")
    client.center_hears()
    ts = client.s.tasks["x"]
    frames = serialize.dumps((ValueError("bad"), "tb"))
    client.s.task_erred(ts.processing_on.ident, FailedItem("x", ts.run, len(frames)), frames)
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
                 lambda r: client.core.rpc(WhoHas, {"keys": []}, r),
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
    assert core.keys == {} and core.gathers.fetches == {} and core.gathers.awaiting == {}
    assert core.requests.rpcs == {} and core.requests.worker_requests == {}
    assert core.outbox.release_due is None
    assert s.tasks == {}


def test_a_running_pool_future_submitted_after_close_ends_with_an_error(client):
    client.core.close(client.now)
    future = Future("late", None)
    assert future.set_running_or_notify_cancel()  # (a PoolExecutor's, once handed over)
    client.submit("late", future=future)
    with pytest.raises(ConnectionError, match="shut down"):
        future.result(0)
