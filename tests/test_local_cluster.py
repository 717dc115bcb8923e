"""Executor() owns a local cluster of real processes and stops them all."""
from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import urllib.request

import pytest
from conftest import wait_for, zfutures_children

from zfutures import Executor, wait

pytestmark = pytest.mark.timeout(60)


def inc(x):
    return x + 1


def test_local_cluster_has_the_requested_workers_and_stops_them():
    with Executor(n_workers=3, threads_per_worker=2) as ex:
        assert ex.nthreads() and sorted(ex.nthreads().values()) == [2, 2, 2]
        assert ex.address.startswith("tcp://127.0.0.1:")
        # A center and three workers (the nanny is a thread); its dashboard
        # process starts when someone first looks.
        assert len(zfutures_children()) == 4
        with urllib.request.urlopen(ex.dashboard_link.replace("/status", "/health"),
                                    timeout=20) as answer:
            assert answer.read() == b"ok"
        children = zfutures_children()
        assert len(children) == 5
        assert ex.submit(inc, 1).result(timeout=10) == 2
    wait_for(lambda: not zfutures_children(), message="processes left after shutdown")
    assert not any(p.is_running() for p in children)


def test_default_size_is_one_worker_per_core():
    import os

    with Executor() as ex:
        assert len(ex.nthreads()) == os.cpu_count()


def test_program_exiting_without_shutdown_leaves_no_process():
    script = textwrap.dedent("""
        import psutil
        from zfutures import Executor
        ex = Executor(n_workers=2)
        print(ex.submit(abs, -3).result(timeout=10), flush=True)
        print(" ".join(str(c.pid) for c in psutil.Process().children(recursive=True)),
              flush=True)
        # no shutdown(): the interpreter exits with the executor alive
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "3"
    pids = [int(p) for p in lines[1].split()]
    assert len(pids) >= 3

    import psutil

    def all_gone():
        return not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                       for p in pids)
    wait_for(all_gone, timeout=10, message="children outlived their program")


def test_a_local_clusters_memory_limit_reaches_each_worker():
    with Executor(n_workers=2, memory_limit="300MB") as ex:
        limits = [w["memory_limit"] for w in ex.scheduler_info()["workers"].values()]
        assert limits == [300_000_000, 300_000_000]
    from zfutures.processes import total_memory

    with Executor(n_workers=1, memory_limit=0.25) as ex:
        [limit] = [w["memory_limit"] for w in ex.scheduler_info()["workers"].values()]
        assert limit == int(0.25 * total_memory())


@pytest.mark.parametrize("limit, error", [("lots", ValueError), (-1, ValueError),
                                          (1.5, ValueError), (True, TypeError)])
def test_a_bad_memory_limit_raises_at_the_call_before_any_process(limit, error):
    with pytest.raises(error, match="memory"):
        Executor(n_workers=1, memory_limit=limit)
    assert zfutures_children() == []


def test_killed_program_leaves_no_process():
    script = textwrap.dedent("""
        import os, signal, psutil, urllib.request
        from zfutures import Executor, wait
        ex = Executor(n_workers=1)
        urllib.request.urlopen(ex.dashboard_link, timeout=20).read()  # (starts it)
        print(" ".join(str(c.pid) for c in psutil.Process().children(recursive=True)),
              flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 3  # center, its dashboard, worker

    import psutil

    def all_gone():
        return not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                       for p in pids)
    wait_for(all_gone, timeout=10, message="children outlived a killed program")


# ----------------------------------------------------------------------------- memory

#: Small objects a task leaves behind, between the big buffers it made.
_left_behind: list = []


def build_piecewise(count: int, nbytes: int) -> list:
    """Big buffers with small long-lived objects between them, as a task that
    builds its result piece by piece (and caches something) leaves the heap."""
    import numpy as np

    pieces = []
    for _ in range(count):
        pieces.append(np.ones(nbytes, dtype=np.uint8))
        _left_behind.append(bytearray(1000))
    return pieces


def worker_rss() -> int:
    from zfutures.processes import own_rss

    return own_rss()


@pytest.mark.timeout(120)
def test_an_idle_worker_gives_the_memory_of_released_results_back():
    MB = 2**20
    with Executor(n_workers=1) as ex:
        [before] = ex.run(worker_rss).values()
        x = ex.submit(build_piecewise, 40, 4 * MB)
        wait([x], timeout=30)
        [holding] = ex.run(worker_rss).values()
        assert holding - before > 150 * MB
        del x

        def returned() -> bool:
            [now] = ex.run(worker_rss).values()
            return now - before < 40 * MB

        wait_for(returned, timeout=20, interval=0.2,
                 message="the worker kept the memory of released results")


def test_a_port_taken_before_the_center_binds_it_is_traded_for_another(monkeypatch):
    from zfutures import local_cluster

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = iter([taken.getsockname()[1]])
    picked = local_cluster._free_port
    monkeypatch.setattr(local_cluster, "_free_port", lambda: next(ports, None) or picked())
    try:
        with Executor(n_workers=1) as ex:  # its first center cannot bind, the second can
            assert ex.address != f"tcp://127.0.0.1:{taken.getsockname()[1]}"
            assert ex.submit(inc, 1).result(timeout=10) == 2
    finally:
        taken.close()
    wait_for(lambda: not zfutures_children(), message="processes left after shutdown")
