"""Liveness: a worker busy with a long task is kept; a frozen one is declared dead.

The center runs with a one-second worker timeout and the tasks run for three
times as long, so a worker whose heartbeats stopped while its task thread is
busy would be removed, its task run again on the spare worker, and the
center would log it.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest
from conftest import command, free_port, read_line, stop, wait_for

from zfutures import Executor

pytestmark = pytest.mark.timeout(60)

WORKER_TIMEOUT = 1.0
HEARTBEAT = ("--heartbeat-interval", "0.2")
BUSY = 3 * WORKER_TIMEOUT


# ---------------------------------------------------------------- tasks


def note_start(log: str) -> None:
    """Append this worker's pid to ``log``: one line per run of a task."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")


def count(seconds: float, log: str) -> tuple[int, int, int]:
    """Pure Python for ``seconds``: the GIL is held but for the interpreter's switches."""
    note_start(log)
    deadline = time.monotonic() + seconds
    n = total = 0
    while time.monotonic() < deadline:
        for _ in range(10000):
            total += n
            n += 1
    return os.getpid(), n, total


def sleep(seconds: float, log: str) -> tuple[int, float]:
    """One long C call that releases the GIL."""
    note_start(log)
    time.sleep(seconds)
    return os.getpid(), seconds


def matmul(seconds: float, log: str) -> tuple[int, int, float]:
    """Matrix products (BLAS, GIL released) back to back for ``seconds``."""
    note_start(log)
    a = np.full((400, 400), 0.5)
    deadline = time.monotonic() + seconds
    n, c = 0, a
    while time.monotonic() < deadline:
        c = a @ a
        n += 1
    return os.getpid(), n, float(c.sum())


def wait_for_file(path: str, log: str) -> int:
    """Run until ``path`` exists (the test creates it), then return this pid."""
    note_start(log)
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.01)
    return os.getpid()


# ---------------------------------------------------------------- helpers


@contextlib.contextmanager
def logged_center(processes, log_path) -> Iterator[str]:
    """A center with a short worker timeout, its log (stderr) in ``log_path``: its address.

    On exit the workers are stopped first (they may hand keys to the center
    as they leave), then the center, even if a worker will not stop.
    """
    with open(log_path, "w") as log:
        center = subprocess.Popen(
            [command("zfut-center"), "--port", str(free_port()),
             "--worker-timeout", str(WORKER_TIMEOUT), *HEARTBEAT],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True)
    try:
        yield read_line(center, r"listening at (tcp://\S+)").group(1)
    finally:
        try:
            processes.stop_all()
        finally:
            stop(center)
            center.stdout.close()


def start_workers(processes, address: str, *names: str) -> dict[str, subprocess.Popen]:
    """Workers with no nanny, so they are our children: ``{address: process}``."""
    workers = [processes.worker(address, "--no-nanny", "--name", name, *HEARTBEAT)
               for name in names]
    return {read_line(w, r"serving at (tcp://\S+)").group(1): w for w in workers}


def runs(log) -> list[int]:
    """The pids that started a task, one per run."""
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def check_busy_worker_is_kept(processes, tmp_path, task):
    """Run ``task`` for 3 worker timeouts on one of two workers; return its result."""
    center_log, log = tmp_path / "center.log", tmp_path / "runs"
    with logged_center(processes, center_log) as address, \
            Executor(address, timeout=10) as ex:
        workers = start_workers(processes, address, "busy-a", "busy-b")
        wait_for(lambda: len(ex.nthreads()) == 2, message="workers did not register")
        pids = ex.run(os.getpid)
        assert pids == {a: w.pid for a, w in workers.items()}
        future = ex.submit(task, BUSY, str(log), pure=False)
        wait_for(lambda: runs(log), message="the task did not start")

        def still_both_listed():
            assert set(ex.nthreads()) == set(pids), "a busy worker was dropped"
            return future.done()

        wait_for(still_both_listed, timeout=10 * BUSY, interval=0.1)
        result = future.result(timeout=10)
        # Ran once, where it started; no rerun on the spare worker.
        assert runs(log) == [result[0]]
        assert result[0] in pids.values()
        # The same two processes serve at the same addresses.
        assert ex.run(os.getpid) == pids
        text = center_log.read_text()
        assert "silent for" not in text, text
        assert " left" not in text, text
        for worker_address in pids:
            assert text.count(f"worker {worker_address} joined") == 1, text
    return result


# ---------------------------------------------------------------- tests


@pytest.mark.timeout(40)
def test_a_worker_busy_in_pure_python_is_not_declared_dead(processes, tmp_path):
    """A task looping in Python for 3 worker timeouts keeps its worker alive and runs once."""
    pid, n, total = check_busy_worker_is_kept(processes, tmp_path, count)
    assert n > 0 and total == n * (n - 1) // 2


@pytest.mark.timeout(40)
@pytest.mark.parametrize("task", [sleep, matmul], ids=["sleep", "numpy-matmul"])
def test_a_worker_busy_in_c_code_is_not_declared_dead(processes, tmp_path, task):
    """A task in GIL-releasing C calls for 3 worker timeouts keeps its worker and runs once."""
    result = check_busy_worker_is_kept(processes, tmp_path, task)
    if task is sleep:
        assert result[1] == BUSY
    else:
        assert result[1] > 0 and result[2] == 400 * 400 * 400 * 0.25


def same(x):
    return x


@pytest.mark.timeout(60)
def test_a_frozen_worker_is_declared_dead_and_its_task_rerun(processes, tmp_path):
    """A SIGSTOPped worker leaves the cluster in bounded time; its task reruns elsewhere."""
    center_log, log, release = tmp_path / "center.log", tmp_path / "runs", tmp_path / "go"
    with logged_center(processes, center_log) as address, \
            Executor(address, timeout=10) as ex:
        workers = start_workers(processes, address, "frozen-a", "frozen-b")
        wait_for(lambda: len(ex.nthreads()) == 2, message="workers did not register")
        pids = ex.run(os.getpid)
        assert pids == {a: w.pid for a, w in workers.items()}
        future = ex.submit(wait_for_file, str(release), str(log), pure=False)
        (victim_pid,) = wait_for(lambda: runs(log), message="the task did not start")
        (victim,) = [a for a, pid in pids.items() if pid == victim_pid]
        (survivor,) = set(pids) - {victim}
        os.kill(victim_pid, signal.SIGSTOP)
        try:
            wait_for(lambda: set(ex.nthreads()) == {survivor}, timeout=10 * WORKER_TIMEOUT,
                     message="the frozen worker was not declared dead")
            # Its task started again on the survivor, and finishes there.
            wait_for(lambda: len(runs(log)) == 2, timeout=10,
                     message="the task was not run again")
            assert runs(log) == [victim_pid, pids[survivor]]
            assert not future.done()
            release.touch()
            assert future.result(timeout=10) == pids[survivor]
        finally:
            os.kill(victim_pid, signal.SIGCONT)
        text = center_log.read_text()
        silent = text.find("worker b'")  # "worker b'<ident>' silent for ...: removing it"
        assert 0 <= silent < text.find(f"worker {victim} left"), text
        assert "silent for" in text[silent:].splitlines()[0], text
        assert f"worker {survivor} left" not in text, text
        # Awake again, it registers anew, and then leaves cleanly when stopped.
        wait_for(lambda: set(ex.nthreads()) == set(pids), timeout=15,
                 message="the woken worker did not register again")
        # The key keeps the value clients saw: the woken worker's own run of the
        # task (which returned its pid) does not become a second copy of it.
        assert ex.submit(same, future, workers=[victim], pure=False).result(
            timeout=10) == pids[survivor]
        assert stop(workers[victim]) == 0
        # The survivor serves on.
        assert ex.submit(wait_for_file, str(release), str(log), pure=False).result(
            timeout=10) == pids[survivor]
