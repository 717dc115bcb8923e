"""Chaos: workers SIGKILLed at random while a graph of thousands of tasks runs."""
from __future__ import annotations

import concurrent.futures
import os
import random
import signal
import time
from operator import add

import psutil
import pytest
from conftest import wait_for, zfutures_children

from zfutures import Executor

pytestmark = pytest.mark.timeout(150)

N_INPUTS = 1500
N_CHAINS = 25
CHAIN_LENGTH = 20
MAX_KILLS = 15


def value(i):
    return (i * 7919) % 1009


def work(i):
    """A small task: a few ms of waiting, then a value that depends on ``i``."""
    time.sleep(0.005)
    return value(i)


def step(x, k):
    return (x * 31 + k) % 1_000_003


def tree_sum(ex, futures):
    """A binary tree of ``add`` tasks over ``futures``; its root and every node."""
    nodes = []
    level = list(futures)
    while len(level) > 1:
        paired = [ex.submit(add, level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        nodes += paired
        level = paired
    return level[0], nodes


def expected_chain(x0, j):
    x = x0
    for k in range(CHAIN_LENGTH):
        x = step(x, j * 1000 + k)
    return x


def live_workers(nanny):
    """The nanny's live worker processes (never the nanny or the center)."""
    found = []
    for child in psutil.Process(nanny.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "--no-nanny" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return sorted(found, key=lambda p: p.pid)


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_random_worker_kills_during_a_large_graph_lose_nothing(processes):
    """A worker SIGKILLed every 0.4 s while ~3,500 dependent tasks run:
    the nanny replaces it, its running tasks go elsewhere, results it alone held
    are recomputed, and every future ends with exactly the right value."""
    rng = random.Random(20240611)
    center, address = processes.center("--allowed-failures", "1000", "--worker-timeout", "3")
    nanny = processes.worker(address, "--nworkers", "4", "--name", "chaos")
    seen = {center.pid, nanny.pid}
    with Executor(address, timeout=10) as ex:
        wait_for(lambda: len(ex.nthreads()) == 4, timeout=30, message="workers did not register")
        # ex.run reports the same processes as the nanny's children: those are the victims.
        pids = ex.run(os.getpid)
        assert sorted(pids.values()) == [p.pid for p in live_workers(nanny)]
        seen.update(pids.values())

        xs = ex.map(work, range(N_INPUTS))
        total, nodes = tree_sum(ex, xs)
        chains = []
        for j in range(N_CHAINS):
            x = xs[j * (N_INPUTS // N_CHAINS)]
            for k in range(CHAIN_LENGTH):
                x = ex.submit(step, x, j * 1000 + k)
                chains.append(x)
        ends = chains[CHAIN_LENGTH - 1::CHAIN_LENGTH]
        everything = xs + nodes + chains
        assert len(everything) >= 3000

        kills = []  # (victim pid, futures still pending when it was killed)
        while len(kills) < MAX_KILLS:
            # (often enough that several kills land while work is pending: the
            # whole graph takes only a few seconds)
            _, pending = concurrent.futures.wait(everything, timeout=0.4)
            if not pending:
                break
            victims = live_workers(nanny)
            seen.update(p.pid for p in victims)
            if victims:
                victim = rng.choice(victims)
                os.kill(victim.pid, signal.SIGKILL)
                kills.append((victim.pid, len(pending)))

        values = [value(i) for i in range(N_INPUTS)]
        assert ex.gather(total, timeout=90) == sum(values)
        assert ex.gather(ends, timeout=60) == [
            expected_chain(values[j * (N_INPUTS // N_CHAINS)], j) for j in range(N_CHAINS)]
        assert ex.gather(xs, timeout=60) == values
        assert all(f.status == "finished" for f in everything)
        assert sum(pending > 0 for _, pending in kills) >= 3, kills
        assert all(gone(pid) for pid, _ in kills)

        # The nanny keeps the cluster at four workers, none of them a killed one.
        # (Four live children first: the nanny reports a death before it starts
        # the replacement, so the center then lists no killed worker, which
        # ex.run would wait on in vain for the reconnect deadline.)
        wait_for(lambda: len(live_workers(nanny)) == 4 and len(ex.nthreads()) == 4,
                 timeout=30, message="the nanny did not bring the cluster back to four workers")
        survivors = ex.run(os.getpid)
        assert not set(survivors.values()) & {pid for pid, _ in kills}
        seen.update(survivors.values())
        seen.update(p.pid for p in live_workers(nanny))

    processes.stop_all()
    assert center.returncode == 0 and nanny.returncode == 0
    wait_for(lambda: all(gone(pid) for pid in seen), timeout=20,
             message="a process the test started is still running")
    assert not zfutures_children()
