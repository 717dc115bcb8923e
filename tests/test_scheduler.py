"""The Scheduler's events end to end: reports that come late or from the wrong
worker, summaries, and compaction. The decisions each part makes are
specified in the test file of that part (tests/test_scheduler_*.py); the
helpers all of them share are in scheduler_sim.py.
"""
from __future__ import annotations

import sys

from scheduler_sim import (
    C1,
    W1,
    W2,
    W3,
    Sim,
    addr,
    error_frames,
    run_sent,
    task,
)

from zfutures.messages import DoneItem, FailedItem, KeyAdded, MissingData, TaskSeceded
from zfutures.scheduler.observe import MAX_REPORTED_BYTES

# --------------------------------------------------------------------------- stale reports


def test_a_late_report_of_a_released_run_is_not_taken_for_the_next_run_of_the_key():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))
    first = run_sent(sim.take(), W1, "x")
    sim.s.release(C1, ["x"])                # dropped while W1 runs it ...
    assert sim.take().keys("release-keys", W1) == ["x"]
    sim.submit(task("x"))                   # ... and submitted again, to W1 again
    second = run_sent(sim.take(), W1, "x")
    assert second != first
    # W1 reported the first run before it heard of the release: that data is
    # gone by now, so the key must not be said to be in memory there.
    sim.s.task_finished(W1, DoneItem("x", 8, run=first))
    assert sim.state("x") == "processing" and sim.on("x") == W1
    assert sim.take().messages == []        # (no key-finished; no release of the new run)
    sim.s.task_finished(W1, DoneItem("x", 8, run=second))
    assert sim.state("x") == "memory"
    assert sim.take().keys("key-finished", C1) == ["x"]


def test_a_late_report_from_a_worker_a_task_was_taken_back_from_is_dropped():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("running"), task("queued"))
    sent = sim.take()
    run = run_sent(sent, W1, "queued")
    sim.s.worker_paused(W1, True)           # queued goes back: W1 drops it
    assert "queued" in sim.take().keys("release-keys", W1)
    assert sim.state("queued") != "processing"
    sim.s.task_finished(W1, DoneItem("queued", 8, run=run))  # it had run after all, and said so
    assert sim.state("queued") != "memory"
    assert sim.take().keys("release-keys", W1) == ["queued"]
    assert sim.s.who_has(["queued"]) == {"queued": []}


def test_late_errors_missing_inputs_and_secessions_of_an_earlier_run_are_ignored():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))
    first = run_sent(sim.take(), W1, "x")
    sim.s.release(C1, ["x"])
    sim.submit(task("x"))
    sim.take()
    sim.s.task_erred(W1, FailedItem("x", run=first, nframes=1),
                     error_frames(ValueError("the first run")))
    sim.s.missing_data(W1, MissingData("x", [], run=first))
    sim.s.task_seceded(W1, TaskSeceded("x", run=first))
    assert sim.state("x") == "processing" and sim.on("x") == W1
    assert not sim.s.workers[W1].seceded
    assert sim.take().messages == []


def test_task_finished_from_an_unknown_worker_changes_nothing():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))
    sim.take()
    sim.s.task_finished(b"ghost", DoneItem("x", 8, sim.s.tasks["x"].run))
    assert sim.state("x") == "processing"
    assert sim.take().messages == []


def test_task_finished_for_a_forgotten_key_tells_the_worker_to_release_it():
    sim = Sim()
    sim.worker(W1)
    sim.s.task_finished(W1, DoneItem("nobody-asked", 1000, run=1))
    sent = sim.take()
    assert sent.keys("release-keys", W1) == ["nobody-asked"]
    assert "nobody-asked" not in sim.s.tasks
    assert sim.s.workers[W1].nbytes == 0


def test_keys_added_records_a_copy_that_is_released_with_the_key():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"))
    holder, other = sim.finish_and_copy("x", nbytes=500)
    assert sorted(sim.s.who_has(["x"])["x"]) == sorted([addr(W1), addr(W2)])
    assert sim.s.workers[other].nbytes == 500
    sim.take()
    sim.s.release(C1, ["x"])
    sent = sim.take()
    assert sent.keys("release-keys", W1) == ["x"] and sent.keys("release-keys", W2) == ["x"]
    assert sim.s.workers[W1].nbytes == sim.s.workers[W2].nbytes == 0


def test_keys_added_for_a_key_not_in_memory_is_released_on_that_worker():
    sim = Sim()
    sim.worker(W1)
    sim.s.keys_added(W1, KeyAdded("unknown", 8))
    assert sim.take().keys("release-keys", W1) == ["unknown"]
    assert sim.s.has_what() == {addr(W1): []}


def test_worker_joining_with_data_nobody_wants_is_told_to_release_it():
    sim = Sim()
    sim.worker(W1, keys=["stale"])
    assert sim.take().keys("release-keys", W1) == ["stale"]
    assert sim.s.has_what() == {addr(W1): []}


def test_worker_returning_with_a_key_queued_for_recomputation_is_not_recomputed():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))
    sim.finish("x", W1)
    sim.s.remove_worker(W1)               # e.g. a network blip: the center gives up on W1
    assert sim.state("x") == "ready"      # wanted, lost: to be recomputed
    sim.take()
    sim.worker(W1, keys=["x"])            # the same worker registers again, still holding x
    sent = sim.take()
    assert sim.state("x") == "memory"
    assert sim.s.who_has(["x"]) == {"x": [addr(W1)]}
    assert sent.computes() == {}
    assert sim.s.tasks["x"] not in [ts for _, ts in sim.s.placement.ready]


# --------------------------------------------------------------------------- reports


def test_info_counts_tasks_by_state_and_reports_each_workers_load():
    sim = Sim(extra_queue=1)
    sim.worker(W1, nthreads=1)
    sim.submit(task("done"))
    sim.finish("done", nbytes=1234)
    sim.submit(task("bad"))
    sim.err("bad", ValueError())
    sim.submit(task("a"), task("b"), task("c"), task("d", "c"))
    info = sim.s.info()
    assert info["tasks"] == {"memory": 1, "erred": 1, "processing": 2, "ready": 1,
                             "waiting": 1}
    assert info["workers"] == {addr(W1): {
        "name": "w1", "nthreads": 1, "memory": 0, "managed": 1234, "spilled": 0,
        "memory_limit": 0, "resources": {},
        "executing": 1, "queued": 1, "keys": 1, "paused": False}}


def test_info_counts_results_in_memory_by_the_center_until_the_worker_spills_some():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("a"))
    sim.finish("a", nbytes=300)

    def memory() -> tuple[int, int]:
        w = sim.s.info()["workers"][addr(W1)]
        return w["managed"], w["spilled"]

    assert memory() == (300, 0)  # the worker never said: the center's count
    sim.s.worker_heartbeat(W1, 10_000, 1.0, managed=0, spilled=0)  # (said before "a" came)
    assert memory() == (300, 0)  # nothing on disk: the center's count, which is current
    sim.s.worker_heartbeat(W1, 10_000, 1.0, managed=100, spilled=250)
    assert memory() == (100, 250)  # some on disk: only the worker knows how much is left
    sim.submit(task("b"))
    sim.finish("b", nbytes=50)
    assert memory() == (100, 250)  # (its word, until its next heartbeat)
    sim.s.worker_heartbeat(W1, 10_000, 1.0, managed=350, spilled=0)  # read back, all of it
    assert memory() == (350, 0)
    sim.s.worker_heartbeat(W1, 10_000, 1.0)  # a worker that does not say keeps what it said
    assert memory() == (350, 0)


def test_a_heartbeats_numbers_out_of_range_are_dropped_and_the_last_ones_kept():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("a"))
    sim.finish("a", nbytes=300)
    sim.s.worker_heartbeat(W1, 10_000, 1.0, managed=100, spilled=250)
    sim.s.worker_heartbeat(W1, -1, -1.0, managed=-1, spilled=-1)
    ws = sim.s.workers[W1]
    assert (ws.rss, ws.cpu, ws.managed_reported, ws.spilled) == (10_000, 1.0, 100, 250)
    sim.s.worker_heartbeat(W1, 2**63, None, managed=2**63, spilled=2**63)  # capped
    w = sim.s.info()["workers"][addr(W1)]
    assert w["memory"] == w["managed"] == w["spilled"] == MAX_REPORTED_BYTES
    sim.s.worker_heartbeat(W3, 1, 1.0, managed=1, spilled=1)  # not a worker: nothing
    assert W3 not in sim.s.workers


# --------------------------------------------------------------------------- results already had


def test_a_worker_coming_back_with_a_key_already_in_memory_elsewhere_drops_its_copy():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"))
    sim.finish("x", sim.on("x"))
    holder = next(iter(sim.s.tasks["x"].who_has)).ident
    sim.take()
    # W3 ran x too, before the center gave up on it: an impure task's two runs
    # may differ, so the key keeps the one value clients have already seen.
    sim.s.add_worker(W3, addr(W3), "w3", 1, keys={"x": 8})
    assert sim.take().keys("release-keys", W3) == ["x"]
    assert {ws.ident for ws in sim.s.tasks["x"].who_has} == {holder}


def test_a_late_result_of_a_task_already_done_elsewhere_is_dropped():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"))
    first, first_run = sim.on("x"), sim.s.tasks["x"].run
    sim.s.remove_worker(first)                  # given up on while running x
    second = sim.on("x")
    sim.finish("x", second)
    sim.take()
    sim.worker(first)                           # back, and its run of x ends
    sim.s.task_finished(first, DoneItem("x", 8, first_run))
    assert sim.take().keys("release-keys", first) == ["x"]
    assert {ws.ident for ws in sim.s.tasks["x"].who_has} == {second}


# --------------------------------------------------------------------------- compaction


def test_an_empty_graph_can_be_compacted_and_the_scheduler_goes_on():
    sim = Sim()
    sim.worker(W1, nthreads=50)
    sim.submit(*[task(f"t{i}") for i in range(50)])
    ws = sim.s.workers[W1]
    while ws.processing:
        for ts in list(ws.processing):
            sim.finish(ts.key, W1)
    sim.s.release(C1, [f"t{i}" for i in range(50)])
    sizes = [sys.getsizeof(table) for table in (sim.s.tasks, ws.processing, ws.has_what)]
    sim.s.compact()
    assert sim.s.tasks == {} and sys.getsizeof(sim.s.tasks) < sizes[0]  # its table given back
    # and each part's: the tasks a worker ran and the keys it held
    assert sys.getsizeof(ws.processing) < sizes[1] and sys.getsizeof(ws.has_what) < sizes[2]
    sim.submit(task("again"))
    sim.finish("again", W1)
    assert sim.state("again") == "memory"
