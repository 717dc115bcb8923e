"""How long zfutures takes to notice failures and recover from them.

Starts ``zfut-center`` and ``zfut-worker`` on 127.0.0.1, as a user would, and
measures, each over several repetitions (median and worst):

``nanny``      a worker killed with SIGKILL while it runs a task, under a nanny:
               from the kill until the task's result arrives from another worker
``heartbeat``  the same without a nanny (``--no-nanny``), so only the center's
               heartbeat timeout notices (``--worker-timeout``, default 5 s)
``center``     the center killed with SIGKILL while 40 tasks of 0.1 s are
               pending on 2 workers, and started again on its address after
               ``--down`` seconds: from the restart until every task has
               finished, less the run time the unfinished tasks needed anyway

Usage::

    python scripts/recovery_times.py [--repeat 3] [--worker-timeout 5] [--down 1]

Every process started here is stopped before the script ends.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

from zfutures import Executor
from zfutures.processes import read_matching_line, stop_processes


def _command(name: str) -> str:
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return beside if os.path.exists(beside) else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sleep_then_pid(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


def slow_inc(x: int) -> int:
    time.sleep(0.1)
    return x + 1


class Cluster:
    """A center and workers started by hand; every process stopped on exit."""

    def __init__(self, worker_timeout: float):
        self.port = _free_port()
        self.worker_timeout = worker_timeout
        self.processes: list[subprocess.Popen] = []
        self.center = self.start_center()

    def start(self, *args: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.abspath(__file__)))
        process = subprocess.Popen(args, stdout=stdout, stderr=subprocess.DEVNULL,
                                   stdin=subprocess.DEVNULL, text=True, env=env)
        self.processes.append(process)
        return process

    def start_center(self) -> subprocess.Popen:
        center = self.start(_command("zfut-center"), "--port", str(self.port),
                            "--worker-timeout", str(self.worker_timeout),
                            stdout=subprocess.PIPE)
        if not read_matching_line(center, re.compile(r"listening at"), 15):
            raise RuntimeError("the center did not start")
        return center

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info) -> None:
        stop_processes(list(reversed(self.processes)), timeout=15)


def _wait_workers(ex: Executor, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(ex.nthreads()) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} workers did not register within {timeout}s")
        time.sleep(0.02)


def worker_death(nanny: bool, worker_timeout: float) -> float:
    """Seconds from SIGKILL of the worker running a task to that task's result."""
    with Cluster(worker_timeout) as cluster:
        args = ["--nworkers", "2"] if nanny else ["--no-nanny"]
        cluster.start(_command("zfut-worker"), cluster.address, *args)
        if not nanny:
            cluster.start(_command("zfut-worker"), cluster.address, *args)
        with Executor(cluster.address, timeout=15) as ex:
            _wait_workers(ex, 2)
            pids = ex.run(os.getpid)
            future = ex.submit(sleep_then_pid, 1.0, pure=False)
            deadline = time.monotonic() + 10
            while not ex.scheduler_info()["tasks"].get("processing"):
                if time.monotonic() > deadline:
                    raise RuntimeError("the task did not start")
                time.sleep(0.01)
            victim = next(w for w, info in ex.scheduler_info()["workers"].items()
                          if info["executing"])
            killed = time.monotonic()
            os.kill(pids[victim], signal.SIGKILL)
            pid = future.result(timeout=60)
            assert pid != pids[victim]
            return time.monotonic() - killed - 1.0  # less the task's own second


def center_restart(worker_timeout: float, down: float) -> float:
    """Seconds from the center's restart until 40 pending tasks have finished,
    beyond the time their own work takes."""
    with Cluster(worker_timeout) as cluster:
        cluster.start(_command("zfut-worker"), cluster.address, "--nworkers", "2")
        with Executor(cluster.address, timeout=15) as ex:
            _wait_workers(ex, 2)
            futures = ex.map(slow_inc, range(40))
            futures[3].result(timeout=30)
            cluster.center.kill()
            cluster.center.wait(10)
            unfinished = sum(not f.done() for f in futures)
            time.sleep(down)  # the outage being simulated
            restarted = time.monotonic()
            cluster.center = cluster.start_center()
            assert ex.gather(futures, timeout=60) == list(range(1, 41))
            return time.monotonic() - restarted - unfinished * 0.1 / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker-timeout", type=float, default=5.0)
    parser.add_argument("--down", type=float, default=1.0,
                        help="seconds the center stays down before it restarts")
    args = parser.parse_args()
    runs = {
        "nanny": lambda: worker_death(True, args.worker_timeout),
        "heartbeat": lambda: worker_death(False, args.worker_timeout),
        "center": lambda: center_restart(args.worker_timeout, args.down),
    }
    print(f"{'scenario':<12}{'median (s)':>12}{'worst (s)':>12}")
    for name, run in runs.items():
        times = [run() for _ in range(args.repeat)]
        print(f"{name:<12}{statistics.median(times):>12.2f}{max(times):>12.2f}", flush=True)


if __name__ == "__main__":
    main()
