"""Lone tasks sent straight to a worker: the result comes back in two hops,
the center hears of the task on the side, and nothing is lost or doubled.

These run real clusters; the state machines' side of it is unit-tested in
test_scheduler_direct.py and test_worker_state.py ("direct tasks").
"""
from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time

import numpy as np
import pytest
from conftest import cluster_fixture, wait_for

import zfutures
from zfutures import Executor, client_io

pytestmark = pytest.mark.timeout(120)


def inc(x):
    return x + 1


def identity(x):
    return x


def fail(message):
    raise ValueError(message)


def pid_after(path, x):
    """Write this process's pid to ``path``, then wait for the file to go;
    return at once if ``path + ".done"`` exists."""
    if os.path.exists(path + ".done"):
        return x + 1
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    deadline = time.monotonic() + 60
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return x + 1


def sleep_then(seconds, x):
    time.sleep(seconds)
    return x


def thread_name(x):
    return threading.current_thread().name, x


def loop_threads(_=None):
    return sum(t.name == "zfutures-loop" for t in threading.enumerate())


def halves_on_the_same_worker(n):
    """Wait, inside a task, on another task (a one-worker cluster runs it here)."""
    executor = zfutures.get_executor()
    return executor.submit(inc, n // 2, pure=False).result(timeout=30)


#: Two single-threaded workers, local or started by hand (see conftest.CLUSTER_KINDS).
cluster = cluster_fixture(timeout=20)


def test_sequential_calls_are_answered_straight_by_a_worker(cluster):
    ex = cluster
    ex.submit(inc, -1).result(timeout=10)  # a worker to send the next ones to
    before = ex._io.core.direct.answers
    for i in range(30):
        assert ex.submit(inc, i).result(timeout=10) == i + 1
        assert ex.submit(inc, i, pure=False).result(timeout=10) == i + 1
    # (a few may go through the center: a worker busy in the center's eyes)
    assert ex._io.core.direct.answers - before >= 40
    wait_for(lambda: not ex.scheduler_info()["tasks"], timeout=10,
             message="the center kept tasks its client let go of")


def test_an_impure_direct_result_is_the_value_the_cluster_keeps(cluster):
    ex = cluster
    ex.submit(inc, -1).result(timeout=10)
    before = ex._io.core.direct.answers
    for _ in range(20):
        x = ex.submit(np.random.random, 3, pure=False)
        seen = x.result(timeout=10)
        # A task that reads x on the cluster sees the same value.
        assert np.array_equal(ex.submit(identity, x).result(timeout=10), seen)
        del x
    assert ex._io.core.direct.answers > before


def test_a_direct_tasks_error_reaches_its_future(cluster):
    ex = cluster
    ex.submit(inc, -1).result(timeout=10)
    with pytest.raises(ValueError, match="straight"):
        ex.submit(fail, "straight").result(timeout=10)
    assert ex.submit(inc, 1).result(timeout=10) == 2


def test_a_cancelled_direct_task_is_cancelled_and_the_next_one_runs(cluster, tmp_path):
    ex = cluster
    ex.submit(inc, -1).result(timeout=10)
    path = str(tmp_path / "running")
    f = ex.submit(pid_after, path, 1, pure=False)
    wait_for(lambda: os.path.exists(path), timeout=10, message="the task did not start")
    assert f.cancel()
    os.remove(path)  # let it end
    assert f.cancelled()
    assert ex.submit(inc, 2, pure=False).result(timeout=10) == 3
    wait_for(lambda: "processing" not in ex.scheduler_info()["tasks"], timeout=10,
             message="the center still counts the cancelled task as running")


def test_a_direct_task_whose_worker_dies_is_run_elsewhere(tmp_path):
    with Executor(n_workers=2, threads_per_worker=1, timeout=20) as ex:
        ex.submit(inc, -1).result(timeout=10)
        path = str(tmp_path / "running")
        f = ex.submit(pid_after, path, 41, pure=False)
        wait_for(lambda: os.path.exists(path) and os.path.getsize(path), timeout=10,
                 message="the task did not start")
        with open(path) as file:
            victim = int(file.read())
        assert ex._io.core.keys[f.key].direct is not None  # it went straight there
        open(path + ".done", "w").close()  # the rerun elsewhere returns at once
        os.kill(victim, signal.SIGKILL)
        assert f.result(timeout=60) == 42
        assert ex.submit(inc, 1).result(timeout=20) == 2


def test_many_threads_calling_at_once_each_get_their_own_answer(cluster):
    ex = cluster
    ex.submit(inc, -1).result(timeout=10)
    errors = []

    def calls(offset):
        try:
            for i in range(50):
                assert ex.submit(inc, offset + i, pure=False).result(timeout=20) == offset + i + 1
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=calls, args=(1000 * t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)


def test_the_same_pure_call_again_and_again_after_letting_go_of_it(cluster):
    # Each release travels center -> worker while the next call goes client
    # -> worker: the worker must not answer from (or keep) a copy it is being
    # told to drop.
    ex = cluster
    for _ in range(100):
        assert ex.submit(inc, 1).result(timeout=10) == 2
        assert ex.gather(ex.submit(inc, 2), timeout=10) == 3


# ---------------------------------------------------------------------- on the loop thread

def test_a_lone_direct_task_runs_on_its_workers_loop_thread(cluster):
    ex = cluster
    ex.submit(inc, -1).result(timeout=10)
    names = [ex.submit(thread_name, i, pure=False).result(timeout=10)[0] for i in range(20)]
    # (a few may go through the center, to a task thread)
    assert names.count("zfutures-loop") >= 15, names


def test_a_long_direct_task_leaves_its_worker_serving_and_the_loop_moves_on(tmp_path):
    with Executor(n_workers=2, threads_per_worker=1, timeout=20) as ex:
        first = sorted(ex.scheduler_info()["workers"])[0]
        big = ex.submit(np.ones, 1_000_000, workers=[first])  # stays there: fetched
        ex.submit(inc, 0, workers=[first]).result(timeout=10)  # the next goes there
        path = str(tmp_path / "running")
        long = ex.submit(pid_after, path, 1, pure=False)
        wait_for(lambda: os.path.exists(path) and os.path.getsize(path), timeout=10,
                 message="the task did not start")
        assert ex._io.core.keys[long.key].direct.address == first
        # The task runs on the loop thread, and the standby takes the loop
        # over: the worker still serves its data while the task runs.
        assert big.result(timeout=10).sum() == 1_000_000
        assert not long.done()
        os.remove(path)
        assert long.result(timeout=20) == 2
        # Lone tasks run on the loop's new thread.
        names = {ex.submit(thread_name, i, pure=False).result(timeout=10)[0]
                 for i in range(10)}
        assert "zfutures-loop" in names


def test_a_long_task_left_behind_by_the_loop_ends_with_its_thread(tmp_path):
    # Two threads: while the long task runs where the loop left it, the loop
    # runs short ones on its new thread. The long one's thread must then end
    # as any task thread's would, not take up the loop again.
    with Executor(n_workers=1, threads_per_worker=2, timeout=20) as ex:
        ex.submit(inc, -1).result(timeout=10)
        worker_pid = ex.submit(os.getpid, pure=False).result(timeout=10)
        path = str(tmp_path / "running")
        long = ex.submit(pid_after, path, 1, pure=False)
        wait_for(lambda: os.path.exists(path) and os.path.getsize(path), timeout=10,
                 message="the task did not start")
        assert ex._io.core.keys[long.key].direct is not None
        with Executor(ex.address, timeout=20) as other:  # (one direct task per client)
            other.submit(inc, -1).result(timeout=10)
            names = [other.submit(thread_name, i, pure=False).result(timeout=10)[0]
                     for i in range(10)]
        assert "zfutures-loop" in names  # (on the loop's new thread)
        os.remove(path)
        assert long.result(timeout=20) == 2
        wait_for(lambda: ex.submit(loop_threads, pure=False).result(timeout=10) == 1,
                 timeout=10, message="two threads run the worker's loop")
        assert ex.submit(os.getpid, pure=False).result(timeout=10) == worker_pid  # alive


def test_a_direct_task_that_waits_on_a_task_gives_its_slot_back():
    # One worker, one thread: the inner task can run only if the outer one,
    # running on the loop thread, gives its slot back once the loop moves on.
    with Executor(n_workers=1, threads_per_worker=1, timeout=20) as ex:
        ex.submit(inc, -1).result(timeout=10)
        before = ex._io.core.direct.answers
        outer = ex.submit(halves_on_the_same_worker, 10, pure=False)
        assert outer.result(timeout=60) == 6
        assert ex._io.core.direct.answers == before + 1  # (the outer one; the inner
        # one's client is the worker's)
        assert ex.submit(inc, 1, pure=False).result(timeout=10) == 2


def test_only_a_key_the_caller_chose_makes_a_direct_result_wait_for_the_center(cluster):
    # A key the executor made (a pure task's token, an impure task's unique
    # key) is new to the center or any run of it will do; the caller's own
    # key may name another run's value at the center.
    ex = cluster
    own_key = []
    submit = ex._io.submit
    ex._io.submit = lambda *args, **kwargs: (own_key.append(kwargs["own_key"]),
                                             submit(*args, **kwargs))
    try:
        for options in ({}, {"pure": False}, {"key": "chosen-by-caller"}):
            assert ex.submit(inc, 1, **options).result(timeout=10) == 2
    finally:
        del ex._io.submit
    assert own_key == [True, True, False]


# ---------------------------------------------------------------------- the caller's own wait

def _result_in_thread(future, timeout=60):
    """Call ``future.result(timeout)`` on a thread; its outcome lands in the returned dict."""
    outcome: dict = {}

    def wait():
        try:
            outcome["value"] = future.result(timeout)
        except BaseException as e:  # checked by the test
            outcome["error"] = e

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, outcome


def _reader_threads(ex):
    """Record the name of the thread that reads each direct answer."""
    names = []
    read = ex._io.core._direct_result

    def recording(*args):
        names.append(threading.current_thread().name)
        read(*args)
    ex._io.core._direct_result = recording
    return names


def _long_direct_task(ex, tmp_path, worker=None):
    """A direct task that runs until its file is removed, started; and that file."""
    if worker is not None:
        ex.submit(inc, 0, workers=[worker]).result(timeout=10)  # the next goes there
    else:
        ex.submit(inc, -1).result(timeout=10)
    path = str(tmp_path / "running")
    future = ex.submit(pid_after, path, 1, pure=False)
    wait_for(lambda: os.path.exists(path) and os.path.getsize(path), timeout=10,
             message="the task did not start")
    assert ex._io.core.keys[future.key].direct is not None  # it went straight to a worker
    return future, path


def test_a_caller_reads_its_direct_answer_on_its_own_thread(cluster):
    ex = cluster
    ex.submit(inc, -1).result(timeout=10)
    names = _reader_threads(ex)
    try:
        for i in range(20):
            assert ex.submit(inc, i, pure=False).result(timeout=10) == i + 1
    finally:
        del ex._io.core._direct_result
    # (Not all: a caller that finds the I/O thread at the lock, or that comes
    # after the answer, leaves the answer to it. On a loaded machine, many.)
    assert names.count(threading.current_thread().name) >= 3, names
    assert ex._io._parked is None


def test_a_long_direct_task_is_left_to_the_io_thread_after_a_while(cluster):
    ex = cluster
    ex.submit(inc, -1).result(timeout=10)
    names = _reader_threads(ex)
    try:
        assert ex.submit(sleep_then, 0.2, 7, pure=False).result(timeout=10) == 7
    finally:
        del ex._io.core._direct_result
    assert names == ["zfutures-client-io"]
    assert ex._io._parked is None
    assert ex.submit(inc, 1, pure=False).result(timeout=10) == 2


def test_a_direct_wait_ends_at_its_timeout_and_the_answer_still_comes(cluster, tmp_path):
    ex = cluster
    future, path = _long_direct_task(ex, tmp_path)
    with pytest.raises(TimeoutError):
        future.result(timeout=0.005)
    assert ex._io._parked is None
    os.remove(path)
    assert future.result(timeout=20) == 2


def test_a_waiting_caller_hears_at_once_that_its_task_was_cancelled(monkeypatch, tmp_path):
    monkeypatch.setattr(client_io, "PARK_LIMIT", 600)  # only word from others ends the wait
    with Executor(n_workers=2, threads_per_worker=1, timeout=20) as ex:
        future, path = _long_direct_task(ex, tmp_path)
        thread, outcome = _result_in_thread(future)
        wait_for(lambda: ex._io._parked is not None, message="the caller did not wait itself")
        assert future.cancel()
        thread.join(20)
        assert not thread.is_alive(), "the caller still waits on the worker"
        assert isinstance(outcome.get("error"), concurrent.futures.CancelledError)
        os.remove(path)
        assert ex.submit(inc, 1, pure=False).result(timeout=20) == 2


def test_a_waiting_caller_whose_worker_dies_gets_the_rerun(monkeypatch, tmp_path):
    monkeypatch.setattr(client_io, "PARK_LIMIT", 600)
    with Executor(n_workers=2, threads_per_worker=1, timeout=20) as ex:
        future, path = _long_direct_task(ex, tmp_path)
        thread, outcome = _result_in_thread(future)
        wait_for(lambda: ex._io._parked is not None, message="the caller did not wait itself")
        with open(path) as file:
            victim = int(file.read())
        open(path + ".done", "w").close()  # the rerun elsewhere returns at once
        os.kill(victim, signal.SIGKILL)
        thread.join(60)
        assert not thread.is_alive(), "the caller still waits on the dead worker"
        assert outcome == {"value": 2}
        assert ex.submit(inc, 1, pure=False).result(timeout=20) == 2


def test_data_fetched_from_the_worker_a_caller_waits_on_is_not_held_up(monkeypatch, tmp_path):
    # The I/O thread leaves that worker's socket to the waiting caller, who
    # must then read every answer that comes on it, not only its own.
    monkeypatch.setattr(client_io, "PARK_LIMIT", 600)
    with Executor(n_workers=2, threads_per_worker=1, timeout=20) as ex:
        first = sorted(ex.scheduler_info()["workers"])[0]
        big = ex.submit(np.ones, 100_000, workers=[first])  # stays there: fetched
        concurrent.futures.wait([big], timeout=10)
        future, path = _long_direct_task(ex, tmp_path, worker=first)
        assert ex._io.core.keys[future.key].direct.address == first
        thread, outcome = _result_in_thread(future)
        wait_for(lambda: ex._io._parked is not None, message="the caller did not wait itself")
        assert big.result(timeout=20).sum() == 100_000
        assert ex._io._parked is not None and not future.done()  # still waiting
        os.remove(path)
        thread.join(20)
        assert outcome == {"value": 2}


def test_shutting_down_ends_a_callers_wait_on_a_worker(monkeypatch, tmp_path):
    monkeypatch.setattr(client_io, "PARK_LIMIT", 600)
    ex = Executor(n_workers=2, threads_per_worker=1, timeout=20)
    try:
        future, path = _long_direct_task(ex, tmp_path)
        thread, outcome = _result_in_thread(future)
        wait_for(lambda: ex._io._parked is not None, message="the caller did not wait itself")
    finally:
        ex.shutdown(cancel_futures=True)  # (returns: the waiting caller lets its socket go)
    thread.join(20)
    assert not thread.is_alive(), "the caller still waits on the worker"
    assert isinstance(outcome.get("error"), concurrent.futures.CancelledError)


def test_clients_that_waited_on_workers_leave_no_descriptor_open(cluster):
    def open_descriptors():
        found = {}
        for fd in os.listdir("/proc/self/fd"):
            try:
                found[fd] = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # (the listing's own descriptor, closed by now)
                pass
        return found

    def client_that_waits_itself():
        with Executor(cluster.address, timeout=20) as ex:
            ex.submit(inc, -1).result(timeout=10)
            names = _reader_threads(ex)
            for i in range(5):
                assert ex.submit(inc, i, pure=False).result(timeout=10) == i + 1
            assert threading.current_thread().name in names  # (it waited on a worker)

    client_that_waits_itself()  # (whatever the first one opens for good)
    before = open_descriptors()
    for _ in range(5):
        client_that_waits_itself()
    # Other threads of this process (another client's I/O thread, say) may
    # hold a descriptor for a moment: a leak stays, so wait a little for it to go.
    try:
        wait_for(lambda: len(open_descriptors()) <= len(before), timeout=5)
    except AssertionError:
        after = open_descriptors()
        opened = {fd: target for fd, target in after.items() if before.get(fd) != target}
        raise AssertionError(f"descriptors opened and not closed: {opened}") from None


# --------------------------------------------------------------------------- a key chosen again


def runs_until_replaced(path, value):
    """Say it started (``path``), then return ``value`` once its worker has
    another run of its key (the key, released here, was asked for again):
    this run goes on while the next call of the key comes in."""
    state = zfutures.context.current_worker().state
    key = zfutures.context._local.key
    run = state.tasks[key].run
    open(path, "w").close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        task = state.tasks.get(key)
        if task is not None and task.run != run:
            break
        time.sleep(0.005)
    return value


def cancel_while_it_runs(ex, tmp_path) -> None:
    """Submit a call under the key "k", cancel it once it runs, and wait for
    the center to let the key go."""
    path = str(tmp_path / "started")
    old = ex.submit(runs_until_replaced, path, "OLD", key="k")
    wait_for(lambda: os.path.exists(path), timeout=20, message="the task did not start")
    assert old.cancel()
    wait_for(lambda: not ex.scheduler_info()["tasks"], timeout=20,
             message="the center kept the cancelled task")


@pytest.mark.parametrize("threads", [1, 2])
def test_a_key_chosen_again_after_a_cancel_gives_the_new_calls_value(tmp_path, threads):
    # Through the center: no task finished yet, so nothing goes straight to a worker.
    with Executor(n_workers=1, threads_per_worker=threads, timeout=20) as ex:
        cancel_while_it_runs(ex, tmp_path)
        new = ex.submit(identity, "NEW", key="k")
        assert new.result(timeout=30) == "NEW"
        assert ex.submit(identity, new).result(timeout=30) == "NEW"  # what the cluster holds


@pytest.mark.parametrize("threads", [1, 2])
def test_a_key_chosen_again_after_a_cancel_gives_the_new_calls_value_directly(tmp_path,
                                                                              threads):
    with Executor(n_workers=1, threads_per_worker=threads, timeout=20) as ex, \
            Executor(ex.address, timeout=20) as other:
        other.submit(inc, -1).result(timeout=20)  # a worker to send lone tasks to
        cancel_while_it_runs(ex, tmp_path)
        new = other.submit(identity, "NEW", key="k")
        assert other._io.keys["k"].direct is not None  # sent straight to the worker
        assert new.result(timeout=30) == "NEW"
        assert other.submit(identity, new).result(timeout=30) == "NEW"
