"""The worker's disk threads (worker_disk.SpillThreads) on a real directory:
what they write reads back byte-identical, in the order asked, and each
outcome reaches the loop as the state machine's event."""
from __future__ import annotations

import os
import queue
import threading

import numpy as np
import pytest

from zfutures import serialize
from zfutures.spill_store import SpillError
from zfutures.worker_disk import SpillThreads
from zfutures.worker_memory import DELETE
from zfutures.worker_spilling import READ, WRITE

WAIT = 10.0


class Events:
    """The state machine's side: each spill_* event, as the loop thread would get it."""

    def __init__(self):
        self.calls: queue.Queue = queue.Queue()

    def call_soon(self, fn, *args):  # (from the disk threads)
        fn(*args)

    def spill_written(self, key, nbytes):
        self.calls.put(("written", key, nbytes))

    def spill_write_failed(self, key, error, disk=True):
        self.calls.put(("write_failed", key, error, disk))

    def spill_loaded(self, key, value):
        self.calls.put(("loaded", key, value))

    def spill_read_failed(self, key, error):
        self.calls.put(("read_failed", key, error))

    def next(self):
        return self.calls.get(timeout=WAIT)


@pytest.fixture
def disk(tmp_path):
    events = Events()
    threads = SpillThreads(str(tmp_path), events, events.call_soon)
    try:
        yield threads, events, tmp_path
    finally:
        threads.close()


def test_a_value_written_then_read_back_is_the_same_and_its_file_goes_when_deleted(disk):
    threads, events, tmp_path = disk
    value = np.random.default_rng(0).random(1_000_000)
    threads.submit([(WRITE, "x", value)])
    kind, key, nbytes = events.next()
    assert (kind, key) == ("written", "x") and nbytes >= value.nbytes  # (random: stored raw)
    [directory] = [p for p in tmp_path.iterdir() if p.name.startswith("zfutures-spill-")]
    assert str(os.getpid()) in directory.name and len(list(directory.iterdir())) == 1
    threads.submit([(READ, "x", None)])
    kind, key, loaded = events.next()
    assert (kind, key) == ("loaded", "x") and np.array_equal(loaded, value)
    threads.submit([(DELETE, "x", None)])
    threads.submit([(WRITE, "y", b"after")])  # (in order: the delete is done first)
    assert events.next()[:2] == ("written", "y")
    assert [p.name for p in directory.iterdir()] == ["1"]  # x's file (0) is gone


def test_the_data_server_gets_a_results_frames_as_stored_never_unpickled(disk):
    threads, events, _ = disk
    value = {"a": np.arange(100_000)}
    threads.submit([(WRITE, "x", value)])
    events.next()
    got: queue.Queue = queue.Queue()
    threads.read_frames(["x", "missing"], got.put)
    read = got.get(timeout=WAIT)
    assert np.array_equal(serialize.loads(read["x"])["a"], value["a"])
    assert isinstance(read["missing"], KeyError)


def test_a_value_that_cannot_be_pickled_is_the_values_fault_not_the_disks(disk):
    threads, events, _ = disk
    threads.submit([(WRITE, "lock", threading.Lock())])
    kind, key, error, disk_fault = events.next()
    assert (kind, key, disk_fault) == ("write_failed", "lock", False)
    assert isinstance(error, TypeError)


def test_a_spill_directory_that_cannot_be_made_is_the_disks_fault(tmp_path):
    events = Events()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    threads = SpillThreads(str(blocker / "spill"), events, events.call_soon)
    try:
        threads.submit([(WRITE, "x", b"value"), (WRITE, "y", b"value")])
        for key in "xy":  # each write says so; the manager logs it once
            kind, got_key, error, disk_fault = events.next()
            assert (kind, got_key, disk_fault) == ("write_failed", key, True)
            assert isinstance(error, SpillError) and "cannot create a spill directory" in str(error)
    finally:
        threads.close()


def test_a_file_removed_under_the_worker_is_a_failed_read(disk):
    threads, events, _ = disk
    threads.submit([(WRITE, "x", b"value" * 1000)])
    events.next()
    threads.store.remove("x")  # (as if lost)
    threads.submit([(READ, "x", None)])
    kind, key, error = events.next()
    assert (kind, key) == ("read_failed", "x") and isinstance(error, KeyError)


def test_closing_removes_the_directory_and_its_files(tmp_path):
    events = Events()
    threads = SpillThreads(str(tmp_path), events, events.call_soon)
    threads.submit([(WRITE, key, np.ones(100_000)) for key in "abc"])
    for _ in "abc":
        events.next()
    assert len(list(tmp_path.iterdir())) == 1
    threads.close()
    assert list(tmp_path.iterdir()) == []
    assert not any(t.is_alive() for t in threads._threads)


def test_a_worker_that_never_spills_makes_no_directory(tmp_path):
    events = Events()
    threads = SpillThreads(str(tmp_path), events, events.call_soon)
    threads.close()
    assert list(tmp_path.iterdir()) == []
