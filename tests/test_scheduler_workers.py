"""A worker's death, pause or retirement, and what it does to its tasks and
keys (scheduler/workers.py)."""
from __future__ import annotations

from scheduler_sim import (
    C1,
    C2,
    W1,
    W2,
    W3,
    Sim,
    addr,
    chain,
    exception_in,
    task,
)

from zfutures.errors import FutureLostError, KilledWorker
from zfutures.messages import AcquireItem, KeyAdded, ScatteredItem, TaskItem, WorkersLeft, op_of
from zfutures.scheduler import Scheduler

# --------------------------------------------------------------------------- failures


def test_lost_workers_processing_tasks_are_rescheduled_on_another_worker():
    sim = Sim(extra_queue=1)
    sim.worker(W1, nthreads=1)
    sim.submit(task("a"), task("b"))
    sim.worker(W2, nthreads=1)
    sim.take()
    sim.s.remove_worker(W1)
    sent = sim.take()
    assert sorted(sent.computes()[W2]) == ["a", "b"]
    assert {sim.on("a"), sim.on("b")} == {W2}
    assert addr(W1) not in sim.s.has_what()


def test_every_client_and_worker_hears_when_a_worker_leaves():
    # (clients' calls to it, Executor.run and scatter, then fail at once, and
    # fetches from it, by clients and workers, go to other holders at once)
    sim = Sim(clients=(C1, C2))
    sim.worker(W1)
    sim.worker(W2)
    sim.worker(W3)
    sim.take()
    sim.s.remove_worker(W1)
    sim.s.remove_worker(W1)  # (twice: said once)
    sent = sim.take()
    for peer in (C1, C2, W2, W3):
        assert sent.message("workers-left", peer) == WorkersLeft([addr(W1)])
    assert "workers-left" not in sent.ops(W1)
    # a worker that reconnects (a new identity, the same address) did not leave
    sim.s.add_worker(b"w2-again", addr(W2), "w2", 1)
    sim.s.add_worker(b"w2-again", addr(W2), "w2", 1)
    sent = sim.take()
    assert "workers-left" not in sent.ops(C1) and "workers-left" not in sent.ops(W3)


def test_lost_worker_without_replacement_leaves_its_tasks_ready_for_the_next_one():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("a"))
    sim.s.remove_worker(W1)
    assert sim.state("a") == "ready"
    sim.take()
    sim.worker(W2)
    assert sim.take().computes() == {W2: ["a"]}


def test_lost_key_still_wanted_is_recomputed_through_released_inputs():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("a"), task("b", "a"), task("c", "b"))
    sim.s.release(C1, ["a", "b"])         # the client holds only c
    for key in "abc":
        sim.finish(key)
    sim.worker(W2)
    sim.take()
    assert sim.state("a") == sim.state("b") == "released"

    sim.s.remove_worker(W1)
    sent = sim.take()
    assert sent.computes() == {W2: ["a", "b", "c"]}   # the chain, sent ahead in order
    sim.finish("a")
    sim.finish("b")
    sent = sim.take()
    assert sent.keys("release-keys", W2) == ["a"]   # not needed once b is back
    sim.finish("c")
    assert sim.take().keys("key-finished", C1) == ["c"]


def test_a_task_that_lost_many_inputs_with_a_worker_is_not_waited_again_per_input(monkeypatch):
    # (counting its inputs anew for each lost one made a worker's death cost
    # inputs x lost inputs: seconds of the center's time for a wide reduction)
    sim = Sim()
    sim.worker(W1)
    roots = [f"r{i}" for i in range(10)]
    sim.submit(*[task(key) for key in roots])
    for key in roots:
        sim.finish(key)
    sim.submit(task("x"), task("sink", "x", *roots))  # (sink is sent ahead, with x, to W1)
    sim.worker(W2)
    sim.take()
    graph, again = sim.s.graph, []
    wait_again = graph.wait_again
    monkeypatch.setattr(graph, "wait_again",
                        lambda ts: (again.append(ts.key), wait_again(ts))[1])
    sim.s.remove_worker(W1)
    # once as a task of the dead worker, once for its lost inputs: not ten times
    assert again.count("sink") == 2
    assert sim.s.tasks["sink"].waiting_on == {sim.s.tasks[key] for key in ["x", *roots]}


def test_lost_chain_is_recomputed_from_its_start_without_recursion():
    n = 5000
    sim = Sim()
    sim.worker(W1)
    sim.submit(*chain(n))
    sim.s.release(C1, [f"t{i}" for i in range(n - 1)])
    for i in range(n):
        sim.finish(f"t{i}")
    sim.take()
    sim.s.remove_worker(W1)
    states = [sim.state(f"t{i}") for i in range(n)]
    assert states == ["ready"] + ["waiting"] * (n - 1)


def test_ready_task_whose_input_is_lost_waits_again_until_the_input_is_recomputed():
    sim = Sim(extra_queue=0)
    sim.worker(W1)
    sim.submit(task("x"))
    sim.finish("x", W1)
    sim.submit(task("busy"))              # W1 is now full ...
    sim.submit(task("y", "x"))
    assert sim.state("y") == "ready"      # ... so y, ready, waits at the center
    sim.take()

    sim.s.remove_worker(W1)               # x was only on W1
    assert sim.state("y") == "waiting"
    assert sim.state("x") == "ready"
    sim.worker(W2)
    assert sim.take().computes() == {W2: ["x"]}   # x first: y cannot run without it
    sim.finish("x")
    assert sim.take().computes() == {W2: ["busy"]}
    sim.finish("busy")
    sent = sim.take()
    assert sent.computes() == {W2: ["y"]}
    assert sent.items("compute", W2)[0].deps == {"x": [addr(W2)]}


def test_a_task_fetching_an_input_whose_only_holder_died_goes_back_to_wait_for_it():
    sim = Sim(extra_queue=0)
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"))
    x_on, other = sim.on_and_other("x")
    sim.finish("x")
    sim.submit(task("busy"))              # x's holder is now full ...
    sim.submit(task("y", "x"))
    assert sim.on("y") == other           # ... so y went to fetch x from it
    sim.take()

    sim.s.remove_worker(x_on)             # x was only there
    sent = sim.take()
    # y's worker would wait out its fetch timeout on the dead holder: it drops
    # y, which waits for x to be computed again, there.
    assert "y" in sent.keys("release-keys", other)
    assert sim.state("y") == "waiting" and sim.s.tasks["y"].waiting_on == {sim.s.tasks["x"]}
    assert sent.computes() == {other: ["x"]}  # (then busy, then y: one at a time)
    sim.finish("x")
    sim.finish("busy")
    sent = sim.take()
    assert sent.computes() == {other: ["busy", "y"]}
    assert sent.items("compute", other)[1].deps == {"x": [addr(other)]}


def test_lost_key_with_another_holder_is_not_recomputed():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"))
    holder, other = sim.finish_and_copy("x")
    sim.take()
    sim.s.remove_worker(holder)
    assert sim.state("x") == "memory"
    assert sim.take().computes() == {}
    assert sim.s.who_has(["x"]) == {"x": [addr(other)]}


def test_task_errs_with_KilledWorker_after_allowed_failures_worker_deaths():
    sim = Sim(allowed_failures=2)
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"), task("y", "x"))
    first = sim.on("x")
    sim.s.remove_worker(first)
    assert sim.state("x") == "processing"   # one death is not enough
    assert sim.s.tasks["y"].suspicious == 0  # it was waiting for x, not running
    sim.take()
    sim.s.remove_worker(sim.on("x"))
    sent = sim.take()
    assert sim.state("x") == sim.state("y") == "erred"
    frames = sent.frames("key-erred", C1)
    assert set(frames) == {"x", "y"}
    exc = exception_in(frames["x"])
    assert isinstance(exc, KilledWorker) and "'x'" in str(exc)
    assert frames["y"] == frames["x"]


def test_other_tasks_go_on_when_a_task_is_killed():
    sim = Sim(allowed_failures=1)
    sim.worker(W1)
    sim.submit(task("killer"))
    sim.worker(W2)
    sim.submit(task("innocent"))
    assert (sim.on("killer"), sim.on("innocent")) == (W1, W2)
    sim.take()
    sim.s.remove_worker(W1)
    assert sim.state("killer") == "erred"
    assert sim.state("innocent") == "processing" and sim.on("innocent") == W2
    sim.finish("innocent")
    sent = sim.take()
    assert sent.keys("key-finished", C1) == ["innocent"]
    assert sent.keys("key-erred", C1) == ["killer"]


def test_lost_data_that_cannot_be_recomputed_errs_with_FutureLostError():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("scattered"), task("y", "scattered"))
    sim.finish("scattered", W1)
    sim.s.tasks["scattered"].payload = None   # as for scattered data: no task to rerun
    sim.worker(W2)
    sim.take()
    sim.s.remove_worker(W1)
    sent = sim.take()
    assert sim.state("scattered") == "erred"
    assert sim.state("y") == "erred"
    frames = sent.frames("key-erred", C1)
    assert isinstance(exception_in(frames["scattered"]), FutureLostError)
    assert frames["y"] == frames["scattered"]
    assert sent.computes() == {}


def test_a_dead_worker_suspects_only_tasks_that_could_run_not_those_sent_ahead():
    sim = Sim(allowed_failures=2)
    sim.worker(W1)
    sim.submit(task("t0"))
    sim.submit(task("t1", "t0", priority=10))  # high priority, but it cannot start first
    assert sim.on("t1") == W1
    sim.s.remove_worker(W1)
    assert sim.s.tasks["t0"].suspicious == 1     # the one that was running
    assert sim.s.tasks["t1"].suspicious == 0


def test_only_the_tasks_a_dead_worker_was_running_are_suspected():

    s = Scheduler(allowed_failures=1, extra_queue=3)
    s.add_client(b"c", "c")
    s.add_worker(b"w1", "tcp://w1:1", "w1", nthreads=1)
    s.submit(b"c", [TaskItem(f"t{i}", [], 0, nframes=1) for i in range(4)], [b"p"] * 4)
    assert all(s.tasks[f"t{i}"].state == "processing" for i in range(4))
    s.add_worker(b"w2", "tcp://w2:1", "w2", nthreads=1)
    s.remove_worker(b"w1")
    # t0 was first in line, so it was the one running: with one allowed failure it
    # errs. t1..t3 were only queued: they go to w2 unharmed.
    assert s.tasks["t0"].state == "erred"
    assert [s.tasks[f"t{i}"].state for i in (1, 2, 3)] == ["processing"] * 3


# --------------------------------------------------------------------------- retiring


def test_a_retiring_worker_hands_on_the_keys_only_it_holds_then_is_told_to_go():

    s = Scheduler()
    s.add_client(b"c", "c")
    s.add_worker(b"w1", "tcp://w1:1", "w1", nthreads=1)
    s.add_worker(b"w2", "tcp://w2:1", "w2", nthreads=1)
    s.update_data(b"c", [ScatteredItem("only-w1", 10, ["tcp://w1:1"]),
                         ScatteredItem("both", 10, ["tcp://w1:1", "tcp://w2:1"])])
    s.outbox.take()
    s.retire_worker(b"w1")
    sent = {(ident, op_of(msg)): msg for ident, msg, _ in s.outbox.take()}
    assert sent[(b"w2", "acquire")].tasks == [AcquireItem("only-w1", ["tcp://w1:1"])]
    assert (b"w1", "retired") not in sent             # not before its key is safe
    s.submit(b"c", [TaskItem("t", [], 0, nframes=1)], [b"p"])
    assert s.tasks["t"].processing_on.ident == b"w2"  # a retiring worker takes no task
    s.keys_added(b"w2", KeyAdded("only-w1", 10))
    sent = {(ident, op_of(msg)) for ident, msg, _ in s.outbox.take()}
    assert (b"w1", "retired") in sent
    s.remove_worker(b"w1")
    assert s.tasks["only-w1"].state == "memory"         # nothing lost, nothing recomputed


def test_a_retiring_worker_whose_keys_target_left_is_handed_on_again_or_let_go():
    """w1 retires and w2 is asked to copy its key; w2 retires and leaves before
    copying it. w1 must not wait for a copy that will never come: its key goes
    to w3 if one stays, and with no worker staying it is told to go."""

    for stays in (True, False):
        s = Scheduler()
        s.add_client(b"c", "c")
        for w in (b"w1", b"w2"):
            s.add_worker(w, f"tcp://{w.decode()}:1", w.decode(), nthreads=1)
        s.update_data(b"c", [ScatteredItem("k", 10, ["tcp://w1:1"])])
        s.retire_worker(b"w1")
        sent = {(ident, op_of(msg)): msg for ident, msg, _ in s.outbox.take()}
        assert sent[(b"w2", "acquire")].tasks == [AcquireItem("k", ["tcp://w1:1"])]
        if stays:
            s.add_worker(b"w3", "tcp://w3:1", "w3", nthreads=1)
        s.retire_worker(b"w2")
        s.remove_worker(b"w2")
        sent = {(ident, op_of(msg)): msg for ident, msg, _ in s.outbox.take()}
        if stays:
            assert sent[(b"w3", "acquire")].tasks == [AcquireItem("k", ["tcp://w1:1"])]
            assert (b"w1", "retired") not in sent
            s.keys_added(b"w3", KeyAdded("k", 10))
            assert (b"w1", "retired") in {(i, op_of(msg)) for i, msg, _ in s.outbox.take()}
        else:
            assert (b"w1", "retired") in sent


# --------------------------------------------------------------------------- memory pressure


def test_a_paused_worker_gets_no_tasks_and_its_queue_goes_elsewhere():
    sim = Sim()
    sim.worker(W1)
    sim.submit(*[task(f"t{i}") for i in range(3)])        # one runs on W1, two queue there
    assert sorted(sim.take().computed_keys()) == ["t0", "t1", "t2"]
    sim.s.worker_paused(W1, True)
    sent = sim.take()
    assert sorted(sent.keys("release-keys", W1)) == ["t1", "t2"]  # t0 runs on
    assert sim.on("t0") == W1 and sim.state("t1") == sim.state("t2") == "ready"
    sim.worker(W2)
    assert sorted(sim.take().computes()[W2]) == ["t1", "t2"]
    sim.submit(task("later"))
    assert sim.on("later") == W2
    assert sim.s.info()["workers"][addr(W1)]["paused"] is True


def test_a_worker_that_resumes_takes_tasks_again():
    sim = Sim()
    sim.worker(W1)
    sim.s.worker_paused(W1, True)
    sim.submit(task("x"))
    assert sim.take().computed_keys() == [] and sim.state("x") == "ready"
    sim.s.worker_paused(W1, False)
    assert sim.take().computes() == {W1: ["x"]}
