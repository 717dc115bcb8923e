"""Eager keys, a PoolExecutor's (zfutures.client_eager): their values come
as soon as they exist, and the keys are let go of."""
from __future__ import annotations

import pickle

import pytest
from client_sim import (
    W2,
    client_fixture,  # noqa: F401 (the fixture "client")
    finish,
    wire,
)

from zfutures import serialize
from zfutures.client_outbox import RELEASE_DELAY
from zfutures.messages import Data, OfferedItem


def test_an_eager_future_gets_its_value_and_lets_go_of_its_key(client):
    # (A PoolExecutor's: its futures stay readable after the cluster forgot them.)
    small, big = client.submit("small", eager=True), client.submit("big", eager=True)
    client.center_hears()
    finish(client.s, "small", value="S")              # (came along)
    finish(client.s, "big", nbytes=100_000)          # (to fetch)
    client.center_speaks()
    assert small.result(0) == "S" and not big.done()
    (fetch,) = client.core.gathers.fetches.values()
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
    ((request_id, fetch),) = client.core.gathers.fetches.items()
    assert sorted(fetch.keys) == ["a", "b", "c"]
    a, c = serialize.dumps("A"), serialize.dumps("C")
    error = pickle.dumps((TypeError("cannot pickle '_thread.lock' object"), "tb"))
    items = [OfferedItem("a", len(a)), OfferedItem("c", len(c))]
    client.core.worker_message(fetch.address, *wire(Data(
        request_id, items, [], errors=[OfferedItem("b", 1)]), [*a, *c, error]), client.now)
    assert futures["a"].result(0) == "A" and futures["c"].result(0) == "C"
    with pytest.raises(TypeError, match="pickle"):
        futures["b"].result(0)
