"""Busy loops: a center or worker swamped with messages keeps its heartbeats.

The center and the workers run with one-second timeouts both ways. A map of
300,000 trivial tasks gives the center minutes' worth of messages at once;
were its loop to handle them all before its timers, its workers would hear
nothing for seconds, take it for dead and register anew, it would declare
them dead, and tasks would run twice or fail with KilledWorker.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest
from conftest import command, free_port, read_line, stop, wait_for
from scheduler_sim import C1, W1, W2, Sim, task

from zfutures import Executor
from zfutures.center import WORKER, Center
from zfutures.loop import ListeningClock
from zfutures.messages import Acquire, AcquireItem, ReleaseKeys
from zfutures.scheduler import MAX_ITEMS_PER_MESSAGE, Outbox

TIMEOUT = "1"
HEARTBEAT = ("--heartbeat-interval", "0.2")

#: One entry per task run in this process (list.append is atomic).
_ran: list = []


def counted_inc(x: int) -> int:
    _ran.append(None)
    return x + 1


def runs_here() -> int:
    return len(_ran)


@pytest.mark.timeout(120)
def test_a_map_of_300000_tasks_keeps_every_worker_alive(processes, tmp_path):
    """Each task runs once, on the workers that started; nobody is taken for dead."""
    n = 300_000
    center_log = tmp_path / "center.log"
    with open(center_log, "w") as log:
        center = subprocess.Popen(
            [command("zfut-center"), "--port", str(free_port()), "--worker-timeout", TIMEOUT,
             *HEARTBEAT], stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
            text=True)
    try:
        address = read_line(center, r"listening at (tcp://\S+)").group(1)
        worker_logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
        workers = []
        for path in worker_logs:
            with open(path, "w") as log:
                workers.append(processes.worker(address, "--no-nanny", "--heartbeat-timeout",
                                                TIMEOUT, *HEARTBEAT, stderr=log))
        for worker in workers:
            read_line(worker, r"serving at")
        with Executor(address, timeout=10) as ex:
            wait_for(lambda: len(ex.nthreads()) == 2, message="workers did not register")
            pids = ex.run(os.getpid)
            futures = ex.map(counted_inc, range(n))
            assert ex.gather(futures) == list(range(1, n + 1))
            assert ex.run(os.getpid) == pids  # the same workers, at the same addresses
            assert sum(ex.run(runs_here).values()) == n  # no task ran twice
            texts = [center_log.read_text()] + [p.read_text() for p in worker_logs]
            for text in texts:
                assert "silent for" not in text, text
                assert "no word from the center" not in text, text
                assert " left" not in text, text
            for worker_address in pids:
                assert texts[0].count(f"worker {worker_address} joined") == 1, texts[0]
            del futures
        # The client let go of all its keys at once as it left; the workers, asked
        # to stop, hand theirs on and leave: still nobody taken for dead.
        for worker in workers:
            assert stop(worker) == 0
        for text in [center_log.read_text()] + [p.read_text() for p in worker_logs]:
            assert "silent for" not in text, text
            assert "no word from the center" not in text, text
    finally:
        try:
            processes.stop_all()
        finally:
            stop(center)
            center.stdout.close()


# ---------------------------------------------------------------- the pieces, alone


def test_the_listening_clock_skips_the_loops_own_long_work():
    """Polling counts in full; a stretch of work counts up to the slack."""
    clock = ListeningClock(slack=0.5, now=100.0)
    assert clock.time(100.3) == pytest.approx(100.3)
    assert clock.time(104.0) == pytest.approx(100.5)  # busy for 4 s: 0.5 of them count
    clock.polling(104.0)
    assert clock.time(106.0) == pytest.approx(102.5)  # polled 2 s: all count
    clock.working(106.0)
    clock.polling(106.2)  # a short turn loses nothing
    clock.working(107.0)
    assert clock.time(107.1) == pytest.approx(103.6)
    # Never backwards, wherever it is read.
    times = [clock.time(107.0 + i / 10) for i in range(50)]
    assert times == sorted(times)


def test_the_center_does_not_take_its_own_busy_time_for_a_workers_silence():
    """A worker is declared dead after worker_timeout seconds the center listened."""
    center = Center("127.0.0.1", 0, worker_timeout=1.0, heartbeat_interval=0.2)
    try:
        start = time.monotonic()
        center.listening.working(start)
        center.peers[b"w"] = center._new_peer(WORKER)
        center._tick(start + 3.0)  # its turn took 3 s: 0.2 of them count
        assert b"w" in center.peers
        center.listening.polling(start + 3.0)
        center._tick(start + 3.7)  # then it polled 0.7 s: 0.9 s of silence
        assert b"w" in center.peers
        center._tick(start + 3.9)
        assert b"w" not in center.peers
    finally:
        center.monitor.close(linger=0)
        center.socket.close(linger=0)
        center.context.term()
        center.waker.close()


def test_a_message_from_the_center_holds_a_bounded_number_of_items():
    """A peer handles one message at once: thousands of items go in several, in order."""
    outbox = Outbox()
    n = 2 * MAX_ITEMS_PER_MESSAGE + 10
    for i in range(n):
        outbox.add(W1, Acquire, AcquireItem(f"k{i}", ["tcp://w2:9000"]))
    outbox.add(W1, ReleaseKeys, "other")
    messages = [msg for _, msg, _ in outbox.take()]
    assert [(type(msg), len(msg[0])) for msg in messages] \
        == [(Acquire, MAX_ITEMS_PER_MESSAGE), (Acquire, MAX_ITEMS_PER_MESSAGE),
            (Acquire, 10), (ReleaseKeys, 1)]
    keys = [item.key for msg in messages if isinstance(msg, Acquire) for item in msg.tasks]
    assert keys == [f"k{i}" for i in range(n)]


def test_a_scheduler_with_a_collect_limit_releases_a_big_release_in_parts():
    """Each event releases at most collect_limit tasks; collect_garbage() goes on."""
    sim = Sim(collect_limit=100)
    sim.worker(W1)
    keys = [f"k{i}" for i in range(1000)]
    sim.submit(*[task(k) for k in keys])
    while computes := sim.take().computes():
        for key in computes[W1]:
            sim.finish(key, W1)
    sim.s.remove_client(C1)
    released = sim.take().keys("release-keys", W1)
    assert len(released) == 100
    assert sim.s.garbage_pending
    parts = 1
    while sim.s.garbage_pending:
        sim.s.collect_garbage()
        released += sim.take().keys("release-keys", W1)
        parts += 1
    assert parts == 10
    assert sorted(released) == sorted(keys)
    assert not sim.s.tasks


def test_a_task_waiting_to_be_released_that_is_wanted_again_stays():
    sim = Sim(collect_limit=1)
    sim.worker(W1)
    sim.submit(task("a"), task("b"))
    while computes := sim.take().computes():
        for key in computes[W1]:
            sim.finish(key, W1)
    sim.s.release(C1, ["a", "b"])
    (first,) = sim.take().keys("release-keys", W1)
    (other,) = {"a", "b"} - {first}
    sim.submit(task(other))  # wanted again before its turn came
    while sim.s.garbage_pending:
        sim.s.collect_garbage()
    assert sim.take().keys("release-keys", W1) == []
    assert sim.state(other) == "memory"
    assert first not in sim.s.tasks


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [(W1,), (W1, W2)], ids=["shared-queue", "blocks"])
def test_letting_go_of_many_ready_tasks_takes_one_pass(workers):
    """100,000 tasks wait at the center (on one worker, in the shared queue; on
    two, in each worker's block); letting go of them all is quick, and the
    ones kept still run, each once."""
    n = 100_000
    sim = Sim()
    for worker in workers:
        sim.worker(worker)
    sim.submit(*[task(f"r{i}") for i in range(n)])
    computed = sim.take().computed_keys()
    sent_before = set(computed)
    dropped = [f"r{i}" for i in range(n) if i % 1000]  # all but 100
    start = time.perf_counter()
    sim.s.release(C1, dropped)
    assert time.perf_counter() - start < 5.0
    while True:  # the workers run what they are sent
        for key in [k for k, ts in sim.s.tasks.items() if ts.state == "processing"]:
            sim.finish(key)
        keys = sim.take().computed_keys()
        if not keys:
            break
        computed += keys
    kept = [f"r{i}" for i in range(0, n, 1000)]
    assert len(computed) == len(set(computed))  # none sent twice
    assert set(kept) <= set(computed)
    assert set(computed) - set(kept) <= sent_before  # no dropped one sent after
    assert all(sim.state(key) == "memory" for key in kept)
    assert not sim.s.placement.ready and sim.s.placement.affine == 0
    assert not any(ws.ready_here for ws in sim.s.workers.values())
