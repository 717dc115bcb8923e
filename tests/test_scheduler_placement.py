"""Placement: which worker runs a task and when it is sent there, blocks of a
map, tasks sent ahead of their inputs, and measured durations
(scheduler/placement.py)."""
from __future__ import annotations

import itertools

import pytest
from scheduler_sim import (
    C1,
    MB,
    W1,
    W2,
    W3,
    Sim,
    chain,
    task,
)

from zfutures import protocol
from zfutures.messages import Compute, DoneItem

# --------------------------------------------------------------------------- placement


@pytest.mark.parametrize(("x_bytes", "y_bytes", "expected"),
                         [(10 * MB, 1 * MB, W1), (1 * MB, 10 * MB, W2)])
def test_task_goes_to_the_worker_holding_most_bytes_of_its_inputs(x_bytes, y_bytes, expected):
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))                 # W1 is busy with x ...
    sim.worker(W2)
    sim.submit(task("y"))                 # ... so y goes to the idle W2
    assert (sim.on("x"), sim.on("y")) == (W1, W2)
    sim.finish("x", W1, nbytes=x_bytes)
    sim.finish("y", W2, nbytes=y_bytes)
    sim.take()
    sim.submit(task("z", "x", "y"))
    assert sim.on("z") == expected
    assert sim.take().computed_keys() == ["z"]


def test_task_without_inputs_goes_to_the_least_loaded_worker():
    sim = Sim(extra_queue=2)
    sim.worker(W1)
    sim.submit(task("a"), task("b"))      # W1: 2 tasks
    sim.worker(W2)
    sim.submit(task("c"))                 # W2: 1 task
    assert sim.on("c") == W2
    sim.worker(W3)
    sim.submit(task("d"))
    assert sim.on("d") == W3
    sim.submit(task("e"))                 # W2 and W3 have 1 each, W1 has 2
    assert sim.on("e") in (W2, W3)


def test_between_equally_loaded_workers_a_task_goes_where_less_data_is_held():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("big"))
    sim.finish("big", nbytes=10 * MB)
    sim.worker(W2)
    sim.submit(task("z"))
    assert sim.on("z") == W2


def test_load_is_measured_per_thread():
    sim = Sim(extra_queue=0)
    sim.worker(W1, nthreads=4)
    sim.submit(task("a"), task("b"))      # W1: 2 of 4 threads busy
    sim.worker(W2, nthreads=1)
    sim.submit(task("c"))                 # W2's only thread is busier than W1's half
    assert sim.on("c") == W2
    sim.submit(task("d"))
    assert sim.on("d") == W1


def test_worker_gets_at_most_nthreads_plus_extra_queue_tasks_and_the_rest_waits():
    sim = Sim(extra_queue=2)
    sim.worker(W1, nthreads=2)
    sim.submit(*[task(f"t{i}") for i in range(10)])
    sent = sim.take()
    assert len(sent.computes()[W1]) == 4
    assert len(sim.s.workers[W1].processing) == 4
    assert sorted(sim.state(f"t{i}") for i in range(10)) == ["processing"] * 4 + ["ready"] * 6

    sim.finish(sent.computes()[W1][0])
    assert len(sim.take().computes()[W1]) == 1
    assert len(sim.s.workers[W1].processing) == 4


def test_worker_that_joins_later_gets_queued_work_at_once():
    sim = Sim(extra_queue=1)
    sim.worker(W1, nthreads=1)
    sim.submit(*[task(f"t{i}") for i in range(10)])
    sim.take()
    sim.worker(W2, nthreads=3)
    sent = sim.take()
    assert len(sent.computes()[W2]) == 4
    assert sum(sim.state(f"t{i}") == "ready" for i in range(10)) == 4


def test_ready_tasks_are_sent_by_priority_then_submission_order():
    sim = Sim(extra_queue=0)
    priorities = {"p0-first": 0, "p5-first": 5, "p0-second": 0, "p5-second": 5,
                  "low": -1, "p10": 10}
    sim.submit(*[task(key, priority=p) for key, p in priorities.items()])
    sim.worker(W1, nthreads=1)
    order = []
    for _ in priorities:
        (item,) = sim.take().items("compute", W1)
        assert item.priority == priorities[item.key]
        order.append(item.key)
        sim.finish(item.key)
    assert order == ["p10", "p5-first", "p5-second", "p0-first", "p0-second", "low"]


def test_many_tasks_for_one_worker_travel_in_one_compute_message():
    sim = Sim(extra_queue=100)
    sim.worker(W1)
    sim.submit(*[task(f"t{i}") for i in range(50)])
    messages = [m for m in sim.s.outbox.take() if isinstance(m[1], Compute)]
    assert len(messages) == 1
    ident, msg, frames = messages[0]
    assert ident == W1 and len(msg.tasks) == 50
    payloads = {item.key: f for item, f in protocol.unpack_items(msg.tasks, frames)}
    assert payloads == {f"t{i}": [f"payload of t{i}".encode()] for i in range(50)}


def test_results_for_one_client_travel_in_one_message():
    sim = Sim(extra_queue=10)
    sim.worker(W1)
    sim.submit(*[task(f"t{i}") for i in range(5)])
    sim.take()
    for i in range(5):
        sim.finish(f"t{i}", W1)
    sent = sim.take()
    assert sorted(sent.keys("key-finished", C1)) == [f"t{i}" for i in range(5)]


# --------------------------------------------------------------------------- sent ahead


def test_the_next_link_of_a_chain_is_sent_ahead_to_the_worker_computing_its_input():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(*chain(3))
    computes = sim.take().computes()
    # All three go to one worker at once: t1 and t2 wait there for their inputs.
    assert list(computes.values()) == [["t0", "t1", "t2"]]
    (worker,) = computes
    assert sim.state("t2") == "processing" and sim.s.tasks["t2"].waiting_on
    sim.finish("t0", worker)
    sim.finish("t1", worker)
    assert sim.take().computed_keys() == []  # nothing new to send: they were there
    sim.finish("t2", worker)
    assert [sim.state(f"t{i}") for i in range(3)] == ["memory"] * 3


def test_a_task_is_not_sent_ahead_when_an_input_lives_elsewhere():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("a"), task("b"))
    placed = {k: sim.on(k) for k in "ab"}
    assert placed["a"] != placed["b"]
    sim.finish("b", placed["b"])
    sim.take()
    sim.submit(task("c", "a", "b"))         # a runs on one worker, b is on the other
    assert sim.take().computed_keys() == [] and sim.state("c") == "waiting"


def test_tasks_sent_ahead_are_taken_back_when_their_input_is_retried_elsewhere():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("t0", retries=1), task("t1", "t0"), task("t2", "t1"))
    sim.take()
    sim.err("t0", ValueError("flaky"))
    sent = sim.take()
    assert sorted(sent.keys("release-keys", W1)) == ["t1", "t2"]
    assert sent.computes() == {W1: ["t0", "t1", "t2"]}  # then sent again, in order
    sim.finish("t0", W1)
    sim.finish("t1", W1)
    sim.finish("t2", W1)
    assert sim.state("t2") == "memory"


@pytest.mark.parametrize("looked_at", [0, -1], ids=["first", "last"])
def test_a_task_sent_ahead_waits_while_an_input_is_retried_elsewhere(looked_at):
    # c waits on W1 for a and b; one of them raises and is retried on W2: c
    # comes back and waits, whether the center looks at that input first or
    # last among those c waits for. (Not sent back to W1 for the input still
    # running there: the other is off W1 as c comes back, to run elsewhere.)
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("a", retries=1), task("b", retries=1), task("c", "a", "b"))
    assert sim.take().computes() == {W1: ["a", "b", "c"]}
    sim.worker(W2)
    retried = list(sim.s.tasks["c"].waiting_on)[looked_at].key
    sim.err(retried, ValueError("flaky"))
    sent = sim.take()
    assert sent.keys("release-keys", W1) == ["c"]
    assert sent.computes() == {W2: [retried]} and sim.state("c") == "waiting"


# ---------------------------------------------------------------------- blocks of a map


def run_all(sim: Sim, keys: list[str], order=None) -> dict[str, bytes]:
    """Finish tasks one at a time until ``keys`` are all in memory; return
    where each ran. ``order(running keys)`` picks the one to finish next; by
    default, workers take turns (each finishing its earliest task), as
    workers of equal speed would."""
    ran: dict[str, bytes] = {}
    finished = dict.fromkeys(sim.s.workers, 0)
    for _ in range(10 * len(keys)):
        running = [k for k in keys if sim.state(k) == "processing"]
        if not running:
            break
        if order:
            key = order(running)
        else:
            key = min(running, key=lambda k: (finished[sim.on(k)], sim.s.tasks[k].priority))
        ran[key] = sim.on(key)
        finished[ran[key]] += 1
        sim.finish(key)
    assert all(sim.state(k) == "memory" for k in keys)
    return ran


def two_workers(extra_queue: int) -> Sim:
    sim = Sim(extra_queue=extra_queue)
    sim.worker(W1)
    sim.worker(W2)
    return sim


def test_the_tasks_of_a_map_run_in_contiguous_blocks_one_per_worker():
    # Neighbours are combined later (a tree reduction adds x0 to x1): made on
    # one worker, no transfer is needed.
    sim = two_workers(extra_queue=1)
    keys = [f"x{i}" for i in range(8)]
    sim.submit(*[task(k) for k in keys])
    ran = run_all(sim, keys)
    assert [ran[k] for k in keys] == [W1] * 4 + [W2] * 4
    assert sim.s.placement.affine == 0


def test_blocks_follow_the_workers_threads():
    sim = Sim(extra_queue=1)
    sim.worker(W1, nthreads=3)
    sim.worker(W2, nthreads=1)
    sim.submit(*[task(f"x{i}") for i in range(16)])
    assert sim.take().computes() == {W1: ["x0", "x1", "x2", "x3"], W2: ["x12", "x13"]}
    assert [ts.key for _, ts in sorted(sim.s.workers[W1].ready_here)] == \
        [f"x{i}" for i in range(4, 12)]


def test_a_worker_done_with_its_block_takes_the_back_half_of_the_largest_block():
    sim = two_workers(extra_queue=1)
    keys = [f"x{i}" for i in range(16)]
    sim.submit(*[task(k) for k in keys])
    sim.take()
    for key in ["x0", "x1"]:                   # W1 is quick: done with two tasks ...
        sim.finish(key)
    assert sim.take().computes() == {W1: ["x2", "x3"]}
    for key in ["x2", "x3", "x4", "x5", "x6", "x7"]:  # ... and with its block
        sim.finish(key)
    sent = sim.take()
    # W2 has x8 and x9; W1 takes the back half of what remains of W2's block,
    # and runs it from its front.
    assert sent.computes() == {W1: ["x4", "x5", "x6", "x7", "x13", "x14"]}
    assert [ts.key for _, ts in sorted(sim.s.workers[W1].ready_here)] == ["x15"]
    assert [ts.key for _, ts in sorted(sim.s.workers[W2].ready_here)] == \
        ["x10", "x11", "x12"]


def test_workers_of_different_speeds_keep_neighbours_together():
    # W1 finishes two tasks in the time W2 finishes one. Taking turns at the
    # front of W2's block would split most of its pairs.
    sim = two_workers(extra_queue=1)
    keys = [f"x{i}" for i in range(32)]
    sim.submit(*[task(k) for k in keys])
    turns = itertools.cycle([W1, W1, W2])

    def two_to_one(running: list[str]) -> str:
        for _ in range(3):
            worker = next(turns)
            mine = [k for k in running if sim.on(k) == worker]
            if mine:
                return min(mine, key=lambda k: sim.s.tasks[k].priority)
        return running[0]

    ran = run_all(sim, keys, order=two_to_one)
    assert sum(ran[f"x{i}"] == W1 for i in range(32)) > 16   # the quick one did more
    split = [i for i in range(0, 32, 2) if ran[f"x{i}"] != ran[f"x{i + 1}"]]
    assert len(split) <= 1, split   # (the boundary of the two runs)


def test_a_later_task_of_higher_priority_goes_before_the_blocks():
    sim = two_workers(extra_queue=0)
    sim.submit(*[task(f"x{i}") for i in range(8)])
    sim.take()
    sim.submit(task("urgent", priority=10))
    assert sim.state("urgent") == "ready"
    sim.finish("x4")                      # W2 frees up first
    assert sim.on("urgent") == W2


def test_a_map_with_mixed_priorities_is_not_split_into_blocks():
    # In blocks, W1 would run its own low-priority tasks while high-priority
    # ones waited in the block of a busy W2.
    sim = two_workers(extra_queue=0)
    keys = [f"x{i}" for i in range(8)]
    sim.submit(*[task(k, priority=i % 2) for i, k in enumerate(keys)])
    ran = run_all(sim, keys, order=lambda running: next(
        (k for k in running if sim.on(k) == W1), running[0]))
    low = [sim.s.tasks[k].priority[0] == 0 for k, w in ran.items() if w == W1]
    assert low == sorted(low)             # W1 ran every high one before any low one
    assert low.count(False) >= 3


@pytest.mark.parametrize("leave", ["remove", "pause", "retire"])
def test_the_block_of_a_worker_that_leaves_pauses_or_retires_goes_to_the_others(leave):
    sim = two_workers(extra_queue=0)
    keys = [f"x{i}" for i in range(8)]
    sim.submit(*[task(k) for k in keys])
    assert sim.on("x4") == W2 and sim.s.placement.affine == 6
    w2 = sim.s.workers[W2]
    if leave == "remove":
        sim.s.remove_worker(W2)
    elif leave == "pause":
        sim.s.worker_paused(W2, True)
    else:
        sim.s.retire_worker(W2)
    assert sim.s.placement.affine == 3 and not w2.ready_here
    ran = run_all(sim, keys, order=lambda running: next(
        (k for k in running if sim.on(k) == W1), running[0]))
    assert all(ran[k] == W1 for k in keys if k != "x4")
    assert sim.s.placement.affine == 0


def test_a_task_released_while_it_waits_in_a_block_is_forgotten():
    sim = two_workers(extra_queue=0)
    keys = [f"x{i}" for i in range(8)]
    sim.submit(*[task(k) for k in keys])
    assert sim.state("x6") == "ready"
    sim.s.release(C1, ["x6"])
    assert "x6" not in sim.s.tasks and sim.s.placement.affine == 5
    rest = [k for k in keys if k != "x6"]
    ran = run_all(sim, rest)
    assert [ran[k] for k in rest] == [W1] * 4 + [W2] * 3


# ---------------------------------------------------------------------- durations


def finish_timed(sim: Sim, key: str, seconds: float) -> None:
    ts = sim.s.tasks[key]
    sim.s.task_finished(ts.processing_on.ident, DoneItem(key, 8, ts.run, duration=seconds))


def test_short_tasks_once_timed_are_sent_ahead_by_the_dozen():
    sim = Sim(extra_queue=2)
    sim.worker(W1)
    sim.submit(*[task(f"inc-{i}") for i in range(100)])
    assert len(sim.s.workers[W1].processing) == 3    # not timed yet: capacity only
    finish_timed(sim, "inc-0", 20e-6)
    # 20 us each: a round trip's worth is 100 of them, capped per thread.
    assert len(sim.s.workers[W1].processing) == 3 + 50


def test_long_tasks_after_short_ones_are_not_sent_ahead_until_timed_themselves():
    # A worker sent a dozen long tasks ahead keeps them even if it turns out
    # slower than the others, which then idle.
    sim = two_workers(extra_queue=2)
    sim.submit(*[task(f"inc-{i}") for i in range(4)])
    for key in [f"inc-{i}" for i in range(4)]:
        finish_timed(sim, key, 20e-6)
    sim.submit(*[task(f"random-{i}") for i in range(40)])
    assert [len(sim.s.workers[w].processing) for w in (W1, W2)] == [3, 3]
    finish_timed(sim, "random-0", 0.010)
    assert [len(sim.s.workers[w].processing) for w in (W1, W2)] == [3, 3]
    # The short group keeps its own figure.
    sim.submit(*[task(f"inc-{i}") for i in range(4, 8)])
    assert sim.s.placement.durations == {"inc": pytest.approx(20e-6), "random": 0.010}


def test_a_task_goes_to_the_worker_with_less_expected_work_not_fewer_tasks():
    sim = two_workers(extra_queue=2)
    sim.submit(task("long-0"), task("short-0"))
    finish_timed(sim, "long-0", 0.5)
    finish_timed(sim, "short-0", 0.001)
    sim.submit(task("long-1"))
    busy = sim.on("long-1")
    sim.submit(task("short-1"), task("short-2"))
    # The worker with one long task queued looks busier than one with two short.
    assert sim.on("short-1") != busy and sim.on("short-2") != busy
