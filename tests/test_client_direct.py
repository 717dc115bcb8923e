"""A lone task sent straight to a worker (zfutures.client_direct): whether it
goes, whether its answer counts, and what the center is told."""
from __future__ import annotations

import concurrent.futures

import pytest
from client_sim import (
    A1,
    A2,
    client_fixture,  # noqa: F401 (the fixture "client")
    queued_item,
    submit_alone,
)

from zfutures.client_direct import DIRECT_AFTER_NBYTES, DIRECT_PAYLOAD_LIMIT, DirectRuns
from zfutures.client_outbox import Outbox
from zfutures.client_records import KeyRecord, record
from zfutures.messages import DirectResult, Submit, TaskItem, WhoHas


def test_a_direct_result_for_a_key_the_executor_made_counts_at_once(client):
    # The center counts every run its worker does not refuse: no need to wait
    # for the center's word.
    future, sent = submit_alone(client, "made-here", own_key=True)
    assert sent.direct_ack is False
    client.answers_straight("made-here", sent.direct_run, 3)
    assert future.result(0) == 3 and client.core.direct.answers == 1


def test_a_direct_result_for_a_key_the_caller_chose_waits_for_the_centers_word(client):
    # The center may hold that key already, from another run: the worker's
    # answer counts only once the center says the run is the task's.
    future, sent = submit_alone(client, "chosen", own_key=False)
    assert sent.direct_ack is True
    client.answers_straight("chosen", sent.direct_run, 3)
    assert not future.done()
    client.center_hears()
    client.center_speaks()  # direct-accepted
    assert future.result(0) == 3 and client.core.direct.answers == 1


def test_direct_submits_wait_a_moment_for_the_answers_and_go_together(client):
    # The center then need not send the results this client has already.
    first, sent = submit_alone(client, "first", own_key=True)
    now = client.now
    assert client.core.outbox.defers(now)
    assert not client.core.outbox.defers(now + 1.0)  # (not for long)
    assert sent.direct_answered is False
    client.answers_straight("first", sent.direct_run, 3)
    assert first.result(0) == 3 and queued_item(client, "first").direct_answered is True
    assert client.core.outbox.defers(now)  # the next may join it
    client.core.direct.worker = A1
    client.submit("next")
    ((cls, items),) = client.core.outbox.queued()
    assert [item.key for item in items] == ["first", "next"] and client.core.outbox.defers(now)
    client.submit("burst")  # (one is in flight)
    assert not client.core.outbox.defers(now)  # a submit through the center goes at once


def test_a_direct_submit_that_waits_for_the_centers_word_is_not_held(client):
    submit_alone(client, "chosen", own_key=False)
    assert not client.core.outbox.defers(client.now)


def test_a_direct_task_that_could_not_be_sent_goes_through_the_center(client):
    future, _ = submit_alone(client, "x", own_key=True)
    client.core.direct.unsent("x")
    client.core.flush_all()
    ((msg, _),) = client.core.to_center
    assert type(msg) is Submit and msg.tasks[0].direct_worker is None
    assert msg.tasks[0].direct_run is None
    assert not client.core.direct.in_flight()


def test_who_has_includes_the_worker_that_answered_before_the_center_heard(client):
    future, sent = submit_alone(client, "x", own_key=True)
    client.answers_straight("x", sent.direct_run, 3)
    assert future.result(0) == 3
    client.center_hears()  # the submit; the worker's report is still on its way
    reply = concurrent.futures.Future()
    client.core.rpc(WhoHas, {"keys": ["x"]}, reply)
    client.center_hears()
    client.center_answers()
    assert reply.result(0) == {"x": [A1]}


# --------------------------------------------------------------------------- the decisions alone


class Direct:
    """DirectRuns with its outbox and records, and no center."""

    def __init__(self) -> None:
        self.keys: dict[str, KeyRecord] = {}
        self.outbox = Outbox(self.keys, now=0.0)
        self.to_workers: list = []
        self.runs = DirectRuns(self.keys, self.outbox, self.to_workers)

    def send(self, key: str, frames: list | None = None, own_key: bool = True,
             reregistering: bool = False, **fields: object) -> TaskItem:
        """A lone task for ``key``: the submit item the center would be told of
        (queued, as the core queues it)."""
        info = record(self.keys, key)
        frames = frames or [b"payload"]
        item = TaskItem(key, [], 0, len(frames))._replace(**fields)
        item = self.runs.send(info, item, frames, own_key, 0.0, reregistering)
        self.outbox.queue(Submit, item, frames)
        return item

    def queued(self, key: str) -> TaskItem:
        (item,) = [item for _, items in self.outbox.queued() for item in items
                   if item.key == key]
        return item


@pytest.mark.parametrize("fields", [{"deps": ["input"]}, {"workers": [A1]},
                                    {"resources": {"GPU": 1.0}}, {"retries": 1}])
def test_a_task_with_inputs_placement_or_retries_goes_through_the_center(fields):
    direct = Direct()
    direct.runs.worker = A1
    assert direct.send("x", **fields).direct_worker is None and direct.to_workers == []


def test_one_task_at_a_time_goes_straight_and_none_while_the_center_is_told_of_us_again():
    direct = Direct()
    direct.runs.worker = A1
    assert direct.send("x", reregistering=True).direct_worker is None
    assert direct.send("y").direct_worker == A1 and direct.runs.in_flight()
    assert direct.send("z").direct_worker is None  # (y is in flight)


def test_a_task_whose_arguments_are_big_goes_through_the_center():
    direct = Direct()
    direct.runs.worker = A1
    assert direct.send("x", [b"x" * (DIRECT_PAYLOAD_LIMIT + 1)]).direct_worker is None


def test_lone_tasks_follow_a_worker_that_made_a_small_result_and_stop_at_a_big_one():
    runs = Direct().runs
    runs.finished_on([A1], 8)
    assert runs.worker == A1
    runs.finished_on([A2], DIRECT_AFTER_NBYTES + 1)
    assert runs.worker is None  # (the center spreads big results across workers)


def test_an_answer_counts_only_from_the_worker_and_run_it_was_sent_to():
    direct = Direct()
    direct.runs.worker = A1
    run = direct.send("x").direct_run
    assert direct.runs.answered(A2, DirectResult("x", run, 8), [b"v"]) is None
    assert direct.runs.answered(A1, DirectResult("x", run + 1, 8), [b"v"]) is None
    assert direct.queued("x").direct_answered is False
    info = direct.runs.answered(A1, DirectResult("x", run, 8), [b"v"])
    assert info is direct.keys["x"] and info.direct is None and direct.runs.answers == 1
    assert direct.queued("x").direct_answered is True  # (its submit, still waiting, says so)


def test_an_answer_that_came_before_the_centers_word_counts_with_that_word():
    direct = Direct()
    direct.runs.worker = A1
    run = direct.send("x", own_key=False).direct_run
    assert direct.runs.answered(A1, DirectResult("x", run, 8), [b"v"]) is None
    direct.keys["x"].since = 5
    assert direct.runs.accepted(["x"], seen=4) == []  # (news of an earlier submit)
    ((info, address, nbytes, frames),) = direct.runs.accepted(["x"], seen=5)
    assert (info.key, address, nbytes, frames) == ("x", A1, 8, [b"v"])


def test_a_worker_that_left_takes_its_runs_and_the_next_lone_task_with_it():
    direct = Direct()
    direct.runs.worker = A1
    direct.send("x")
    direct.runs.workers_left({A1})
    assert direct.keys["x"].direct is None and direct.runs.worker is None
    assert not direct.runs.in_flight()
