"""Running a worker's tasks (task_runner.py): on task threads, and on the loop thread.

The test plays the worker's loop: it makes the calls the runner asks of the
loop thread, on its own thread. Real threads, real pickled tasks, no sockets;
every wait bounded.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import wait_for

from zfutures import context
from zfutures.messages import ComputeItem, DoneItem, RunTask, TaskSeceded
from zfutures.serialize import dumps_task, loads
from zfutures.task_runner import SEND_RESULT_LIMIT, LoopMoved, TaskRunner, run_task
from zfutures.worker_state import Task, WorkerState

pytestmark = pytest.mark.timeout(60)

CLIENT = b"client"


class _NoReference:
    """No argument here is a reference to another task's result."""


def payload(fn, *args) -> list:
    frames, _ = dumps_task(fn, args, {}, reference_type=_NoReference)
    return frames


# ----------------------------------------------------------------------------- run_task

class _Holder:
    """An object whose size sizeof cannot see."""

    def __init__(self, array):
        self.array = array


def _make_holder(nbytes):
    return _Holder(np.zeros(nbytes, dtype=np.uint8))


def _send_result_task(fn, *args) -> Task:
    return Task("k", {}, 0, payload(fn, *args), 0, send_result=True)


def test_a_small_result_a_client_waits_for_is_pickled_to_travel_with_its_completion():
    before = time.time()
    key, value, nbytes, duration, error, pickled, start, slot = run_task(
        _send_result_task(sum, [1, 2, 3]), {}, 1)
    assert (key, value, error) == ("k", 6, None)
    assert loads(pickled) == 6
    # when it started (the wall clock) and on which thread: the task stream
    assert before <= start <= time.time() and duration >= 0 and slot == 1


def test_a_big_result_never_travels_with_its_completion_even_when_well_hidden():
    # in a tuple (sizeof sees it), then in an object (only pickling shows it)
    _, _, nbytes, _, _, pickled, _, _ = run_task(
        _send_result_task(tuple, [np.zeros(10**6), "label"]), {})
    assert nbytes >= 8 * 10**6 and pickled is None
    pickled = run_task(_send_result_task(_make_holder, 4 * SEND_RESULT_LIMIT), {})[5]
    assert pickled is None


def test_a_failing_task_returns_its_error_and_no_value():
    key, value, nbytes, _, error, pickled, start, _ = run_task(_send_result_task(int, "x"), {})
    assert (key, value, nbytes, pickled) == ("k", None, 0, None) and error and start > 0


# ----------------------------------------------------------------------------- task threads

def thread_name(_):
    return threading.current_thread().name


#: Set by the test to let wait_then_name return.
go_on = threading.Event()
#: Set by wait_then_name once it runs.
started = threading.Event()


def wait_then_name(seceding):
    started.set()
    if seceding:
        context.secede()
    assert go_on.wait(10), "the test did not let the task go on"
    return threading.current_thread().name


class Loop:
    """Plays the worker's loop for a runner: takes the calls it asks for, and
    makes them on the test's thread."""

    def __init__(self, nthreads: int = 1):
        self.state = WorkerState("tcp://me:1", nthreads=nthreads)
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        self.served_on: list[str] = []
        self.closed = threading.Event()
        self.flushes = 0
        owner = SimpleNamespace(executor=None, center_address="tcp://center:1", name="w",
                                secede=lambda key: self.runner.secede(key))
        self.runner = TaskRunner(owner, self.state, nthreads, self.call_soon, self.serve,
                                 self.closed)

    def call_soon(self, fn: Callable, *args) -> None:
        self.calls.put((fn, args))

    def serve(self) -> None:  # what the standby calls to run the loop
        self.served_on.append(threading.current_thread().name)

    def flush(self) -> None:
        self.flushes += 1

    def run_until(self, done: Callable[[], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            fn, args = self.calls.get(timeout=max(0.0, deadline - time.monotonic()))
            fn(*args)

    def compute(self, key: str, fn, *args) -> None:
        self.state.compute(ComputeItem(key, {}, run=0), payload(fn, *args), now=0.0)

    def hand_over(self) -> None:
        self.runner.start_tasks(stopping=False)


@pytest.fixture
def loop():
    go_on.clear()
    started.clear()
    made = Loop(nthreads=2)
    yield made
    go_on.set()
    made.closed.set()
    made.runner.stop()
    made.runner.release_standby()
    for thread in made.runner.threads:
        thread.join(5)


def test_tasks_run_on_the_task_threads_and_their_results_come_back_through_the_loop(loop):
    loop.runner.start()
    for i in range(2):
        loop.compute(f"t{i}", thread_name, i)
    loop.hand_over()
    loop.run_until(lambda: len(loop.state.data) == 2)
    assert set(loop.state.data.values()) <= {"zfutures-task-0", "zfutures-task-1"}
    assert [type(report) for report, _ in loop.state.to_center] == [DoneItem] * 2


def test_a_task_released_before_its_thread_took_it_is_not_run(loop):
    loop.compute("x", thread_name, 0)
    loop.state.release(["x"])  # (released while it waited in line)
    loop.hand_over()
    loop.runner.start()
    loop.run_until(lambda: not loop.state.executing)
    assert loop.state.data == {} and not loop.state.released_running
    assert loop.state.to_center == []


def test_a_seceding_task_gives_its_slot_to_a_new_thread_and_tells_the_center(loop):
    loop.runner.start()
    loop.compute("outer", wait_then_name, True)
    loop.hand_over()
    loop.run_until(lambda: len(loop.runner.threads) == 3)   # one more thread takes the slot
    assert loop.state.to_center == [(TaskSeceded("outer", 0), [])]
    assert "outer" in loop.state.seceded
    go_on.set()
    loop.run_until(lambda: "outer" in loop.state.data)
    assert "outer" not in loop.state.seceded


# ----------------------------------------------------------------------------- loop runs

def test_a_lone_task_set_aside_runs_on_the_loop_thread_and_is_flushed_at_once(loop):
    loop.state.run_direct(RunTask("x", 5), payload(thread_name, 0), CLIENT, now=0.0)
    loop.hand_over()
    assert loop.runner.job is not None and loop.runner.work.empty()  # set aside
    loop.runner.run_set_aside(loop.flush)
    assert loop.state.data == {"x": threading.current_thread().name}  # (the test's: the loop)
    assert loop.flushes == 1 and loop.state.to_clients  # its small result goes at once
    assert loop.runner.job is None and loop.served_on == []


def test_no_task_is_set_aside_for_a_loop_that_stops(loop):
    loop.state.run_direct(RunTask("x", 5), payload(thread_name, 0), CLIENT, now=0.0)
    loop.runner.start_tasks(stopping=True)
    assert loop.runner.job is None and not loop.runner.work.empty()


def test_a_long_task_on_the_loop_thread_is_left_to_finish_while_the_standby_takes_the_loop(
        loop):
    loop.state.run_direct(RunTask("long", 5), payload(wait_then_name, False), CLIENT,
                          now=0.0)
    loop.hand_over()
    outcome: dict = {}

    def run_on_loop_thread() -> None:
        try:
            loop.runner.run_set_aside(loop.flush)
        except LoopMoved:
            outcome["moved"] = True

    thread = threading.Thread(target=run_on_loop_thread, name="the-loop")
    thread.start()
    assert started.wait(10)
    wait_for(lambda: loop.served_on, message="the standby did not take the loop over")
    assert loop.served_on == ["zfutures-loop"]  # the standby runs the loop now
    go_on.set()
    thread.join(10)
    assert outcome == {"moved": True}   # the old loop thread leaves the loop, ...
    assert loop.flushes == 0 and "long" not in loop.state.data
    loop.run_until(lambda: "long" in loop.state.data)  # ... its result comes as a thread's
    assert loop.state.data["long"] == "the-loop"
