"""A worker's results between memory and disk, driven one event at a time
through WorkerState: no files, threads or sleeps.

The shell's part (writing, reading, deleting) is played by the tests: they
take the disk work from ``to_spill`` and report its outcome with the
``spill_*`` events, as the spill threads would.
"""
from __future__ import annotations

import logging

import pytest

from zfutures.memory_thresholds import MemoryThresholds
from zfutures.messages import ComputeItem, DoneItem, MissingData, Paused
from zfutures.worker_memory import DELETE
from zfutures.worker_spilling import READ, WRITE
from zfutures.worker_state import EXECUTING, LOADING, WorkerState

ME = "tcp://me:9000"
MB = 2**20
LIMIT = 1000 * MB  # target 600 MB, spill 700 MB, pause 800 MB
BASE = 100 * MB  # the process without results


class Rss:
    """The process's memory as the shell would measure it: a baseline plus
    the values in memory (the estimate the state machine makes between
    measures is then exact)."""

    def __init__(self, w: WorkerState):
        self.w = w

    def __call__(self) -> int:
        return BASE + sum(self.w.nbytes[key] for key in self.w.data)


def make(nthreads: int = 1, thresholds: MemoryThresholds | None = None) -> WorkerState:
    w = WorkerState(ME, nthreads=nthreads, memory_limit=LIMIT, memory_thresholds=thresholds)
    w.measure_rss = Rss(w)
    w.memory_measured(BASE)
    return w


def compute(w: WorkerState, key: str, deps: dict | None = None, run: int = 1) -> None:
    w.compute(ComputeItem(key, deps or {}, run), [f"payload of {key}".encode()], 0.0)


def finish(w: WorkerState, key: str, nbytes: int) -> None:
    """A task thread finished ``key`` with a value of ``nbytes``."""
    w.task_done(key, f"value of {key}", nbytes, 0.1)


def run(w: WorkerState, key: str, nbytes: int, deps: dict | None = None) -> None:
    compute(w, key, deps)
    assert executed(w) == [key]
    finish(w, key, nbytes)


def executed(w: WorkerState) -> list[str]:
    keys = [task.key for task in w.to_execute]
    w.to_execute.clear()
    return keys


def disk_work(w: WorkerState) -> list[tuple[str, str]]:
    work = [(kind, key) for kind, key, _ in w.to_spill]
    w.to_spill.clear()
    return work


def write_all(w: WorkerState) -> list[str]:
    """Carry out the writes asked for, each file half its value's size."""
    written = []
    for kind, key, _ in list(w.to_spill):
        if kind == WRITE:
            w.to_spill.remove((kind, key, _))
            w.spill_written(key, w.nbytes[key] // 2)
            written.append(key)
    return written


def settle(w: WorkerState) -> None:
    """Carry out writes until the worker asks for none (it may write some to
    make room for a task about to start)."""
    while write_all(w):
        pass


def three_results_one_on_disk(w: WorkerState) -> None:
    """Results a, b, c of 250 MB each: 750 MB is over the 600 MB target, so
    "a", the least recently used, goes to disk."""
    for key in "abc":
        run(w, key, 250 * MB)
    assert write_all(w) == ["a"]


def a_task_waiting_for_a_read() -> WorkerState:
    """A worker whose task "sum" (run 5) waits for its input "a" to be read back."""
    w = make()
    three_results_one_on_disk(w)
    reports(w)
    compute(w, "sum", {"a": [ME]}, run=5)
    settle(w)  # (room is made first)
    assert disk_work(w) == [(READ, "a")]
    return w


def reports(w: WorkerState) -> list:
    out = [report for report, _ in w.to_center]
    w.to_center.clear()
    return out


# --------------------------------------------------------------------------- spilling


def test_results_beyond_the_target_go_to_disk_least_recently_used_first_and_stay_held():
    w = make()
    for key in "abc":
        run(w, key, 250 * MB)  # 750 MB of results: over the 600 MB target
    assert disk_work(w) == [(WRITE, "a")]
    assert "a" in w.data  # (until its write lands)
    w.spill_written("a", 100 * MB)
    assert "a" not in w.data and w.nbytes["a"] == 250 * MB  # held, on disk
    assert w.memory.spilled == 100 * MB and w.memory.managed == 500 * MB
    # The center hears of each result once, as done: where it is is the worker's business.
    assert [r.key for r in reports(w) if type(r) is DoneItem] == ["a", "b", "c"]


def test_a_key_held_on_disk_counts_as_held():
    w = make()
    three_results_one_on_disk(w)
    reports(w)
    compute(w, "a", run=2)  # the center asks again (after a reconnect): it is here
    assert reports(w) == [DoneItem("a", 250 * MB, 2)]


def test_a_task_whose_input_is_on_disk_starts_once_it_is_read_back_and_pins_it():
    w = make(nthreads=2)
    three_results_one_on_disk(w)
    compute(w, "sum", {"a": [ME]})
    # No room to read "a" back: "b" goes to disk first, and "sum" waits.
    assert disk_work(w) == [(WRITE, "b")] and executed(w) == []
    w.spill_written("b", MB)
    assert disk_work(w) == [(READ, "a")] and w.tasks["sum"].state == LOADING
    assert w.to_fetch == []  # (read back, not fetched from a peer)
    w.spill_loaded("a", "value of a")
    # Room for the result "sum" is expected to make (as big as its input): "c" goes.
    assert disk_work(w) == [(WRITE, "c")] and executed(w) == []
    w.spill_written("c", MB)
    assert executed(w) == ["sum"] and w.tasks["sum"].state == EXECUTING
    assert w.inputs_of(w.tasks["sum"]) == {"a": "value of a"}
    # Running, its input stays in memory, however short memory runs.
    run(w, "d", 400 * MB)
    w.memory_measured(2 * LIMIT)
    assert ("a" not in [key for kind, key in disk_work(w)]) and "a" in w.data
    finish(w, "sum", 1 * MB)
    w.memory_measured(2 * LIMIT)  # no longer pinned: it may go (its file is kept)
    assert "a" not in w.data and w.memory.on_disk("a")


def test_two_tasks_waiting_for_one_input_on_disk_read_it_once():
    w = make(nthreads=2)
    three_results_one_on_disk(w)
    compute(w, "x", {"a": [ME]})
    compute(w, "y", {"a": [ME]})
    settle(w)  # (room is made first)
    assert disk_work(w) == [(READ, "a")]
    w.spill_loaded("a", "value of a")
    settle(w)
    # One at a time, each with room for its result (as big as its input).
    assert executed(w) == ["x"]
    finish(w, "x", 250 * MB)
    settle(w)
    assert executed(w) == ["y"]
    assert (READ, "a") not in disk_work(w)  # read once: pinned for "y" meanwhile


def test_at_most_nthreads_tasks_read_inputs_back_at_once():
    w = make(nthreads=1)
    for key in "abcde":
        run(w, key, 200 * MB)
        write_all(w)
    on_disk = [key for key in "abcde" if key not in w.data]
    assert len(on_disk) >= 2
    compute(w, "x", {on_disk[0]: [ME]})
    compute(w, "y", {on_disk[1]: [ME]})
    settle(w)  # (room is made first)
    assert disk_work(w) == [(READ, on_disk[0])]  # y waits its turn, in memory's favour
    w.spill_loaded(on_disk[0], "value")
    settle(w)
    assert executed(w) == ["x"]
    finish(w, "x", MB)
    settle(w)  # (memory is over the spill mark: "y" waits for the writes)
    assert disk_work(w) == [(READ, on_disk[1])]


def test_an_input_released_while_read_back_sends_its_task_back_to_the_center():
    w = a_task_waiting_for_a_read()
    w.release(["a"])  # the center let go of it: its file goes
    assert disk_work(w) == [(DELETE, "a")]
    w.spill_loaded("a", "value of a")  # the read was under way
    assert "a" not in w.data and "a" not in w.nbytes
    assert reports(w) == [MissingData("sum", ["a"], 5, [ME])]
    assert "sum" not in w.tasks and w.loading == set()


def test_an_input_that_cannot_be_read_back_is_lost_here_and_its_task_goes_back():
    w = a_task_waiting_for_a_read()
    w.spill_read_failed("a", OSError("bad sector"))
    assert "a" not in w.nbytes and disk_work(w) == [(DELETE, "a")]
    assert reports(w) == [MissingData("sum", ["a"], 5, [ME])]
    assert any("cannot read 'a'" in change for change in w.memory.take_changes())


def test_a_released_key_loses_its_file_and_a_write_under_way_is_deleted_when_it_lands():
    w = make()
    three_results_one_on_disk(w)
    w.release(["a"])
    assert disk_work(w) == [(DELETE, "a")]
    run(w, "d", 250 * MB)
    [(kind, key)] = disk_work(w)
    assert kind == WRITE
    w.release([key])  # released while its write is under way
    assert disk_work(w) == []
    w.spill_written(key, MB)
    assert disk_work(w) == [(DELETE, key)] and key not in w.nbytes


# --------------------------------------------------------------------------- memory under pressure


def test_no_task_starts_while_writes_that_will_free_memory_are_under_way():
    w = make()
    run(w, "a", 450 * MB)
    run(w, "b", 300 * MB)  # 750 MB of results, process 850 MB: over the spill mark
    assert disk_work(w) == [(WRITE, "a")]
    compute(w, "c")
    assert executed(w) == [] and not w.paused  # held back, not paused: the center is not told
    assert not any(type(r) is Paused for r in reports(w))
    w.spill_written("a", MB)
    assert executed(w) == ["c"]


def test_a_worker_whose_disk_fails_keeps_its_results_and_pauses_at_the_spill_mark():
    w = make()
    run(w, "a", 300 * MB)
    run(w, "b", 350 * MB)
    assert disk_work(w) == [(WRITE, "a")]
    reports(w)
    w.spill_write_failed("a", OSError(28, "No space left on device"))
    assert w.data["a"] == "value of a"  # nothing lost
    # 750 MB: over the spill mark, which is the pause mark once the disk fails.
    assert w.paused and reports(w) == [Paused(True)]
    [change] = [c for c in w.memory.take_changes() if c.startswith("cannot")]
    assert "cannot spill to disk" in change and "No space left" in change
    assert change.level == logging.ERROR  # (the worker logs it so)
    compute(w, "c")
    assert executed(w) == []
    w.release(["b"])  # memory frees: 400 MB of 1000
    w.memory_measured(Rss(w)())
    assert not w.paused and reports(w) == [Paused(False)] and executed(w) == ["c"]
    finish(w, "c", MB)
    run(w, "d", 400 * MB)
    assert disk_work(w) == []  # no more writes: a full disk stays full


def test_a_value_that_cannot_be_pickled_stays_in_memory_and_is_not_tried_again():
    w = make()
    run(w, "a", 300 * MB)
    run(w, "b", 350 * MB)
    assert disk_work(w) == [(WRITE, "a")]
    w.spill_write_failed("a", TypeError("cannot pickle 'lock'"), disk=False)
    assert not w.memory.disk_trouble and w.data["a"] == "value of a"
    run(w, "c", 100 * MB)
    assert disk_work(w) == [(WRITE, "b")]  # the next one goes; "a" is never planned again
    w.spill_written("b", MB)
    assert "a" in w.data and "b" not in w.data


def test_data_put_here_and_fetched_spills_like_results():
    w = make()
    w.put_data(b"client", 1, {"s1": ("one", 400 * MB), "s2": ("two", 400 * MB)}, {})
    assert disk_work(w) == [(WRITE, "s1")]
    compute(w, "f", {"remote": ["tcp://peer:1"]})
    [(request, _, keys)] = w.to_fetch
    w.data_received(request, {"remote": "fetched"}, {"remote": 300 * MB}, 0.0)
    assert (WRITE, "s2") in disk_work(w)


def test_without_a_limit_nothing_moves_and_nothing_pauses():
    w = WorkerState(ME, nthreads=1)
    for key in "abc":
        run(w, key, 10**12)
    w.memory_measured(10**13)
    assert w.to_spill == [] and not w.paused
    assert w.memory.managed == 3 * 10**12


@pytest.mark.parametrize("turned_off", ["target", "spill"])
def test_each_spilling_rule_can_be_turned_off(turned_off):
    thresholds = MemoryThresholds(**{turned_off: None})
    w = make(thresholds=thresholds)
    run(w, "a", 350 * MB)
    run(w, "b", 300 * MB)  # results 650 MB > target; process 750 MB > spill
    assert disk_work(w) == [(WRITE, "a")]  # either rule alone moves it
    both_off = make(thresholds=MemoryThresholds(target=None, spill=None))
    run(both_off, "a", 350 * MB)
    run(both_off, "b", 300 * MB)
    assert disk_work(both_off) == []


def test_a_task_released_after_its_input_was_read_back_lets_go_of_it():
    # (results kept to 500 MB, so that a 50 MB read leaves room for a task)
    w = make(nthreads=1, thresholds=MemoryThresholds(target=0.5))
    run(w, "a", 50 * MB)
    run(w, "b", 250 * MB)
    run(w, "c", 250 * MB)  # 550 MB > 500: "a" goes
    write_all(w)
    compute(w, "sum", {"a": [ME]})
    assert disk_work(w) == [(READ, "a")]
    compute(w, "other")  # takes the thread while "sum" waits for its read
    assert executed(w) == ["other"]
    w.spill_loaded("a", "value of a")
    write_all(w)
    assert executed(w) == [] and w.tasks["sum"].state == "ready"  # (the thread is busy)
    w.memory_measured(2 * LIMIT)
    assert "a" in w.data  # pinned for "sum", which will run
    w.release(["sum"])
    w.memory_measured(2 * LIMIT)
    assert "a" not in w.data and w.memory.on_disk("a")  # no pin left behind


def test_a_task_whose_input_was_released_meanwhile_goes_back_to_the_center_at_its_start():
    w = make(nthreads=1)
    three_results_one_on_disk(w)
    reports(w)
    compute(w, "blocker")
    executed(w)
    compute(w, "sum", {"a": [ME]}, run=9)
    w.release(["a"])  # (the center would release "sum" too; its message may lag)
    finish(w, "blocker", MB)
    assert executed(w) == [] and "sum" not in w.tasks
    assert MissingData("sum", ["a"], 9, [ME]) in reports(w)


def test_a_task_held_for_a_write_starts_when_the_write_fails():
    w = make(thresholds=MemoryThresholds(target=0.5))
    run(w, "a", 250 * MB)
    run(w, "b", 260 * MB)  # results 510 MB > 500: "a" goes; the process 610 MB
    assert disk_work(w) == [(WRITE, "a")]
    compute(w, "c", {"b": [ME]})  # its result, as big as "b", does not fit yet
    assert executed(w) == []  # (held for the write)
    w.spill_write_failed("a", OSError(28, "No space left on device"))
    # Nothing more can go to disk, and 610 MB is under the pause mark: it runs.
    assert not w.paused and executed(w) == ["c"]


# --------------------------------------------------------------------------- inputs from peers

P1, P2 = "tcp://p1:9000", "tcp://p2:9000"


def compute_sized(w: WorkerState, key: str, deps: dict, sizes: dict) -> None:
    w.compute(ComputeItem(key, deps, 1, sizes=sizes), [f"payload of {key}".encode()], 0.0)


def asked(w: WorkerState) -> list[list[str]]:
    keys = [keys for _, _, keys in w.to_fetch]
    w.to_fetch.clear()
    return keys


def test_a_worker_short_of_memory_asks_its_peers_for_what_fits_and_the_rest_later():
    w = make(nthreads=4)
    run(w, "local", 400 * MB)  # the process 500 MB: 200 MB of room under the spill mark
    for i in range(4):
        compute_sized(w, f"t{i}", {f"in{i}": [P1]}, {f"in{i}": 150 * MB})
    [(request, peer, keys)] = w.to_fetch
    w.to_fetch.clear()
    assert (peer, keys) == (P1, ["in0"])  # 150 MB fits; a second would not
    assert w.fetching.held_back and w.request_inputs(0.0) == []  # (no room yet)
    w.data_received(request, {"in0": "value"}, {"in0": 150 * MB}, 0.0)
    # t0 may run once there is room for its result (as big as its input):
    # "local" goes to disk, and then t0 runs, 150 MB reserved for its result.
    assert disk_work(w) == [(WRITE, "local")] and executed(w) == []
    w.spill_written("local", MB)
    assert executed(w) == ["t0"]
    # 250 MB in memory, 150 MB reserved: 300 MB of room, two inputs.
    assert [keys for _, _, keys in w.request_inputs(0.0)] == [["in1", "in2"]]
    assert w.fetching.held_back  # in3, later


def test_a_calm_worker_asks_for_every_input_at_once():
    w = make(nthreads=4)
    compute_sized(w, "t", {"x": [P1], "y": [P1], "z": [P2]},
                  {"x": 10 * MB, "y": 10 * MB, "z": 10 * MB})
    assert sorted(map(sorted, asked(w))) == [["x", "y"], ["z"]]
    assert w.fetching.incoming == 30 * MB and not w.fetching.held_back


def test_inputs_held_back_for_a_peer_that_leaves_are_asked_of_the_next_holder():
    w = make(nthreads=4)
    run(w, "local", 400 * MB)
    compute_sized(w, "a", {"x": [P1]}, {"x": 150 * MB})
    compute_sized(w, "b", {"y": [P1, P2]}, {"y": 150 * MB})
    assert asked(w) == [["x"]] and w.fetching.held_back
    w.peer_left(P1, 0.0)  # x goes to no one (given up); y is planned from P2
    settle(w)
    reports(w)
    w.to_fetch += w.request_inputs(0.0)
    assert [(peer, keys) for _, peer, keys in w.to_fetch] == [(P2, ["y"])]
