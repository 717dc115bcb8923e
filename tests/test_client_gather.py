"""Getting values from the workers that hold them (zfutures.client_gather),
through the client's core against a real center (see client_sim.py)."""
from __future__ import annotations

import concurrent.futures

import pytest
from client_sim import (
    A1,
    A2,
    W1,
    W2,
    C,
    client_fixture,  # noqa: F401 (the fixture "client")
    finish,
    finished_on,
)

from zfutures import FutureLostError, serialize
from zfutures.messages import KeyAdded, ScatteredItem


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
    assert client.core.gathers.awaiting == {}


def test_a_fetch_fails_when_the_lost_key_errs_before_the_center_answers(client):
    s = client.s
    s.update_data(C, [ScatteredItem("data", 8, [A1])])  # scattered
    s.outbox.take()
    client.holds("data", A1).scattered = True
    result = client.fetch("data")
    s.remove_worker(W1)            # scattered data cannot be computed again: it errs ...
    client.center_speaks()         # ... and the client hears it before the who-has answer
    client.center_hears()
    client.center_answers()
    with pytest.raises(FutureLostError, match="lost with the worker"):
        result.result(0)
    assert client.core.gathers.awaiting == {} and client.core.gathers.fetches == {}


def test_a_key_handed_on_twice_is_asked_for_again(client):
    s = client.s
    finished_on(s, "x", A1)
    client.holds("x", A1)
    result = client.fetch("x")
    s.keys_added(W2, KeyAdded("x", 8))               # W1 handed x on to W2, and left
    s.remove_worker(W1)
    client.center_speaks()
    client.center_hears()
    client.center_answers()
    assert client.requests_to(A2) == [["x"]]
    s.add_worker(b"w3", "tcp://127.0.0.1:3", "w3", 1)
    s.keys_added(b"w3", KeyAdded("x", 8))            # W2 handed it on to W3, and left too
    s.remove_worker(W2)
    client.center_speaks()
    client.center_hears()
    client.center_answers()                  # a second question, with a new answer
    assert client.requests_to("tcp://127.0.0.1:3") == [["x"]]
    assert not result.done()


def test_a_fetch_is_not_tried_at_a_holder_that_left_in_the_same_message(client):
    # The center says in one message that both holders of x left: the fetch
    # from the first must not go to the second, but ask where x is now.
    s = client.s
    finished_on(s, "x", A1)
    client.holds("x", A1, A2)
    result = client.fetch("x")
    client.core.to_workers.clear()
    s.remove_worker(W1)
    s.remove_worker(W2)
    client.center_speaks()                   # workers-left: A1 and A2
    assert client.core.to_workers == [] and client.requests_to(A2) == []
    assert client.center_hears() == ["who-has"]
    assert not result.done()


def test_a_fetch_that_times_out_asks_another_holder(client):
    finished_on(client.s, "x", A1)
    client.holds("x", A1, A2)
    result = client.fetch("x")
    assert client.requests_to(A1) == [["x"]]
    client.now += client.core.gathers.fetch_timeout + 1
    client.core.tick(client.now)
    assert client.requests_to(A1) == [] and client.requests_to(A2) == [["x"]]
    client.worker_answers(A2, "x", 1)
    assert serialize.loads(result.result(0)["x"]) == 1


def test_a_fetch_the_caller_stopped_waiting_for_is_forgotten(client):
    client.holds("x", A1)
    result = client.fetch("x")
    client.core.forget_fetch(result)
    assert client.core.gathers.fetches == {} and result.done()


def test_a_gather_waiting_for_a_released_key_ends(client):
    s = client.s
    finished_on(s, "x", A1)
    client.holds("x", A1)
    result = client.fetch("x")
    s.remove_worker(W1)
    client.center_speaks()
    client.center_hears()
    client.center_answers()
    assert "x" in client.core.gathers.awaiting
    client.core.unref("x", client.now)  # the last future went while it waited
    assert client.core.gathers.awaiting == {}
    with pytest.raises(FutureLostError):
        result.result(0)


def test_a_fetch_of_each_key_gives_the_error_of_one_that_cannot_be_had_in_its_place(client):
    s = client.s
    finished_on(s, "x", A2)
    client.holds("x", A2)
    s.update_data(C, [ScatteredItem("data", 8, [A1])])  # scattered
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
