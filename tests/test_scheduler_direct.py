"""Direct runs: a client's lone task sent straight to a worker, and the
worker's reports that come before the client's submit (scheduler/direct.py)."""
from __future__ import annotations

import pytest
from scheduler_sim import (
    C1,
    C2,
    W1,
    W2,
    Sent,
    Sim,
    addr,
    error_frames,
    run_sent,
    task,
)

from zfutures import protocol
from zfutures.messages import (
    DoneItem,
    DropItem,
    FailedItem,
    KeyAdded,
    KeyFinished,
    TaskAccepted,
    TaskRefused,
    TaskSeceded,
)
from zfutures.scheduler import Scheduler

# --------------------------------------------------------------------------- direct tasks
# A client sends a lone task straight to a worker, in a run of its own, and
# tells the center in its submit; the worker's reports travel apart from it.

DIRECT_RUN = 7 << 40


def direct(key: str, worker: bytes, run: int = DIRECT_RUN, ack: bool = False) -> tuple:
    return task(key, direct_worker=addr(worker), direct_run=run, direct_ack=ack)


def two_workers_and_direct(on: bytes) -> Sim:
    """Workers W1 and W2, and "x" sent straight to ``on``."""
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(direct("x", on))
    return sim


def test_a_direct_task_counts_as_processing_on_its_worker_without_a_compute():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(direct("x", W2, ack=True))
    assert sim.state("x") == "processing" and sim.on("x") == W2
    sent = sim.take()
    assert sent.computes() == {}              # the worker has it from the client
    assert sent.keys("direct-accepted", C1) == ["x"]
    sim.s.task_finished(W2, DoneItem("x", 8, DIRECT_RUN, direct=True))
    assert sim.state("x") == "memory"
    assert sim.take().keys("key-finished", C1) == ["x"]
    assert sim.s.direct.unconfirmed == {}


def test_a_direct_tasks_report_that_comes_before_the_submit_waits_for_it():
    sim = Sim()
    sim.worker(W1)
    sim.s.task_finished(W1, DoneItem("x", 8, DIRECT_RUN, nframes=1, direct=True,
                                     duration=0.001), [b"small"])
    assert "x" not in sim.s.tasks and sim.take().messages == []  # kept, not released
    sim.submit(direct("x", W1))
    assert sim.state("x") == "memory" and sim.s.who_has(["x"]) == {"x": [addr(W1)]}
    sent = sim.take()
    assert sent.frames("key-finished", C1) == {"x": [b"small"]}
    assert sent.computes() == {} and sim.s.direct.early == {} and sim.s.direct.unconfirmed == {}


def test_an_error_and_a_secession_before_the_submit_are_played_back_too():
    sim = Sim()
    sim.worker(W1, nthreads=1)
    sim.s.task_seceded(W1, TaskSeceded("waits", DIRECT_RUN, direct=True))
    frames = error_frames(ValueError("boom"))
    sim.s.task_erred(W1, FailedItem("fails", DIRECT_RUN + 1, len(frames), direct=True), frames)
    sim.submit(direct("waits", W1))
    assert sim.s.tasks["waits"] in sim.s.workers[W1].seceded  # its thread is free
    sim.take()
    sim.submit(direct("fails", W1, run=DIRECT_RUN + 1))
    assert sim.state("fails") == "erred"
    assert sim.take().frames("key-erred", C1) == {"fails": frames}


@pytest.mark.parametrize("how", ["busy", "paused", "retiring"])
def test_a_direct_task_counts_on_its_worker_whatever_the_center_thinks_of_it(how):
    # The worker decides (it refuses what it cannot start): a run it did not
    # refuse is the task's, and its client may hold the result already.
    sim = Sim()
    sim.worker(W1, keys=["held"] if how == "retiring" else ())
    sim.worker(W2)
    if how == "busy":
        sim.submit(task("long"), task("next"))  # one on each worker's thread
        assert {sim.on("long"), sim.on("next")} == {W1, W2}
    elif how == "paused":
        sim.s.worker_paused(W1, True)
    else:
        sim.s.retire_worker(W1)
    sim.take()
    sim.submit(direct("x", W1))
    sent = sim.take()
    assert sim.on("x") == W1 and sent.computes() == {} and sent.keys("release-keys", W1) == []
    sim.s.task_finished(W1, DoneItem("x", 8, DIRECT_RUN, direct=True))
    assert sim.state("x") == "memory" and sim.s.who_has(["x"]) == {"x": [addr(W1)]}


def test_a_client_that_has_the_direct_result_already_is_not_sent_it_again():
    sim = Sim(clients=(C1, C2))
    sim.worker(W1)
    item, payload = direct("x", W1)
    sim.submit((item._replace(direct_answered=True), payload))
    sim.submit(task("x"), client=C2)  # the same pure call, from another client
    sim.take()
    sim.s.task_finished(W1, DoneItem("x", 8, DIRECT_RUN, direct=True))
    sent = sim.take()
    assert sent.keys("key-finished", C1) == [] and sent.keys("key-finished", C2) == ["x"]
    assert sim.state("x") == "memory"


def test_a_client_that_had_a_direct_result_hears_of_a_later_run():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    item, payload = direct("x", W1)
    sim.submit((item._replace(direct_answered=True), payload))
    sim.take()
    sim.s.remove_worker(W1)  # it answered, then died before its report came
    assert sim.on("x") == W2
    sim.finish("x")
    assert sim.take().keys("key-finished", C1) == ["x"]


def test_a_direct_task_for_a_worker_that_left_is_placed_as_usual():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.s.remove_worker(W2)
    sim.take()
    sim.submit(direct("x", W2))
    assert sim.on("x") == W1 and sim.take().computes() == {W1: ["x"]}


def test_pausing_does_not_take_back_a_direct_run():
    sim = Sim()
    sim.worker(W1, nthreads=1)
    sim.submit(task("first"))    # the worker's one thread, in the center's eyes
    sim.submit(direct("x", W1))  # it ran x all the same ("first" was done there, say)
    sim.worker(W2)
    sim.take()
    sim.s.worker_paused(W1, True)
    assert sim.take().keys("release-keys", W1) == [] and sim.on("x") == W1


def test_a_retiring_worker_goes_only_once_its_direct_run_is_done_and_handed_on():
    sim = two_workers_and_direct(W1)
    sim.take()
    sim.s.retire_worker(W1)
    sent = sim.take()
    assert sim.on("x") == W1 and "retired" not in sent.ops(W1)  # it runs there still
    sim.s.task_finished(W1, DoneItem("x", 8, DIRECT_RUN, direct=True))
    sent = sim.take()
    assert sent.keys("acquire", W2) == ["x"] and "retired" not in sent.ops(W1)
    sim.s.keys_added(W2, KeyAdded("x", 8))
    assert "retired" in sim.take().ops(W1)
    sim.s.remove_worker(W1)
    assert sim.state("x") == "memory" and sim.s.who_has(["x"]) == {"x": [addr(W2)]}


def test_a_retiring_worker_that_refuses_its_direct_run_goes_and_the_task_is_placed():
    sim = two_workers_and_direct(W1)
    sim.s.retire_worker(W1)
    sim.take()
    sim.s.task_refused(W1, TaskRefused("x", DIRECT_RUN))
    sent = sim.take()
    assert "retired" in sent.ops(W1) and sent.computes() == {W2: ["x"]}


def test_a_direct_task_the_worker_never_confirms_is_placed_only_once_it_refuses_it():
    sim = Sim()
    sim.worker(W1, nthreads=2)
    sim.submit(direct("lost", W1))
    sim.submit(direct("slow", W1, run=DIRECT_RUN + 1))
    sim.take()
    sim.s.sweep_direct()
    sim.s.task_accepted(W1, TaskAccepted("slow", DIRECT_RUN + 1))  # still running there
    assert sim.take().messages == []                 # one sweep is not enough
    for _ in range(2):  # asked at each sweep until it answers
        sim.s.sweep_direct()
        sent = sim.take()
        assert sent.items("drop-direct", W1) == [DropItem("lost", DIRECT_RUN)]
        assert sent.computes() == {} and sim.on("lost") == W1  # (it may have run it)
    sim.s.task_refused(W1, TaskRefused("lost", DIRECT_RUN))
    sent = sim.take()
    assert "lost" in sent.keys("release-keys", W1)
    assert run_sent(sent, W1, "lost") != DIRECT_RUN  # placed anew, in a center run
    assert sim.on("slow") == W1 and sim.s.tasks["slow"].run == DIRECT_RUN + 1
    sim.s.sweep_direct()
    assert sim.take().messages == []


def test_an_early_report_whose_submit_never_comes_is_released_after_two_sweeps():
    sim = Sim()
    sim.worker(W1)
    sim.s.task_finished(W1, DoneItem("orphan", 8, DIRECT_RUN, direct=True))
    sim.s.sweep_direct()
    assert sim.take().messages == []
    sim.s.sweep_direct()
    assert sim.take().keys("release-keys", W1) == ["orphan"]
    assert sim.s.direct.early == {}



def test_an_acceptance_before_the_submit_confirms_the_run_when_the_submit_comes():
    sim = Sim()
    sim.worker(W1)
    sim.s.task_accepted(W1, TaskAccepted("x", DIRECT_RUN))
    assert sim.s.direct.early and sim.take().messages == []
    sim.submit(direct("x", W1))
    assert sim.on("x") == W1 and sim.s.direct.unconfirmed == {} and sim.s.direct.early == {}
    for _ in range(3):  # never asked to refuse it
        sim.s.sweep_direct()
        assert sim.take().messages == []


def test_reports_of_a_direct_run_released_before_them_are_dropped_not_held():
    sim = two_workers_and_direct(W1)
    run = sim.s.tasks["x"].run
    sim.s.release(C1, ["x"])              # the client let go before the worker reported
    assert sim.take().keys("release-keys", W1) == ["x"] and "x" not in sim.s.tasks
    sim.s.task_accepted(W1, TaskAccepted("x", run))     # (not its last report: the run stays known)
    sim.s.task_finished(W1, DoneItem("x", 8, run, direct=True))
    assert sim.s.direct.early == {} and sim.s.direct.released_runs == {}
    for _ in range(3):                    # nothing is released again, whatever runs then
        sim.s.sweep_direct()
        assert sim.take().messages == []

def test_a_direct_run_of_a_key_the_center_already_has_is_stale():
    sim = Sim(clients=(C1, C2))
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"), client=C2)
    on, other = sim.on_and_other("x")
    sim.take()
    sim.submit(direct("x", other))       # C1 sends the same pure call straight
    assert sim.on("x") == on
    sim.s.task_finished(other, DoneItem("x", 8, DIRECT_RUN, direct=True))
    assert sim.state("x") == "processing"
    assert sim.take().keys("release-keys", other) == ["x"]
    sim.finish("x")
    assert set(sim.take().keys("key-finished", C1)) == {"x"}


def test_a_direct_task_released_by_its_client_is_dropped_on_its_worker():
    sim = Sim()
    sim.worker(W1)
    sim.submit(direct("x", W1))
    sim.take()
    sim.s.release(C1, ["x"])
    assert sim.take().keys("release-keys", W1) == ["x"]
    assert "x" not in sim.s.tasks and sim.s.direct.unconfirmed == {}
    sim.s.task_finished(W1, DoneItem("x", 8, DIRECT_RUN, direct=True))  # (it had run)
    assert sim.take().keys("release-keys", W1) == [] and not sim.s.direct.early  # (told once)


def test_a_late_report_of_a_released_direct_run_leaves_the_next_run_alone():
    # The client let x go and sent it again, straight to the same worker;
    # the first run's report comes after both. The worker must not be told
    # to drop x again: the copy it holds by then is the second run's.
    sim = Sim()
    sim.worker(W1)
    sim.submit(direct("x", W1))
    sim.s.release(C1, ["x"])
    assert sim.take().keys("release-keys", W1) == ["x"]
    sim.submit(direct("x", W1, run=DIRECT_RUN + 1))
    sim.s.task_finished(W1, DoneItem("x", 8, DIRECT_RUN, direct=True))       # late: the first run
    sim.s.task_finished(W1, DoneItem("x", 8, DIRECT_RUN + 1, direct=True))   # the second
    for _ in range(3):
        sim.s.sweep_direct()
    assert sim.take().keys("release-keys", W1) == []
    assert sim.s.tasks["x"].state == "memory" and sim.s.who_has(["x"]) == {"x": [addr(W1)]}
    assert not sim.s.direct.early and not sim.s.direct.released_runs


def test_news_of_a_key_tells_its_client_which_submit_it_follows():
    # A client that let a key go and submitted it again must be able to tell
    # news of the first submit, still on its way, from news of the second.
    sim = Sim()
    sim.worker(W1)
    for seq in (4, 5):
        item, payload = task("x")
        sim.s.submit(C1, [item], payload, seq=seq)
        sim.finish("x")
        if seq == 4:  # (all in one burst: the center sends nothing in between)
            sim.s.release(C1, ["x"])
    finished = [protocol.decode_message(protocol.encode_message(msg))[0]
                for ident, msg, _ in sim.s.outbox.take()  # (two messages: not Sent)
                if ident == C1 and isinstance(msg, KeyFinished)]
    assert [(f.seen, [i.key for i in f.tasks]) for f in finished] == \
        [(4, ["x"]), (5, ["x"])]


def test_a_dead_workers_direct_task_is_placed_elsewhere():
    sim = two_workers_and_direct(W2)
    sim.take()
    sim.s.remove_worker(W2)
    assert sim.on("x") == W1 and sim.s.direct.unconfirmed == {}


def test_a_direct_task_its_worker_refuses_is_placed_by_the_center():
    sim = Sim()
    sim.worker(W1)
    sim.s.task_refused(W1, TaskRefused("x", DIRECT_RUN))  # (before the submit: played back)
    sim.submit(direct("x", W1))
    sent = sim.take()
    assert sent.keys("release-keys", W1) == ["x"]   # then, in order, the new run
    assert run_sent(sent, W1, "x") != DIRECT_RUN and sim.s.direct.unconfirmed == {}


def test_a_key_chosen_again_for_another_call_before_its_release_is_done_runs_the_new_call():
    # Releases of many keys go in parts (collect_limit): the key let go of may
    # still be there when the client submits it again, for another call.
    s = Scheduler(collect_limit=1)
    s.add_worker(W1, addr(W1), "w1", 1)
    s.add_client(C1, "c1")
    s.submit(C1, [task("other")[0], task("k")[0]], [b"payload of other", b"old call"])
    s.outbox.take()
    s.release(C1, ["k", "other"])                 # (one part now, the rest later)
    s.submit(C1, [task("k")[0]], [b"new call"])
    assert s.tasks["k"].payload == [b"new call"]
    sent = Sent(s.outbox.take())
    assert "k" in sent.keys("release-keys", W1)  # the old call's run, dropped first
    assert sent.frames("compute", W1) == {"k": [b"new call"]}
