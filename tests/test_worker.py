"""A worker's loop (worker.py): what it does with each message from its center.

A real :class:`~zfutures.worker.Worker` runs on threads of this process
against a fake center, a ROUTER socket the test reads and writes: the
registration, the table of handlers for the center's messages, reports,
leaving, and what it drops. Every wait is bounded.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

import fake_center
import msgpack
import pytest
import raw_wire
from conftest import wait_for
from fake_center import FakeCenter

import zfutures.worker
from zfutures import protocol, serialize
from zfutures.logs import RateLimitedLog
from zfutures.messages import (
    MESSAGES,
    Closing,
    Compute,
    ComputeItem,
    DoneItem,
    FailedItem,
    Heartbeat,
    KeyAdded,
    KeysAdded,
    Paused,
    Refused,
    RegisterWorker,
    ReleaseKeys,
    Reregister,
    Retire,
    Retired,
    TaskErred,
    TaskFinished,
    TaskSeceded,
    Unregister,
    Welcome,
)
from zfutures.worker import Worker

pytestmark = pytest.mark.timeout(60)


def inc(x):
    return x + 1


class _NoReference:
    """No argument here is a reference to another task's result."""


def payload(fn, *args) -> list:
    frames, _ = serialize.dumps_task(fn, args, {}, reference_type=_NoReference)
    return frames


def compute(center: FakeCenter, key: str, fn=inc, *args, run: int = 1, **fields: Any) -> None:
    """Send the worker a compute of ``fn(*args)`` as ``key``."""
    frames = payload(fn, *args or (1,))
    center.send(Compute([ComputeItem(key, {}, run, len(frames), **fields)]), frames)


@pytest.fixture
def center():
    with fake_center.running() as center:
        yield center


class Running:
    """A worker serving on a thread of this process."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self.thread = threading.Thread(target=worker.run, daemon=True, name="test-worker")
        self.thread.start()

    def ended(self, timeout: float = 10) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


@pytest.fixture
def start(center, monkeypatch):
    """``start(**options)``: a worker of ``center``, stopped at the end of the test."""
    # A log of its own: the drops other tests logged do not hold these back.
    monkeypatch.setattr(zfutures.worker, "dropped", RateLimitedLog(zfutures.worker.logger))
    started: list[Running] = []

    def start(**options: Any) -> Running:
        options = {"host": "127.0.0.1", "heartbeat_interval": 0.1, **options}
        running = Running(Worker(center.address, **options))
        started.append(running)
        return running

    yield start
    for running in started:
        running.worker.stop()
        running.worker.stop()  # (a second call leaves at once)
        assert running.ended(), "the worker did not stop"


# ----------------------------------------------------------------------------- registration

def test_a_worker_registers_with_what_it_is_and_then_heartbeats(center, start):
    running = start(nthreads=3, name="w1", resources={"GPU": 1.0})
    registration = center.expect(RegisterWorker)
    assert registration.address == running.worker.address and registration.name == "w1"
    assert (registration.nthreads, registration.resources, registration.keys) == \
        (3, {"GPU": 1.0}, [])
    assert registration.protocol == protocol.PROTOCOL_VERSION
    center.send(Welcome(protocol.PROTOCOL_VERSION))
    wait_for(lambda: running.worker.registered, timeout=5)
    center.expect(Heartbeat, timeout=2, skip=())


def test_a_worker_the_center_does_not_know_registers_again(center, start):
    start()
    center.register()
    center.send(Reregister())
    assert center.expect(RegisterWorker).keys == []


def test_a_worker_whose_center_goes_silent_reconnects_and_registers_again(center, start):
    start(heartbeat_timeout=0.5)
    center.register()
    first = center.peer
    center.expect(RegisterWorker, timeout=5)  # (after half a second of silence)
    assert center.peer != first  # from a new socket


def test_a_worker_whose_center_is_closing_registers_anew_with_its_keys(center, start):
    start()
    center.register()
    compute(center, "x")
    center.expect(TaskFinished)
    center.send(Closing())
    registration = center.expect(RegisterWorker)
    assert registration.keys == ["x"] and registration.nbytes[0] > 0


def test_a_worker_the_center_refuses_stops(center, start):
    running = start()
    center.expect(RegisterWorker)
    center.send(Refused("wrong protocol"))
    assert running.ended()


# ----------------------------------------------------------------------------- tasks

def test_a_task_the_center_sends_runs_and_is_reported_with_its_run(center, start):
    running = start()
    center.register()
    compute(center, "x", inc, 41, run=7)
    [item] = center.expect(TaskFinished).tasks
    assert (item.key, item.run) == ("x", 7) and item.nbytes > 0 and item.nframes == 0
    assert running.worker.state.data == {"x": 42}


def test_a_small_result_asked_for_rides_with_its_completion(center, start):
    start()
    center.register()
    compute(center, "x", inc, 41, send_result=True)  # (the wire's name for it)
    [item] = center.expect(TaskFinished).tasks
    assert item.nframes == len(center.payload) > 0
    assert serialize.loads(center.payload) == 42


def test_a_failing_task_is_reported_with_its_error(center, start):
    start()
    center.register()
    compute(center, "x", inc, "not a number")
    [item] = center.expect(TaskErred).tasks
    assert item.key == "x" and item.nframes == len(center.payload) > 0


def test_reports_of_a_kind_go_many_to_a_message_in_their_order(center, start):
    running = start()
    center.register()
    worker = running.worker
    wait_for(lambda: worker.registered, timeout=5)
    reports = [(DoneItem("a", 8, 1, nframes=1), [b"result a"]), (KeyAdded("k", 16), []),
               (DoneItem("b", 8, 4), []), (TaskSeceded("s", 3), []),
               (FailedItem("e", 2, nframes=1), [b"error e"]), (DoneItem("c", 8, 5), []),
               (KeyAdded("l", 32), [])]
    worker.call_soon(worker._report, reports)  # (on the loop thread, which owns the socket)
    # What came before a message of its own goes before it: a task's completion
    # told after a pause would have the center take the running one back.
    assert center.expect(TaskFinished) == TaskFinished([DoneItem("a", 8, 1, nframes=1),
                                                        DoneItem("b", 8, 4)])
    assert [bytes(frame) for frame in center.payload] == [b"result a"]
    assert center.expect(KeysAdded) == KeysAdded([KeyAdded("k", 16)])
    assert center.expect(TaskSeceded) == TaskSeceded("s", 3)
    assert center.expect(TaskErred) == TaskErred([FailedItem("e", 2, nframes=1)])
    assert [bytes(frame) for frame in center.payload] == [b"error e"]
    assert center.expect(TaskFinished) == TaskFinished([DoneItem("c", 8, 5)])
    assert center.expect(KeysAdded) == KeysAdded([KeyAdded("l", 32)])


def test_released_keys_are_dropped(center, start):
    running = start()
    center.register()
    compute(center, "x")
    center.expect(TaskFinished)
    center.send(ReleaseKeys(["x"]))
    wait_for(lambda: not running.worker.state.data, timeout=5)


def test_a_worker_over_its_memory_mark_pauses_and_says_so(center, start):
    running = start(memory_limit=1)  # (any process is over it)
    center.register()
    assert center.expect(Paused).paused is True
    compute(center, "x")
    state = running.worker.state
    wait_for(lambda: "x" in state.tasks, timeout=10)  # it took the task ...
    assert "x" in [task.key for task in state.ready] and not state.executing  # ... and waits
    assert TaskFinished not in center.sent_within(0.2)
    center.send(Reregister())  # a new center hears it too
    center.expect(RegisterWorker)
    assert center.expect(Paused).paused is True


# ----------------------------------------------------------------------------- what is dropped

#: Messages from a center that a worker has no use for: dropped, logged, and
#: the worker goes on.
DROPPED = {
    "bytes that are not msgpack": [b"\xc1 not msgpack"],
    "an empty frame": [b""],
    "a header that is not a map": [msgpack.packb(["compute"])],
    "a header without op": [msgpack.packb({"tasks": []})],
    "an unknown op": [msgpack.packb({"op": "explode"})],
    "an op for clients": [raw_wire.header("reply", id=1, result=None)],
    "an op for the center": [raw_wire.header("task-finished", tasks=[])],
    "compute without tasks": [raw_wire.header("compute")],
    "release-keys with keys not a list": [raw_wire.header("release-keys", keys=3)],
    "compute announcing frames it lacks": [raw_wire.header(
        "compute", tasks=[{"key": "y", "deps": {}, "run": 1, "nframes": 2}])],
}


def test_what_a_worker_has_no_use_for_from_its_center_is_dropped_and_logged(
        center, start, caplog):
    caplog.set_level(logging.WARNING, logger="zfutures.worker")
    running = start()
    center.register()
    for frames in DROPPED.values():
        for _ in range(20):
            center.send_raw(*frames)
    compute(center, "x")  # handled after all of them: the worker goes on
    center.expect(TaskFinished)
    assert running.worker.state.tasks == {} and "y" not in running.worker.state.data
    logged = [r.getMessage() for r in caplog.records if r.name == "zfutures.worker"]
    assert any("dropped a malformed message" in m for m in logged), logged
    assert len(logged) <= 5, logged  # rate-limited: a few lines for 200 messages


def test_every_op_the_center_sends_a_worker_has_a_handler_for(center):
    to_workers = {"welcome", "compute", "release-keys", "acquire", "synced", "retired",
                  "drop-direct", "workers-left", "reregister", "refused", "closing", "heartbeat"}
    worker = Worker(center.address, host="127.0.0.1")
    try:
        assert set(worker.center_handlers) == {MESSAGES[op] for op in to_workers}
    finally:
        worker.fetcher.close()
        worker.data_server.server.close(linger=0)
        worker.context.term()
        worker.waker.close()


# ----------------------------------------------------------------------------- leaving

def test_a_worker_holding_nothing_leaves_at_once(center, start):
    running = start()
    center.register()
    wait_for(lambda: running.worker.registered, timeout=5)
    running.worker.stop()
    assert center.expect(Unregister) == Unregister()
    assert running.ended()


def test_a_leaving_worker_hands_its_keys_on_and_goes_when_the_center_says(center, start):
    running = start(retire_timeout=30)
    center.register()
    compute(center, "x")
    center.expect(TaskFinished)
    running.worker.stop()
    center.expect(Retire)
    assert not running.ended(timeout=0.3)  # waits for the center
    center.send(Retired())
    center.expect(Unregister)
    assert running.ended()


def test_a_leaving_worker_the_center_does_not_answer_goes_after_its_retire_timeout(
        center, start):
    running = start(retire_timeout=0.5)
    center.register()
    compute(center, "x")
    center.expect(TaskFinished)
    began = time.monotonic()
    running.worker.stop()
    center.expect(Retire)
    center.expect(Unregister, timeout=5)
    assert running.ended() and time.monotonic() - began >= 0.5
