"""The nanny (nanny.py): it keeps a machine's worker processes running.

A real :class:`~zfutures.nanny.Nanny` runs on a thread of this process and
starts real worker processes, against a fake center (a ROUTER the test reads
and writes). Every wait is bounded.
"""
from __future__ import annotations

import os
import signal
import threading
import time

import fake_center
import psutil
import pytest
from conftest import wait_for

from zfutures import nanny as nanny_module
from zfutures.messages import Heartbeat, RegisterNanny, WorkerDied
from zfutures.nanny import Nanny

pytestmark = pytest.mark.timeout(120)

#: Seconds a worker process may take to start (imports included) on a loaded machine.
START = 30


@pytest.fixture
def center():
    with fake_center.running() as center:
        yield center


class Supervising:
    """A nanny running on a thread of this process."""

    def __init__(self, nanny: Nanny):
        self.nanny = nanny
        self.thread = threading.Thread(target=nanny.run, daemon=True, name="test-nanny")
        self.thread.start()

    def ended(self, timeout: float = 30) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def live_pids(self) -> list[int]:
        return [child.process.pid for child in self.nanny.children
                if child.process is not None and child.process.poll() is None]


@pytest.fixture
def supervise(center):
    """``supervise(nworkers, **options)``: a nanny for ``center``, stopped at the end."""
    started: list[Supervising] = []

    def supervise(nworkers: int = 1, *worker_args: str, **options) -> Supervising:
        args = ["--heartbeat-interval", "0.2", *worker_args]
        running = Supervising(Nanny(center.address, args, nworkers, echo=False, **options))
        started.append(running)
        return running

    yield supervise
    problems = []
    for running in started:
        running.nanny.stop()
        if not running.ended():
            problems.append("the nanny did not stop")
        left = running.live_pids()
        if left:
            problems.append(f"the nanny left workers behind: {left}")
            for pid in left:  # (ours: started by the nanny we started)
                os.kill(pid, signal.SIGKILL)
    assert not problems, problems


def test_a_nanny_starts_its_workers_and_learns_their_addresses(center, supervise):
    running = supervise(2, name="m")
    registered = {center.register(timeout=START).name for _ in range(2)}
    assert registered == {"m-0", "m-1"}
    wait_for(lambda: all(c.address for c in running.nanny.children), timeout=START)
    assert len(running.live_pids()) == 2


def test_a_worker_that_dies_is_reported_to_the_center_and_replaced(center, supervise):
    running = supervise(1)
    first = center.register(timeout=START).address
    (child,) = running.nanny.children
    wait_for(lambda: child.address == first, timeout=START)
    victim = child.process
    victim.kill()
    # The nanny tells the center at once, so the dead worker's tasks go
    # elsewhere without waiting for its heartbeats to time out ...
    center.expect(RegisterNanny, timeout=10)
    assert center.expect(WorkerDied, timeout=10).address == first
    # ... and starts a fresh worker in its place.
    assert center.register(timeout=START).address != first
    assert child.process is not victim and child.process.poll() is None


def test_a_worker_that_keeps_dying_at_start_is_restarted_only_after_a_pause(
        supervise, monkeypatch):
    window = 60.0  # (long: four failed starts fit in it, however loaded the machine)
    monkeypatch.setattr(nanny_module, "RESTART_WINDOW", window)
    running = supervise(1, "--nthreads", "not a number")  # every start fails at once
    (child,) = running.nanny.children
    wait_for(lambda: child.restart_at is not None, timeout=90,  # (within the test's bound)
             message="the nanny did not pause the restarts")
    assert len(child.restarts) == 3  # three quick restarts, then a pause
    assert child.restart_at - time.monotonic() > window / 2 - 5
    assert child.process.poll() is not None  # (none runs meanwhile)


def test_a_nanny_told_not_to_restart_ends_once_its_workers_are_gone(center, supervise):
    running = supervise(1, restart=False)
    center.register(timeout=START)
    (child,) = running.nanny.children
    wait_for(lambda: child.address, timeout=START)
    child.process.kill()
    assert center.expect(WorkerDied, skip=(Heartbeat, RegisterNanny))
    assert running.ended()


def test_stopping_a_nanny_stops_its_workers(center, supervise):
    running = supervise(2)
    for _ in range(2):
        center.register(timeout=START)
    pids = running.live_pids()
    running.nanny.stop()
    assert running.ended()
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() !=
                   psutil.STATUS_ZOMBIE for pid in pids)
