"""Putting the caller's data on workers (zfutures.client_scatter), through
the client's core against a real center (see client_sim.py)."""
from __future__ import annotations

import concurrent.futures

import pytest
from client_sim import A1, A2, W1, W2, Client, cluster, scattered_to_a1, stored, wire

from zfutures import Future
from zfutures.errors import ConnectionError


@pytest.fixture
def client() -> Client:
    return Client(cluster())


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
