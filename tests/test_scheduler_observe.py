"""What the center tells its watchers (scheduler/observe.py): task groups'
counts kept in step with every change of state, runs and transfers for the
stream, and events only when something changed."""
from __future__ import annotations

import doctest

import pytest
from scheduler_sim import C1, W1, W2, Sim, addr, chain, exception_in, task

from zfutures.messages import Events, KeyAdded, ScatteredItem, TaskRun, Transfer
from zfutures.scheduler import observe
from zfutures.scheduler.observe import QUIET_LIMIT, Observer


def watched(stream: bool = True, nthreads: int = 2, **kwargs) -> Sim:
    sim = Sim(**kwargs)
    sim.worker(W1, nthreads=nthreads)
    sim.worker(W2, nthreads=nthreads)
    sim.s.watch(stream)
    return sim


def take(sim: Sim, now: float = 1000.0, **kwargs) -> Events | None:
    s = sim.s
    assert s.observer is not None
    return s.observer.take(now, s.workers.values(), {}, **kwargs)


def groups_of(events: Events) -> dict[str, tuple]:
    return {g.group: g for g in events.groups}


# --------------------------------------------------------------------------- no watcher


def test_nothing_is_observed_until_someone_watches():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("inc-1"))
    assert sim.s.observer is None
    sim.finish("inc-1", duration=0.5, start=10.0, thread=0)
    assert sim.s.observer is None


def test_watching_counts_the_tasks_there_are_once_by_group_and_state():
    sim = Sim()
    sim.worker(W1, nthreads=1)
    sim.submit(*[task(f"inc-{i}") for i in range(3)], task("sum-0", "inc-0", "inc-1"))
    sim.finish("inc-0")
    sim.s.watch()
    assert sim.observed() == sim.recount()
    assert sim.observed()["inc"]["memory"] == 1 and len(sim.observed()["sum"]) == 1
    events = take(sim)
    assert set(groups_of(events)) == {"inc", "sum"}


def test_run_totals_are_counted_without_a_watcher_and_a_late_one_reads_them():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("inc-1"), task("inc-2"), task("bad-1"))
    sim.finish("inc-1", duration=0.5, start=10.0, thread=0)
    sim.finish("inc-2", duration=0.25, start=11.0, thread=0)
    sim.err("bad-1", ValueError("no"))
    sim.s.watch()
    sim.s.unwatch()  # (a watcher that left takes nothing with it)
    sim.s.watch()
    events = take(sim)
    inc, bad = groups_of(events)["inc"], groups_of(events)["bad"]
    assert (inc.finished, inc.failed, inc.seconds) == (2, 0, 0.75)
    assert (bad.finished, bad.failed) == (0, 1)


def test_run_totals_keep_the_groups_that_ran_last_up_to_their_limit(monkeypatch):
    from zfutures.scheduler import observe
    monkeypatch.setattr(observe, "MAX_TOTALS", 2)
    totals = observe.RunTotals()
    for group in ("a", "b", "a", "c"):
        totals.ran(group, True, 1.0)
    assert totals.of("a") == (2, 0, 2.0) and totals.of("c") == (1, 0, 1.0)
    assert totals.of("b") == (0, 0, 0.0)  # ran least recently: dropped


def test_unwatch_drops_the_observer():
    sim = watched()
    sim.s.unwatch()
    assert sim.s.observer is None
    sim.submit(task("inc-1"))  # (the hooks look for it and find none)
    sim.finish("inc-1")


# --------------------------------------------------------------------------- counts


def check(sim: Sim) -> None:
    assert sim.observed() == sim.recount()


def test_counts_follow_every_change_of_state_to_memory_and_forgetting():
    sim = watched()
    sim.submit(*chain(4))
    check(sim)
    for i in range(4):
        sim.finish(f"t{i}")
        check(sim)
    sim.s.release(C1, [f"t{i}" for i in range(4)])
    check(sim)
    assert sim.s.tasks == {} and sim.observed() == {}
    # the groups ("t0", ...: keys without "-") are still there, counts at
    # zero: a watcher hears they went
    events = take(sim)
    assert len(events.groups) == 4
    for t in events.groups:
        assert (t.waiting, t.ready, t.processing, t.memory, t.released, t.finished) == \
            (0, 0, 0, 0, 0, 1)


def test_counts_follow_errors_retries_and_a_lost_worker():
    sim = watched(nthreads=1)
    sim.submit(task("a-1", retries=1), task("b-1", "a-1"), task("c-1"), task("c-2"))
    check(sim)
    sim.err(sim.s.tasks["a-1"].key, ValueError("once"))  # retried
    check(sim)
    sim.s.remove_worker(sim.on("a-1"))  # back to waiting, or erred
    check(sim)
    sim.err("a-1", ValueError("twice"))
    check(sim)
    assert sim.state("b-1") == "erred"
    assert isinstance(exception_in(sim.s.tasks["b-1"].exception), ValueError)
    sim.s.remove_client(C1)
    check(sim)
    assert sim.observed() == {}


def test_scattered_data_is_counted_in_memory():
    sim = watched()
    sim.s.update_data(C1, [ScatteredItem("data-1", 100, [addr(W1)])])
    check(sim)
    assert sim.observed() == {"data": {"memory": 1}}


def test_a_recomputed_key_is_counted_on_its_way_back():
    sim = watched(nthreads=1)
    sim.submit(task("x-1"), task("y-1", "x-1"))
    holder = sim.on("x-1")
    sim.finish("x-1")
    sim.s.remove_worker(holder)  # x is lost: recomputed for y
    check(sim)
    assert sim.recount()["x"] == {"processing": 1}


# --------------------------------------------------------------------------- runs


def test_finished_and_failed_runs_are_totalled_and_streamed():
    sim = watched()
    sim.submit(task("inc-1"), task("inc-2"), task("inc-3"))
    worker = sim.on("inc-1")
    sim.finish("inc-1", duration=0.25, start=50.0, thread=1)
    sim.finish("inc-2", duration=0.5, start=51.0, thread=0)
    sim.err("inc-3", ZeroDivisionError(), start=52.0, duration=0.125, thread=0)
    events = take(sim)
    inc = groups_of(events)["inc"]
    assert (inc.memory, inc.erred, inc.finished, inc.failed, inc.seconds) == \
        (2, 1, 2, 1, 0.75)
    assert events.runs[0] == TaskRun("inc-1", addr(worker), 1, 50.0, 50.25, True)
    assert [(r.key, r.ok) for r in events.runs] == \
        [("inc-1", True), ("inc-2", True), ("inc-3", False)]
    assert all(r.start <= r.stop for r in events.runs)
    assert take(sim, 1000.1) is None  # each run once (and nothing else changed)


def test_runs_are_not_recorded_without_a_stream_watcher_but_still_totalled():
    sim = watched(stream=False)
    sim.submit(task("inc-1"))
    sim.finish("inc-1", duration=0.25, start=50.0, thread=0)
    events = take(sim)
    assert events.runs == [] and groups_of(events)["inc"].finished == 1
    sim.s.watch(stream=True)  # a watcher now wants the stream
    sim.submit(task("inc-2"))
    sim.finish("inc-2", duration=0.25, start=51.0, thread=0)
    assert [r.key for r in take(sim, 1001.0).runs] == ["inc-2"]


def test_a_report_without_times_is_counted_not_drawn():
    sim = watched()
    sim.submit(task("inc-1"))
    sim.finish("inc-1")  # (no start, duration or thread)
    events = take(sim)
    assert events.runs == [] and groups_of(events)["inc"].finished == 1


def test_a_stale_report_is_no_run():
    sim = watched()
    sim.submit(task("inc-1"))
    worker = sim.on("inc-1")
    run = sim.s.tasks["inc-1"].run
    sim.finish("inc-1", duration=0.1, start=1.0, thread=0)
    take(sim)
    from zfutures.messages import DoneItem
    sim.s.task_finished(worker, DoneItem("inc-1", 8, run, duration=0.1, start=1.0, thread=0))
    assert take(sim, 1000.1) is None


def test_stopping_the_stream_drops_what_was_recorded():
    sim = watched()
    sim.submit(task("inc-1"))
    sim.finish("inc-1", duration=0.1, start=1.0, thread=0)
    sim.s.watch(stream=False)
    assert take(sim).runs == []


# --------------------------------------------------------------------------- transfers


def test_keys_added_from_another_worker_are_transfers_and_bytes():
    sim = watched()
    sim.submit(task("x-1"))
    holder, other = sim.on_and_other("x-1")
    sim.finish("x-1", nbytes=1000)
    sim.s.keys_added(other, KeyAdded("x-1", 1000, addr(holder), 5.0, 5.5))
    sim.s.keys_added(other, KeyAdded("x-1", 1000))  # (no source: was there, no copy)
    assert sim.s.transfer_bytes == 1000
    events = take(sim, counters={"transfer_bytes": sim.s.transfer_bytes})
    assert events.transfers == [Transfer("x-1", addr(holder), addr(other), 1000, 5.0, 5.5)]
    assert events.counters == {"transfer_bytes": 1000}


def test_transfer_bytes_are_counted_without_watchers_and_tasks_submitted_too():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x-1"), task("x-2"))
    holder, other = sim.on_and_other("x-1")
    sim.finish("x-1", nbytes=10)
    sim.s.keys_added(other, KeyAdded("x-1", 10, addr(holder), 5.0, 5.5))
    assert (sim.s.transfer_bytes, sim.s.submitted_tasks) == (10, 2)


# --------------------------------------------------------------------------- workers


def test_workers_carry_their_heartbeats_memory_and_cpu_and_silence():
    sim = watched(nthreads=2)
    sim.submit(*[task(f"inc-{i}") for i in range(5)])
    sim.s.worker_heartbeat(W1, 123_000, 55.5)
    sim.s.worker_heartbeat(W2, -1, float("nan"))  # (nonsense is ignored)
    events = sim.s.observer.take(1000.0, sim.s.workers.values(), {W1: 0.25})
    w1, w2 = sorted(events.workers)
    assert (w1.address, w1.memory, w1.cpu, w1.silent, w1.nthreads) == \
        (addr(W1), 123_000, 55.5, 0.25, 2)
    assert (w2.memory, w2.cpu) == (0, 0.0)
    assert w1.executing + w2.executing == 4
    assert w1.executing + w1.queued + w2.executing + w2.queued == 5
    sim.finish("inc-0", nbytes=500)
    events = take(sim, 1000.1)
    managed = {w.address: w.managed for w in events.workers}
    assert sum(managed.values()) == 500
    assert [w.spilled for w in events.workers] == [0, 0]


def test_workers_memory_and_disk_are_as_scheduler_info_counts_them():
    sim = watched(nthreads=1)
    sim.submit(task("inc-1"), task("inc-2"))
    holder, other = sim.on_and_other("inc-1")
    sim.finish("inc-1", nbytes=300)
    sim.finish("inc-2", nbytes=200)
    # one worker spilled some of its results, the other has none on disk
    sim.s.worker_heartbeat(holder, 5000, 1.0, managed=120, spilled=180)
    sim.s.worker_heartbeat(other, 5000, 1.0, managed=0, spilled=0)
    events = take(sim, 1000.0)
    seen = {w.address: (w.managed, w.spilled) for w in events.workers}
    info = sim.s.info()["workers"]
    assert seen == {a: (w["managed"], w["spilled"]) for a, w in info.items()}
    assert seen[addr(holder)] == (120, 180)
    assert seen[addr(other)] == (sim.s.workers[other].nbytes, 0)  # the center's count
    # back from disk: news the watchers hear at once
    sim.s.worker_heartbeat(holder, 5000, 1.0, managed=300, spilled=0)
    events = take(sim, 1000.1)
    assert events is not None
    assert {w.address: w.spilled for w in events.workers}[addr(holder)] == 0


def test_the_examples_in_observe_hold():
    assert doctest.testmod(observe).failed == 0


# --------------------------------------------------------------------------- when


def test_events_go_when_something_changed_or_once_a_second():
    sim = watched()
    assert take(sim, 100.0) is not None  # the first
    assert take(sim, 100.1) is None  # nothing changed
    assert take(sim, 100.2, force=True) is not None  # (a new watcher)
    assert take(sim, 100.2 + QUIET_LIMIT) is not None  # a second on
    sim.submit(task("inc-1"))
    events = take(sim, 101.3)
    assert [g.group for g in events.groups] == ["inc"]
    assert take(sim, 101.4) is None
    sim.s.worker_heartbeat(W1, 1, 1.0)  # a worker's numbers changed
    events = take(sim, 101.5)
    assert events is not None and events.groups == []


def test_only_the_groups_that_changed_go_and_all_groups_on_request():
    sim = watched()
    sim.submit(task("a-1"), task("b-1"))
    take(sim, 100.0)
    sim.finish("a-1")
    assert [g.group for g in take(sim, 100.1).groups] == ["a"]
    assert {g.group for g in sim.s.observer.all_groups()} == {"a", "b"}


def test_the_stream_is_bounded_between_takes(monkeypatch):
    monkeypatch.setattr(observe, "MAX_RUNS", 3)
    sim = watched()
    sim.submit(*[task(f"inc-{i}") for i in range(4)])
    for i in range(4):
        sim.finish(f"inc-{i}", duration=0.1, start=float(i), thread=0)
    assert [r.key for r in take(sim).runs] == ["inc-1", "inc-2", "inc-3"]
    assert groups_of(take(sim, 2000.0, force=True)) == {}


def test_the_observer_alone_counts_what_it_is_given():
    observer = Observer([], stream=True)
    assert observer.take(1.0, [], {}) == Events(1.0, [], [], [], [], {})


# --------------------------------------------------------------------------- describe-key


def test_describe_key_says_what_the_center_knows_of_a_key():
    sim = watched(nthreads=1)
    sim.submit(task("x-1", priority=5), task("y-1", "x-1"), task("z-1", "x-1", retries=2))
    d = sim.s.describe_key("y-1")
    # (sent ahead to the worker computing its input, or waiting here)
    assert d["state"] in ("waiting", "processing") and d["waiting_on"] == ["x-1"]
    assert d["clients"] == 1
    assert d["dependencies"] == ["x-1"] and d["group"] == "y"
    x = sim.s.describe_key("x-1")
    assert sorted(x["dependents"]) == ["y-1", "z-1"] and x["priority"] == 5
    assert x["processing_on"] == addr(sim.on("x-1")) and x["error"] is None
    frames = sim.err("x-1", KeyError("k"))
    erred = sim.s.describe_key("z-1")
    assert erred["state"] == "erred" and erred["error"] == [bytes(f) for f in frames]
    assert erred["retries"] == 2
    assert sim.s.describe_key("nope") is None


@pytest.mark.parametrize("n", [150])
def test_describe_key_names_at_most_a_hundred_dependents(n):
    sim = watched()
    sim.submit(task("x-1"), *[task(f"y-{i}", "x-1") for i in range(n)])
    assert len(sim.s.describe_key("x-1")["dependents"]) == 100


def test_a_group_with_no_task_left_is_said_once_then_forgotten_but_its_totals_stay():
    sim = watched()
    sim.submit(task("inc-1"))
    sim.finish("inc-1", duration=0.5, start=10.0, thread=0)
    take(sim)
    sim.s.release(C1, ["inc-1"])
    events = take(sim, now=1001.0)
    inc = groups_of(events)["inc"]
    assert (inc.memory, inc.released, inc.finished) == (0, 0, 1)  # its zeros, said once
    assert "inc" not in sim.s.observer.groups  # then forgotten by the observer
    # A watcher that comes now reads the group's totals all the same, and
    # the counters over every group.
    sim.s.watch()
    (late,) = [g for g in sim.s.observer.all_groups() if g.group == "inc"]
    assert (late.finished, late.seconds) == (1, 0.5)
    assert (sim.s.run_totals.finished, sim.s.run_totals.failed) == (1, 0)


def test_a_nonsense_duration_counts_the_run_but_neither_its_seconds_nor_a_bar():
    sim = watched()
    sim.submit(task("inc-1"), task("inc-2"))
    sim.finish("inc-1", duration=float("nan"), start=10.0, thread=0)
    sim.finish("inc-2", duration=-1.0, start=10.0, thread=0)
    events = take(sim)
    inc = groups_of(events)["inc"]
    assert (inc.finished, inc.seconds) == (2, 0.0)
    assert events.runs == []
