"""PoolExecutor behaves as concurrent.futures documents an Executor to behave.

Each test states one documented promise of ``concurrent.futures.Executor``
(or of ProcessPoolExecutor, which PoolExecutor replaces) and checks it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import subprocess
import sys
import textwrap
import time
import weakref

import numpy as np
import pytest
from conftest import wait_for, zfutures_children

import zfutures
from zfutures import PoolExecutor
from zfutures.messages import TaskItem

pytestmark = pytest.mark.timeout(90)


def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


def fail(message):
    raise ValueError(message)


def slow_square(x, delay=0.2):
    time.sleep(delay)
    return x * x


class Thing:
    def method(self):
        return None


def make_thing(_):
    return Thing()


class Holder:
    """An object with state, whose bound method is submitted."""

    def __init__(self):
        self.state = [1.0] * 1000

    def total(self, array):
        return sum(self.state) + float(array.sum())


@pytest.fixture(scope="module")
def pool():
    with PoolExecutor(2) as executor:
        yield executor
    wait_for(lambda: not zfutures_children(), message="the pool left processes behind")


def test_is_a_concurrent_futures_executor(pool):
    assert isinstance(pool, concurrent.futures.Executor)
    assert isinstance(pool.submit(pow, 2, 3), concurrent.futures.Future)


def test_submit_returns_a_future_of_the_call(pool):
    assert pool.submit(pow, 2, 8).result(timeout=10) == 256


def test_submit_passes_every_keyword_to_the_function(pool):
    # Even keywords that Executor.submit itself takes (key, pure, workers...).
    future = pool.submit(capture, 1, 2, key="k", pure=False, workers=3, fn=4)
    assert future.result(timeout=10) == ((1, 2), {"key": "k", "pure": False, "workers": 3,
                                                  "fn": 4})


def test_exceptions_propagate_to_the_future(pool):
    future = pool.submit(fail, "boom")
    with pytest.raises(ValueError, match="boom"):
        future.result(timeout=10)
    assert isinstance(future.exception(timeout=10), ValueError)


@pytest.mark.parametrize("worker_sees_the_file", [True, False])
def test_remote_traceback_shows_the_source_of_a_function_sent_by_value(
        pool, client_only_module, hide_from_workers, worker_sees_the_file):
    if not worker_sees_the_file:
        hide_from_workers(client_only_module)
    error = pool.submit(client_only_module.explode, "boom").exception(timeout=10)
    assert isinstance(error, RuntimeError) and error.args == ("boom",)
    text = str(error.__cause__)
    assert f'File "{client_only_module.__file__}", line 2, in explode' in text
    assert "raise RuntimeError(message)  # a comment only the source has" in text


def test_map_returns_results_in_order(pool):
    assert list(pool.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))


def test_map_stops_at_the_shortest_iterable(pool):
    assert list(pool.map(mul, [1, 2, 3], [10, 20])) == [10, 40]


def test_map_is_an_iterator_that_raises_at_the_failing_element(pool):
    results = pool.map(fail, ["a"])
    assert iter(results) is results
    results = pool.map(lambda x: 1 / x, [1, 2, 0, 4])
    assert next(results) == 1.0
    assert next(results) == 0.5
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_timeout_raises_timeout_error(pool):
    results = []
    with pytest.raises(concurrent.futures.TimeoutError):
        for value in pool.map(slow_square, [1, 2, 3], [0, 0, 5], timeout=1):
            results.append(value)
    assert results == [1, 4]


def test_map_with_chunksize_gives_the_same_results(pool):
    expected = [x * x for x in range(101)]
    for chunksize in (1, 7, 50, 200):
        assert list(pool.map(pow, range(101), [2] * 101, chunksize=chunksize)) == expected
    with pytest.raises(ValueError):
        pool.map(pow, [1], [1], chunksize=0)


def test_map_does_not_keep_yielded_results_alive(pool):
    refs = []
    for thing in pool.map(make_thing, range(5)):
        refs.append(weakref.ref(thing))
        del thing
    gc.collect()
    assert all(ref() is None for ref in refs)


def test_a_submitted_callable_and_its_arguments_are_not_kept_alive(pool):
    # Once its future is gone, nothing of a call stays alive: not the object
    # behind a bound method, not an argument (a big one travels out of band,
    # from its own memory), not the function.
    holder, array = Holder(), np.ones(100_000)
    function = lambda: 1  # noqa: E731
    refs = [weakref.ref(holder), weakref.ref(array), weakref.ref(function)]
    assert pool.submit(holder.total, array).result(timeout=10) == 101_000.0
    assert list(pool.map(holder.total, [array])) == [101_000.0]
    assert pool.submit(function).result(timeout=10) == 1
    del holder, array, function
    # (As CPython's test of it, waits a moment: the client's I/O thread lets
    # go of a call's buffers as it delivers the result, not before.)
    wait_for(lambda: gc.collect() is not None and all(ref() is None for ref in refs),
             timeout=5, message="a submitted call stayed alive")


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_keeps_no_reference_to_a_result_it_yielded(pool, chunksize):
    # (CPython #14406) The iterator is still going: it must hold the result
    # it gave neither through its future nor through the chunk it came in.
    results = pool.map(make_thing, range(6), chunksize=chunksize)
    for _ in range(4):
        thing = next(results)
        ref = weakref.ref(thing)
        del thing
        gc.collect()
        assert ref() is None
    assert len(list(results)) == 2


def test_results_do_not_keep_done_futures_alive(pool):
    future = pool.submit(make_thing, 0)
    future.result(timeout=10)
    ref = weakref.ref(future)
    del future
    gc.collect()
    assert ref() is None


def test_stdlib_wait_and_as_completed(pool):
    futures = [pool.submit(mul, i, 2) for i in range(6)]
    done, not_done = concurrent.futures.wait(futures, timeout=20)
    assert done == set(futures) and not not_done
    first = pool.submit(fail, "first")
    pending = pool.submit(slow_square, 3, 1)
    done, not_done = concurrent.futures.wait([first, pending], timeout=20,
                                             return_when=concurrent.futures.FIRST_EXCEPTION)
    assert first in done
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=20)) \
        == [0, 2, 4, 6, 8, 10]
    assert pending.result(timeout=10) == 9


def test_run_in_executor_from_asyncio(pool):
    async def main():
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(pool, mul, i, 3) for i in range(4)))

    assert asyncio.run(main()) == [0, 3, 6, 9]


def test_max_workers_must_be_positive():
    for bad in (0, -1):
        with pytest.raises(ValueError):
            PoolExecutor(bad)


def test_max_workers_is_the_size_of_the_local_cluster():
    with PoolExecutor(3) as pool:
        assert len(pool._executor.nthreads()) == 3


def assert_processes_stop(pool: PoolExecutor) -> None:
    processes = pool._executor.cluster.processes
    wait_for(lambda: all(p.poll() is not None for p in processes),
             message="shutdown left processes behind")


def test_shutdown_waits_for_pending_work_and_results_stay_readable():
    pool = PoolExecutor(1)
    futures = [pool.submit(slow_square, i, 0.1) for i in range(4)]
    pool.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == [0, 1, 4, 9]
    assert_processes_stop(pool)


def test_submit_after_shutdown_raises_runtime_error():
    pool = PoolExecutor(1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(pow, 2, 2)
    with pytest.raises(RuntimeError):
        pool.map(pow, [2], [2])
    pool.shutdown()  # twice is harmless


def test_context_manager_shuts_down_waiting():
    with PoolExecutor(1) as pool:
        future = pool.submit(slow_square, 5, 0.2)
    assert future.done() and future.result() == 25
    with pytest.raises(RuntimeError):
        pool.submit(pow, 1, 1)


def test_a_future_sent_to_the_cluster_is_running_and_cannot_be_cancelled():
    with PoolExecutor(1) as pool:
        first = pool.submit(slow_square, 3, 0.5)
        rest = [pool.submit(slow_square, i, 0.5) for i in range(10)]
        assert first.running()
        assert first.cancel() is False  # as the stdlib's: it is running
        assert not rest[-1].running()
        assert rest[-1].cancel() is True  # waiting in the pool: it never runs
        assert rest[-1].cancelled()
        assert first.result(timeout=10) == 9 and not first.cancelled()
        for future in rest[:-1]:
            future.cancel()


def test_shutdown_with_cancel_futures_cancels_what_has_not_started():
    pool = PoolExecutor(1)
    futures = [pool.submit(slow_square, i, 0.3) for i in range(30)]
    pool.shutdown(wait=True, cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    finished = [f for f in futures if not f.cancelled()]
    assert len(cancelled) > 20
    assert all(f.done() for f in futures)
    assert futures[0] in finished  # it had started: it finishes
    assert all(f.result() == i * i for i, f in enumerate(futures) if f in finished)


def test_shutdown_without_wait_returns_at_once_and_pending_work_finishes():
    pool = PoolExecutor(1)
    futures = [pool.submit(slow_square, i, 0.2) for i in range(5)]
    pool.shutdown(wait=False)
    # It did not wait for the 1 s of work; the work finishes all the same, as
    # with ProcessPoolExecutor, then the cluster stops.
    assert not futures[-1].done()
    assert [f.result(timeout=20) for f in futures] == [0, 1, 4, 9, 16]
    assert_processes_stop(pool)
    with pytest.raises(RuntimeError):
        pool.submit(pow, 1, 1)


def test_shutdown_without_wait_sends_the_work_held_back_by_max_workers(processes):
    center, address = processes.center()
    processes.worker(address, "--nthreads", "2")
    pool = PoolExecutor(1, address=address)  # one at a time: the rest waits unsent
    futures = [pool.submit(slow_square, i, 0.1) for i in range(4)]
    pool.shutdown(wait=False)
    done, not_done = concurrent.futures.wait(futures, timeout=30)
    assert not not_done, "shutdown(wait=False) left futures pending"
    assert [f.result() for f in futures] == [0, 1, 4, 9]


def test_a_pool_dropped_without_shutdown_finishes_its_work_then_stops():
    pool = PoolExecutor(1)
    futures = [pool.submit(slow_square, i, 0.1) for i in range(4)]
    processes = pool._executor.cluster.processes
    del pool
    gc.collect()
    assert [f.result(timeout=20) for f in futures] == [0, 1, 4, 9]
    wait_for(lambda: all(p.poll() is not None for p in processes),
             message="a dropped pool left processes behind")


def run_script(script: str, timeout: float = 60) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out


def test_the_program_does_not_exit_before_work_left_by_shutdown_without_wait(tmp_path):
    # "Regardless of the value of wait, the entire Python program will not
    # exit until all pending futures are done executing" (CPython gh-83386).
    path = tmp_path / "written"
    run_script(f"""
        import time
        from zfutures import PoolExecutor

        def write_later(path):
            time.sleep(0.5)
            with open(path, "w") as f:
                f.write("done")

        pool = PoolExecutor(1)
        pool.submit(write_later, {str(path)!r})
        pool.shutdown(wait=False)
    """)
    assert path.read_text() == "done"


def test_submit_from_an_atexit_hook_after_the_pools_own_raises_runtime_error():
    out = run_script("""
        import atexit

        def late():  # runs after the pool's exit handling, as in CPython
            try:
                pool.submit(pow, 2, 2)
            except RuntimeError as e:
                print("RuntimeError:", e, flush=True)
            else:
                print("submitted", flush=True)

        atexit.register(late)
        from zfutures import PoolExecutor

        pool = PoolExecutor(1)
        assert pool.submit(pow, 2, 3).result(timeout=20) == 8
    """)
    assert out.stdout.strip() == \
        "RuntimeError: cannot schedule new futures after interpreter shutdown"


def test_pending_work_finishes_at_interpreter_exit():
    # As with ProcessPoolExecutor, a program that exits without shutdown()
    # lets submitted work finish, then leaves no process behind.
    script = textwrap.dedent("""
        import time
        from zfutures import PoolExecutor

        def slow(x):
            time.sleep(0.3)
            return x

        pool = PoolExecutor(1)
        future = pool.submit(slow, 7)
        future.add_done_callback(lambda f: print("done", f.result(), flush=True))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "done 7"


def test_connects_to_a_running_cluster_and_caps_concurrency(processes):
    center, address = processes.center()
    processes.worker(address, "--nthreads", "4")
    with PoolExecutor(2, address=address) as pool:
        results = list(pool.map(slow_square, range(6), [0.05] * 6))
    assert results == [x * x for x in range(6)]


def test_differential_evolution_with_pool_map_matches_serial():
    optimize = pytest.importorskip("scipy.optimize")
    bounds = [(-5, 5), (-5, 5)]
    kwargs = dict(seed=1, maxiter=20, popsize=8, tol=1e-8, polish=False)
    serial = optimize.differential_evolution(optimize.rosen, bounds, workers=1,
                                             updating="deferred", **kwargs)
    with PoolExecutor(2) as pool:
        parallel = optimize.differential_evolution(optimize.rosen, bounds, workers=pool.map,
                                                   updating="deferred", **kwargs)
    assert parallel.x.tolist() == serial.x.tolist()
    assert parallel.fun == serial.fun


def test_exported_from_the_package():
    assert zfutures.PoolExecutor is PoolExecutor


# --------------------------------------------------------------------------- the feeder alone


class RecordingIO:
    """Stands for the client I/O: records the submits the feeder hands it."""

    def __init__(self):
        self.sent: list[str] = []

    def call(self, op, tasks, eager, own_key):
        assert (op, eager, own_key) == ("submit", True, True)
        self.sent += [item.key for item, _, _ in tasks]


class FakeExecutor:
    def __init__(self):
        self._io = RecordingIO()
        self._closed = False


def feeder_with_tasks(n: int, threads: int = 2, cap: bool = False):
    from zfutures.pool import _Feeder, _feeders

    feeder = _Feeder(FakeExecutor(), threads, cap)
    _feeders.discard(feeder)  # (nothing to close at exit: no wait for its tasks then)
    futures = [zfutures.Future(f"task-{i}", None) for i in range(n)]
    feeder.put([(TaskItem(f.key, [], 0), [], f) for f in futures])
    return feeder, futures


def test_feeder_sends_the_threads_and_one_more_and_the_next_as_one_finishes():
    from zfutures.pool import EXTRA_QUEUED_CALLS

    feeder, futures = feeder_with_tasks(10)
    out = 2 + EXTRA_QUEUED_CALLS
    assert feeder.executor._io.sent == [f.key for f in futures[:out]]
    assert [f.running() for f in futures] == [True] * out + [False] * (10 - out)
    futures[0]._set_value(0)
    assert feeder.executor._io.sent[out:] == [futures[out].key]
    assert futures[out].running()


def test_feeder_skips_tasks_cancelled_while_they_waited():
    feeder, futures = feeder_with_tasks(6)
    assert futures[3].cancel() and futures[4].cancel()
    assert futures[0].cancel() is False  # sent: running
    futures[0]._set_value(0)
    assert futures[5].running() and futures[5].key in feeder.executor._io.sent
    assert futures[3].key not in feeder.executor._io.sent


def test_feeder_with_a_cap_never_has_more_out():
    feeder, futures = feeder_with_tasks(5, threads=2, cap=True)
    assert feeder.executor._io.sent == [futures[0].key, futures[1].key]
    futures[1]._set_value(1)
    assert feeder.executor._io.sent[2:] == [futures[2].key]


def test_feeder_fails_the_tasks_not_sent_when_the_cluster_is_gone():
    feeder, futures = feeder_with_tasks(6)
    futures[0]._set_error(zfutures.ConnectionError("the center is gone"))
    for future in futures[3:]:
        with pytest.raises(zfutures.ConnectionError):
            future.result(timeout=0)
    assert not any(f.done() for f in futures[1:3])  # sent: they hear for themselves
