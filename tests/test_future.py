"""The Future on its own, completed by hand as the executor's I/O thread would:
the standard library's waits and callbacks see every completion, however
the two threads interleave. No cluster, no sockets."""
from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import random
import threading

import pytest

from zfutures import Future


def futures(n: int) -> list[Future]:
    return [Future(f"k-{i}", None) for i in range(n)]


def complete_all(fs: list[Future], start: threading.Event) -> threading.Thread:
    """Complete ``fs`` from another thread, in random order, some with errors."""
    order = list(fs)
    random.shuffle(order)

    def run() -> None:
        start.wait(10)
        for i, f in enumerate(order):
            if i % 7 == 0:
                f._set_error(ValueError(f.key))
            else:
                f._set_value(f.key)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.timeout(60)
@pytest.mark.parametrize("round_", range(5))
def test_every_way_of_waiting_sees_every_completion(round_):
    fs = futures(2000)
    start = threading.Event()
    called: list[Future] = []
    lock = threading.Lock()

    def callback(f: Future) -> None:
        with lock:
            called.append(f)

    completer = complete_all(fs, start)
    start.set()
    # while they complete: callbacks on some, results on others, then the
    # stdlib's wait and as_completed on all
    for f in fs[::3]:
        f.add_done_callback(callback)
    for f in fs[1::5]:
        try:
            assert f.result(timeout=10) == f.key
        except ValueError as e:
            assert e.args == (f.key,)
    done, not_done = concurrent.futures.wait(fs, timeout=10)
    assert not not_done and len(done) == len(fs)
    assert len(list(concurrent.futures.as_completed(fs, timeout=10))) == len(fs)
    completer.join(10)
    assert not completer.is_alive()
    assert sorted(f.key for f in called) == sorted(f.key for f in fs[::3])
    for f in fs:
        assert f.done() and f.status in ("finished", "error")


@pytest.mark.timeout(60)
def test_a_waiter_that_starts_just_as_the_future_completes_is_woken():
    # The race the lazy condition must not lose: result() making the condition
    # while the other thread completes the future. Many tries, both orders.
    for _ in range(3000):
        f = Future("k", None)
        go = threading.Barrier(2)

        def complete(f: Future = f, go: threading.Barrier = go) -> None:
            go.wait(5)
            f._set_value(1)

        thread = threading.Thread(target=complete)
        thread.start()
        go.wait(5)
        assert f.result(timeout=5) == 1
        thread.join(5)


def test_a_callback_added_after_completion_runs_at_once():
    [f] = futures(1)
    f._set_value(3)
    seen = []
    f.add_done_callback(lambda f: seen.append(f.result()))
    assert seen == [3]


def test_completing_twice_or_after_cancelling_keeps_the_first_outcome():
    a, b = futures(2)
    a._set_value(1)
    a._set_value(2)
    a._set_error(ValueError())
    assert a.result() == 1
    b._set_cancelled()
    b._set_value(1)
    assert b.cancelled() and b.status == "cancelled"


def test_asyncio_can_await_a_wrapped_future():
    [f] = futures(1)

    async def main() -> str:
        wrapped = asyncio.wrap_future(f)  # (its callback is on f before f completes)
        threading.Thread(target=f._set_value, args=("v",)).start()
        return await asyncio.wait_for(wrapped, 10)

    assert asyncio.run(main()) == "v"


def test_a_future_no_one_waits_on_costs_the_collector_two_objects():
    # Thousands of futures come from one map; the collector traverses every
    # object they own, again and again while they live.
    gc.collect()
    before = len(gc.get_objects())
    fs = futures(1000)
    for f in fs:
        f._set_value(None)
    assert len(gc.get_objects()) - before <= 2 * 1000 + 10  # the future and its __dict__


class _Executor:
    """Stands in for an Executor (a FutureOwner): records which futures
    someone waits on."""

    def __init__(self):
        self.watched: list[str] = []

    def _watch(self, future: Future) -> None:
        self.watched.append(future.key)

    def _hold(self, future: Future) -> None:  # (a future with callbacks)
        pass

    def _run_callback(self, fn, future: Future) -> None:
        fn(future)

    def _unref(self, key: str) -> None:
        pass


def test_a_wait_by_other_means_than_result_is_told_to_the_io_once():
    # The I/O thread may have left a lone task's answer to its caller (see
    # ClientIO.watch): a callback, or a wait of the standard library, must
    # make it read that answer itself.
    executor = _Executor()
    pending, done = Future("pending", executor), Future("done", executor)
    done._set_value(1)
    concurrent.futures.wait([pending, done], timeout=0)
    concurrent.futures.wait([pending], timeout=0)  # (once is enough)
    pending.add_done_callback(lambda f: None)
    assert executor.watched == ["pending"]
    called = Future("callback", executor)
    called.add_done_callback(lambda f: None)
    assert executor.watched == ["pending", "callback"]
