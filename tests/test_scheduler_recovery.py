"""Recovery after the center restarts: keys workers and clients bring back
(scheduler/recovery.py)."""
from __future__ import annotations

from scheduler_sim import (
    C1,
    W1,
    W2,
    Sim,
    addr,
    exception_in,
    run_sent,
    task,
)

from zfutures.errors import FutureLostError
from zfutures.messages import DoneItem, ResultItem, ScatteredItem

#: The run of a task a previous center assigned (this one numbers its runs
#: from a random start of 62 bits: see Placement.first_run).
EARLIER_RUN = 1

# --------------------------------------------------------------------------- recovery
# A center that (re)starts recovers: workers come back with keys it never saw,
# and clients submit again what they hold, saying where finished keys were.


def test_keys_a_worker_brings_back_are_taken_when_a_client_submits_them_again():
    sim = Sim(recovering=True)
    sim.s.add_worker(W1, addr(W1), "w1", 1, keys={"x": 800})
    assert sim.take().keys("release-keys", W1) == []  # kept, unclaimed, for now
    sim.submit(task("x"), task("y", "x"))
    sent = sim.take()
    assert sim.state("x") == "memory" and sim.s.tasks["x"].nbytes == 800
    assert sent.computed_keys() == ["y"]                   # x is not run again
    assert sent.items("key-finished", C1) == [ResultItem("x", [addr(W1)], 800)]


def test_a_run_a_previous_center_assigned_is_kept_for_the_client_that_brings_it_back():
    previous = Sim()
    previous.worker(W1)
    previous.submit(task("x"))
    old_run = run_sent(previous.take(), W1, "x")
    sim = Sim(recovering=True)                  # the center restarted meanwhile
    sim.worker(W1)
    sim.s.task_finished(W1, DoneItem("x", 8, run=old_run))
    assert sim.take().keys("release-keys", W1) == []
    sim.submit(task("x"))
    assert sim.take().computed_keys() == [] and sim.state("x") == "memory"


def test_a_run_a_previous_center_assigned_ends_the_key_brought_back_meanwhile():
    previous = Sim()
    previous.worker(W1)
    previous.submit(task("x"))
    old_run = run_sent(previous.take(), W1, "x")
    sim = Sim(recovering=True)                  # the center restarted: W1 still runs x
    sim.worker(W1)
    sim.worker(W2)
    item, payload = task("x")                   # the client brought x back: it runs
    sim.submit((item._replace(workers=[addr(W2)], allow_other_workers=True), payload))
    assert sim.on("x") == W2                    # anew, elsewhere
    sim.take()
    sim.s.task_finished(W1, DoneItem("x", 8, run=old_run))  # W1's first run ends: kept
    sent = sim.take()
    assert sim.state("x") == "memory" and sim.s.who_has(["x"]) == {"x": [addr(W1)]}
    assert sent.keys("key-finished", C1) == ["x"]
    assert sent.keys("release-keys", W2) == ["x"]  # the second run is not needed


def test_a_late_report_of_a_run_this_center_forgot_is_not_kept_for_claiming():
    sim = Sim(recovering=True)                  # (every center starts out recovering)
    sim.worker(W1)
    sim.submit(task("x"))
    run = run_sent(sim.take(), W1, "x")
    sim.s.release(C1, ["x"])                    # forgotten: W1 is told to drop it ...
    assert sim.take().keys("release-keys", W1) == ["x"]
    sim.s.task_finished(W1, DoneItem("x", 8, run=run))  # ... after it said it was done
    sim.submit(task("x"))
    assert sim.take().computed_keys() == ["x"]  # run again, not claimed from W1
    assert sim.state("x") == "processing"


def test_a_key_expected_on_a_worker_not_back_yet_waits_for_it():
    sim = Sim(recovering=True)
    sim.worker(W2)
    item, payload = task("x")
    sim.submit((item._replace(who_has=[addr(W1)]), payload), task("y", "x"))
    assert sim.take().computed_keys() == []               # neither x nor y runs yet
    sim.s.add_worker(W1, addr(W1), "w1", 1, keys={"x": 8})
    assert sim.state("x") == "memory"
    assert sim.take().computed_keys() == ["y"]


def test_an_expected_key_its_worker_comes_back_without_is_recomputed():
    sim = Sim(recovering=True)
    item, payload = task("x")
    sim.submit((item._replace(who_has=[addr(W1)]), payload))
    sim.worker(W1)                                        # back, but without x
    assert sim.take().computed_keys() == ["x"]


def test_end_of_recovery_releases_unclaimed_keys_and_recomputes_missing_ones():
    sim = Sim(recovering=True)
    sim.s.add_worker(W1, addr(W1), "w1", 1, keys={"orphan": 8})
    item, payload = task("x")
    sim.submit((item._replace(who_has=[addr(W2)]), payload))  # W2 never comes back
    sim.s.update_data(C1, [ScatteredItem("scattered", 8, [addr(W2)])])
    assert sim.take().computed_keys() == []
    sim.s.end_recovery()
    sent = sim.take()
    assert sent.keys("release-keys", W1) == ["orphan"]
    assert sent.computed_keys() == ["x"]
    # Scattered data cannot be recomputed: its future is lost, with a reason.
    assert isinstance(exception_in(sent.frames("key-erred", C1)["scattered"]),
                      FutureLostError)


def test_results_finished_before_the_client_is_back_are_kept_for_it():
    sim = Sim(recovering=True)
    sim.worker(W1)
    sim.s.task_finished(W1, DoneItem("x", 8, EARLIER_RUN))  # running when the center died
    assert sim.take().keys("release-keys", W1) == []
    sim.submit(task("x"))
    assert sim.state("x") == "memory" and sim.take().computed_keys() == []


def test_outside_recovery_unknown_keys_are_released_at_once():
    sim = Sim()
    sim.s.add_worker(W1, addr(W1), "w1", 1, keys={"x": 8})
    sim.s.task_finished(W1, DoneItem("y", 8, EARLIER_RUN))
    assert sorted(sim.take().keys("release-keys", W1)) == ["x", "y"]
    assert not sim.s.recovery.unclaimed


def test_a_worker_coming_back_with_a_key_being_computed_elsewhere_stops_that_run():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))
    sim.take()
    sim.s.add_worker(W2, addr(W2), "w2", 1, keys={"x": 8})
    sent = sim.take()
    assert sim.state("x") == "memory" and sim.s.tasks["x"].who_has == {sim.s.workers[W2]}
    assert sent.keys("release-keys", W1) == ["x"]           # W1 drops its run
    assert not sim.s.workers[W1].processing


def test_a_dead_worker_drops_out_of_the_unclaimed_keys():
    sim = Sim(recovering=True)
    sim.s.add_worker(W1, addr(W1), "w1", 1, keys={"x": 8})
    sim.s.remove_worker(W1)
    assert not sim.s.recovery.unclaimed
    sim.submit(task("x"))
    assert sim.take().computed_keys() == []  # no worker: it waits, to be computed later
    assert sim.state("x") == "ready"
