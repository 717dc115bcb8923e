"""The dashboard's model: events in, bounded buffers and readings out (no sockets)."""
from __future__ import annotations

from zfutures.dashboard import model as m
from zfutures.dashboard.model import Model
from zfutures.messages import Events, GroupCounts, TaskRun, Transfer, WorkerStats

W1, W2 = "tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"


def counts(group, waiting=0, ready=0, processing=0, memory=0, erred=0, released=0,
           finished=0, failed=0, seconds=0.0):
    return GroupCounts(group, waiting, ready, processing, memory, erred, released,
                       finished, failed, seconds)


def worker(address, memory=100, executing=0, nthreads=2, spilled=0):
    return WorkerStats(address, "w", nthreads, memory, 10, spilled, 1000, 5.0, executing, 0, 1,
                       False, 0.1)


def events(time, groups=(), workers=(W1,), runs=(), transfers=(), counters=None):
    return Events(time, list(groups), [worker(a) for a in workers], list(runs),
                  list(transfers), counters or {})


def run(key, start, stop=None, address=W1, thread=0, ok=True):
    return TaskRun(key, address, thread, start, start + 0.1 if stop is None else stop, ok)


def test_counts_are_latest_per_group_and_summed_over_groups():
    model = Model()
    model.apply(events(100, [counts("inc", waiting=5), counts("add", memory=2, finished=2,
                                                               seconds=1.0)]), now=0)
    model.apply(events(101, [counts("inc", processing=1, memory=4, finished=4)]), now=1)
    assert model.tasks() == {"waiting": 0, "ready": 0, "processing": 1, "memory": 6,
                             "erred": 0, "released": 0}
    assert model.finished() == (6, 0)
    assert model.time == 101


def test_finished_and_failed_are_the_centers_counters_when_it_sends_them():
    model = Model()
    # (groups long gone still count: the center's totals are over every group)
    model.apply(events(100, [counts("inc", memory=1, finished=1)],
                       counters={"finished": 50, "failed": 2}), now=0)
    assert model.finished() == (50, 2) and model.state()["finished"] == 50


def test_workers_are_the_latest_list_and_a_missing_one_is_gone_with_its_runs():
    model = Model()
    model.apply(events(100, workers=(W1, W2), runs=[run("a-1", 99, address=W2)]), now=0)
    assert set(model.workers) == {W1, W2} and len(model.worker_runs[W2]) == 1
    model.apply(events(101, workers=(W1,)), now=1)
    assert set(model.workers) == {W1} and W2 not in model.worker_runs


def test_state_has_the_numbers_of_the_metrics():
    model = Model()
    model.apply(events(100, [counts("inc", memory=3, finished=3, failed=1, seconds=0.3)],
                       counters={"messages": 7, "transfer_bytes": 64, "tasks": 3}), now=0)
    state = model.state()
    assert state["tasks"]["memory"] == 3 and state["finished"] == 3 and state["failed"] == 1
    assert state["groups"]["inc"]["finished"] == 3 and "group" not in state["groups"]["inc"]
    assert state["workers"][W1]["nthreads"] == 2
    assert state["counters"] == {"messages": 7, "transfer_bytes": 64, "tasks": 3}


def test_each_workers_memory_and_disk_reach_the_state_and_the_page_as_the_center_said():
    model = Model()
    model.apply(Events(100, [], [worker(W1, memory=5000, spilled=4000), worker(W2)], [], [], {}),
                now=0)
    state = model.state()["workers"]
    assert (state[W1]["memory"], state[W1]["managed"], state[W1]["spilled"]) == (5000, 10, 4000)
    assert state[W2]["spilled"] == 0
    snapshot, cursor = model.snapshot()
    assert [(w["address"], w["spilled"]) for w in snapshot["workers"]] == [(W1, 4000), (W2, 0)]
    model.apply(Events(101, [], [worker(W1, memory=5000), worker(W2)], [], [], {}), now=1)
    delta, _ = model.delta(cursor)  # read back from disk: every delta has every worker
    assert [w["spilled"] for w in delta["workers"]] == [0, 0]


def test_buffers_stay_bounded_over_a_hundred_thousand_runs():
    model = Model()
    t = 1000.0
    for batch in range(1000):  # 100,000 runs in 100 s of the center's clock
        t += 0.1
        runs = [run(f"inc-{batch}-{i}", t - 0.05, t, thread=i % 4) for i in range(100)]
        transfers = [Transfer(f"x-{batch}-{i}", W2, W1, 8, t - 0.01, t) for i in range(10)]
        model.apply(events(t, [counts("inc", memory=batch * 100)], runs=runs,
                           transfers=transfers), now=batch * 0.1)
    assert model.runs_seen == 100_000 and model.transfers_seen == 10_000
    assert len(model.runs) == m.MAX_RUNS
    assert len(model.transfers) == m.MAX_TRANSFERS
    assert len(model.worker_runs[W1]) == m.RUNS_PER_WORKER
    assert len(model.groups) == 1


def test_runs_older_than_the_window_are_dropped():
    model = Model()
    model.apply(events(100, runs=[run("old-1", 10, 20), run("new-1", 95, 99)],
                       transfers=[Transfer("t-1", W2, W1, 8, 10, 20)]), now=0)
    assert [r.key for r in model.runs] == ["new-1"]
    assert not model.transfers


def test_a_forgotten_group_is_dropped_after_idling_ten_minutes():
    model = Model()
    model.apply(events(100, [counts("gone", released=0, finished=5), counts("kept", memory=1)]),
                now=0)
    model.apply(events(200), now=m.IDLE_GROUP - 1)
    assert set(model.groups) == {"gone", "kept"}
    model.apply(events(300), now=m.IDLE_GROUP + 1)
    assert set(model.groups) == {"kept"}  # "kept" holds a task: never dropped


def test_snapshot_then_deltas_carry_each_change_once():
    model = Model()
    model.apply(events(100, [counts("inc", waiting=2)], runs=[run("inc-1", 99.5)]), now=0)
    snapshot, cursor = model.snapshot()
    assert snapshot["kind"] == "snapshot" and snapshot["groups"]["inc"]["waiting"] == 2
    assert [r[0] for r in snapshot["runs"]] == ["inc-1"]
    delta, cursor = model.delta(cursor)
    assert delta["groups"] == {} and delta["runs"] == [] and delta["workers"]

    model.apply(events(101, [counts("add", memory=1)], runs=[run("add-1", 100.5)],
                       transfers=[Transfer("inc-1", W2, W1, 8, 100.4, 100.5)]), now=1)
    delta, cursor = model.delta(cursor)
    assert list(delta["groups"]) == ["add"]
    assert [r[0] for r in delta["runs"]] == ["add-1"]
    assert [t[0] for t in delta["transfers"]] == ["inc-1"]
    assert model.delta(cursor)[0]["runs"] == []


def test_a_slow_reader_gets_what_the_buffer_still_holds():
    model = Model()
    _, cursor = model.snapshot()
    model.apply(events(100, runs=[run(f"a-{i}", 99.5) for i in range(m.MAX_RUNS + 10)]), now=0)
    delta, _ = model.delta(cursor)
    assert len(delta["runs"]) == m.MAX_RUNS
    assert delta["runs"][-1][0] == f"a-{m.MAX_RUNS + 9}"


def test_clear_forgets_the_old_center():
    model = Model()
    model.apply(events(100, [counts("inc", memory=1)], runs=[run("inc-1", 99.5)],
                       counters={"tasks": 1}), now=0)
    _, cursor = model.snapshot()
    model.clear()
    assert not model.groups and not model.workers and not model.runs and not model.counters
    # A reader of deltas starts again from a snapshot: what it drew is of the old center.
    model.apply(events(5, [counts("add", waiting=1)]), now=1)
    message, _ = model.delta(cursor)
    assert message["kind"] == "snapshot" and list(message["groups"]) == ["add"]
