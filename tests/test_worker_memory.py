"""A worker's memory decisions, driven one event at a time: no files, sockets, threads or sleeps.

The process's memory is modelled as a baseline (the interpreter, libraries)
plus the results in memory; what the manager plans is carried out at once, as
the worker's spill thread would, unless a test holds it in flight.
"""
from __future__ import annotations

import doctest
import logging

import pytest

from zfutures import worker_memory
from zfutures.worker_memory import (
    DELETE,
    DROP,
    KEEP,
    MemoryManager,
    MemoryThresholds,
    Plan,
    parse_fraction,
)

MB = 2**20
LIMIT = 300 * MB
BASELINE = 50 * MB  # what the process holds besides results


class Worker:
    """A worker's side of the manager: its results, its files, its writes."""

    def __init__(self, limit: int = LIMIT, thresholds: MemoryThresholds | None = None,
                 baseline: int = BASELINE):
        self.m = MemoryManager(limit, thresholds or MemoryThresholds())
        self.baseline = baseline
        self.data: dict[str, int] = {}  # key -> nbytes in memory
        self.files: dict[str, int] = {}  # key -> disk bytes
        self.writes: list[str] = []  # every write planned, in order

    @property
    def rss(self) -> int:
        return self.baseline + sum(self.data.values())

    def store(self, key: str, nbytes: int) -> None:
        self.m.stored(key, nbytes)
        self.data[key] = nbytes

    def measure(self, complete: bool = True) -> Plan:
        plan = self.m.measured(self.rss)
        self.writes += plan.write
        for key in plan.drop:
            assert key in self.files
            del self.data[key]
        if complete:
            for key in plan.write:
                self.finish_write(key)
        return plan

    def finish_write(self, key: str) -> str:
        self.files[key] = self.data[key] // 2  # compressed, say
        action = self.m.written(key, self.files[key])
        if action == DROP:
            del self.data[key]
        return action

    def read(self, key: str) -> None:
        assert self.m.wanted(key)
        self.data[key] = 100 * MB
        assert self.m.loaded(key)


def test_the_issues_scenario_keeps_results_under_target():
    """15 x 100 MB results, then a 200 MB scatter, on a worker with a 300 MB limit."""
    w = Worker()
    target = 0.6 * LIMIT
    for i in range(15):
        w.store(f"x{i}", 100 * MB)
        w.measure()
        assert w.m.managed <= target and w.rss <= 0.7 * LIMIT
        assert not w.m.should_pause(w.rss) and not w.m.should_terminate(w.rss)
    w.store("scattered", 200 * MB)  # bigger than the whole target: goes all the same
    plan = w.measure()
    assert plan.write == ["x14", "scattered"]
    assert w.m.managed == 0 and w.m.counts()["disk"] == 16
    assert len(w.writes) == len(set(w.writes)) == 16  # each written once
    assert w.writes[:15] == [f"x{i}" for i in range(15)]  # least recently used first
    assert w.m.spilled == sum(w.files.values()) == 15 * 50 * MB + 100 * MB


def test_least_recently_used_go_first_and_a_key_used_just_now_last():
    w = Worker(thresholds=MemoryThresholds(spill=None))
    for key in "abc":
        w.store(key, 50 * MB)
    w.m.used("a")
    w.store("d", 50 * MB)  # 200 MB > 180 MB: one goes
    assert w.measure().write == ["b"]
    w.store("e", 100 * MB)  # 250 MB: two more
    assert w.measure().write == ["c", "a"]


def test_a_pinned_key_is_never_chosen():
    w = Worker()
    w.store("a", 150 * MB)
    w.m.pin("a")
    w.m.pin("a")  # counted: two users
    w.store("b", 100 * MB)
    assert w.measure().write == ["b"]
    w.store("c", 100 * MB)
    w.m.unpin("a")
    assert w.measure().write == ["c"]  # one user still holds it
    w.m.unpin("a")
    w.store("d", 100 * MB)
    assert w.measure().write == ["a"]
    with pytest.raises(KeyError):
        w.m.unpin("a")


def test_writes_in_flight_count_as_gone_and_are_not_planned_again():
    w = Worker()
    for key in "abc":
        w.store(key, 100 * MB)
    assert w.measure(complete=False).write == ["a", "b"]
    assert w.m.counts()["writing"] == 2 and w.m.managed == 300 * MB
    assert not w.measure(complete=False)  # no more: the two will free enough
    assert w.finish_write("a") == DROP and w.finish_write("b") == DROP
    assert w.m.managed == 100 * MB and len(w.writes) == 2


def test_a_value_used_or_pinned_while_written_stays_in_memory_with_its_file():
    w = Worker()
    for key in "abc":
        w.store(key, 100 * MB)
    assert w.measure(complete=False).write == ["a", "b"]
    w.m.used("a")
    w.m.pin("b")
    assert w.finish_write("a") == KEEP and w.finish_write("b") == KEEP
    assert w.m.in_memory("a") and w.m.on_disk("a")
    w.m.unpin("b")
    w.store("d", 100 * MB)  # now c, a, b, d by last use: the files go for free
    plan = w.measure()
    assert plan.drop == ["a", "b"] and plan.write == ["c"]
    assert w.writes.count("a") == w.writes.count("b") == 1


def test_wanted_reads_once_and_loaded_is_memory_again_without_a_second_write():
    w = Worker()
    for key in "abc":
        w.store(key, 100 * MB)
    w.measure()
    assert w.m.on_disk("a") and not w.m.in_memory("a")
    assert w.m.wanted("a") and not w.m.wanted("a")  # the read in flight serves both
    assert not w.m.wanted("c") and not w.m.wanted("unknown")  # in memory; not here
    w.data["a"] = 100 * MB
    assert w.m.loaded("a") and w.m.in_memory("a") and w.m.managed == 200 * MB
    w.store("d", 100 * MB)
    assert w.measure() == Plan(write=["c"], drop=["a"])  # a read back: its file serves
    assert w.writes == ["a", "b", "c"] and not w.m.in_memory("a")
    assert w.m.spilled == sum(w.files.values())


def test_removing_a_key_says_what_to_do_with_its_file():
    w = Worker()
    for key in "abcd":
        w.store(key, 100 * MB)
    plan = w.measure(complete=False)
    assert plan.write == ["a", "b", "c"]
    w.finish_write("a")
    assert w.m.removed("a") == DELETE  # on disk: delete the file now
    assert w.m.removed("b") is None  # written now: wait for the write
    assert w.m.written("b", 1) == DELETE  # ... which then deletes its file
    assert w.m.removed("d") is None and w.m.removed("d") is None  # in memory; twice
    w.store("c", 10 * MB)  # c again, while its old value's write is in flight
    assert w.m.written("c", 1) == DELETE and w.m.in_memory("c")
    assert w.m.managed == 10 * MB and w.m.spilled == 0
    assert w.m.counts() == {"memory": 1, "disk": 0, "writing": 0, "reading": 0, "pinned": 0}


def test_removing_a_key_being_read_deletes_its_file_and_discards_the_read():
    w = Worker()
    for key in "abc":
        w.store(key, 100 * MB)
    w.measure()
    assert w.m.wanted("a")
    assert w.m.removed("a") == DELETE
    assert not w.m.loaded("a") and not w.m.in_memory("a") and w.m.managed == 100 * MB


def test_storing_over_a_spilled_key_deletes_its_old_file():
    w = Worker()
    for key in "abc":
        w.store(key, 100 * MB)
    w.measure()
    assert w.m.stored("a", 1 * MB) == DELETE and w.m.in_memory("a") and not w.m.on_disk("a")


def test_disk_trouble_stops_spilling_and_lowers_the_pause_mark_once():
    w = Worker()
    for key in "abc":
        w.store(key, 100 * MB)
    assert w.measure(complete=False).write == ["a", "b"]
    w.m.take_changes()
    w.m.write_failed("a", OSError(28, "No space left on device"))
    w.m.write_failed("b", OSError(28, "No space left on device"))
    assert w.m.disk_trouble and w.m.in_memory("a") and w.m.managed == 300 * MB
    [change] = w.m.take_changes()
    assert "No space left" in change and "pauses at 70%" in change
    assert not w.measure()  # no more writes: no retry loop
    assert w.m.should_pause(w.rss)  # 350 MB: over the spill mark, 70%
    assert w.m.should_pause(200 * MB)  # 67%: stays paused
    assert not w.m.should_pause(170 * MB)  # below 60%: resumes
    assert [change.split(":")[0] for change in w.m.take_changes()] == \
        ["paused", "resumed"]  # "spilling stopped" was said with the trouble
    w.m.write_failed("c", OSError("again"))  # a write in flight failing later: said once
    assert w.m.take_changes() == []


def test_disk_trouble_still_drops_values_that_have_a_file():
    w = Worker()
    for key in "abc":
        w.store(key, 100 * MB)
    w.measure()
    w.read("a")
    w.store("d", 100 * MB)
    w.m.write_failed("none", OSError("gone"))
    assert w.measure() == Plan(write=[], drop=["a"])


def test_pause_and_resume_with_hysteresis_logged_once_per_change():
    m = MemoryManager(1000, MemoryThresholds())
    assert [m.should_pause(rss) for rss in (790, 810, 900, 750, 701, 699, 750, 800)] == \
        [False, True, True, True, True, False, False, False]
    changes = m.take_changes()
    assert changes == ["paused: process 810 B, 81% of its memory limit",
                       "resumed: process 699 B, 70% of its memory limit"]
    # (logged as a warning, then as news: the center sends a paused worker's tasks elsewhere)
    assert [change.level for change in changes] == [logging.WARNING, logging.INFO]
    assert m.take_changes() == []


def test_with_spill_off_or_at_pause_the_worker_resumes_0_1_lower():
    for spill in (None, 0.8):
        m = MemoryManager(1000, MemoryThresholds(spill=spill))
        assert m.should_pause(801) and m.should_pause(701) and not m.should_pause(699)


def test_terminate_only_above_its_mark():
    m = MemoryManager(1000, MemoryThresholds())
    assert not m.should_terminate(950) and m.should_terminate(951)
    assert not MemoryManager(1000, MemoryThresholds(terminate=None)).should_terminate(2000)


def test_spilling_started_and_stopped_logged_once_each_not_per_result():
    w = Worker()
    for i in range(10):
        w.store(f"x{i}", 100 * MB)
        w.measure()
    [started] = w.m.take_changes()
    assert started == ("started spilling: 200.0 MiB of results in memory, 0 B on disk, "
                       "process 250.0 MiB")
    for i in range(8):
        w.m.removed(f"x{i}")
        w.data.pop(f"x{i}", None)
        w.measure()
    assert w.m.take_changes() == []  # x8 and x9 on disk and in memory: 200 MB > 180 MB
    w.m.removed("x8")
    w.data.pop("x8", None)
    w.measure()
    assert w.m.take_changes() == ["stopped spilling: 100.0 MiB of results in memory, 0 B on "
                                  "disk, process 150.0 MiB"]


def test_the_spill_mark_moves_results_for_memory_zfutures_does_not_count():
    w = Worker(baseline=190 * MB)  # 190 MB of the process is not results
    w.store("a", 10 * MB)
    w.store("b", 10 * MB)
    assert not w.measure()  # 210 MB: not above the spill mark, 210 MB
    w.store("c", 10 * MB)
    assert w.measure().write == ["a"]  # 220 MB -> 210 MB: enough (dask's would go to 180)
    assert w.rss == 210 * MB and w.m.managed == 20 * MB


def test_each_threshold_off_turns_its_part_off():
    w = Worker(thresholds=MemoryThresholds(target=None), baseline=0)
    for key in "ab":
        w.store(key, 100 * MB)
    assert not w.measure()  # 200 MB of results: only the spill mark (210 MB) counts
    w = Worker(thresholds=MemoryThresholds(spill=None), baseline=250 * MB)
    w.store("a", 10 * MB)
    assert not w.measure()  # a process of 260 MB, but results far under target
    w = Worker(thresholds=MemoryThresholds(target=None, spill=None))
    for key in "abcd":
        w.store(key, 100 * MB)
    assert not w.measure()
    m = MemoryManager(1000, MemoryThresholds(pause=None))
    assert not m.should_pause(999) and m.take_changes() == []


def test_no_memory_limit_decides_nothing():
    w = Worker(limit=0)
    for i in range(20):
        w.store(f"x{i}", 100 * MB)
    assert not w.measure() and w.m.managed == 2000 * MB
    assert not w.m.should_pause(w.rss) and not w.m.should_terminate(w.rss)
    assert w.m.take_changes() == []


@pytest.mark.parametrize("text, value", [("0.6", 0.6), ("1", 1.0), ("false", None),
                                          ("Off", None), (" none ", None)])
def test_parse_fraction(text, value):
    assert parse_fraction(text) == value


@pytest.mark.parametrize("text", ["0", "1.5", "-0.1", "60%", "", "yes"])
def test_parse_fraction_says_what_to_pass(text):
    with pytest.raises(ValueError, match=r"a number in \(0, 1\] such as 0.6, or 'false'"):
        parse_fraction(text)


def test_thresholds_checked():
    assert MemoryThresholds(target=None, spill=0.9, pause=None).spill == 0.9
    with pytest.raises(ValueError, match="out of order: target 0.8 > spill 0.7"):
        MemoryThresholds(target=0.8)
    with pytest.raises(ValueError, match="out of order: spill 0.9 > terminate 0.85"):
        MemoryThresholds(spill=0.9, pause=None, terminate=0.85)
    with pytest.raises(ValueError, match=r"pause=1.2: a number in \(0, 1\]"):
        MemoryThresholds(pause=1.2)


def test_the_examples_in_the_docstrings_hold():
    assert doctest.testmod(worker_memory).failed == 0
