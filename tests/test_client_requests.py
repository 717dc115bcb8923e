"""Requests that await an answer (zfutures.client_requests): every one ends,
with its answer or when its peer goes."""
from __future__ import annotations

import concurrent.futures
import itertools

import pytest
from client_sim import (
    A1,
    A2,
    W1,
    client_fixture,  # noqa: F401 (the fixture "client")
    )

from zfutures.client_outbox import Outbox
from zfutures.client_records import FINISHED, KeyRecord, record
from zfutures.client_requests import DEPARTED_KEPT, Requests
from zfutures.errors import ConnectionError
from zfutures.messages import HasWhat, Run, RunResult, SchedulerInfo, WhoHas


def test_a_request_to_a_worker_that_left_already_fails_at_once(client):
    client.s.remove_worker(W1)
    client.center_speaks()
    ran: concurrent.futures.Future = concurrent.futures.Future()
    client.core.run([A1], [b""], ran, client.now)
    with pytest.raises(ConnectionError, match="left the cluster"):
        ran.result(0)


def test_a_worker_that_leaves_fails_the_calls_waiting_on_it(client):
    ran: concurrent.futures.Future = concurrent.futures.Future()
    client.core.run([A1, A2], [b""], ran, 0.0)
    client.s.remove_worker(W1)
    client.center_speaks()
    with pytest.raises(ConnectionError, match="left the cluster"):
        ran.result(0)


# --------------------------------------------------------------------------- the decisions alone


def requests() -> Requests:
    keys: dict[str, KeyRecord] = {}
    return Requests(keys, Outbox(keys, now=0.0), [], itertools.count(1))


def ask(requests: Requests, address: str, now: float) -> list:
    """Ask ``address`` something; the list gets ("answered", message) or ("failed", error)."""
    ended: list = []
    requests.ask_worker(address, Run, {}, [], lambda m, f, now: ended.append(("answered", m)),
                        lambda e, now: ended.append(("failed", e)), now)
    return ended


def test_a_worker_that_left_is_not_asked_for_a_while_then_it_may_be_again():
    reqs = requests()
    reqs.workers_left({A1}, now=10.0)
    ((how, _),) = ask(reqs, A1, 10.0 + DEPARTED_KEPT / 2)
    assert how == "failed" and reqs.worker_requests == {}
    assert ask(reqs, A1, 10.0 + DEPARTED_KEPT + 1) == []  # (a new worker at that address)
    assert reqs.awaits(A1)


def test_a_worker_that_left_and_came_back_at_its_address_is_asked_again():
    reqs = requests()
    reqs.workers_left({A1}, now=10.0)
    info: concurrent.futures.Future = concurrent.futures.Future()
    reqs.rpc(SchedulerInfo, {}, info)
    (request_id,) = reqs.rpcs
    reqs.reply(request_id, {"workers": {A1: {}}}, 11.0)  # the center lists it again
    assert ask(reqs, A1, 11.0) == [] and reqs.awaits(A1)


def test_only_the_worker_asked_answers_a_request():
    reqs = requests()
    ended = ask(reqs, A1, 0.0)
    (request_id,) = reqs.worker_requests
    reqs.worker_answered(A2, RunResult(request_id, True), [], 0.0)
    assert ended == []
    reqs.worker_answered(A1, RunResult(request_id, True), [], 0.0)
    assert [how for how, _ in ended] == ["answered"] and not reqs.awaits(A1)


def test_has_what_includes_keys_a_worker_answered_straight_before_the_center_heard():
    keys: dict[str, KeyRecord] = {}
    outbox = Outbox(keys, now=0.0)
    reqs = Requests(keys, outbox, [], itertools.count(1))
    info = record(keys, "x")
    info.status, info.who_has = FINISHED, [A1]
    reply: concurrent.futures.Future = concurrent.futures.Future()
    reqs.rpc(HasWhat, {}, reply)
    ((msg, _),) = outbox.to_center
    reqs.reply(msg.id, {A1: [], A2: ["y"]}, 0.0)
    assert reply.result(0) == {A1: ["x"], A2: ["y"]}


def test_when_no_answer_will_come_every_request_ends_with_the_error():
    reqs = requests()
    futures_reply: concurrent.futures.Future = concurrent.futures.Future()
    callback_ends: list = []
    reqs.rpc(WhoHas, {"keys": []}, futures_reply)
    reqs.rpc(WhoHas, {"keys": []}, lambda reply, error, now: callback_ends.append(error))
    worker_ends = ask(reqs, A1, 0.0)
    error = ConnectionError("shut down")
    reqs.fail_rpcs(error, 1.0)
    reqs.fail_worker_requests(error, 1.0)
    assert futures_reply.exception(0) is error and callback_ends == [error]
    assert worker_ends == [("failed", error)] and reqs.rpcs == {} and reqs.worker_requests == {}
    reqs.stopped = error
    late: concurrent.futures.Future = concurrent.futures.Future()
    reqs.rpc(WhoHas, {"keys": []}, late)
    assert late.exception(0) is error
