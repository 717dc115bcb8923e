"""The public API rows of API.md against real processes: scatter, cancel, gather,
where data lives, run, task options, waiting, get_executor and progress."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import operator
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import cluster_fixture, wait_for, zfutures_children

import zfutures
from zfutures import Executor, Future

pytestmark = pytest.mark.timeout(60)

GATE_TIMEOUT = 20  # seconds a gated task waits for its gate before it gives up


# ---------------------------------------------------------------------- task functions
# Defined at module level: workers unpickle them by reference to this module.

def inc(x):
    return x + 1


def fail(x):
    raise ValueError("bad input", x)


def gated(gate, value=None):
    """Wait until the file ``gate`` exists (bounded), then return ``value``."""
    deadline = time.monotonic() + GATE_TIMEOUT
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} was never opened")
        time.sleep(0.005)
    return value


def gated_fail(gate):
    gated(gate)
    raise ValueError("failed after the gate")


def touch(path):
    Path(path).touch()
    return path


def append_line(path, text):
    with open(path, "a") as f:
        f.write(text + "\n")
    return text


def flaky(counter, failures):
    """Fail the first ``failures`` attempts; attempts are counted in a file, since
    each may run in a different process."""
    with open(counter, "a") as f:
        f.write("x")
    attempts = os.path.getsize(counter)
    if attempts <= failures:
        raise RuntimeError(f"attempt {attempts} fails")
    return attempts


def exclusive(folder, name):
    """Hold a marker file in ``folder`` for a while; report whether any other task
    had one at the same time."""
    mine = os.path.join(folder, str(name))
    with open(mine, "x"):
        pass
    alone = os.listdir(folder) == [str(name)]
    time.sleep(0.15)
    alone = alone and os.listdir(folder) == [str(name)]
    os.remove(mine)
    return alone


def fib(n):
    if n < 2:
        return n
    client = zfutures.get_executor()
    a, b = client.submit(fib, n - 1), client.submit(fib, n - 2)
    return a.result(timeout=40) + b.result(timeout=40)


def fan_out(n):
    client = zfutures.get_executor()
    waited = client.map(inc, range(n), pure=False)
    done, not_done = zfutures.wait(waited, timeout=30)
    assert not not_done
    gathered = client.gather(client.map(inc, range(n), pure=False), timeout=30)
    completed = [f.result() for f in zfutures.as_completed(
        client.map(inc, range(n), pure=False), timeout=30)]
    return sum(f.result() for f in done), sum(gathered), sum(completed)


def call_get_executor():
    return type(zfutures.get_executor()).__name__


def raise_key_error(name):
    raise KeyError(name)


# ---------------------------------------------------------------------- helpers

@pytest.fixture
def gates(tmp_path):
    """Make gate files for gated tasks; every gate is opened at the end of the test,
    so no task is left blocking the module's workers."""
    made = []

    def make():
        path = str(tmp_path / f"gate-{len(made)}")
        made.append(path)
        return path

    yield make
    for path in made:
        Path(path).touch()


def open_gate(gate):
    Path(gate).touch()


def worker_addresses(client):
    return sorted(client.scheduler_info()["workers"])


def address_of(client, name):
    return {w["name"]: a for a, w in client.scheduler_info()["workers"].items()}[name]


def wait_for_workers(client, n):
    wait_for(lambda: len(client.scheduler_info()["workers"]) == n, timeout=15,
             message=f"{n} workers did not register")


@contextlib.contextmanager
def cancelled_at_exit(futures):
    """Cancel ``futures`` when leaving: a task that never runs (say, a restriction a
    broken scheduler cannot meet) must not hold up the module cluster's shutdown."""
    try:
        yield futures
    finally:
        for future in futures:
            future.cancel()


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


# ---------------------------------------------------------------------- module exports

def test_module_exports_the_stdlib_constants_and_api_names():
    assert zfutures.ALL_COMPLETED is concurrent.futures.ALL_COMPLETED
    assert zfutures.FIRST_COMPLETED is concurrent.futures.FIRST_COMPLETED
    assert zfutures.FIRST_EXCEPTION is concurrent.futures.FIRST_EXCEPTION
    for name in ["Executor", "Future", "wait", "as_completed", "progress", "get_executor",
                 "ZFuturesError", "KilledWorker", "FutureLostError", "ConnectionError",
                 "RemoteTraceback"]:
        assert name in zfutures.__all__
        assert getattr(zfutures, name) is not None
    assert issubclass(zfutures.Future, concurrent.futures.Future)
    for error in (zfutures.KilledWorker, zfutures.FutureLostError, zfutures.ConnectionError):
        assert issubclass(error, zfutures.ZFuturesError)
    assert issubclass(zfutures.ConnectionError, ConnectionError)


# ---------------------------------------------------------------------- scatter

def test_scatter_a_single_object_gives_a_future_usable_as_an_argument(ex):
    x = ex.scatter(41)
    assert isinstance(x, Future)
    assert x.result(timeout=10) == 41
    assert ex.submit(inc, x).result(timeout=10) == 42
    assert x.status == "finished"


def test_scatter_a_list_gives_a_list_of_futures(ex):
    xs = ex.scatter([1, 2, 3])
    assert isinstance(xs, list) and len(xs) == 3
    assert all(isinstance(x, Future) for x in xs)
    assert ex.gather(xs, timeout=10) == [1, 2, 3]
    assert ex.submit(sum, xs).result(timeout=10) == 6


def test_scatter_a_dict_gives_a_dict_of_futures(ex):
    d = ex.scatter({"a": 10, "b": "text"})
    assert isinstance(d, dict) and set(d) == {"a", "b"}
    assert all(isinstance(v, Future) for v in d.values())
    assert ex.gather(d, timeout=10) == {"a": 10, "b": "text"}
    assert ex.submit(operator.mul, d["b"], d["a"]).result(timeout=10) == "text" * 10


def test_scattering_the_same_data_twice_gives_the_same_key(ex):
    a, b = ex.scatter("same data"), ex.scatter("same data")
    assert a.key == b.key
    assert ex.scatter("other data").key != a.key
    assert ex.scatter([5, 6])[0].key == ex.scatter(5).key
    assert b.result(timeout=10) == "same data"


def test_scatter_to_chosen_workers_puts_data_only_there(ex):
    w0, w1 = worker_addresses(ex)
    xs = ex.scatter([100, 101, 102, 103], workers=[w1])
    who = ex.who_has(xs)
    assert all(who[x.key] == [w1] for x in xs)
    by_name = ex.scatter([200, 201, 202], workers=["local-0"])
    who = ex.who_has(by_name)
    assert all(who[x.key] == [address_of(ex, "local-0")] for x in by_name)
    assert ex.gather(xs, timeout=10) == [100, 101, 102, 103]


def test_scatter_broadcast_puts_a_copy_on_every_worker(ex):
    x = ex.scatter(f"broadcast {uuid.uuid4()}", broadcast=True)
    assert sorted(ex.who_has([x])[x.key]) == worker_addresses(ex)
    for w in worker_addresses(ex):
        assert x.key in ex.has_what()[w]
    # Each worker uses its own copy.
    w0, w1 = worker_addresses(ex)
    a = ex.submit(len, x, workers=[w0])
    b = ex.submit(len, x, workers=[w1])
    assert a.result(timeout=10) == b.result(timeout=10) == len(x.result(timeout=10))


def test_scattered_numpy_array_round_trips(ex):
    data = np.random.default_rng(0).random((300, 200))
    x = ex.scatter(data)
    back = x.result(timeout=10)
    assert back.dtype == data.dtype and back.shape == data.shape
    assert np.array_equal(back, data)
    assert ex.submit(np.sum, x).result(timeout=10) == pytest.approx(data.sum())


# ---------------------------------------------------------------------- cancel

def test_cancel_a_pending_task_drops_it_unless_a_dependent_needs_it(ex, gates, tmp_path):
    gate = gates()
    # More blockers than the workers queue ahead: later tasks wait at the center.
    blockers = [ex.submit(gated, gate, i, pure=False) for i in range(110)]
    marker = str(tmp_path / "target-ran")
    # (below the blockers' priority: however its submit is batched with theirs
    # and dealt in blocks, the target goes to a worker only after every blocker)
    target = ex.submit(touch, marker, pure=False, priority=-1)
    needed = ex.submit(inc, 41, pure=False)
    dependent = ex.submit(inc, needed)
    with cancelled_at_exit([dependent]):
        # Dispatch goes by priority, so once any task waits at the center, the
        # target is one of them.
        wait_for(lambda: ex.scheduler_info()["tasks"].get("ready", 0) >= 1,
                 message="no task waits at the center")

        assert target.cancel() is True
        assert target.cancelled() and target.status == "cancelled"
        with pytest.raises(concurrent.futures.CancelledError):
            target.result(timeout=5)
        # Cancelling a future lets go of it alone: a task that needs its key
        # keeps it, and gets its value.
        assert needed.cancel() is True
        assert dependent.status == "pending"

        open_gate(gate)
        assert ex.gather(blockers, timeout=30) == list(range(110))
        assert dependent.result(timeout=10) == 43
        # Work submitted after the cancelled task has run on both workers; it has not.
        later = [ex.submit(inc, i, workers=[w], pure=False)
                 for w in worker_addresses(ex) for i in range(3)]
        ex.gather(later, timeout=10)
        assert not os.path.exists(marker), "a cancelled task ran"
        assert target.status == "cancelled" and needed.status == "cancelled"


def test_cancel_a_running_task_discards_its_result(ex, gates):
    gate = gates()
    w0, _ = worker_addresses(ex)
    running = ex.submit(gated, gate, "late", workers=[w0], pure=False)
    wait_for(lambda: ex.scheduler_info()["workers"][w0]["executing"] == 1)
    assert running.cancel() is True
    assert running.status == "cancelled"
    open_gate(gate)
    after = ex.submit(inc, 1, workers=[w0], pure=False)  # runs after the gated one
    assert after.result(timeout=10) == 2
    assert running.status == "cancelled"
    with pytest.raises(concurrent.futures.CancelledError):
        running.result(timeout=1)


def test_cancel_a_finished_future_returns_false(ex):
    x = ex.submit(inc, 1, pure=False)
    assert x.result(timeout=10) == 2
    assert x.cancel() is False
    assert x.status == "finished" and not x.cancelled()
    ex.cancel([x])
    assert x.status == "finished"
    assert x.result(timeout=10) == 2


def test_executor_cancel_cancels_every_future_given(ex, gates):
    gate = gates()
    blockers = [ex.submit(gated, gate, i, pure=False) for i in range(110)]
    pending = [ex.submit(inc, i, pure=False) for i in range(3)]
    ex.cancel(pending)
    for f in pending:
        assert f.cancelled() and f.status == "cancelled"
        with pytest.raises(concurrent.futures.CancelledError):
            f.result(timeout=5)
    open_gate(gate)
    ex.gather(blockers, timeout=30)
    assert all(f.status == "cancelled" for f in pending)


# ---------------------------------------------------------------------- gather, where data lives

def test_gather_skip_drops_failed_futures_in_any_structure(ex):
    good, bad, other = ex.submit(inc, 1), ex.submit(fail, 1), ex.submit(inc, 3)
    assert ex.gather([good, bad, other], errors="skip", timeout=10) == [2, 4]
    assert ex.gather({"a": good, "b": bad}, errors="skip", timeout=10) == {"a": 2}
    assert ex.gather((bad, [good, bad]), errors="skip", timeout=10) == ([2],)
    with pytest.raises(ValueError, match="bad input"):
        ex.gather([good, bad], timeout=10)


def test_who_has_has_what_and_nthreads_on_a_fresh_cluster(processes):
    _, address = processes.center()
    processes.worker(address, "--nthreads", "2", "--name", "busy")
    processes.worker(address, "--nthreads", "3", "--name", "idle")
    with Executor(address) as client:
        wait_for_workers(client, 2)
        busy, idle = address_of(client, "busy"), address_of(client, "idle")
        assert client.nthreads() == {busy: 2, idle: 3}
        assert client.has_what() == {busy: [], idle: []}  # empty workers are listed
        x = client.submit(inc, 1, workers=["busy"])
        y = client.submit(inc, 2, workers=[busy])
        assert client.gather([x, y], timeout=10) == [2, 3]
        assert client.who_has() == {x.key: [busy], y.key: [busy]}  # all of ours
        assert client.who_has([x]) == {x.key: [busy]}
        has_what = client.has_what()
        assert set(has_what) == {busy, idle}
        assert sorted(has_what[busy]) == sorted([x.key, y.key])
        assert has_what[idle] == []


def test_scheduler_info_fields_and_task_counts(ex, gates):
    w0, w1 = worker_addresses(ex)
    info = ex.scheduler_info()
    assert info["address"] == ex.address
    assert set(info["workers"]) == {w0, w1}
    assert {w["name"] for w in info["workers"].values()} == {"local-0", "local-1"}
    for w in info["workers"].values():
        assert set(w) >= {"name", "nthreads", "memory", "managed", "spilled", "memory_limit",
                          "resources", "executing", "queued", "keys"}
        assert w["nthreads"] == 1
        assert w["resources"] == {}
        assert isinstance(w["memory"], int) and w["memory"] >= 0
        assert isinstance(w["managed"], int) and w["managed"] >= 0
        assert w["spilled"] == 0  # (nothing goes to disk here)
        assert isinstance(w["memory_limit"], int) and w["memory_limit"] > 0
    # the processes' own memory, from their heartbeats
    wait_for(lambda: all(w["memory"] > 10_000_000
                         for w in ex.scheduler_info()["workers"].values()),
             message="the workers' process memory never came")
    assert all(isinstance(n, int) for n in info["tasks"].values())

    gate = gates()
    blockers = [ex.submit(gated, gate, i, workers=[w0], pure=False) for i in range(2)]
    wait_for(lambda: ex.scheduler_info()["workers"][w0]["executing"] == 1
             and ex.scheduler_info()["workers"][w0]["queued"] >= 1)
    assert ex.scheduler_info()["tasks"].get("processing", 0) >= 2
    bad = ex.submit(fail, "counted", pure=False)
    bad.exception(timeout=10)
    assert ex.scheduler_info()["tasks"].get("erred", 0) >= 1
    open_gate(gate)
    ex.gather(blockers, timeout=10)

    before = ex.scheduler_info()["workers"][w1]
    big = ex.scatter(np.ones(200_000), workers=[w1])  # 1.6 MB
    after = ex.scheduler_info()
    assert after["workers"][w1]["managed"] >= before["managed"] + 1_600_000
    assert after["workers"][w1]["keys"] >= 1
    assert after["tasks"].get("memory", 0) >= 3
    assert big.key in ex.has_what()[w1]


# ---------------------------------------------------------------------- run

def _worker_pids(ex):
    """Worker processes, not their nanny (which runs no tasks)."""
    return {p.pid for p in zfutures_children()
            if "worker" in p.cmdline() and ex.address in p.cmdline()
            and "--no-nanny" in p.cmdline()}


def test_run_runs_on_every_worker(ex):
    pids = ex.run(os.getpid)
    assert set(pids) == set(worker_addresses(ex))
    assert len(set(pids.values())) == 2
    assert os.getpid() not in pids.values()
    assert set(pids.values()) == _worker_pids(ex)
    assert ex.run(operator.add, 1, 2) == dict.fromkeys(worker_addresses(ex), 3)


def test_run_on_chosen_workers_by_address_or_name(ex):
    w0, w1 = worker_addresses(ex)
    pids = ex.run(os.getpid)
    assert ex.run(os.getpid, workers=[w1]) == {w1: pids[w1]}
    local0 = address_of(ex, "local-0")
    assert ex.run(os.getpid, workers=["local-0"]) == {local0: pids[local0]}


def test_run_reraises_the_exception_of_fn(ex):
    with pytest.raises(KeyError, match="nope"):
        ex.run(raise_key_error, "nope")
    assert ex.run(inc, 1) == dict.fromkeys(worker_addresses(ex), 2)  # still usable


# ---------------------------------------------------------------------- task options

def test_retries_rerun_a_failing_task(ex, tmp_path):
    enough = ex.submit(flaky, str(tmp_path / "a"), 2, retries=2, pure=False)
    assert enough.result(timeout=20) == 3  # two failures, then success

    too_few = ex.submit(flaky, str(tmp_path / "b"), 2, retries=1, pure=False)
    with pytest.raises(RuntimeError, match="attempt 2 fails"):
        too_few.result(timeout=20)
    assert os.path.getsize(tmp_path / "b") == 2

    none = ex.submit(flaky, str(tmp_path / "c"), 1, pure=False)
    with pytest.raises(RuntimeError, match="attempt 1 fails"):
        none.result(timeout=20)
    assert os.path.getsize(tmp_path / "c") == 1


def test_priority_runs_higher_first(processes, tmp_path):
    _, address = processes.center()
    processes.worker(address, "--nthreads", "1")
    with Executor(address) as client:
        wait_for_workers(client, 1)
        gate, log = str(tmp_path / "gate"), str(tmp_path / "log")
        try:
            blockers = [client.submit(gated, gate, i, pure=False) for i in range(3)]
            lows = [client.submit(append_line, log, f"low-{i}", pure=False) for i in range(3)]
            high = client.submit(append_line, log, "high", priority=10, pure=False)
            wait_for(lambda: sum(client.scheduler_info()["tasks"].values()) >= 7)
        finally:
            open_gate(gate)
        client.gather(blockers + lows + [high], timeout=20)
        with open(log) as f:
            order = f.read().split()
        assert order == ["high", "low-0", "low-1", "low-2"]


def test_workers_pin_a_task_by_address_or_name(ex):
    w0, w1 = worker_addresses(ex)
    pinned = [ex.submit(inc, i, workers=[w1], pure=False) for i in range(12)]
    with cancelled_at_exit(pinned):
        assert ex.gather(pinned, timeout=10) == list(range(1, 13))
    who = ex.who_has(pinned)
    assert all(who[f.key] == [w1] for f in pinned)

    local0 = address_of(ex, "local-0")
    named = ex.map(inc, range(12), workers=["local-0"], pure=False)
    with cancelled_at_exit(named):
        assert ex.gather(named, timeout=10) == list(range(1, 13))
    who = ex.who_has(named)
    assert all(who[f.key] == [local0] for f in named)


def test_allow_other_workers_runs_despite_an_unknown_worker(ex):
    x = ex.submit(inc, 1, workers=["no-such-worker"], allow_other_workers=True, pure=False)
    with cancelled_at_exit([x]):
        assert x.result(timeout=10) == 2
    assert ex.who_has([x])[x.key][0] in worker_addresses(ex)


def test_resources_restrict_where_and_how_many_at_once(processes, tmp_path):
    _, address = processes.center()
    processes.worker(address, "--nthreads", "2", "--name", "gpu", "--resources", "GPU=1")
    processes.worker(address, "--nthreads", "2", "--name", "cpu")
    with Executor(address) as client:
        wait_for_workers(client, 2)
        gpu = address_of(client, "gpu")
        info = client.scheduler_info()["workers"]
        assert info[gpu]["resources"] == {"GPU": 1}
        assert info[address_of(client, "cpu")]["resources"] == {}
        folder = tmp_path / "running"
        folder.mkdir()
        futures = [client.submit(exclusive, str(folder), i, resources={"GPU": 1}, pure=False)
                   for i in range(6)]
        alone = client.gather(futures, timeout=30)
        assert alone == [True] * 6, "two GPU tasks ran at the same time"
        who = client.who_has(futures)
        assert all(who[f.key] == [gpu] for f in futures)
        # Tasks without resource needs still run anywhere.
        assert client.gather(client.map(inc, range(4), pure=False), timeout=10) == [1, 2, 3, 4]


def test_map_with_keys(ex):
    tag = uuid.uuid4().hex[:8]
    keys = [f"first-{tag}", f"second-{tag}"]
    futures = ex.map(inc, [1, 2], key=keys)
    assert [f.key for f in futures] == keys
    assert ex.gather(futures, timeout=10) == [2, 3]
    prefixed = ex.map(operator.add, [1, 2, 3], [10, 20, 30], key=f"sum{tag}")
    assert all(f.key.startswith(f"sum{tag}-") for f in prefixed)
    assert len({f.key for f in prefixed}) == 3
    assert ex.gather(prefixed, timeout=10) == [11, 22, 33]


# ---------------------------------------------------------------------- waiting

def test_wait_all_completed(ex):
    futures = ex.map(inc, range(8), pure=False) + [ex.submit(fail, 0, pure=False)]
    done, not_done = zfutures.wait(futures, timeout=20, return_when=zfutures.ALL_COMPLETED)
    assert done == set(futures) and not not_done
    done, not_done = zfutures.wait(futures)  # the default: all completed
    assert done == set(futures)


def test_wait_first_completed_and_timeout(ex, gates):
    w0, w1 = worker_addresses(ex)
    gate = gates()
    slow = ex.submit(gated, gate, "slow", workers=[w0], pure=False)
    quick = ex.submit(inc, 1, workers=[w1], pure=False)
    # No timeout: a wait that ignored return_when would last until the gate gives up.
    done, not_done = zfutures.wait([slow, quick], return_when=zfutures.FIRST_COMPLETED)
    assert quick in done and not_done == {slow}
    done, not_done = zfutures.wait([slow], timeout=0.2)
    assert not done and not_done == {slow}
    open_gate(gate)
    done, not_done = zfutures.wait([slow, quick], timeout=20)
    assert done == {slow, quick} and not not_done


def test_wait_first_exception(ex, gates):
    w0, w1 = worker_addresses(ex)
    gate = gates()
    slow = ex.submit(gated, gate, "slow", workers=[w0], pure=False)
    ok = ex.submit(inc, 1, workers=[w1], pure=False)
    ok.result(timeout=10)
    # A success does not end FIRST_EXCEPTION's wait...
    done, not_done = zfutures.wait([slow, ok], timeout=0.3,
                                   return_when=zfutures.FIRST_EXCEPTION)
    assert done == {ok} and not_done == {slow}
    # ...a failure does (and only that: bad fails once its gate opens, a bit later).
    bad_gate = gates()
    bad = ex.submit(gated_fail, bad_gate, workers=[w1], pure=False)
    opener = threading.Timer(0.3, open_gate, [bad_gate])
    opener.start()
    try:
        # No timeout: waiting for all would last until slow's gate gives up.
        done, not_done = zfutures.wait([slow, ok, bad], return_when=zfutures.FIRST_EXCEPTION)
    finally:
        opener.join(5)
    assert done == {ok, bad} and not_done == {slow}
    assert isinstance(bad.exception(timeout=0), ValueError)


def test_as_completed_yields_in_order_of_completion(ex, gates):
    w0, w1 = worker_addresses(ex)
    gate_a, gate_b = gates(), gates()
    a = ex.submit(gated, gate_a, "a", workers=[w0], pure=False)
    b = ex.submit(gated, gate_b, "b", workers=[w1], pure=False)
    iterator = zfutures.as_completed([a, b], timeout=30)
    open_gate(gate_b)
    assert next(iterator) is b
    open_gate(gate_a)
    assert next(iterator) is a
    with pytest.raises(StopIteration):
        next(iterator)


def test_as_completed_with_results_raises_a_failure_when_it_comes(ex, gates):
    w0, w1 = worker_addresses(ex)
    gate = gates()
    ok = ex.submit(inc, 1, workers=[w1], pure=False)
    bad = ex.submit(gated_fail, gate, workers=[w0], pure=False)
    ok.result(timeout=10)
    iterator = zfutures.as_completed([ok, bad], timeout=30, with_results=True)
    future, value = next(iterator)
    assert future is ok and value == 2
    open_gate(gate)
    with pytest.raises(ValueError, match="failed after the gate"):
        next(iterator)


def test_as_completed_add_during_iteration(ex):
    first = ex.submit(inc, 1, pure=False)
    iterator = zfutures.as_completed([first], timeout=30)
    seen, added = [], []
    for future in iterator:
        seen.append(future)
        if len(added) < 2:
            added.append(ex.submit(inc, 10 + len(added), pure=False))
            iterator.add(added[-1])
    assert seen[0] is first and set(seen[1:]) == set(added) and len(seen) == 3
    assert sorted(f.result(timeout=10) for f in seen) == [2, 11, 12]


def test_as_completed_timeout_raises(ex, gates):
    slow = ex.submit(gated, gates(), pure=False)
    iterator = zfutures.as_completed([slow], timeout=0.3)
    with pytest.raises(concurrent.futures.TimeoutError):
        next(iterator)


def test_stdlib_wait_and_as_completed_on_our_futures(ex, gates):
    w0, w1 = worker_addresses(ex)
    gate = gates()
    slow = ex.submit(gated, gate, "slow", workers=[w0], pure=False)
    quick = ex.submit(inc, 1, workers=[w1], pure=False)
    done, not_done = concurrent.futures.wait(
        [slow, quick], return_when=concurrent.futures.FIRST_COMPLETED)
    assert done == {quick} and not_done == {slow}
    iterator = concurrent.futures.as_completed([slow, quick], timeout=30)
    assert next(iterator) is quick
    open_gate(gate)
    assert next(iterator) is slow
    assert slow.result(timeout=10) == "slow"


def test_asyncio_wrap_future_and_await(ex, gates):
    gate = gates()

    async def main():
        a = ex.submit(inc, 1, pure=False)
        wrapped = await asyncio.wait_for(asyncio.wrap_future(a), 20)
        awaited = await asyncio.wait_for(_awaited(ex.submit(inc, 2, pure=False)), 20)
        with pytest.raises(ValueError, match="bad input"):
            await asyncio.wait_for(_awaited(ex.submit(fail, 3, pure=False)), 20)

        # Awaiting does not block the event loop: another coroutine opens the gate.
        async def opener():
            await asyncio.sleep(0.05)
            open_gate(gate)

        blocked = ex.submit(gated, gate, "through", pure=False)
        value, _ = await asyncio.wait_for(asyncio.gather(_awaited(blocked), opener()), 30)
        return wrapped, awaited, value

    assert asyncio.run(main()) == (2, 3, "through")


async def _awaited(future):
    return await future


# ---------------------------------------------------------------------- get_executor

#: A cluster of ONE worker with ONE thread: a task that waits on others must
#: give its thread back for them to run.
one_thread = cluster_fixture(nworkers=1, nthreads=1)


def test_get_executor_inside_a_task_gives_an_executor(one_thread):
    assert one_thread.submit(call_get_executor).result(timeout=20) == "Executor"


def test_recursive_fibonacci_on_one_thread_does_not_deadlock(one_thread):
    assert one_thread.submit(fib, 10).result(timeout=50) == 55


def test_fan_out_waits_inside_a_task_on_one_thread(one_thread):
    # 1 + ... + 8 three ways, each wait giving the only thread slot to the children.
    assert one_thread.submit(fan_out, 8, pure=False).result(timeout=40) == (36, 36, 36)


def test_get_executor_outside_a_task_raises():
    with pytest.raises(RuntimeError):
        zfutures.get_executor()


# ---------------------------------------------------------------------- progress

def test_progress_draws_a_bar_on_a_terminal_and_waits(ex, gates):
    gate = gates()
    futures = [ex.submit(gated, gate, i, pure=False) for i in range(5)]
    opener = threading.Timer(0.3, open_gate, [gate])
    opener.start()
    terminal = FakeTerminal()
    try:
        zfutures.progress(futures, file=terminal)
    finally:
        opener.join(5)
    assert all(f.done() for f in futures)
    out = terminal.getvalue()
    assert "100%" in out and "5/5" in out


def test_progress_writes_nothing_when_not_a_terminal(ex, gates):
    gate = gates()
    futures = [ex.submit(gated, gate, i, pure=False) for i in range(3)]
    futures.append(ex.submit(fail, 9, pure=False))
    opener = threading.Timer(0.3, open_gate, [gate])
    opener.start()
    log = io.StringIO()
    try:
        zfutures.progress(futures, file=log)
    finally:
        opener.join(5)
    assert all(f.done() for f in futures)
    assert log.getvalue() == ""


# ---------------------------------------------------------------------- known bugs

def _in_thread(fn, timeout):
    """Run ``fn()`` in a daemon thread: ``{"value": ...}`` or ``{"error": ...}``, or
    None if it is still running after ``timeout`` seconds (it hangs)."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: B036 - reported to the test
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    return None if thread.is_alive() else box


def test_scatter_empty_data_gives_empty_containers(ex):
    outcome = _in_thread(lambda: (ex.scatter([]), ex.scatter({})), timeout=5)
    assert outcome == {"value": ([], {})}


def test_submitting_a_cancelled_call_again_runs_it(ex, gates):
    gate = gates()
    blockers = [ex.submit(gated, gate, i, pure=False) for i in range(110)]
    tag = uuid.uuid4().hex
    first = ex.submit(len, tag)
    wait_for(lambda: ex.scheduler_info()["tasks"].get("ready", 0) >= 1)
    assert first.cancel() is True
    again = ex.submit(len, tag)
    open_gate(gate)
    ex.gather(blockers, timeout=30)
    assert first.cancelled()
    assert again.result(timeout=10) == 32


def test_a_cancelled_await_does_not_hold_up_asyncio_run(ex, gates):
    slow = ex.submit(gated, gates(), "slow", pure=False)

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(_awaited(slow), 0.2)
        return "returned"

    assert _in_thread(lambda: asyncio.run(main()), timeout=5) == {"value": "returned"}


def test_progress_accepts_an_iterator_of_futures(ex, gates):
    gate = gates()
    futures = [ex.submit(gated, gate, i, pure=False) for i in range(3)]
    opener = threading.Timer(0.3, open_gate, [gate])
    opener.start()
    try:
        zfutures.progress(iter(futures), file=io.StringIO())
    finally:
        opener.join(5)
    assert all(f.done() for f in futures)


def test_all_lists_exactly_the_lazily_loaded_names():
    assert sorted(zfutures.__all__) == sorted(zfutures._EXPORTS)
    for name in zfutures.__all__:
        assert getattr(zfutures, name) is not None
    with pytest.raises(AttributeError):
        zfutures.no_such_name  # noqa: B018


def test_gather_timeout_says_how_many_futures_are_not_done(ex, gates):
    gate = gates()
    done = ex.map(inc, range(3))
    ex.gather(done, timeout=10)
    slow = [ex.submit(gated, gate, i, pure=False) for i in range(2)]
    with pytest.raises(concurrent.futures.TimeoutError, match="2 of 5 futures not done"):
        ex.gather(done + slow, timeout=0.3)
    open_gate(gate)
    assert ex.gather(done + slow, timeout=20) == [1, 2, 3, 0, 1]
