"""The client's shell: who does a turn of the loop, and that every wait ends.

No center answers here: the ClientIO's sockets connect to nothing, and its
core (tested on its own in test_client_state.py) is looked at directly.
"""
from __future__ import annotations

import concurrent.futures
import threading

import pytest

from zfutures import Future
from zfutures.client_io import ClientIO
from zfutures.errors import ConnectionError
from zfutures.messages import Submit, TaskItem, WhoHas

A1 = "tcp://127.0.0.1:1"


@pytest.fixture
def io():
    io = ClientIO("tcp://127.0.0.1:9", "c", heartbeat_interval=600)
    yield io
    io.context.destroy(linger=0)


def lone(key: str) -> tuple[TaskItem, list, Future]:
    return TaskItem(key, [], 0, 1), [b"payload"], Future(key, None)


def test_a_caller_sends_a_lone_task_itself_and_leaves_its_submit_for_the_next_turn(io):
    # No I/O thread runs here: the lock is free, so the calling thread does
    # the work. The task leaves for its worker at once; the center's copy of
    # the submit waits for the loop's next turn (when the answer comes), and
    # the I/O thread is told to wait on the socket made for that worker.
    io.core.direct.worker = A1
    io.call_now("submit", [lone("alone")], False, True)
    assert A1 in io.workers and io.core.keys["alone"].direct is not None
    ((cls, (sent,)),) = io.core.outbox.queued()
    assert cls is Submit and sent.direct_worker == A1
    assert io.waker.pending
    io.lock.acquire()  # the I/O thread is at the sockets: it is handed over
    try:
        io.call_now("submit", [lone("next")], False, True)
        assert "next" not in io.core.keys and not io.commands.empty()
    finally:
        io.lock.release()


def test_a_burst_of_submits_goes_to_the_io_thread_after_the_first(io):
    # The first may go straight to a worker, sent by the caller; the others
    # cannot while it is in flight, and the I/O thread sends them together.
    io.core.direct.worker = A1
    for key in ("first", "second", "third"):
        item, frames, future = lone(key)
        io.submit(item, frames, future, own_key=True)
    assert io.core.keys["first"].direct is not None
    assert "second" not in io.core.keys and io.waker.pending
    io.loop.take_commands()  # (the I/O thread's turn)
    ((cls, items),) = io.core.outbox.queued()
    assert [item.key for item in items] == ["first", "second", "third"]


def test_the_io_thread_ends_as_soon_as_it_is_closed():
    # Not at its next heartbeat: an Executor's shutdown waits for it.
    io = ClientIO("tcp://127.0.0.1:9", "c", heartbeat_interval=600)
    io.center.connect(io.address)  # (nobody answers: no matter)
    io.thread.start()
    io.stop(timeout=10)
    assert not io.thread.is_alive()


def test_commands_that_come_after_the_io_thread_ended_end_at_once():
    # A submit racing a shutdown, or a call after the I/O failed: nothing
    # would ever answer them.
    io = ClientIO("tcp://127.0.0.1:9", "c", heartbeat_interval=600)
    io.center.connect(io.address)
    io.thread.start()
    io.stop(timeout=10)
    assert io.failed
    item, frames, future = lone("late")
    io.call("submit", [(item, frames, future)])
    assert future.cancelled()
    result: concurrent.futures.Future = concurrent.futures.Future()
    io.call("rpc", WhoHas, {"keys": []}, result)
    with pytest.raises(ConnectionError):
        result.result(0)


def test_a_bug_in_the_loop_ends_every_wait_instead_of_hanging_it(io, caplog):
    io.center.connect(io.address)
    item, frames, future = lone("x")
    io.thread.start()
    io.call("submit", [(item, frames, future)])
    sent = threading.Event()

    def broken(*args):
        sent.set()
        raise SystemExit("a bug")  # (even one that is no Exception)

    io._commands["rpc"] = broken
    result: concurrent.futures.Future = concurrent.futures.Future()
    io.call("rpc", WhoHas, {"keys": []}, result)
    io.thread.join(10)
    assert sent.is_set() and not io.thread.is_alive()
    with pytest.raises(ConnectionError):
        future.result(5)
    with pytest.raises(ConnectionError):
        io.wait(result, 5)


def test_a_big_map_goes_to_the_io_thread_in_parts_none_alone(io):
    # Its turns stay short (timers run between them); no part is a lone
    # task, which could go straight to a worker.
    for n, expected in ((2501, [1000, 1501]), (5000, [1000] * 5), (2000, [2000])):
        tasks = [lone(f"k{i}") for i in range(n)]
        io.call("submit", tasks, False, False)
        parts = []
        while not io.commands.empty():
            op, part, *flags = io.commands.get_nowait()
            assert op == "submit" and flags == [False, False]
            parts.append(part)
        assert [len(part) for part in parts] == expected
        assert [task for part in parts for task in part] == tasks
