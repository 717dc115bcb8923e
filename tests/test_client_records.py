"""A key's record in the client (zfutures.client_records): what its futures
see as the key finishes, errs, or is let go of. Records alone, no center."""
from __future__ import annotations

import gc

import pytest

from zfutures import Future, FutureLostError, serialize
from zfutures.client_records import (
    ERRED,
    FINISHED,
    PRUNE_SLACK,
    KeyRecord,
    end_unsent,
    record,
)


def erred(exception: BaseException) -> KeyRecord:
    info = KeyRecord("x")
    info.err(serialize.dumps((exception, "remote traceback")))
    return info


def test_a_future_of_a_finished_key_is_done_at_once_its_value_still_on_the_cluster():
    info = record({}, "x")
    info.status = FINISHED
    future = Future("x", None)
    info.add_future(future)
    assert future.status == "finished" and info.refs == 1


def test_a_future_of_an_erred_key_fails_at_once_and_lost_data_is_lost():
    failed, lost = Future("x", None), Future("x", None)
    erred(ValueError("bad")).add_future(failed)
    erred(FutureLostError("gone")).add_future(lost)
    assert isinstance(failed.exception(0), ValueError) and failed.status == "error"
    assert lost.status == "lost"


def test_the_last_future_let_go_of_is_told_and_dead_references_are_pruned():
    info = KeyRecord("x")
    keep = Future("x", None)
    info.add_future(keep)
    for _ in range(2 * PRUNE_SLACK):
        info.add_future(Future("x", None))  # (dropped at once)
        assert info.drop_future() is False
    gc.collect()
    assert len(info.futures) <= PRUNE_SLACK + 3
    assert info.drop_future() is True  # (keep's: the last)


def test_a_value_that_fails_to_load_fails_every_future_of_the_key():
    info = KeyRecord("x")
    futures = [Future("x", None), Future("x", None)]
    for future in futures:
        info.add_future(future)
    info.complete([b"not a pickle"])
    for future in futures:
        with pytest.raises(Exception):  # noqa: B017 (whatever unpickling raises)
            future.result(0)


def test_with_no_answer_to_come_pending_futures_are_cancelled_but_running_ones_fail():
    info = KeyRecord("x")
    pending, running = Future("x", None), Future("x", None)
    running.set_running_or_notify_cancel()  # (a PoolExecutor's, sent to the cluster)
    info.add_future(pending)
    info.add_future(running)
    error = ConnectionError("shut down")
    info.fail_pending(error, cancel=True)
    assert pending.cancelled() and running.exception(0) is error


def test_futures_of_a_key_that_is_done_keep_what_they_have_when_the_client_stops():
    info = erred(ValueError("bad"))
    future = Future("x", None)
    info.add_future(future)
    info.fail_pending(ConnectionError("shut down"), cancel=True)
    assert info.status == ERRED and isinstance(future.exception(0), ValueError)


def test_a_future_made_after_the_client_stopped_is_cancelled_unless_it_runs():
    made, running = Future("x", None), Future("y", None)
    running.set_running_or_notify_cancel()
    error = ConnectionError("shut down")
    end_unsent(made, error)
    end_unsent(running, error)
    assert made.cancelled() and running.exception(0) is error
