"""A worker's task bookkeeping, driven one event at a time: no sockets, threads or sleeps.

Time is an argument (``now``), so fetch timeouts are tested by passing a later
``now`` rather than by waiting.
"""
from __future__ import annotations

import pytest

from zfutures.messages import (
    AcquireItem,
    ComputeItem,
    DataStored,
    DirectResult,
    DoneItem,
    DropItem,
    FailedItem,
    KeyAdded,
    MissingData,
    Paused,
    Retire,
    RunTask,
    Sync,
    TaskAccepted,
    TaskRefused,
    TaskSeceded,
)
from zfutures.worker_state import DROPPED_DIRECT_KEPT, Report, WorkerState

ME = "tcp://me:9000"
P1, P2, P3 = "tcp://p1:9000", "tcp://p2:9000", "tcp://p3:9000"
TIMEOUT = 10.0
RUN = 7  # the run id the center gave, which every report on the task carries back


def make(nthreads: int = 1) -> WorkerState:
    return WorkerState(ME, nthreads=nthreads, fetch_timeout=TIMEOUT)


def compute(w: WorkerState, key: str, deps: dict | None = None, priority: int = 0,
            now: float = 0.0, run: int = RUN) -> None:
    w.compute(ComputeItem(key, deps or {}, run, priority=priority),
              [f"payload of {key}".encode()], now)


def hold(w: WorkerState, key: str, value: object, nbytes: int) -> None:
    """Have ``key`` held here already: a client put it (its answer is dropped)."""
    assert key not in w.data  # (else the put waits for the center's sync)
    w.put_data(b"a client", 0, {key: (value, nbytes)}, {})
    w.stored.clear()


def executed(w: WorkerState) -> list[str]:
    """Keys handed to task threads since the last call (the shell clears the list)."""
    keys = [task.key for task in w.to_execute]
    w.to_execute.clear()
    return keys


def fetches(w: WorkerState) -> list[tuple[int, str, list[str]]]:
    requests = list(w.to_fetch)
    w.to_fetch.clear()
    return requests


def reports(w: WorkerState) -> list[Report]:
    out = list(w.to_center)
    w.to_center.clear()
    return out


# --------------------------------------------------------------------------- inputs


def test_task_without_inputs_goes_straight_to_a_thread():
    w = make()
    compute(w, "x")
    assert executed(w) == ["x"]
    assert w.to_fetch == [] and w.to_center == []


def test_task_with_local_inputs_runs_without_fetching_and_gets_their_values():
    w = make()
    hold(w, "a", [1, 2, 3], 24)
    compute(w, "b", {"a": [ME]})
    (task,) = w.to_execute
    assert task.key == "b" and task.payload == [b"payload of b"]
    assert w.inputs_of(task) == {"a": [1, 2, 3]}
    assert w.to_fetch == []


def test_remote_inputs_are_fetched_with_one_request_per_peer():
    w = make()
    hold(w, "local", 0, 8)
    compute(w, "t", {"a": [P1], "b": [P1], "c": [P2], "local": [ME]})
    requests = fetches(w)
    by_peer = {peer: keys for _, peer, keys in requests}
    assert len(requests) == 2
    assert sorted(by_peer[P1]) == ["a", "b"] and by_peer[P2] == ["c"]
    assert len({request_id for request_id, _, _ in requests}) == 2
    assert executed(w) == []
    assert w.tasks["t"].state == "fetching"


def test_this_worker_is_never_asked_for_its_own_data():
    w = make()
    compute(w, "t", {"a": [ME, P1]})
    assert [(peer, keys) for _, peer, keys in fetches(w)] == [(P1, ["a"])]


def test_input_needed_by_two_tasks_is_fetched_once_and_feeds_both():
    w = make(nthreads=2)
    compute(w, "t1", {"a": [P1]})
    compute(w, "t2", {"a": [P1]})
    ((request_id, peer, keys),) = fetches(w)
    assert (peer, keys) == (P1, ["a"])
    w.data_received(request_id, {"a": "A"}, {"a": 1}, now=1.0)
    assert sorted(executed(w)) == ["t1", "t2"]


def test_data_received_stores_inputs_reports_them_and_starts_the_task():
    w = make()
    compute(w, "t", {"a": [P1], "b": [P2]})
    requests = {peer: request_id for request_id, peer, _ in fetches(w)}
    w.data_received(requests[P1], {"a": "A"}, {"a": 100}, now=1.0)
    assert executed(w) == []              # still waiting for b
    assert w.tasks["t"].state == "fetching"
    w.data_received(requests[P2], {"b": "B"}, {"b": 200}, now=1.0)
    (task,) = w.to_execute
    assert task.key == "t"
    assert w.inputs_of(task) == {"a": "A", "b": "B"}
    assert w.nbytes == {"a": 100, "b": 200}
    # The center tracks every copy: each fetched input is reported with its
    # size, where it came from, and when it was asked for and arrived.
    assert sorted(reports(w)) == [(KeyAdded("a", 100, P1, 0.0, 1.0), []),
                                  (KeyAdded("b", 200, P2, 0.0, 1.0), [])]


# --------------------------------------------------------------------------- threads


def test_never_more_executing_than_nthreads_and_queued_tasks_start_by_priority():
    w = make(nthreads=2)
    compute(w, "a", priority=0)
    compute(w, "b", priority=0)
    assert executed(w) == ["a", "b"]
    compute(w, "low", priority=1)
    compute(w, "high", priority=5)
    compute(w, "low-later", priority=1)
    compute(w, "lowest", priority=-3)
    assert executed(w) == []              # both threads are busy
    started = []
    for done in ["a", "b", "high", "low", "low-later"]:
        w.task_done(done, value=done, nbytes=8)
        now_running = executed(w)
        assert len(now_running) <= 1
        started += now_running
        assert len(w.executing) <= 2
    assert started == ["high", "low", "low-later", "lowest"]


def test_finished_task_keeps_its_result_and_reports_it_to_the_center():
    w = make()
    compute(w, "x")
    executed(w)
    w.task_done("x", value=42, nbytes=28, duration=0.5)
    assert w.data == {"x": 42} and w.nbytes == {"x": 28}
    assert reports(w) == [(DoneItem("x", 28, RUN, duration=0.5), [])]
    assert "x" not in w.tasks and w.executing == set()


def test_a_finished_task_says_when_it_started_and_on_which_thread():
    # (for the center's task stream: the wall clock, and the slot 0..nthreads-1)
    w = make(nthreads=2)
    compute(w, "x")
    executed(w)
    w.task_done("x", value=42, nbytes=28, duration=0.5, start=1_700_000_000.0, thread=1)
    (report, _), = reports(w)
    assert (report.start, report.duration, report.thread) == (1_700_000_000.0, 0.5, 1)


def test_a_fetched_input_is_reported_as_a_transfer_on_the_wall_clock():
    w = make()
    w.wall_offset = 1_700_000_000.0  # (the shell's: time.time() - time.monotonic())
    compute(w, "t", {"a": [P1]}, now=3.0)
    ((request_id, _, _),) = fetches(w)
    w.data_received(request_id, {"a": "A"}, {"a": 64}, now=3.5)
    (report, _), = reports(w)
    assert report == KeyAdded("a", 64, P1, 1_700_000_003.0, 1_700_000_003.5)


def test_a_request_read_from_a_peers_memory_keeps_when_it_was_made():
    w = make()
    compute(w, "t", {"a": [P1]}, now=3.0)
    ((request_id, _, _),) = fetches(w)
    w.extend_request(request_id, until=50.0)
    w.data_received(request_id, {"a": "A"}, {"a": 64}, now=4.0)
    (report, _), = reports(w)
    assert (report.start, report.stop) == (3.0, 4.0)


def test_failed_task_reports_its_exception_frames_and_keeps_no_data():
    w = make()
    compute(w, "x")
    executed(w)
    w.task_done("x", error=[b"pickled exception"], duration=0.5, start=10.0, thread=0)
    assert reports(w) == [(FailedItem("x", RUN, 1, False, 10.0, 0.5, 0),
                           [b"pickled exception"])]
    assert "x" not in w.data


def test_compute_for_a_key_already_held_reports_it_finished_without_running_it():
    w = make()
    hold(w, "x", "value", 64)
    compute(w, "x")
    assert executed(w) == []
    assert reports(w) == [(DoneItem("x", 64, RUN), [])]


def test_compute_for_a_key_already_queued_is_not_run_twice():
    w = make()
    compute(w, "busy")
    compute(w, "x")
    compute(w, "x")
    assert executed(w) == ["busy"]
    w.task_done("busy", 1, 8)
    assert executed(w) == ["x"]
    w.task_done("x", 1, 8)
    assert executed(w) == []


# --------------------------------------------------------------------------- fetch failures


def test_fetch_timeout_tries_the_next_holder_then_reports_missing_data():
    w = make()
    compute(w, "t", {"a": [P1, P2]}, now=100.0)
    ((first, peer, _),) = fetches(w)
    assert peer == P1

    w.check_timeouts(now=100.0 + TIMEOUT - 0.1)
    assert fetches(w) == []               # not late yet

    w.check_timeouts(now=100.0 + TIMEOUT)
    ((second, peer, keys),) = fetches(w)
    assert (peer, keys) == (P2, ["a"]) and second != first
    assert reports(w) == []

    w.check_timeouts(now=100.0 + 2 * TIMEOUT)
    assert fetches(w) == []
    assert reports(w) == [(MissingData("t", ["a"], RUN, tried=[P1, P2]), [])]
    assert "t" not in w.tasks and "a" not in w.fetching.fetches
    assert executed(w) == []


def test_a_peer_that_left_is_asked_nothing_more_and_its_requests_go_elsewhere_at_once():
    w = make()
    compute(w, "t", {"a": [P1, P2]}, now=0.0)
    compute(w, "u", {"b": [P2, P1], "c": [P3]}, now=0.0)
    assert sorted((peer, keys) for _, peer, keys in fetches(w)) == \
        [(P1, ["a"]), (P2, ["b"]), (P3, ["c"])]
    w.peer_left(P1, now=1.0)            # long before the fetch timeout
    assert [(peer, keys) for _, peer, keys in fetches(w)] == [(P2, ["a"])]
    assert reports(w) == []
    w.peer_left(P2, now=2.0)            # a's and b's last holder: nowhere else to ask
    assert fetches(w) == []
    reported = reports(w)
    assert all(type(report) is MissingData for report, _ in reported)
    assert sorted((report.key, report.missing) for report, _ in reported) == \
        [("t", ["a"]), ("u", ["b"])]
    assert [peer for peer, *_ in w.fetching.requests.values()] == [P3]  # (left alone)


def test_timeout_of_one_request_leaves_other_requests_alone():
    w = make()
    compute(w, "t1", {"a": [P1, P3]}, now=0.0)
    compute(w, "t2", {"b": [P2]}, now=5.0)
    fetches(w)
    w.check_timeouts(now=TIMEOUT)
    assert [(peer, keys) for _, peer, keys in fetches(w)] == [(P3, ["a"])]
    assert reports(w) == []


def test_peer_answering_missing_sends_the_request_to_the_next_holder():
    w = make()
    compute(w, "t", {"a": [P1, P2], "b": [P1]})
    ((request_id, _, keys),) = fetches(w)
    assert sorted(keys) == ["a", "b"]
    w.data_received(request_id, {"b": "B"}, {"b": 8}, now=1.0)   # P1 no longer has a
    ((retry, peer, keys),) = fetches(w)
    assert (peer, keys) == (P2, ["a"])
    assert executed(w) == []
    w.data_received(retry, {"a": "A"}, {"a": 8}, now=2.0)
    assert executed(w) == ["t"]


def test_peer_answering_missing_with_no_holder_left_reports_missing_data():
    w = make()
    compute(w, "t", {"a": [P1]})
    ((request_id, _, _),) = fetches(w)
    w.data_received(request_id, {}, {}, now=1.0)
    assert reports(w) == [(MissingData("t", ["a"], RUN, tried=[P1]), [])]
    assert fetches(w) == [] and executed(w) == []
    assert "t" not in w.tasks


def test_an_input_asked_for_a_task_given_up_still_comes_and_is_kept():
    # The center may send the task back here: an answer on its way is not wasted.
    w = make()
    compute(w, "t", {"a": [P1], "b": [P2]})
    requests = {peer: request_id for request_id, peer, _ in fetches(w)}
    w.data_received(requests[P2], {}, {}, now=1.0)   # b: no holder left
    assert reports(w) == [(MissingData("t", ["b"], RUN, [P2]), [])]
    assert "t" not in w.tasks and "a" in w.fetching.fetches
    w.data_received(requests[P1], {"a": "A"}, {"a": 8}, now=2.0)
    assert w.data == {"a": "A"} and reports(w) == [(KeyAdded("a", 8, P1, 0.0, 2.0), [])]


def test_a_request_being_read_gets_more_time_and_never_less():
    w = WorkerState(ME, nthreads=1, fetch_timeout=10)
    w.compute(ComputeItem("y", {"x": [P1]}, run=1), [b"..."], now=0.0)
    [(request_id, _, _)] = w.to_fetch
    w.extend_request(request_id, until=30.0)
    w.extend_request(request_id, until=20.0)
    w.check_timeouts(now=25.0)
    assert request_id in w.fetching.requests  # still waiting for the read
    w.check_timeouts(now=31.0)
    assert request_id not in w.fetching.requests


def test_late_answer_after_a_timeout_is_still_used():
    w = make()
    compute(w, "t", {"a": [P1, P2]}, now=0.0)
    ((first, _, _),) = fetches(w)
    w.check_timeouts(now=TIMEOUT)
    ((second, _, _),) = fetches(w)
    w.data_received(first, {"a": "A"}, {"a": 8}, now=TIMEOUT + 1)   # P1 was only slow
    assert executed(w) == ["t"]
    w.data_received(second, {"a": "A"}, {"a": 8}, now=TIMEOUT + 2)
    assert executed(w) == []              # no second run
    assert [type(report) for report, _ in reports(w)] == [KeyAdded]


def test_input_with_no_holder_to_ask_is_reported_missing_instead_of_waiting_forever():
    w = make()
    compute(w, "t", {"a": [ME]})          # the center thinks we hold a; we do not
    assert fetches(w) == []
    assert reports(w) == [(MissingData("t", ["a"], RUN, tried=[ME]), [])]
    assert "t" not in w.tasks


def test_a_key_to_acquire_is_fetched_from_its_holders_and_said_to_be_here():
    w = make()
    w.acquire(AcquireItem("a", [P1, P2]), now=0.0)   # a leaving worker hands it on
    ((request_id, peer, keys),) = fetches(w)
    assert (peer, keys) == (P1, ["a"])
    w.data_received(request_id, {"a": "A"}, {"a": 8}, now=1.0)
    assert reports(w) == [(KeyAdded("a", 8, P1, 0.0, 1.0), [])] and w.data == {"a": "A"}
    assert executed(w) == []
    w.acquire(AcquireItem("a", [P2]), now=2.0)       # held already: said so at once
    assert fetches(w) == [] and reports(w) == [(KeyAdded("a", 8), [])]  # (no copy)


def test_a_key_to_acquire_stays_wanted_when_a_task_that_also_waited_for_it_goes():
    # (the leaving worker that hands it on waits for its keys-added)
    w = make()
    w.acquire(AcquireItem("a", [P1]), now=0.0)
    ((request_id, _, _),) = fetches(w)
    compute(w, "t", {"a": [P1]})          # a task joins the fetch ...
    w.release(["t"])                      # ... and is released
    w.data_received(request_id, {"a": "A"}, {"a": 8}, now=1.0)
    assert w.data == {"a": "A"}
    assert (KeyAdded("a", 8, P1, 0.0, 1.0), []) in reports(w)


# --------------------------------------------------------------------------- release


def test_release_drops_data():
    w = make()
    hold(w, "a", "A", 8)
    compute(w, "b")
    w.task_done(executed(w)[0], "B", 8)
    w.release(["a", "b", "never-here"])
    assert w.data == {} and w.nbytes == {}


def test_release_drops_a_queued_task():
    w = make()
    compute(w, "running")
    compute(w, "queued")
    assert executed(w) == ["running"]
    w.release(["queued"])
    w.task_done("running", 1, 8)
    assert executed(w) == []
    assert "queued" not in w.tasks


def test_release_of_a_fetching_task_cancels_it():
    w = make()
    compute(w, "t", {"a": [P1]})
    ((request_id, _, _),) = fetches(w)
    w.release(["t"])
    assert w.fetching.fetches == {}
    w.data_received(request_id, {"a": "A"}, {"a": 8}, now=1.0)
    assert executed(w) == []
    w.check_timeouts(now=2 * TIMEOUT)
    assert fetches(w) == [] and reports(w) == []


def test_release_of_a_running_task_discards_its_result_when_it_arrives():
    w = make()
    compute(w, "x")
    compute(w, "next")
    assert executed(w) == ["x"]
    w.release(["x"])
    assert executed(w) == []              # the thread is still busy with x
    w.task_done("x", value="unwanted", nbytes=8)
    assert "x" not in w.data
    assert reports(w) == []
    assert executed(w) == ["next"]        # its thread is free again


def test_key_computed_again_while_its_released_run_goes_on_adopts_that_run():
    w = make(nthreads=2)
    compute(w, "x")
    assert executed(w) == ["x"]
    w.release(["x"])                      # e.g. cancelled, ...
    compute(w, "x")                       # ... and submitted again while still running
    assert executed(w) == []              # no second run: the first one is still going
    compute(w, "y")
    assert executed(w) == ["y"]           # the second thread is free
    compute(w, "z")
    assert executed(w) == []              # both threads busy: x and y


def test_adopted_run_reports_its_result_once_and_is_not_run_again():
    w = make(nthreads=1)
    compute(w, "x", run=1)
    assert executed(w) == ["x"]
    w.release(["x"])
    compute(w, "x", run=2)
    assert executed(w) == []
    w.task_done("x", value="X", nbytes=8)
    finished = [(report.key, report.run) for report, _ in reports(w)
                if type(report) is DoneItem]
    assert finished == [("x", 2)]   # it answers the assignment the center waits on
    assert w.data["x"] == "X"
    assert executed(w) == []


def test_a_task_assigned_again_while_it_runs_reports_the_new_run():
    w = make(nthreads=1)
    compute(w, "x", run=1)
    w.forget_queue()                      # the center gave up on us, and sent x again
    compute(w, "x", run=2)
    w.task_done("x", value="X", nbytes=8)
    assert [report.run for report, _ in reports(w)] == [2]


def test_a_key_held_already_is_reported_for_the_run_that_asks_for_it():
    w = make()
    hold(w, "x", "X", 8)
    compute(w, "x", run=5)
    assert reports(w) == [(DoneItem("x", 8, 5), [])]


def test_a_seceding_task_tells_its_run_and_a_released_one_tells_nothing():
    w = make(nthreads=1)
    compute(w, "x", run=3)
    compute(w, "y", run=4)
    assert executed(w) == ["x"]
    w.secede("x")
    assert reports(w) == [(TaskSeceded("x", 3), [])]
    assert executed(w) == ["y"]           # its slot went to the next task
    w.release(["y"])
    w.secede("y")
    assert reports(w) == []               # the center took it back: nothing to say


def test_a_seceded_task_assigned_again_tells_its_secession_for_the_new_run():
    w = make(nthreads=1)
    compute(w, "x", run=1)
    assert executed(w) == ["x"]
    w.release(["x"])                      # dropped while it runs ...
    w.secede("x")                         # ... it gives its thread back, unannounced
    assert reports(w) == []
    compute(w, "x", run=2)                # ... and is asked for again: adopted
    assert reports(w) == [(TaskSeceded("x", 2), [])]


def test_a_secession_goes_to_the_center_in_order_and_takes_held_completions_along():
    w = first_of_three_short_tasks_done()
    assert w.take_reports(now=0.0) == []                  # a's completion is held
    w.secede("b")
    w.task_done("c", value=3, nbytes=28, duration=1e-4)
    assert w.take_reports(now=0.0) == [                   # in the order they came
        (DoneItem("a", 28, RUN, duration=1e-4), []), (TaskSeceded("b", RUN), []),
        (DoneItem("c", 28, RUN, duration=1e-4), [])]


def old_call_ends_then_the_new_one_runs(w: WorkerState) -> None:
    """The old call of "k" (run 1) ends: its result is dropped; the new call
    (run 2, waiting behind it) runs, and its own result is reported."""
    w.task_done("k", value="OLD", nbytes=8)
    assert reports(w) == [] and "k" not in w.data   # the old call's result is dropped
    (task,) = w.to_execute
    assert (task.key, task.run, task.payload) == ("k", 2, [b"new call"])
    executed(w)
    w.task_done("k", value="NEW", nbytes=8)
    assert reports(w) == [(DoneItem("k", 8, 2, duration=0.0), [])]
    assert w.data["k"] == "NEW"


def test_another_call_of_a_released_key_runs_after_it_and_gets_its_own_result():
    # A key the client chose, cancelled while it runs, and submitted again
    # with another call: the run under way is not this call's.
    w = make(nthreads=2)
    w.compute(ComputeItem("k", {}, 1), [b"old call"], 0.0)
    assert executed(w) == ["k"]
    w.release(["k"])
    w.compute(ComputeItem("k", {}, 2), [b"new call"], 0.0)
    assert executed(w) == []              # the key's thread is the old call's until it ends
    compute(w, "other")
    assert executed(w) == ["other"]       # (the other thread is free)
    old_call_ends_then_the_new_one_runs(w)


def test_another_call_of_a_key_whose_release_has_not_come_yet_runs_after_it():
    # The center let the old call go, and its word to drop it comes after the
    # new call's assignment: the old run must not answer the new call.
    w = make(nthreads=2)
    w.compute(ComputeItem("k", {}, 1), [b"old call"], 0.0)
    assert executed(w) == ["k"]
    w.compute(ComputeItem("k", {}, 2), [b"new call"], 0.0)
    assert executed(w) == []              # behind the old call's thread
    old_call_ends_then_the_new_one_runs(w)


def test_another_call_of_a_released_key_whose_thread_skips_the_old_one_runs():
    w = make(nthreads=1)
    w.task_duration = 1e-4                # short tasks: a few are handed ahead
    compute(w, "busy")
    w.compute(ComputeItem("k", {}, 1), [b"old call"], 0.0)
    assert executed(w) == ["busy", "k"]   # handed ahead to the busy thread
    w.release(["k"])
    w.compute(ComputeItem("k", {}, 2), [b"new call"], 0.0)
    assert executed(w) == []
    w.task_skipped("k")                   # the thread found the old call released
    assert [task.payload for task in w.to_execute] == [[b"new call"]]


def test_a_released_run_of_another_call_that_secedes_tells_nothing():
    w = make(nthreads=1)
    w.compute(ComputeItem("k", {}, 1), [b"old call"], 0.0)
    executed(w)
    w.release(["k"])
    w.compute(ComputeItem("k", {}, 2), [b"new call"], 0.0)
    w.secede("k")                         # the old call waits on futures: not run 2
    assert reports(w) == []
    assert executed(w) == []              # run 2 still waits for the old call to end
    w.task_done("k", value="OLD", nbytes=8)
    assert executed(w) == ["k"] and reports(w) == []


# --------------------------------------------------------------------------- center restart


def test_forgetting_the_queue_keeps_running_tasks_and_data():
    w = make(nthreads=1)
    hold(w, "held", 1, 8)
    compute(w, "running")
    compute(w, "queued")
    compute(w, "fetching", {"remote": [P1]})
    assert executed(w) == ["running"]
    fetches(w)
    w.forget_queue()
    assert set(w.tasks) == {"running"} and not w.ready and not w.fetching.fetches
    # The running task still reports; a late answer to a dropped fetch is harmless.
    w.task_done("running", 2, 8)
    assert [type(report) for report, _ in reports(w)] == [DoneItem]
    assert executed(w) == []                      # the queued task is not started
    w.data_received(1, {"remote": 5}, {"remote": 8}, now=1.0)
    assert w.data == {"held": 1, "running": 2}


# --------------------------------------------------------------------------- memory pressure


def test_a_paused_worker_starts_no_task_until_it_resumes():
    w = make(nthreads=1)
    w.set_paused(True)
    compute(w, "x")
    assert executed(w) == []
    w.set_paused(False)
    assert executed(w) == ["x"]


def test_a_worker_pauses_above_the_high_mark_and_resumes_only_below_the_low_one():
    from zfutures.memory_thresholds import MemoryThresholds

    PAUSE_AT, RESUME_AT = MemoryThresholds().pause, MemoryThresholds().spill
    limit = 1000 * 2**20
    w = WorkerState(ME, nthreads=1, memory_limit=limit)
    w.memory_measured(int(PAUSE_AT * limit))            # at the mark: not over it
    assert not w.paused and reports(w) == []
    assert not w.memory.high(int(RESUME_AT * limit)) and w.memory.high(int(RESUME_AT * limit) + 1)
    w.memory_measured(int(PAUSE_AT * limit) + 1)
    assert w.paused and reports(w) == [(Paused(True), [])]
    compute(w, "x")
    assert executed(w) == []
    w.memory_measured(int(RESUME_AT * limit) + 1)       # between the marks: stays paused
    assert w.paused and reports(w) == [] and executed(w) == []
    w.memory_measured(int(RESUME_AT * limit) - 1)
    assert not w.paused and reports(w) == [(Paused(False), [])]
    assert executed(w) == ["x"]
    w.memory_measured(int(RESUME_AT * limit) + 1)       # between the marks: goes on
    assert not w.paused and reports(w) == []


def test_a_worker_without_a_memory_limit_never_pauses():
    w = make()
    w.memory_measured(2**50)
    assert not w.paused and not w.memory.high(2**50) and reports(w) == []


def test_an_input_that_cannot_arrive_fails_the_tasks_waiting_for_it_only():
    w = make(nthreads=1)
    compute(w, "needs-bad", {"bad": [P1], "good": [P2]})
    compute(w, "needs-good", {"good": [P2]})
    fetches(w)
    error = [b"pickled TypeError"]
    w.input_failed("bad", error)
    assert reports(w) == [(FailedItem("needs-bad", RUN, nframes=1), error)]
    assert set(w.tasks) == {"needs-good"}
    w.data_received(2, {"good": 1}, {"good": 8}, now=1.0)
    assert executed(w) == ["needs-good"]


def test_a_pickled_result_rides_with_its_completion():
    w = make()
    w.compute(ComputeItem("x", {}, RUN, send_result=True), [b"payload"], 0.0)
    (task,) = w.to_execute
    assert task.send_result
    w.task_done("x", 2, 8, 0.001, None, [b"pickled 2"])
    assert reports(w) == [
        (DoneItem("x", 8, RUN, nframes=1, duration=0.001), [b"pickled 2"])]
    assert w.data == {"x": 2}


def test_a_task_sent_ahead_waits_for_its_input_computed_here_and_does_not_fetch_it():
    w = make(nthreads=1)
    compute(w, "t0")
    compute(w, "t1", {"t0": []})
    assert executed(w) == ["t0"] and fetches(w) == []
    w.task_done("t0", 1, 8)
    assert executed(w) == ["t1"]
    assert w.inputs_of(w.tasks["t1"]) == {"t0": 1}


def test_a_task_sent_ahead_is_dropped_with_its_release_and_its_input_still_reports():
    w = make(nthreads=1)
    compute(w, "t0")
    compute(w, "t1", {"t0": []})
    executed(w)
    w.release(["t1"])
    w.task_done("t0", 1, 8)
    assert executed(w) == [] and not w.local_waiters
    assert [type(report) for report, _ in reports(w)] == [DoneItem]


def test_short_tasks_are_handed_to_the_threads_a_few_at_a_time():
    w = make(nthreads=1)
    for i in range(20):
        compute(w, f"t{i}")
    assert executed(w) == ["t0"]                 # no durations yet: one at a time
    w.task_duration = 0.0001                     # measured: very short tasks
    w.task_done("t0", 0, 8, 0.0001)
    handed = executed(w)
    assert 1 < len(handed) <= 1 + 8
    assert handed == [f"t{i}" for i in range(1, 1 + len(handed))]  # in order


def test_long_tasks_are_handed_over_one_per_thread():
    w = make(nthreads=2)
    w.task_duration = 1.0
    for i in range(5):
        compute(w, f"t{i}")
    assert executed(w) == ["t0", "t1"]


def test_a_task_released_before_its_thread_started_it_frees_its_place():
    w = make(nthreads=1)
    w.task_duration = 0.0001                     # short tasks: handed over several at once
    compute(w, "t0")
    compute(w, "t1")
    compute(w, "t2")
    assert executed(w) == ["t0", "t1", "t2"]
    w.release(["t1"])
    w.task_skipped("t1")                         # its thread saw it released: not run
    assert "t1" not in w.executing and "t1" not in w.released_running
    assert reports(w) == []


def test_a_task_given_up_for_one_input_drops_the_fetch_just_planned_for_another():
    w = make()
    # a has a holder to ask; b has none left (its holder died meanwhile): the
    # task goes back to the center before the request for a is even sent.
    compute(w, "t", {"a": [P1], "b": []})
    assert reports(w) == [(MissingData("t", ["b"], RUN, tried=[]), [])]
    assert fetches(w) == [] and not w.fetching.fetches and "t" not in w.tasks
    compute(w, "u", {"a": [P1]})                   # the worker goes on as usual
    assert fetches(w) == [(1, P1, ["a"])]


# --------------------------------------------------------------------------- scattered data


def test_data_a_client_puts_here_is_stored_and_the_client_told():
    w = make()
    w.put_data(b"client", 1, {"a": ("A", 8)}, {"b": "could not load"})
    assert w.data == {"a": "A"} and w.nbytes == {"a": 8}
    assert w.stored == [(b"client", DataStored(1, {"a": 8}, {"b": "could not load"}))]
    assert reports(w) == []


def test_data_put_again_while_here_waits_for_the_centers_word_sent_before_it():
    # The old copy may have been let go of: its release, from the center,
    # may come after the new copy, from the client, and must not drop it.
    w = make()
    hold(w, "a", "A", 8)
    w.put_data(b"client", 1, {"a": ("A", 8), "b": ("B", 8)}, {})
    assert reports(w) == [(Sync(["a"]), [])]
    assert w.stored == [] and "b" not in w.data
    w.release(["a"])                    # the old copy's release, on its way before
    w.synced(["a"])
    assert w.data == {"a": "A", "b": "B"}
    assert w.stored == [(b"client", DataStored(1, {"a": 8, "b": 8}))]


def test_each_answer_to_a_sync_lets_the_data_that_waited_longest_in():
    w = make()
    hold(w, "a", "A", 8)
    w.put_data(b"first", 1, {"a": ("A", 8)}, {})
    w.put_data(b"second", 2, {"a": ("A", 8)}, {})
    w.synced(["a"])
    assert [answer[0] for answer in w.stored] == [b"first"]
    w.synced(["a"])
    assert [answer[0] for answer in w.stored] == [b"first", b"second"]


def test_data_that_waits_for_the_answers_of_several_keys_waits_for_each():
    w = make()
    hold(w, "a", "A", 8)
    hold(w, "b", "B", 8)
    w.put_data(b"client", 1, {"a": ("A", 8), "b": ("B", 8)}, {})
    w.synced(["b"])
    assert w.stored == []
    w.synced(["a"])
    assert w.stored == [(b"client", DataStored(1, {"a": 8, "b": 8}))]


def test_data_waiting_for_a_center_that_lost_track_of_us_is_stored_when_we_register():
    w = make()
    hold(w, "a", "A", 8)
    w.put_data(b"client", 1, {"a": ("A", 8)}, {})
    w.forget_queue()
    assert w.stored == [(b"client", DataStored(1, {"a": 8}))] and w.scatters.waiting == []


# --------------------------------------------------------------------------- holding reports


def test_completions_may_wait_a_moment_only_while_more_work_runs():
    from zfutures.worker_policy import HOLD_MAX, HOLD_REPORTS

    w = make()
    w.task_duration = 1e-4  # as after a run of short tasks
    compute(w, "x")
    compute(w, "y")
    executed(w)
    w.task_done("x", value=1, nbytes=28, duration=1e-4)
    assert "y" in w.executing
    assert w.report_hold([]) == HOLD_REPORTS
    held: list[Report] = [(DoneItem(f"k{i}", 28, 1), []) for i in range(HOLD_MAX)]
    assert w.report_hold(held) == 0.0                               # enough for a message
    w.task_done("y", value=2, nbytes=28, duration=1e-4)
    assert not w.executing and w.report_hold(held[:1]) == 0.0      # idle: report


def test_completions_of_longer_tasks_are_reported_at_once():
    from zfutures.worker_policy import HOLD_REPORTS

    w = make()
    w.task_duration = 1e-4
    for key in "abc":
        compute(w, key)
    executed(w)
    for key in "ab":  # tasks longer than the wait: their dependents start sooner
        w.task_done(key, value=1, nbytes=28, duration=50 * HOLD_REPORTS)
    assert w.executing and w.task_duration >= HOLD_REPORTS
    assert w.report_hold([]) == 0.0


def test_a_completion_with_dependents_waiting_here_is_reported_at_once():
    w = make()
    w.task_duration = 1e-4
    compute(w, "a")
    compute(w, "b", {"a": [ME]})   # sent ahead: waits here for a
    compute(w, "c")
    executed(w)
    w.task_done("a", value=1, nbytes=28, duration=1e-4)
    assert w.executing and w.report_now
    assert w.report_hold([]) == 0.0


def test_an_error_is_reported_at_once():
    w = make()
    w.task_duration = 1e-4
    compute(w, "x")
    compute(w, "y")
    executed(w)
    w.task_done("x", error=[b"pickled error"])
    assert w.executing and w.report_hold([]) == 0.0


def first_of_three_short_tasks_done() -> WorkerState:
    """A worker running short tasks a, b and c: a has just finished."""
    w = make()
    w.task_duration = 1e-4
    for key in "abc":
        compute(w, key)
    executed(w)
    w.task_done("a", value=1, nbytes=28, duration=1e-4)
    return w


def test_held_completions_go_together_once_their_wait_is_over():
    from zfutures.worker_policy import HOLD_REPORTS

    w = first_of_three_short_tasks_done()
    assert w.take_reports(now=10.0) == []                      # held: more work runs
    assert w.held_until == 10.0 + HOLD_REPORTS and w.to_center == []
    w.task_done("b", value=2, nbytes=28, duration=1e-4)
    assert w.take_reports(now=10.0 + HOLD_REPORTS / 2) == []   # still within the wait
    sent = w.take_reports(now=10.0 + HOLD_REPORTS)             # from the first held
    assert [report.key for report, _ in sent] == ["a", "b"]
    assert w.held == [] and w.held_until is None and w.to_center == []


def test_a_report_of_another_kind_takes_the_held_completions_along_at_once():
    w = first_of_three_short_tasks_done()
    assert w.take_reports(now=0.0) == []
    w.task_done("b", error=[b"pickled error"])
    assert [(type(report), report.key) for report, _ in w.take_reports(now=0.0)] == [
        (DoneItem, "a"), (FailedItem, "b")]


def test_a_leaving_worker_holds_no_report_back():
    w = first_of_three_short_tasks_done()
    w.closing = True
    assert [report.key for report, _ in w.take_reports(now=0.0)] == ["a"]


def test_reports_sent_end_the_wait_for_dependents_waiting_here():
    w = make()
    compute(w, "a")
    compute(w, "b", {"a": [ME]})
    executed(w)
    w.task_done("a", value=1, nbytes=28)
    assert w.report_now
    assert [type(report) for report, _ in w.take_reports(now=0.0)] == [DoneItem]
    assert not w.report_now


# --------------------------------------------------------------------------- leaving

def test_a_worker_that_holds_no_key_or_has_no_center_may_leave_at_once():
    w = make()
    assert w.leave(now=0.0, registered=True)
    hold(w, "x", 1, 28)
    assert w.leave(now=0.0, registered=False)
    assert reports(w) == []


def test_a_worker_holding_keys_asks_the_center_to_take_them_and_waits_a_while():
    w = WorkerState(ME, nthreads=1, retire_timeout=10.0)
    hold(w, "x", 1, 28)
    assert not w.leave(now=100.0, registered=True)
    assert reports(w) == [(Retire(), [])]
    assert not w.leave(now=105.0, registered=True)
    assert not w.leave(now=110.0, registered=True)
    assert reports(w) == []                             # asked once
    assert w.leave(now=110.1, registered=True)          # the center did not take them


# --------------------------------------------------------------------------- direct tasks

CLIENT = b"client-routing-id"
DIRECT = 9 << 40  # a run the client chose


def test_a_direct_task_runs_and_its_small_result_goes_to_its_client_and_not_twice():
    w = make()
    w.run_direct(RunTask("x", DIRECT), [b"payload"], CLIENT, now=0.0)
    (task,) = w.to_execute
    assert task.send_result and task.direct and task.run == DIRECT
    w.task_done("x", 2, 28, 0.001, None, [b"pickled 2"])
    assert w.to_clients == [(CLIENT, DirectResult("x", DIRECT, 28), [b"pickled 2"])]
    ((report, frames),) = reports(w)
    assert report == DoneItem("x", 28, DIRECT, nframes=0, direct=True, answered=True,
                              duration=0.001)
    assert frames == []  # its client has it; the center need not carry it again
    assert w.data["x"] == 2


def test_a_direct_completion_its_client_has_may_wait_longer_even_when_idle():
    from zfutures.worker_policy import HOLD_ANSWERED, HOLD_MAX

    w = make()
    w.run_direct(RunTask("x", DIRECT), [b"payload"], CLIENT, now=0.0)
    w.task_done("x", 2, 28, 0.001, None, [b"pickled 2"])
    assert not w.executing
    assert w.report_hold([]) == HOLD_ANSWERED
    (held,) = reports(w)
    assert held[0].answered is True
    w.run_direct(RunTask("y", DIRECT + 1), [b"payload"], CLIENT, now=0.0)
    w.task_done("y", 3, 28, 0.001, None, [b"pickled 3"])
    assert w.report_hold([held]) == HOLD_ANSWERED
    assert w.report_hold([held] * HOLD_MAX) == 0.0           # enough for a message
    reports(w)
    w.run_direct(RunTask("z", DIRECT + 2), [b"payload"], CLIENT, now=0.0)
    w.task_done("z", error=[b"exception"])                   # anything else: at once
    assert w.report_hold([held]) == 0.0


def test_a_direct_completion_its_client_did_not_get_is_reported_at_once():
    w = make()
    w.run_direct(RunTask("big", DIRECT), [b"payload"], CLIENT, now=0.0)
    w.task_done("big", b"x" * 10, 10**9, 0.001, None, None)  # too big to send along
    assert w.to_clients == []
    assert w.report_hold([]) == 0.0  # its client hears of it through the center
    (report,) = reports(w)
    assert report[0].answered is False and report[1] == []


def test_a_direct_completion_with_dependents_waiting_here_is_reported_at_once():
    w = make(nthreads=2)
    w.run_direct(RunTask("x", DIRECT), [b"payload"], CLIENT, now=0.0)
    compute(w, "y", {"x": [ME]})   # sent ahead by the center: waits here for x
    w.task_done("x", 2, 28, 0.001, None, [b"pickled 2"])
    assert w.report_hold([]) == 0.0


def test_a_direct_task_that_secedes_says_its_run_is_direct():
    w = make()
    w.run_direct(RunTask("x", DIRECT), [b"payload"], CLIENT, now=0.0)
    executed(w)
    w.secede("x")
    assert reports(w) == [(TaskSeceded("x", DIRECT, direct=True), [])]


def test_a_direct_tasks_error_goes_to_the_center_only():
    w = make()
    w.run_direct(RunTask("x", DIRECT), [b"payload"], CLIENT, now=0.0)
    w.task_done("x", error=[b"exception"])
    assert w.to_clients == []
    assert reports(w) == [(FailedItem("x", DIRECT, nframes=1, direct=True, duration=0.0),
                           [b"exception"])]


def test_a_direct_task_still_running_is_announced_once_at_the_next_check():
    w = make(nthreads=2)
    w.run_direct(RunTask("x", DIRECT), [b"payload"], CLIENT, now=0.0)
    w.run_direct(RunTask("done", DIRECT + 1), [b"payload"], CLIENT, now=0.0)
    w.check_timeouts(0.5)
    assert reports(w) == [(TaskAccepted("x", DIRECT), []),
                          (TaskAccepted("done", DIRECT + 1), [])]
    w.check_timeouts(1.0)
    assert reports(w) == []
    w.task_done("x", 2, 28, 0.001, None, [b"pickled 2"])
    w.task_done("done", 2, 28, 0.001, None, [b"pickled 2"])
    reports(w)
    w.run_direct(RunTask("gone", DIRECT + 2), [b"payload"], CLIENT, now=1.0)
    w.release(["gone"])
    w.check_timeouts(1.5)
    assert reports(w) == []  # released before the check: nothing to confirm


def test_a_direct_task_the_center_sends_too_reports_the_centers_run_and_answers_the_client():
    w = make()
    w.run_direct(RunTask("x", DIRECT), [b"payload of x"], CLIENT, now=0.0)  # (the same call)
    compute(w, "x", run=RUN)  # placed here by the center after all
    assert executed(w) == ["x"]
    w.task_done("x", 2, 28, 0.001, None, [b"pickled 2"])
    assert w.to_clients == [(CLIENT, DirectResult("x", DIRECT, 28), [b"pickled 2"])]
    ((report, _),) = reports(w)
    assert type(report) is DoneItem and report.run == RUN and report.direct is False


def test_a_direct_request_for_a_key_held_or_queued_here_is_refused():
    w = make()
    hold(w, "held", 5, 28)
    compute(w, "queued", run=RUN)
    executed(w)
    # The center may have told us to drop these, in a message still on its way.
    w.run_direct(RunTask("held", DIRECT), [b"payload"], CLIENT, now=0.0)
    w.run_direct(RunTask("queued", DIRECT + 1), [b"payload"], CLIENT, now=0.0)
    assert executed(w) == []
    assert reports(w) == [(TaskRefused("held", DIRECT), []),
                          (TaskRefused("queued", DIRECT + 1), [])]
    w.release(["held", "queued"])
    assert w.data == {} and w.to_clients == []


def test_a_direct_task_released_before_its_thread_took_it_sends_nothing():
    w = make()
    w.run_direct(RunTask("x", DIRECT), [b"payload"], CLIENT, now=0.0)
    assert executed(w) == ["x"]
    w.release(["x"])
    w.task_skipped("x")  # its thread found it released, and did not start it
    assert reports(w) == [] and w.to_clients == [] and "x" not in w.tasks


@pytest.mark.parametrize("why", ["busy", "paused", "closing"])
def test_a_direct_task_that_cannot_start_at_once_is_refused(why):
    # What the worker runs, the center counts as the task's run: the worker
    # takes only what it starts now, and the center places the rest.
    w = make()
    if why == "busy":
        compute(w, "long")
        executed(w)
    elif why == "paused":
        w.set_paused(True)
    else:
        w.closing = True
    reports(w)
    w.run_direct(RunTask("x", DIRECT), [b"payload"], CLIENT, now=0.0)
    assert reports(w) == [(TaskRefused("x", DIRECT), [])]
    assert "x" not in w.tasks and "x" not in [t.key for t in w.to_execute]


def test_a_direct_run_the_center_gave_up_on_is_refused_when_it_comes_late():
    w = make()
    w.drop_direct(DropItem("late", DIRECT), now=0.0)  # never came here
    assert reports(w) == [(TaskRefused("late", DIRECT), [])]
    w.run_direct(RunTask("late", DIRECT), [b"payload"], CLIENT, now=1.0)
    assert reports(w) == [(TaskRefused("late", DIRECT), [])]
    assert "late" not in w.tasks
    w.check_timeouts(DROPPED_DIRECT_KEPT + 1)  # kept a while, then forgotten
    assert w.dropped_direct == {}


def test_a_direct_run_the_center_gave_up_on_that_came_here_is_kept():
    w = make(nthreads=2)
    w.run_direct(RunTask("running", DIRECT), [b"payload"], CLIENT, now=0.0)
    w.run_direct(RunTask("done", DIRECT + 1), [b"payload"], CLIENT, now=0.0)
    w.task_done("done", 2, 28, 0.001, None, [b"pickled 2"])
    reports(w)
    w.drop_direct(DropItem("running", DIRECT), now=1.0)  # its reports are on their way
    w.drop_direct(DropItem("done", DIRECT + 1), now=1.0)
    assert reports(w) == [] and w.dropped_direct == {}
    assert "running" in w.tasks and w.data["done"] == 2


def test_a_direct_request_for_another_call_of_a_released_running_key_is_refused():
    w = make(nthreads=2)
    w.run_direct(RunTask("k", DIRECT), [b"old call"], CLIENT, now=0.0)
    executed(w)
    w.release(["k"])
    w.run_direct(RunTask("k", DIRECT + 1), [b"new call"], CLIENT, now=0.0)
    assert reports(w) == [(TaskRefused("k", DIRECT + 1), [])]
    assert "k" not in w.tasks
    w.task_done("k", "OLD", 28, 0.001, None, [b"pickled OLD"])
    assert w.to_clients == [] and reports(w) == [] and "k" not in w.data
    # The same call again adopts the run under way, as for a key the center sends.
    w.run_direct(RunTask("again", DIRECT + 2), [b"call"], CLIENT, now=0.0)
    executed(w)
    w.release(["again"])
    w.run_direct(RunTask("again", DIRECT + 3), [b"call"], CLIENT, now=0.0)
    assert executed(w) == [] and w.tasks["again"].run == DIRECT + 3


# --------------------------------------------------------------------------- the loop thread

def test_a_lone_direct_task_runs_on_the_loop_thread_when_no_thread_is_busy():
    w = make(nthreads=1)
    w.run_direct(RunTask("x", DIRECT), [b"payload"], CLIENT, now=0.0)
    task = w.take_loop_run(loop_free=True)
    assert task is not None and task.key == "x" and w.to_execute == []
    assert "x" in w.executing  # (it holds the thread slot while it runs)


@pytest.mark.parametrize("why", ["loop busy", "center's task", "thread busy"])
def test_a_task_runs_on_a_task_thread_otherwise(why):
    w = make(nthreads=1)
    if why == "center's task":      # no client waits on each hop of it
        compute(w, "x")
    else:
        w.run_direct(RunTask("x", DIRECT), [b"payload"], CLIENT, now=0.0)
    if why == "thread busy":        # a task the center sent runs already
        w.executing.add("long")
    assert w.take_loop_run(loop_free=why != "loop busy") is None
    assert [task.key for task in w.to_execute] == ["x"]
