"""No wrong value, no hang: races and corner cases of ordinary calls, with real processes.

Each test here plays, against a local cluster of two workers, a sequence a
user met (or could meet) that once gave a wrong value or a call that never
returned. Every wait is bounded: a regression fails, it does not hang.
"""
from __future__ import annotations

import concurrent.futures
import os
import random
import threading
import time

import numpy as np
import pytest
from conftest import wait_for

from zfutures import ConnectionError, Executor, PoolExecutor

pytestmark = pytest.mark.timeout(90)


def inc(x):
    return x + 1


def identity(x):
    return x


def slow(value, seconds):
    time.sleep(seconds)
    return value


LOCKS = [7, 30, 31, 55]


def hundred_kb_or_a_lock(i):
    if i in LOCKS:
        return threading.Lock()  # cannot be pickled to leave its worker
    return np.full(100_000 // 8, i, dtype=np.float64)


class ExitsWhenLoaded:
    """A value that pickles fine on the worker and raises SystemExit where it is loaded."""

    def __reduce__(self):
        return (_exit_on_load, ())


def _exit_on_load():
    raise SystemExit("loading this value exits")


def make_exiting_small_value(_):
    return ExitsWhenLoaded()


def make_exiting_big_value(_):
    return [ExitsWhenLoaded(), b"x" * 200_000]  # (too big to come along: fetched)


# --------------------------------------------------------------------------- cancel


def test_cancelling_one_of_two_futures_of_a_key_leaves_the_other_its_value(ex):
    a = ex.submit(slow, "v", 0.3)
    b = ex.submit(slow, "v", 0.3)
    assert a.key == b.key
    assert a.cancel() is True
    assert b.result(timeout=20) == "v"
    assert a.cancelled()


def test_gather_tells_a_cancelled_future_from_another_of_its_key(ex):
    kept, cancelled = ex.submit(slow, "v", 0.3), ex.submit(slow, "v", 0.3)
    assert cancelled.cancel()
    with pytest.raises(concurrent.futures.CancelledError):
        ex.gather([kept, cancelled], timeout=20)
    assert ex.gather({"a": kept, "b": cancelled}, errors="skip", timeout=20) == {"a": "v"}


def test_another_clients_future_is_not_cancelled_by_this_one(ex):
    with Executor(ex.address) as other:
        mine = ex.submit(slow, "shared", 1.0)
        theirs = other.submit(slow, "shared", 1.0)
        assert mine.key == theirs.key
        other.scheduler_info()  # (answered after the center took the submit)
        ex.scheduler_info()
        assert mine.cancel() is True
        assert theirs.result(timeout=20) == "shared"


def test_shutdown_waits_for_the_futures_a_cancel_left_waiting():
    with Executor(n_workers=1) as local:
        a = local.submit(slow, 1, 0.2)
        b = local.submit(slow, 1, 0.2)
        a.cancel()
        done = threading.Event()
        threading.Thread(target=lambda: (local.shutdown(wait=True), done.set()),
                         daemon=True).start()
        assert done.wait(30), "shutdown hung behind a future of a cancelled key"
        assert b.result(0) == 1


def test_a_cancel_racing_the_result_never_strands_a_future(ex):
    rng = random.Random(16)
    for i in range(200):
        f = ex.submit(inc, i)
        time.sleep(rng.random() * 0.002)
        cancelled = f.cancel()
        if cancelled:
            assert f.cancelled()
            with pytest.raises(concurrent.futures.CancelledError):
                f.result(timeout=0)
        else:
            assert f.result(timeout=30) == i + 1
        # The same pure call, submitted again, completes whatever happened.
        assert ex.submit(inc, i).result(timeout=30) == i + 1


# --------------------------------------------------------------------------- where data is


def test_who_has_names_the_holder_as_soon_as_a_result_is_in(ex):
    for i in range(20):
        a, b = ex.submit(inc, 1000 + i), ex.submit(inc, 2000 + i)
        assert ex.gather([a, b], timeout=20) == [1001 + i, 2001 + i]
        holders = ex.who_has([a, b])
        assert holders[a.key] and holders[b.key], holders
        held = ex.has_what()
        assert a.key in held[holders[a.key][0]]


# ------------------------------------------------------------------- values that cannot travel


def test_one_result_that_cannot_be_pickled_fails_only_its_own_future():
    # Results that finish together are fetched together: one that cannot
    # leave its worker must not fail the others of its fetch.
    with PoolExecutor(2) as pool:
        futures = [pool.submit(hundred_kb_or_a_lock, i) for i in range(80)]
        concurrent.futures.wait(futures, timeout=60)
        failed = [i for i, f in enumerate(futures) if f.exception(timeout=0) is not None]
        assert failed == LOCKS
        assert "pickle" in str(futures[LOCKS[0]].exception(0)).lower()
        for i, f in enumerate(futures):
            if i not in LOCKS:
                assert f.result(0)[0] == i


@pytest.mark.parametrize("make", [make_exiting_small_value, make_exiting_big_value])
def test_a_value_that_exits_when_loaded_fails_its_future_and_the_client_goes_on(ex, make):
    future = ex.submit(make, 1, pure=False)
    with pytest.raises(Exception, match="exit"):
        future.result(timeout=20)
    assert ex.submit(inc, 1, pure=False).result(timeout=20) == 2


def test_a_pool_value_that_exits_when_loaded_fails_its_future_and_the_pool_goes_on():
    with PoolExecutor(1) as pool:
        future = pool.submit(make_exiting_small_value, 1)
        with pytest.raises(Exception, match="exit"):
            future.result(timeout=20)
        assert pool.submit(inc, 1).result(timeout=20) == 2


# --------------------------------------------------------------------------- scatter


def test_scattering_data_again_while_its_release_waits_keeps_it(ex):
    data = np.arange(1000)
    for _ in range(30):
        first = ex.scatter(data)
        key = first.key
        del first  # (its release waits to be sent ...)
        again = ex.scatter(data)  # (... while the same data is scattered again)
        assert again.key == key
        assert ex.submit(np.sum, again).result(timeout=20) == data.sum()
        assert again.result(timeout=20).sum() == data.sum()


def test_scattering_data_that_does_not_load_on_the_worker_raises_and_the_worker_goes_on(ex):
    pids = ex.run(os.getpid)
    with pytest.raises(RuntimeError, match="could not be loaded.*SystemExit"):
        ex.scatter(ExitsWhenLoaded(), timeout=30)
    assert ex.submit(inc, 1, pure=False).result(timeout=20) == 2
    assert ex.run(os.getpid) == pids


# --------------------------------------------------------------------------- waits


def test_run_waits_as_long_as_the_call_runs():
    # The call outlasts the deadline twice over; a deadline of 1 s was met by
    # a loaded machine's center pausing for a heartbeat or two.
    with Executor(n_workers=1, reconnect_deadline=2) as local:
        assert list(local.run(slow, "done", 4.5).values()) == ["done"]
        with pytest.raises(concurrent.futures.TimeoutError):
            local.run(slow, "late", 3, timeout=0.5)


def test_calls_after_shutdown_raise_and_racing_submits_end():
    local = Executor(n_workers=1)
    futures: list = []
    errors: list = []
    go = threading.Event()

    def submit_many():
        go.wait(10)
        for i in range(2000):
            try:
                futures.append(local.submit(inc, i, pure=False))
            except RuntimeError as e:
                errors.append(e)
                return

    thread = threading.Thread(target=submit_many, daemon=True)
    thread.start()
    go.set()
    wait_for(lambda: len(futures) > 10, message="no submit happened")
    local.shutdown(wait=False)
    thread.join(20)
    assert not thread.is_alive()
    # Every future ends: with its value, or cancelled by the shutdown.
    done, not_done = concurrent.futures.wait(futures, timeout=20)
    assert not not_done, f"{len(not_done)} futures left pending after shutdown"
    with pytest.raises(RuntimeError, match="shut down"):
        local.submit(inc, 1)
    with pytest.raises(RuntimeError, match="shut down"):
        local.scheduler_info()


# --------------------------------------------------------------------------- memory


def test_a_long_lived_client_keeps_nothing_of_calls_it_let_go_of(ex):
    keep = ex.submit(inc, 1)
    assert keep.result(timeout=20) == 2
    # 100,000 calls of the same key beside a future that lives on ...
    for _ in range(10):
        same = ex.map(inc, [1] * 10_000)
        assert ex.gather(same, timeout=60) == [2] * 10_000
        del same
    # ... and of new keys, let go of.
    for start in range(0, 20_000, 10_000):
        values = ex.gather(ex.map(inc, range(start, start + 10_000)), timeout=60)
        assert values[-1] == start + 10_000
    core = ex._io.core

    def settled():
        gathers, requests = core.gathers, core.requests
        return set(core.keys) == {keep.key} and not gathers.fetches and not gathers.awaiting \
            and not requests.rpcs and not requests.worker_requests

    wait_for(settled, timeout=10, message=f"the client kept {len(core.keys)} keys")
    assert len(core.keys[keep.key].futures) < 100
    wait_for(lambda: ex.scheduler_info()["tasks"].get("memory", 0) <= 1, timeout=10,
             message="the center kept keys let go of")


def test_an_executor_whose_io_failed_ends_every_wait_and_refuses_new_calls():
    with Executor(n_workers=1) as local:
        pending = local.submit(slow, "never read", 5, pure=False)

        def broken(*args):
            raise SystemExit("a bug in the client's I/O")  # (even one that is no Exception)

        local._io._commands["rpc"] = broken
        with pytest.raises(Exception):  # noqa: B017 (the I/O ends under it: any error)
            local.scheduler_info()
        with pytest.raises(ConnectionError):
            pending.result(timeout=20)
        with pytest.raises(RuntimeError, match="connection failed"):
            local.submit(inc, 1)
