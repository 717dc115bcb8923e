"""The Executor and Future against a real local cluster."""
from __future__ import annotations

import concurrent.futures
import gc
import os
import pickle
import re
import select
import signal
import threading
from operator import add

import numpy as np
import pytest
from conftest import wait_for

import zfutures
from zfutures import Executor, Future, RemoteTraceback

pytestmark = pytest.mark.timeout(60)


def inc(x):
    return x + 1


def double(x):
    return 2 * x


def fail(x):
    raise ValueError("bad input", x)


def test_submit_returns_a_future_with_the_result(ex):
    x = ex.submit(inc, 1)
    assert isinstance(x, Future)
    assert isinstance(x, concurrent.futures.Future)
    assert x.result(timeout=10) == 2
    assert x.done() and x.status == "finished"


def test_repr_shows_status_and_key(ex):
    x = ex.submit(inc, 10)
    assert re.fullmatch(r"<Future: status: (pending|finished), key: inc-[0-9a-f]{32}>", repr(x))
    x.result(timeout=10)
    assert repr(x) == f"<Future: status: finished, key: {x.key}>"


def test_pure_calls_share_a_key_and_impure_ones_do_not(ex):
    assert ex.submit(inc, 5).key == ex.submit(inc, 5).key
    assert ex.submit(inc, 5).key != ex.submit(inc, 6).key
    a, b = ex.submit(inc, 5, pure=False), ex.submit(inc, 5, pure=False)
    assert a.key != b.key
    assert re.fullmatch(r"inc-[0-9a-f]{32}", a.key)
    assert a.result(timeout=10) == b.result(timeout=10) == 6


def test_a_key_dropped_while_it_runs_and_submitted_again_is_computed_again():
    """The worker's reports of the dropped run can reach the center after it
    forgot the key, or after it gave the key to the same worker again; taken
    for the new run, they point the client at data the worker has dropped."""
    with Executor(n_workers=2, threads_per_worker=2) as fresh:  # (a young center recovers)
        for attempt in range(100):
            futures = fresh.map(inc, range(20))
            # one done: others are finishing, their reports on the way
            concurrent.futures.wait([futures[attempt % 20]], timeout=10)
            del futures
            futures = fresh.map(inc, range(20))
            assert fresh.gather(futures, timeout=10) == list(range(1, 21)), attempt


def test_pure_duplicate_runs_once(ex):
    counter = ex.submit(np.random.random, 3)  # pure: the same random numbers twice
    again = ex.submit(np.random.random, 3)
    assert counter.key == again.key
    assert np.array_equal(counter.result(timeout=10), again.result(timeout=10))


def test_explicit_key(ex):
    x = ex.submit(inc, 1, key="my-key")
    assert x.key == "my-key"
    assert x.result(timeout=10) == 2


def test_lambdas_and_closures_run(ex):
    offset = 100
    assert ex.submit(lambda v: v + offset, 1).result(timeout=10) == 101
    assert ex.submit(lambda v: v, 0).key.startswith("lambda-")


def test_futures_as_arguments_are_replaced_by_values(ex):
    x = ex.submit(inc, 1)
    y = ex.submit(inc, x)
    assert y.result(timeout=10) == 3


def test_futures_nested_in_containers_and_kwargs(ex):
    a, b = ex.submit(inc, 1), ex.submit(inc, 2)

    def combine(items, mapping, group, *, extra):
        return sum(items) + sum(mapping.values()) + sum(group) + extra[0]

    z = ex.submit(combine, [a, (b, 1)][0:1] + [b], {"k": a}, {b}, extra=(a,))
    assert z.result(timeout=10) == (2 + 3) + 2 + 3 + 2


def test_map_zips_iterables_like_builtin_map(ex):
    futures = ex.map(add, range(5), range(10, 100))
    assert len(futures) == 5
    assert ex.gather(futures) == [10, 12, 14, 16, 18]


def test_map_keys(ex):
    futures = ex.map(inc, [1, 2], key=["one", "two"])
    assert [f.key for f in futures] == ["one", "two"]
    prefixed = ex.map(inc, [1, 2], key="step")
    assert all(f.key.startswith("step-") for f in prefixed)
    assert ex.gather(prefixed) == [2, 3]
    with pytest.raises(ValueError, match="keys"):
        ex.map(inc, [1, 2], key=["only-one"])


def test_gather_keeps_nested_structure(ex):
    a, b = ex.submit(inc, 1), ex.submit(inc, 2)
    assert ex.gather({"a": a, "rest": [b, (a, 7)], "s": {b}}) == {
        "a": 2, "rest": [3, (2, 7)], "s": {3}}


def test_gather_skips_errors_when_asked(ex):
    good, bad = ex.submit(inc, 1), ex.submit(fail, 1)
    assert ex.gather([good, bad], errors="skip") == [2]
    with pytest.raises(ValueError):
        ex.gather([good, bad])


def test_remote_exception_keeps_type_args_and_traceback(ex):
    x = ex.submit(fail, 42)
    with pytest.raises(ValueError) as info:
        x.result(timeout=10)
    assert info.value.args == ("bad input", 42)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in fail" in str(cause) and 'raise ValueError("bad input", x)' in str(cause)
    assert x.status == "error"
    assert isinstance(x.exception(timeout=1), ValueError)


def test_traceback_is_the_remote_traceback_text(ex):
    x = ex.submit(fail, 3)
    text = x.traceback(timeout=10)
    assert text.startswith("Traceback (most recent call last):")
    assert "in fail" in text and text.rstrip().endswith("ValueError: ('bad input', 3)")
    assert ex.submit(inc, 3).traceback(timeout=10) is None


def test_a_task_whose_input_failed_fails_with_that_exception(ex):
    x = ex.submit(fail, 1)
    y = ex.submit(inc, x)
    z = ex.submit(inc, y)
    with pytest.raises(ValueError, match="bad input"):
        z.result(timeout=10)
    assert y.status == "error"


def test_result_timeout_raises_timeout_error(ex):
    import time

    slow = ex.submit(time.sleep, 2, pure=False)
    with pytest.raises(concurrent.futures.TimeoutError):
        slow.result(timeout=0.05)
    slow.result(timeout=10)


def test_stdlib_wait_and_as_completed_accept_our_futures(ex):
    futures = ex.map(inc, range(10))
    done, not_done = concurrent.futures.wait(futures, timeout=10)
    assert len(done) == 10 and not not_done
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=10)) \
        == list(range(1, 11))


def test_done_callbacks_may_call_result(ex):
    seen, called = [], threading.Event()

    def callback(future):
        seen.append(future.result())  # fetching inside a callback must not deadlock
        called.set()

    ex.submit(inc, 41).add_done_callback(callback)
    assert called.wait(10)
    assert seen == [42]


def test_non_callable_is_rejected_at_submit(ex):
    with pytest.raises(TypeError, match="callable"):
        ex.submit(42)
    with pytest.raises(TypeError, match="callable"):
        ex.map("not a function", [1])


def test_unpicklable_argument_is_rejected_at_submit_naming_it(ex):
    lock = threading.Lock()
    gc.collect()
    keys_before = set(ex._io.keys)
    with pytest.raises((TypeError, pickle.PicklingError), match="argument 1"):
        ex.submit(lambda a, b: a, 1, lock)
    # Nothing was sent: the client holds no new key (older ones may be released meanwhile).
    assert set(ex._io.keys) <= keys_before


def is_locked(lock):
    return lock.locked()


def test_a_result_that_cannot_be_pickled_fails_only_where_it_must_leave_its_worker(ex):
    w0, w1 = sorted(ex.nthreads())
    lock = ex.submit(threading.Lock, workers=[w0], pure=False)
    fine = ex.submit(inc, 1)
    # Fetching it to the client, or to another worker, fails with a clear error...
    with pytest.raises(TypeError, match="cannot be pickled"):
        lock.result(timeout=20)
    elsewhere = ex.submit(is_locked, lock, workers=[w1], pure=False)
    with pytest.raises(TypeError, match="cannot be pickled"):
        elsewhere.result(timeout=20)
    # ...while it stays usable where it lives, and nothing else is affected.
    assert ex.submit(is_locked, lock, workers=[w0], pure=False).result(timeout=20) is False
    assert fine.result(timeout=20) == 2
    assert ex.submit(inc, 41).result(timeout=20) == 42


def test_small_results_arrive_with_their_completion_big_ones_wait_for_a_fetch(ex):
    small = ex.submit(inc, 1, pure=False)
    big = ex.submit(np.ones, 100_000, pure=False)
    zfutures.wait([small, big], timeout=20)
    assert small._result == 2                    # here already: no fetch
    assert big._result is zfutures.future.REMOTE  # fetched from its worker on demand
    assert big.result(timeout=20).sum() == 100_000


def test_bad_task_options_are_rejected(ex):
    with pytest.raises(ValueError, match="retries"):
        ex.submit(inc, 1, retries=-1)
    with pytest.raises(TypeError, match="priority"):
        ex.submit(inc, 1, priority="high")


def test_released_futures_are_forgotten_by_the_cluster(ex):
    x = ex.submit(inc, 1000, pure=False)
    x.result(timeout=10)
    key = x.key
    assert ex.who_has([x])[key]
    del x
    gc.collect()
    wait_for(lambda: key not in {k for keys in ex.has_what().values() for k in keys},
             message="a garbage-collected future's key was not released")


def test_a_key_stays_while_another_future_holds_it(ex):
    a = ex.submit(inc, 2000)
    b = ex.submit(inc, 2000)
    a.result(timeout=10)
    a.release()
    del a
    gc.collect()
    assert b.result(timeout=10) == 2001
    assert ex.who_has([b])[b.key]


def test_futures_dropped_from_many_threads_release_cleanly(ex):
    def churn():
        for i in range(50):
            ex.submit(inc, i, pure=False)  # dropped at once: released from this thread

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    gc.collect()
    assert ex.submit(inc, 1).result(timeout=10) == 2
    wait_for(lambda: sum(len(k) for k in ex.has_what().values()) < 20,
             message="keys of dropped futures were not released")


def test_inputs_move_worker_to_worker_not_through_the_client(ex):
    with Executor(ex.address) as client:  # a fresh client: it has fetched nothing yet
        _check_peer_to_peer(client)


def _check_peer_to_peer(client):
    # Find two keys held by different workers.
    held = {}
    for i in range(50):
        f = client.submit(np.arange, 100_000 + i)
        f.exception(timeout=10)  # wait, without fetching
        (worker,) = client.who_has([f])[f.key]
        held.setdefault(worker, f)
        if len(held) == 2:
            break
    assert len(held) == 2, "the tasks all went to one worker"
    (wa, a), (wb, b) = held.items()
    total = client.submit(lambda x, y: int(x.sum() + y.sum()), a, b)
    total.exception(timeout=10)
    (ran_on,) = client.who_has([total])[total.key]
    moved = b if ran_on == wa else a
    # The task's worker fetched the other input from its peer and said so...
    assert sorted(client.who_has([moved])[moved.key]) == sorted([wa, wb])
    # ...and the client has not talked to any worker's data server.
    assert not client._io.workers, "input data went through the client"
    assert total.result(timeout=10) == int(np.arange(len(a.result())).sum()
                                           + np.arange(len(b.result())).sum())


def test_tree_reduction_matches_local_sum(ex):
    inputs = ex.map(np.random.random, [100_000] * 16, pure=False)
    xs = inputs
    while len(xs) > 1:
        xs = [ex.submit(add, xs[i], xs[i + 1]) for i in range(0, len(xs), 2)]
    total = xs[0].result(timeout=30)
    expected = np.sum(ex.gather(inputs), axis=0)
    np.testing.assert_allclose(total, expected)


def test_numpy_results_round_trip(ex):
    data = ex.submit(np.arange, 2_000_000, dtype="f8")
    assert data.result(timeout=10).sum() == np.arange(2_000_000, dtype="f8").sum()


def test_who_has_has_what_nthreads_and_scheduler_info(ex):
    x = ex.submit(inc, 77)
    x.result(timeout=10)
    workers = ex.who_has([x])[x.key]
    assert len(workers) == 1 and workers[0].startswith("tcp://127.0.0.1:")
    has_what = ex.has_what()
    assert len(has_what) == 2 and x.key in has_what[workers[0]]
    assert ex.nthreads() == dict.fromkeys(has_what, 1)
    info = ex.scheduler_info()
    assert info["address"] == ex.address
    assert set(info["workers"]) == set(has_what)
    for w in info["workers"].values():
        assert {"name", "nthreads", "memory", "memory_limit", "resources", "executing",
                "queued", "keys"} <= set(w)
    assert info["tasks"].get("memory", 0) >= 1


def test_second_client_connects_to_a_local_cluster(ex):
    with Executor(ex.address, timeout=5) as other:
        assert other.submit(inc, 1).result(timeout=10) == 2


def test_shutdown_waits_for_pending_futures_unless_told_to_cancel_them():
    import time

    executor = Executor(n_workers=1)
    waited = executor.submit(time.sleep, 0.3, pure=False)
    executor.shutdown(wait=True)
    assert waited.status == "finished"

    executor = Executor(n_workers=1)
    futures = [executor.submit(time.sleep, 1, pure=False) for _ in range(5)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures)  # none was waited for
    with pytest.raises(concurrent.futures.CancelledError):
        futures[-1].result(timeout=1)


def test_submit_after_shutdown_raises():
    executor = Executor(n_workers=1)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        executor.submit(inc, 1)
    executor.shutdown()  # a second shutdown is harmless


def test_unreachable_center_raises_connection_error_in_time():
    import time

    from conftest import free_port

    port = free_port()
    start = time.monotonic()
    with pytest.raises(zfutures.ConnectionError, match=f"127.0.0.1:{port}"):
        Executor(f"127.0.0.1:{port}", timeout=0.5)
    assert time.monotonic() - start < 5
    assert isinstance(zfutures.ConnectionError("x"), ConnectionError)


def test_silent_listener_raises_connection_error():
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(zfutures.ConnectionError):
            Executor(f"127.0.0.1:{port}", timeout=0.5)


@pytest.mark.parametrize("address", ["tcp://", "host:port", "a b:1", "h:70000"])
def test_malformed_address_is_rejected(address):
    with pytest.raises(ValueError, match="address"):
        Executor(address)


def test_bad_executor_arguments_are_rejected():
    with pytest.raises(TypeError, match="address"):
        Executor(8787)
    with pytest.raises(ValueError, match="n_workers"):
        Executor(n_workers=0)
    with pytest.raises(ValueError, match="timeout"):
        Executor("127.0.0.1:1", timeout=-1)


def test_keys_let_go_of_and_submitted_again_at_once_keep_their_values(ex):
    """A dropped future's key is released a little later, with others; a
    resubmission meanwhile must reach the center after that release."""
    w0 = sorted(ex.nthreads())[0]
    for i in range(20):
        assert ex.submit(inc, i % 3, workers=[w0]).result(timeout=20) == i % 3 + 1
        # (dropped at once) A new key, then the one just let go of, in one message.
        assert ex.gather(ex.map(inc, [100 + i, i % 3], workers=[w0]),
                         timeout=20) == [101 + i, i % 3 + 1]


def test_data_scattered_again_right_after_its_release_stays(ex):
    for _ in range(10):
        x = ex.scatter(np.arange(5))
        key = x.key
        del x
        gc.collect()
        y = ex.scatter(np.arange(5))
        assert y.key == key
        assert ex.submit(np.sum, y).result(timeout=20) == 10
    wait_for(lambda: ex.who_has([y]).get(y.key), timeout=5,
             message="the scattered key was forgotten while a future holds it")


def identity(x):
    return x


def test_impure_keys_of_a_forked_child_are_its_own(ex):
    # The child makes the next impure key the parent makes: the same key if
    # the prefix of unique keys were inherited, and the center would give the
    # child the parent's value.
    zfutures.serialize.unique_token()  # the parent has made keys before the fork
    go_read, go_write = os.pipe()
    answer_read, answer_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a client of its own, on the same center
        status = 1
        try:
            os.close(go_write)
            if select.select([go_read], [], [], 30)[0]:
                with Executor(ex.address, timeout=10) as child:
                    value = child.submit(identity, "from-child", pure=False).result(timeout=20)
                os.write(answer_write, value.encode())
                status = 0
        except BaseException as e:  # noqa: B036 - the parent must hear of any failure
            os.write(answer_write, repr(e).encode())
        finally:
            os._exit(status)
    status = None
    try:
        os.close(go_read)
        os.close(answer_write)
        mine = ex.submit(identity, "from-parent", pure=False)
        assert mine.result(timeout=10) == "from-parent"  # held while the child submits
        os.write(go_write, b"go")
        assert select.select([answer_read], [], [], 40)[0], "the child did not answer"
        assert os.read(answer_read, 1000).decode() == "from-child"
        assert mine.result() == "from-parent"
        status = os.waitpid(pid, 0)[1]
        assert status == 0
    finally:
        os.close(go_write)
        os.close(answer_read)
        if status is None:  # (not waited for yet: it may hang)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


@pytest.mark.parametrize("worker_sees_the_file", [True, False])
def test_remote_traceback_shows_the_source_of_a_function_sent_by_value(
        ex, client_only_module, hide_from_workers, worker_sees_the_file):
    # As ProcessPoolExecutor's: the raising line, comment and all. The worker
    # reads it from the file; where it has no such file, the client does.
    if not worker_sees_the_file:
        hide_from_workers(client_only_module)
    future = ex.submit(client_only_module.explode, "boom", pure=False)
    with pytest.raises(RuntimeError, match="boom") as info:
        future.result(timeout=10)
    text = future.traceback()
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert info.value.__cause__.tb == text
    assert f'File "{client_only_module.__file__}", line 2, in explode' in text
    assert "raise RuntimeError(message)  # a comment only the source has" in text
