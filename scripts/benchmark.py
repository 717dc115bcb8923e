"""Benchmark zfutures against dask.distributed and ProcessPoolExecutor.

The same benchmark functions run, one system after the other, against

* ``zfutures``: ``zfutures.Executor(n_workers=N, threads_per_worker=1)``,
* ``dask``: ``distributed.Client(LocalCluster(n_workers=N, threads_per_worker=1,
  processes=True, dashboard_address=None))``,
* ``pool``: ``concurrent.futures.ProcessPoolExecutor(N)``,

each through a small adapter class (start, stop, submit, map, gather, result,
pin to a worker).  Every system gets the same number N of single-threaded
worker processes on this machine, and the systems never run at the same time.

Usage::

    python scripts/benchmark.py                  # everything (``make bench``)
    python scripts/benchmark.py --quick          # smoke run, well under a minute
    python scripts/benchmark.py --only roundtrip,chain --systems zfutures,dask
    python scripts/benchmark.py --workers 4 --json /tmp/bench.json

Benchmarks (``--only`` names):

``start``      constructing the cluster/executor until ``submit(inc, 1).result()``
``roundtrip``  median and p99 of sequential ``submit(inc, i).result()`` calls
``tasks``      independent trivial tasks, a loop of ``submit`` then ``gather``,
               and one ``map`` then ``gather`` (tasks/s)
``chain``      a dependent chain ``x = submit(inc, x)``, then ``x.result()``
``tree``       tree reductions ``submit(add, a, b)`` over arrays made on the
               workers by ``map(np.random.random, ...)``, map to final result
``transfer``   a 100 MB array made on worker A, read by a task pinned on
               worker B; MB/s, and the peak RSS growth of both workers
``scale``      10x more trivial tasks through ``map`` than ``tasks``: time per
               task relative to the smaller run, and the center's peak RSS
``dashboard``  zfutures only: the ``tasks`` map with the dashboard's /status
               page open in a headless Chromium (Debian's, driven by
               playwright), against the same map without it, one run each;
               n/a without Chromium or playwright. About 10 s.
``spill``      zfutures only, no cluster: MB/s of zfutures' SpillStore writing
               then reading back 100 MB values (``serialize.dumps`` frames in,
               ``serialize.loads(store.read(key))`` out), random float64
               (incompressible) and ``np.arange`` (lz4 halves it), against
               ``dd`` (bs=1M, no sync flag: the store does not fsync either)
               in the same directory under ``tempfile.gettempdir()``; the
               ratios store/dd.  Reads come from the page cache when memory
               allows, for the store and dd alike.  About a minute.
``spill_tree`` a tree reduction of 32 arrays of 100 MB made by tasks, on two
               workers with a 500 MB memory limit each, so that workers must
               spill: seconds, the workers' peak RSS, and how many workers were
               replaced during the run (killed over their limit).  Under 2 min.

Sizes, full / ``--quick``: 2,000 / 200 round trips; 10,000 / 300 tasks;
chains of 2,000 / 200; trees of 16x1M, 64x1M, 16x8M / 16x100k, 64x100k,
16x800k float64, each the median of 3 / 1 runs; the transfer, after an
untimed one, repeated 3 / 1 times; 100,000 / 3,000 tasks for ``scale``;
1,000 / 200 MB per case of ``spill``, the median of 5 / 1 rounds; 32 / 16 arrays
for ``spill_tree``.
A full run takes 10-15 minutes on two cores, most of it dask running the
100,000 tasks, then 1-5 more for ``spill`` and ``spill_tree`` (a tree that
gets no result gives up after 2 minutes).

ProcessPoolExecutor cannot pass futures to tasks: for ``tree`` its adapter
waits for the inputs in the client and sends their values (data goes through
the client); ``chain`` and ``transfer`` are n/a.  Peak RSS comes from the
kernel's high-water mark (VmHWM, reset through /proc/PID/clear_refs at the
start of the measurement) or, failing that, from sampling every 5 ms.
dask's LocalCluster runs its scheduler inside the client process, so its
"center" memory is that process's.

The table shows each figure, the ratios zfutures/dask and zfutures/pool, and
the project's targets with whether they are met.  Times are lower-is-better;
rows whose unit is a rate (``/s``) are higher-is-better.  All figures also go
to a JSON file (``--json``, default ``bench.json``).

Every wait is bounded: results and gathers carry timeouts, each benchmark
runs under a SIGALRM time limit (``--timeout``), and a watchdog thread ends
the whole run after ``--total-timeout`` seconds.  Every cluster is shut down
after its system's benchmarks (or after a failed benchmark, before the next
one starts a fresh cluster), and any process it leaves behind is reported
and killed.

dask.distributed is a benchmark-only dependency (``pip install -e '.[bench]'``);
without it the dask columns are skipped with a message.  Task functions are
defined in this module, which runs as ``__main__``, so cloudpickle (used by
both zfutures and dask) ships them by value: workers need not import it.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import functools
import gc
import json
import logging
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional, TypeVar

import numpy as np
import psutil

MB = 1_000_000  # bytes; all sizes and rates below are in decimal megabytes
SYSTEMS = ("zfutures", "dask", "pool")
PEERS = ("dask", "pool")


# ---------------------------------------------------------------------------
# Task functions (module level: pickled by value from __main__ by cloudpickle,
# importable as __mp_main__ by ProcessPoolExecutor's workers)
# ---------------------------------------------------------------------------


def inc(x: int) -> int:
    """Return ``x + 1``: the trivial task."""
    return x + 1


def add(a: Any, b: Any) -> Any:
    """Return ``a + b``: one step of a tree reduction."""
    return a + b


def make_array(nbytes: int) -> np.ndarray:
    """Return a float64 array of ``nbytes`` random bytes."""
    return np.random.random(nbytes // 8)


def seeded_array(seed: int, n: int) -> np.ndarray:
    """Return ``n`` random float64 from a generator seeded with ``seed``: the
    client can make the same array to check a result."""
    return np.random.default_rng(seed).random(n)


def pid_and_nbytes(x: np.ndarray) -> tuple[int, int]:
    """Return the pid of the worker running this task and ``x.nbytes``."""
    return os.getpid(), x.nbytes


def pid_of_worker(_: Any = None) -> int:
    """Return the pid of the worker running this task."""
    return os.getpid()


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass
class Config:
    """Sizes of every benchmark; ``Config.for_mode(quick)`` picks them."""

    n_workers: int = 2
    timeout: float = 900.0  # per benchmark and per wait, seconds
    roundtrips: int = 2000
    n_tasks: int = 10_000
    chain: int = 2000
    tree: tuple[tuple[int, int], ...] = ((16, 1_000_000), (64, 1_000_000), (16, 8_000_000))
    check_all_trees: bool = False
    transfer_bytes: int = 100 * MB
    transfer_repeats: int = 3
    tree_repeats: int = 3
    n_scale: int = 100_000
    spill_bytes: int = 1000 * MB  # per case (random, compressible), in values of:
    spill_value_bytes: int = 100 * MB
    spill_repeats: int = 5
    spill_tree: tuple[int, int] = (32, 12_500_000)  # arrays x float64 each: 32 x 100 MB
    # Per worker, as issue #19 sets it: an add holds three arrays (300 MB)
    # beside the worker's own 45-130 MB. dask's workers, killed at 95% of the
    # limit, died here at 500 MB (KilledWorker in 2 runs of 2) and at 600 MB
    # (1 of 2), and went through at 750 MB (5 of 5, in 6-8 s): its row may
    # fail where zfutures' goes through.
    spill_tree_memory_limit: str = "500MB"
    spill_tree_timeout: float = 120.0  # seconds for the result

    @classmethod
    def for_mode(cls, quick: bool, n_workers: int, timeout: Optional[float]) -> Config:
        """Full sizes, or the smaller ones of a ``--quick`` smoke run.

        Quick sizes keep the whole run under a minute on two cores, where
        dask.distributed manages only a few hundred trivial tasks per second.
        """
        if not quick:
            return cls(n_workers=n_workers, timeout=timeout or 900.0)
        return cls(
            n_workers=n_workers,
            timeout=timeout or 60.0,
            roundtrips=200,
            n_tasks=300,
            chain=200,
            tree=((16, 100_000), (64, 100_000), (16, 800_000)),
            check_all_trees=True,
            transfer_repeats=1,
            tree_repeats=1,
            n_scale=3000,
            spill_bytes=200 * MB,
            spill_repeats=1,
            spill_tree=(16, 12_500_000),
        )


# ---------------------------------------------------------------------------
# Checks and bounded waiting
# ---------------------------------------------------------------------------


class WrongResult(Exception):
    """A system returned a wrong result: its figures would mean nothing."""


def check(condition: bool, message: str) -> None:
    """Raise WrongResult(message) unless ``condition``."""
    if not condition:
        raise WrongResult(message)


class BenchTimeout(Exception):
    """A benchmark (or a shutdown) ran past its time limit."""


class NotApplicable(Exception):
    """The benchmark does not apply to this system (shown as n/a)."""


class BenchFailed(Exception):
    """A benchmark failed; the message says how, and what the cluster looked like."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise BenchTimeout in the main thread if the block takes longer."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise BenchTimeout(f"{what}: no answer within {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Watchdog:
    """Last-resort guard: after ``seconds``, call ``on_expire`` from a thread.

    Used when something blocks the main thread in a way SIGALRM cannot
    interrupt; ``on_expire`` kills our child processes and exits.
    """

    def __init__(self, seconds: float, on_expire: Callable[[], None]) -> None:
        self._cancelled = threading.Event()
        self._seconds = seconds
        self._on_expire = on_expire
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._cancelled.set()

    def _run(self) -> None:
        if not self._cancelled.wait(self._seconds):
            self._on_expire()


# ---------------------------------------------------------------------------
# Processes and memory
# ---------------------------------------------------------------------------


def _status_kb(pid: int, field_name: str) -> Optional[int]:
    """A ``kB`` field (VmRSS, VmHWM) of /proc/PID/status, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of ``pid``; False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_bytes(pid: int) -> Optional[int]:
    """Current resident set size of ``pid`` in bytes."""
    kb = _status_kb(pid, "VmRSS")
    return None if kb is None else kb * 1024


class PeakMemory:
    """Peak RSS of some processes over a ``with`` block.

    Uses the kernel's VmHWM after resetting it (exact, and free); samples
    every 5 ms, in a thread of this process, only the processes whose mark
    could not be reset.
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.start: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self._sampled: dict[int, int] = {}
        self._reset: dict[int, bool] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def __enter__(self) -> PeakMemory:
        for pid in self.pids:
            self.start[pid] = rss_bytes(pid) or 0
            self._reset[pid] = reset_peak_rss(pid)
        if not all(self._reset.values()):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for pid in self.pids:
            hwm = _status_kb(pid, "VmHWM") if self._reset[pid] else None
            sampled = self._sampled.get(pid, self.start[pid])
            self.peak[pid] = max(sampled, hwm * 1024 if hwm is not None else 0)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            for pid in (pid for pid, reset in self._reset.items() if not reset):
                rss = rss_bytes(pid)
                if rss is not None:
                    self._sampled[pid] = max(self._sampled.get(pid, 0), rss)

    def growth_mb(self, pid: int) -> float:
        """Peak RSS minus RSS at the start of the block, in MB."""
        return (self.peak[pid] - self.start[pid]) / MB


class ProcessTracker:
    """Remembers every descendant process seen, to find those left behind."""

    INFRASTRUCTURE = ("resource_tracker", "forkserver", "semaphore_tracker")

    def __init__(self) -> None:
        self._seen: dict[int, psutil.Process] = {}

    def snapshot(self) -> None:
        """Record the current descendants of this process."""
        for proc in psutil.Process().children(recursive=True):
            self._seen.setdefault(proc.pid, proc)

    def survivors(self) -> list[psutil.Process]:
        """Recorded processes still alive, except multiprocessing helpers."""
        alive = []
        for proc in self._seen.values():
            try:
                if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if not any(name in cmdline for name in self.INFRASTRUCTURE):
                alive.append(proc)
        return alive

    def reap(self, grace: float = 5.0) -> list[str]:
        """Wait ``grace`` seconds for survivors, kill the rest; describe them."""
        deadline = time.monotonic() + grace
        survivors = self.survivors()
        while survivors and time.monotonic() < deadline:
            time.sleep(0.1)
            survivors = self.survivors()
        described = []
        for proc in survivors:
            with contextlib.suppress(psutil.Error):
                described.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:120]}")
                proc.kill()
        psutil.wait_procs(survivors, timeout=5)
        self._seen.clear()
        return described


# ---------------------------------------------------------------------------
# Adapters: one small class per system
# ---------------------------------------------------------------------------


class System:
    """The operations the benchmarks need, over one kind of cluster.

    Subclasses implement start/stop and the operations; every waiting call
    takes the adapter's ``timeout``.
    """

    name = ""
    can_chain = True  # futures may be passed as arguments without waiting
    can_pin = True  # tasks can be pinned to a worker

    def __init__(self, n_workers: int, timeout: float) -> None:
        self.n_workers = n_workers
        self.timeout = timeout
        self.running = False
        self.options: dict[str, Any] = {}  # those the running cluster was started with

    def start(self, **options: Any) -> None:
        """Start the local cluster; return once it is constructed.

        ``options``: ``memory_limit`` (per worker, ``"500MB"``), or none for
        the system's defaults; NotApplicable if the system has no such option.
        """
        raise NotImplementedError

    def stop(self) -> None:
        """Shut the cluster down."""
        raise NotImplementedError

    def submit(self, fn: Callable, *args: Any, workers: Optional[list[str]] = None) -> Any:
        """Submit ``fn(*args)`` as an impure task, optionally pinned."""
        raise NotImplementedError

    def map(self, fn: Callable, *iterables: Sequence) -> list:
        """Submit ``fn`` over the iterables as impure tasks; a list of futures."""
        raise NotImplementedError

    def result(self, future: Any) -> Any:
        """The value of one future."""
        return future.result(timeout=self.timeout)

    def gather(self, futures: list) -> list:
        """The values of a list of futures."""
        raise NotImplementedError

    def wait(self, futures: list) -> None:
        """Wait until the futures are done, without fetching their values."""
        raise NotImplementedError

    def ready(self) -> None:
        """Run a few tasks on the workers (warm-up, numpy imported there too)."""
        n = 4 * self.n_workers
        check(self.gather(self.map(inc, range(n))) == list(range(1, n + 1)), "warm-up results")
        check(len(self.gather(self.map(make_array, [64] * n))) == n, "warm-up arrays")

    def settle(self) -> Optional[str]:
        """Let released keys be forgotten; a note if the cluster still holds some."""
        gc.collect()
        return None

    def worker_ids(self) -> list[str]:
        """Worker identifiers usable in ``workers=[...]``."""
        raise NotApplicable("no worker identifiers")

    def worker_pids(self) -> dict[str, int]:
        """Worker identifier -> pid."""
        raise NotApplicable("no worker pids")

    def who_has(self, future: Any) -> list[str]:
        """Workers holding a future's value."""
        raise NotApplicable("no who_has")

    def dashboard_link(self) -> Optional[str]:
        """The link to the cluster's dashboard page, if it has one."""
        return None

    def center_pid(self) -> Optional[int]:
        """The pid of the center/scheduler process, or None if in-process."""
        return None

    def workers_memory(self) -> str:
        """Each worker's memory as the scheduler last heard it, in words."""
        return ""


class _ClientSystem(System):
    """Shared code of the two client/cluster systems (zfutures and dask)."""

    client: Any

    def submit(self, fn: Callable, *args: Any, workers: Optional[list[str]] = None) -> Any:
        if workers is None:
            return self.client.submit(fn, *args, pure=False)
        return self.client.submit(fn, *args, pure=False, workers=workers)

    def map(self, fn: Callable, *iterables: Sequence) -> list:
        return self.client.map(fn, *iterables, pure=False)

    def worker_ids(self) -> list[str]:
        return sorted(self.client.scheduler_info()["workers"])

    def worker_pids(self) -> dict[str, int]:
        if hasattr(self.client, "run"):
            return dict(self.client.run(os.getpid))
        # Fallback while an Executor lacks run(): a task pinned on each worker.
        pinned = {w: self.submit(pid_of_worker, workers=[w]) for w in self.worker_ids()}
        return {w: self.result(f) for w, f in pinned.items()}

    def who_has(self, future: Any) -> list[str]:
        return list(self.client.who_has([future]).get(future.key, []))

    def workers_memory(self) -> str:
        described = []
        for worker, info in sorted(self.client.scheduler_info()["workers"].items()):
            figures = self._memory_figures(info)
            described.append(worker + ": " + ", ".join(
                f"{name} {value / MB:.0f} MB" for name, value in figures.items()
                if value is not None))
        return "; ".join(described)

    def _memory_figures(self, info: dict[str, Any]) -> dict[str, Optional[float]]:
        """RSS, bytes of results in memory, bytes spilled: a worker's entry of
        ``scheduler_info()["workers"]``, where the system reports them."""
        raise NotImplementedError

    def _wait_until_idle(self, count_tasks: Callable[[], int]) -> Optional[str]:
        gc.collect()
        held = _poll(count_tasks, lambda held: not held, 5.0)
        return f"{held} task(s) still held 5 s after their futures were dropped" if held else None


class ZFuturesSystem(_ClientSystem):
    """zfutures.Executor with a local cluster."""

    name = "zfutures"

    def __init__(self, n_workers: int, timeout: float) -> None:
        super().__init__(n_workers, timeout)
        import zfutures  # imported before any timing

        self._zf = zfutures

    def start(self, **options: Any) -> None:
        self.client = self._zf.Executor(n_workers=self.n_workers, threads_per_worker=1,
                                        **options)
        self.options = options
        self.running = True

    def stop(self) -> None:
        self.running = False
        # Not waiting for pending futures (shutdown's default, as in
        # concurrent.futures): after a failed benchmark some may never finish.
        # dask's Client.close() does not wait for them either.
        self.client.shutdown(cancel_futures=True)

    def gather(self, futures: list) -> list:
        return self.client.gather(futures, timeout=self.timeout)

    def wait(self, futures: list) -> None:
        # zfutures.Future subclasses concurrent.futures.Future (API.md).
        _done, not_done = cf.wait(futures, timeout=self.timeout)
        if not_done:
            raise BenchTimeout(f"{len(not_done)} future(s) not done after {self.timeout} s")

    def ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while len(self.client.scheduler_info()["workers"]) < self.n_workers:
            if time.monotonic() > deadline:
                raise BenchTimeout(f"fewer than {self.n_workers} workers after {self.timeout} s")
            time.sleep(0.05)
        super().ready()

    def settle(self) -> Optional[str]:
        def count() -> int:
            tasks = self.client.scheduler_info().get("tasks", {})
            return sum(n for state, n in tasks.items() if state not in ("released", "forgotten"))

        return self._wait_until_idle(count)

    def dashboard_link(self) -> Optional[str]:
        return self.client.dashboard_link

    def _memory_figures(self, info: dict[str, Any]) -> dict[str, Optional[float]]:
        return {"RSS": info.get("memory"), "in memory": info.get("managed"),
                "spilled": info.get("spilled")}

    def center_pid(self) -> Optional[int]:
        """Our descendant process whose command line names the center."""
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                words = " ".join(proc.cmdline())
                if "center" in words and "worker" not in words:
                    return proc.pid
        return None


def _scheduler_task_count(dask_scheduler: Any) -> int:
    """Number of tasks the dask scheduler holds (run on the scheduler)."""
    return len(dask_scheduler.tasks)


class DaskSystem(_ClientSystem):
    """distributed.Client over a LocalCluster of worker processes."""

    name = "dask"

    def __init__(self, n_workers: int, timeout: float) -> None:
        super().__init__(n_workers, timeout)
        import distributed  # imported before any timing

        self._distributed = distributed
        self.cluster: Any = None

    def start(self, **options: Any) -> None:
        self.cluster = self._distributed.LocalCluster(
            n_workers=self.n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
            **options,
        )
        self.client = self._distributed.Client(self.cluster)
        self.options = options
        self.running = True

    def stop(self) -> None:
        self.running = False
        try:
            self.client.close(timeout=self.timeout)
        finally:
            self.cluster.close(timeout=self.timeout)

    def gather(self, futures: list) -> list:
        self.wait(futures)
        return self.client.gather(futures)

    def wait(self, futures: list) -> None:
        self._distributed.wait(futures, timeout=self.timeout)

    def ready(self) -> None:
        self.client.wait_for_workers(self.n_workers, timeout=self.timeout)
        super().ready()

    def settle(self) -> Optional[str]:
        return self._wait_until_idle(lambda: self.client.run_on_scheduler(_scheduler_task_count))

    def _memory_figures(self, info: dict[str, Any]) -> dict[str, Optional[float]]:
        metrics = info.get("metrics", {})
        return {"RSS": metrics.get("memory"), "in memory": metrics.get("managed_bytes"),
                "spilled": metrics.get("spilled_bytes", {}).get("disk")}


class PoolSystem(System):
    """concurrent.futures.ProcessPoolExecutor.

    It cannot pass futures to tasks, so ``submit`` waits for future
    arguments in the client and sends their values (the data goes through
    the client); chains and pinning do not apply.
    """

    name = "pool"
    can_chain = False
    can_pin = False

    def start(self, **options: Any) -> None:
        if options:
            raise NotApplicable(f"ProcessPoolExecutor takes no {', '.join(options)}")
        self.pool = cf.ProcessPoolExecutor(self.n_workers)
        self.running = True

    def stop(self) -> None:
        self.running = False
        self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, fn: Callable, *args: Any, workers: Optional[list[str]] = None) -> Any:
        if workers is not None:
            raise NotApplicable("ProcessPoolExecutor cannot pin tasks")
        values = [a.result(timeout=self.timeout) if isinstance(a, cf.Future) else a for a in args]
        return self.pool.submit(fn, *values)

    def map(self, fn: Callable, *iterables: Sequence) -> list:
        # What ProcessPoolExecutor.map(chunksize=1) does, keeping the futures.
        return [self.pool.submit(fn, *args) for args in zip(*iterables)]

    def gather(self, futures: list) -> list:
        self.wait(futures)
        return [f.result() for f in futures]

    def wait(self, futures: list) -> None:
        _done, not_done = cf.wait(futures, timeout=self.timeout)
        if not_done:
            raise BenchTimeout(f"{len(not_done)} future(s) not done after {self.timeout} s")

    def ready(self) -> None:
        # Busy tasks make the pool start all its processes before timing.
        self.wait([self.pool.submit(time.sleep, 0.05) for _ in range(self.n_workers)])
        super().ready()


ADAPTERS: dict[str, type[System]] = {
    "zfutures": ZFuturesSystem,
    "dask": DaskSystem,
    "pool": PoolSystem,
}


# ---------------------------------------------------------------------------
# Benchmarks: each takes a System and a Config and returns {metric: value}
# ---------------------------------------------------------------------------

Metrics = dict[str, float]
Figures = Iterator[tuple[str, float]]  # benchmarks yield (metric, value) as they go


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run ``fn()``; return (seconds, its value)."""
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def bench_start(system: System, cfg: Config) -> Figures:
    """Seconds from constructing the cluster to the first result."""
    t0 = time.perf_counter()
    system.start()
    value = system.result(system.submit(inc, 1))
    elapsed = time.perf_counter() - t0
    check(value == 2, f"inc(1) returned {value!r}")
    yield "start_s", elapsed


def bench_roundtrip(system: System, cfg: Config) -> Figures:
    """Median and p99 of sequential submit(inc, i).result() round trips."""
    for i in range(20):  # warm-up
        system.result(system.submit(inc, i))
    samples = []
    for i in range(cfg.roundtrips):
        t0 = time.perf_counter()
        value = system.result(system.submit(inc, i))
        samples.append(time.perf_counter() - t0)
        check(value == i + 1, f"inc({i}) returned {value!r}")
    yield "roundtrip_median_ms", 1e3 * statistics.median(samples)
    yield "roundtrip_p99_ms", 1e3 * float(np.percentile(samples, 99))


def _run_trivial_tasks(system: System, n: int, use_map: bool) -> float:
    """Seconds to run ``n`` inc tasks (submit loop or map) and gather them."""

    def run() -> list:
        if use_map:
            futures = system.map(inc, range(n))
        else:
            futures = [system.submit(inc, i) for i in range(n)]
        return system.gather(futures)

    elapsed, values = _timed(run)
    check(values == list(range(1, n + 1)), f"wrong results from {n} inc tasks")
    del values
    system.settle()
    return elapsed


def bench_tasks(system: System, cfg: Config) -> Figures:
    """Tasks per second for independent trivial tasks, by submit and by map."""
    n = cfg.n_tasks
    yield "submit_tasks_per_s", n / _run_trivial_tasks(system, n, use_map=False)
    yield "map_tasks_per_s", n / _run_trivial_tasks(system, n, use_map=True)


def bench_chain(system: System, cfg: Config) -> Figures:
    """Tasks per second for a chain of dependent tasks x = submit(inc, x)."""
    if not system.can_chain:
        raise NotApplicable("futures cannot be passed to tasks")

    def run() -> int:
        x = system.submit(inc, 0)
        for _ in range(cfg.chain - 1):
            x = system.submit(inc, x)
        return system.result(x)

    elapsed, value = _timed(run)
    check(value == cfg.chain, f"a chain of {cfg.chain} inc returned {value!r}")
    yield "chain_tasks_per_s", cfg.chain / elapsed


def tree_reduce(submit: Callable[..., Any], leaves: list) -> Any:
    """Pairwise tree reduction with ``add``; ``submit`` is the system's or a local call."""
    level = list(leaves)
    while len(level) > 1:
        pairs = [submit(add, level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        level = pairs + level[len(pairs) * 2 :]
    return level[0]


def tree_case_name(k: int, n: int) -> str:
    """``16x1M`` for 16 arrays of 1,000,000 elements."""
    if n % 1_000_000 == 0:
        return f"{k}x{n // 1_000_000}M"
    return f"{k}x{n // 1000}k"


def bench_tree(system: System, cfg: Config) -> Figures:
    """Seconds from map(np.random.random) to the reduced array, per case: the
    median of ``cfg.tree_repeats`` runs.

    One run alone measures mostly where the machine finds memory: on a
    virtual machine, the first touch of memory no process used lately costs
    several times more than reusing freed memory, so a single run favours
    whichever system happens to run second. The result is checked against a
    local reduction of the gathered inputs for every case in quick mode and
    for the first case otherwise.
    """
    for index, (k, n) in enumerate(cfg.tree):

        def run(k: int = k, n: int = n) -> tuple[list, Any]:
            leaves = system.map(np.random.random, [n] * k)
            return leaves, system.result(tree_reduce(system.submit, leaves))

        times = []
        for repeat in range(cfg.tree_repeats):
            elapsed, (leaves, total) = _timed(run)
            times.append(elapsed)
            if repeat == 0 and (cfg.check_all_trees or index == 0):
                expected = tree_reduce(lambda fn, a, b: fn(a, b), system.gather(leaves))
                correct = np.allclose(total, expected, rtol=1e-12, atol=0)
                check(correct, f"tree {tree_case_name(k, n)}: wrong sum")
            del leaves, total
            system.settle()
        yield f"tree_{tree_case_name(k, n)}_s", statistics.median(times)
        yield f"tree_{tree_case_name(k, n)}_runs_s", times  # (JSON only: the spread)


def bench_transfer(system: System, cfg: Config) -> Figures:
    """MB/s moving one array from worker A to a task on worker B.

    Rate = size / (time of the B task including the transfer - median time of
    a tiny task on B), the median of ``cfg.transfer_repeats`` moves after an
    untimed one.  Also the peak RSS growth of A and B over the
    benchmark (the array is created on A, so about 1x size on each side means
    no extra copies).
    """
    if not system.can_pin or cfg.n_workers < 2:
        raise NotApplicable("needs pinning and two workers")
    worker_a, worker_b = system.worker_ids()[:2]
    pids = system.worker_pids()
    pid_a, pid_b = pids[worker_a], pids[worker_b]
    baseline = statistics.median(
        _timed(lambda: system.result(system.submit(pid_of_worker, workers=[worker_b])))[0]
        for _ in range(7)
    )

    def move() -> float:
        """Seconds for the task on B to get the array made on A."""
        array = system.submit(make_array, cfg.transfer_bytes, workers=[worker_a])
        system.wait([array])
        holders = system.who_has(array)
        check(holders == [worker_a], f"array pinned on {worker_a} is held by {holders}")
        task = system.submit(pid_and_nbytes, array, workers=[worker_b])
        elapsed, (pid, nbytes) = _timed(lambda task=task: system.result(task))
        check(pid == pid_b, f"task pinned on B (pid {pid_b}) ran in pid {pid}")
        check(nbytes == cfg.transfer_bytes, f"B got {nbytes} bytes")
        del array, task
        system.settle()
        return elapsed

    # One move first, untimed: on a virtual machine the first touch of memory
    # no process used lately is several times slower than reusing freed memory
    # (seen here: 400 MB/s in a fresh run, 2,700-3,100 MB/s in the next two),
    # which would penalise whichever system runs first. (Inside the peak
    # memory measurement: a copy kept from one move to the next shows there.)
    # A worker may give memory back once it has been idle a while (zfutures
    # does after a second): doing so inside the peak measurement below would
    # hide what the moves add, so the measurement starts from steady memory.
    _wait_for_steady_rss([pid_a, pid_b])
    rates = []
    with PeakMemory([pid_a, pid_b]) as memory:
        move()
        for _ in range(cfg.transfer_repeats):
            elapsed = move()
            rates.append(cfg.transfer_bytes / MB / max(elapsed - baseline, 1e-6))
    yield "transfer_MB_per_s", statistics.median(rates)
    yield "transfer_runs_MB_per_s", rates
    yield "transfer_baseline_ms", 1e3 * baseline
    yield "transfer_rss_growth_a_MB", memory.growth_mb(pid_a)
    yield "transfer_rss_growth_b_MB", memory.growth_mb(pid_b)
    yield "transfer_rss_peak_a_MB", memory.peak[pid_a] / MB
    yield "transfer_rss_peak_b_MB", memory.peak[pid_b] / MB


def _rss(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss


def _poll(read: Callable[[], Any], done: Callable[[Any], bool], within: float) -> Any:
    """``read()`` every 50 ms until ``done`` says yes or ``within`` seconds
    pass; the last value read."""
    deadline = time.monotonic() + within
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


def _wait_for_steady_rss(pids: Sequence[int], steady_for: float = 1.5,
                         within: float = 10.0) -> None:
    """Wait until no process of ``pids`` has changed its RSS by 1 MB for
    ``steady_for`` seconds, or ``within`` seconds have passed."""
    deadline = time.monotonic() + within
    since, previous = time.monotonic(), [_rss(pid) for pid in pids]
    while time.monotonic() < deadline and time.monotonic() - since < steady_for:
        time.sleep(0.1)
        current = [_rss(pid) for pid in pids]
        if any(abs(now - before) >= MB for now, before in zip(current, previous)):
            since, previous = time.monotonic(), current


def _rss_returned(pid: int, baseline: float, within: float = 5.0) -> float:
    """Bytes of RSS ``pid`` still holds above ``baseline`` once it has had up to
    ``within`` seconds to give memory back (a scheduler may do so only when it
    next finds itself idle); returns early once within 1 MB."""
    return _poll(lambda: _rss(pid) - baseline, lambda kept: kept <= MB, within)


def bench_scale(system: System, cfg: Config) -> Figures:
    """Time per task of a 10x larger map, relative to the smaller one.

    Also the peak RSS of the center (zfutures: its own process; dask: the
    scheduler runs inside this client process) and of this client process.
    """
    small = _run_trivial_tasks(system, cfg.n_tasks, use_map=True)
    yield "scale_small_tasks_per_s", cfg.n_tasks / small
    client_pid = os.getpid()
    center_pid = system.center_pid()
    pids = [client_pid] if center_pid is None else [client_pid, center_pid]
    scheduler_pid = center_pid if center_pid is not None else client_pid
    before = _rss(scheduler_pid)
    with PeakMemory(pids) as memory:
        big = _run_trivial_tasks(system, cfg.n_scale, use_map=True)
    yield "scale_tasks_per_s", cfg.n_scale / big
    # The futures are gone: once the scheduler has forgotten their tasks, how
    # much of the memory it took has it given back?
    system.settle()
    if system.name != "pool":
        yield "scale_center_rss_kept_MB", _rss_returned(scheduler_pid, before) / MB
    yield "scale_per_task_ratio", (big / cfg.n_scale) / (small / cfg.n_tasks)
    yield "scale_client_rss_peak_MB", memory.peak[client_pid] / MB
    if center_pid is not None:
        yield "scale_center_rss_peak_MB", memory.peak[center_pid] / MB
    elif system.name == "dask":  # the scheduler lives in this process
        yield "scale_center_rss_peak_MB", memory.peak[client_pid] / MB


CHROMIUM = "/usr/bin/chromium"


def bench_dashboard(system: System, cfg: Config) -> Figures:
    """The ``tasks`` map with the dashboard's /status page open in a headless
    Chromium (its events streamed to the page), against the same map without
    a page: what watching costs the cluster."""
    link = system.dashboard_link()
    if link is None:
        raise NotApplicable("no dashboard")
    if not os.path.exists(CHROMIUM):
        raise NotApplicable(f"{CHROMIUM} is missing: apt-get install -y chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise NotApplicable("playwright is missing: pip install playwright") from None
    n = cfg.n_tasks
    # Untimed first: the first map of a fresh cluster is slower (imports,
    # allocations), which would favour whichever run comes second.
    _run_trivial_tasks(system, n, use_map=True)
    without, with_page = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update"])
        try:
            # Alternated, the median of each: one map lasts about a second,
            # and the machine's noise moves one run by more than 5%.
            for _ in range(3):
                without.append(_run_trivial_tasks(system, n, use_map=True))
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(link, wait_until="load", timeout=30_000)
                _page_has_workers(page)  # its event stream is open, the stream on
                with_page.append(_run_trivial_tasks(system, n, use_map=True))
                page.close()
        finally:
            browser.close()
    without_median, with_median = statistics.median(without), statistics.median(with_page)
    yield "dashboard_map_tasks_per_s", n / with_median
    yield "dashboard_map_ratio", with_median / without_median


def _page_has_workers(page: Any, timeout: float = 30.0) -> None:
    """Wait until the live page drew the workers (its first snapshot came)."""
    deadline = time.monotonic() + timeout
    while page.get_attribute("#memory", "data-workers") in (None, "0"):
        if time.monotonic() > deadline:
            raise RuntimeError("the dashboard's page drew no worker")
        page.wait_for_timeout(50)


MiB = 1 << 20  # dd's bs=1M


def _dd_rates(directory: str, nbytes: int, timeout: float) -> tuple[float, float]:
    """MB/s of ``dd`` writing ``nbytes`` of zeros to a new file in ``directory``
    (bs=1M, no sync flag), then reading it back to /dev/null; the file is
    removed. Wall time of the ``dd`` process, as the store's is of its calls."""
    path = os.path.join(directory, "dd-file")
    count = max(1, round(nbytes / MiB))
    commands = [
        ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={count}"],
        ["dd", f"if={path}", "of=/dev/null", "bs=1M"],
    ]
    try:
        seconds = []
        for command in commands:
            t0 = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            seconds.append(time.perf_counter() - t0)
            check(done.returncode == 0, f"{' '.join(command)}: {done.stderr.strip()}")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return count * MiB / MB / seconds[0], count * MiB / MB / seconds[1]


def _store_rates(directory: str, value: np.ndarray, count: int) -> tuple[float, float, float]:
    """(write MB/s, read MB/s, bytes on disk / bytes of the values) of a
    SpillStore in ``directory`` writing ``count`` copies of ``value`` under
    keys of their own, then reading each back, as a worker spills and
    unspills: ``store.write(key, serialize.dumps(value))`` and
    ``serialize.loads(store.read(key))``. Each value read back is checked
    (outside the time measured)."""
    from zfutures import serialize
    from zfutures.spill_store import SpillStore

    keys = [f"value-{i}" for i in range(count)]
    with SpillStore(directory) as store:
        write_s, _ = _timed(lambda: [store.write(key, serialize.dumps(value)) for key in keys])
        on_disk = store.nbytes
        read_s = 0.0
        for key in keys:
            t0 = time.perf_counter()
            back = serialize.loads(store.read(key))
            read_s += time.perf_counter() - t0
            check(np.array_equal(back, value), f"{key} read back differs from what was written")
            del back
            store.remove(key)
    nbytes = count * value.nbytes
    return nbytes / MB / write_s, nbytes / MB / read_s, on_disk / nbytes


def _fill_rate(value: np.ndarray, count: int) -> float:
    """MB/s of copying ``value`` into ``count`` fresh buffers, one at a time:
    what a read back costs at least, in memory alone (the store reads each
    frame into a bytearray of its own; dd reuses one 1 MiB buffer)."""
    source = value.data.cast("B")
    seconds = 0.0
    for _ in range(count):
        t0 = time.perf_counter()
        buffer = bytearray(source.nbytes)
        memoryview(buffer)[:] = source
        seconds += time.perf_counter() - t0
        del buffer
    return count * value.nbytes / MB / seconds


SPILL_CASES = ("random", "compressible")
T = TypeVar("T")


def _after_twin(measure: Callable[[], T]) -> T:
    """``measure()`` after an ``os.sync()`` and an untimed ``measure()``:
    what it gives on memory its twin just used and freed (see bench_spill)."""
    os.sync()
    measure()
    return measure()


def bench_spill(system: System, cfg: Config) -> Figures:
    """MB/s of zfutures' SpillStore writing then reading back about
    ``cfg.spill_bytes`` of 100 MB values, random float64 (lz4 cannot shrink
    them: stored as they are) and ``np.arange`` (lz4 halves it), against
    ``dd`` in the same directory; the median of ``cfg.spill_repeats`` rounds,
    each of dd and both cases, every measurement right after an untimed twin;
    the ratios to dd are the median of each round's.

    No cluster: the store alone, in this process. Nothing is synced, by the
    store or by dd, and the page cache is not dropped (that needs root and
    would not say what a worker sees): reads come from the page cache when
    the machine has the memory, for both alike. dd reads into one 1 MiB
    buffer over and over, the store into a fresh buffer per value, as it
    must: the rate of copying into fresh buffers (``spill_fill``) is that
    bound, without the disk.

    Page-cache writes depend on what the memory did just before, far more
    than on the writer. On the 2-core VM where this was written, dd's 1 GB
    write ran at 0.45 GB/s first, then 5.6-5.9 GB/s repeated (a ``sync``
    before each, reading and deleting the file after); but at 1.2-1.3 GB/s
    right after this process had filled and freed ten 100 MB buffers, which
    the store's reads do (the VM likely hands freed memory back to its host,
    and taking it again is slow). Earlier files' dirty pages slowed it too
    (0.4-0.8 GB/s). So every measurement here runs twice, after an
    ``os.sync()``, and only the second is timed: each, dd's and the store's,
    follows its own twin.
    """
    if system.name != "zfutures":
        raise NotApplicable("zfutures' own spill store (dd is its reference)")
    count = max(1, cfg.spill_bytes // cfg.spill_value_bytes)
    values = {
        "random": make_array(cfg.spill_value_bytes),
        "compressible": np.arange(cfg.spill_value_bytes // 8, dtype=np.float64),
    }
    rates: dict[str, list[float]] = {
        f"{case}_{op}": [] for case in (*SPILL_CASES, "dd") for op in ("write", "read")
    }
    rates["fill"] = []
    disk_ratio = {}
    directory = tempfile.mkdtemp(prefix="zfutures-bench-spill-")
    try:
        nbytes = count * cfg.spill_value_bytes
        for _ in range(cfg.spill_repeats):
            write, read = _after_twin(lambda: _dd_rates(directory, nbytes, cfg.timeout))
            rates["dd_write"].append(write)
            rates["dd_read"].append(read)
            for case in SPILL_CASES:
                write, read, disk_ratio[case] = _after_twin(
                    lambda case=case: _store_rates(directory, values[case], count))
                rates[f"{case}_write"].append(write)
                rates[f"{case}_read"].append(read)
            rates["fill"].append(_after_twin(lambda: _fill_rate(values["random"], count)))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    medians = {name: statistics.median(runs) for name, runs in rates.items()}
    for name, median in medians.items():
        yield f"spill_{name}_MB_per_s", median
        yield f"spill_{name}_runs_MB_per_s", rates[name]  # (JSON only: the spread)
    # Ratios round by round, then their median: the store and dd of one round
    # meet the same machine (a round that was slow for both, as one was here
    # with other work writing to the disk, then counts as one ratio, not as
    # two slow figures paired with others).
    for case in SPILL_CASES:
        for op in ("write", "read"):
            ratios = [a / b for a, b in zip(rates[f"{case}_{op}"], rates[f"dd_{op}"])]
            yield f"spill_{case}_{op}_vs_dd", statistics.median(ratios)
        yield f"spill_{case}_disk_ratio", disk_ratio[case]


@functools.cache
def _expected_tree(k: int, n: int) -> tuple[float, np.ndarray, np.ndarray]:
    """What the sum of ``seeded_array(i, n)`` for i in range(k) must be:
    the sum of all its elements, and its values at a few indices (also
    returned). One array at a time in memory; computed once per size."""
    probes = np.linspace(0, n - 1, 17).astype(np.int64)
    total, at_probes = 0.0, np.zeros(len(probes))
    for seed in range(k):
        array = seeded_array(seed, n)
        total += float(array.sum())
        at_probes += array[probes]
    return total, probes, at_probes


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def bench_spill_tree(system: System, cfg: Config) -> Figures:
    """Seconds for a tree reduction (``add``) of ``k`` arrays of 100 MB, made
    by tasks (``seeded_array``), on workers whose memory limit (500 MB, see
    ``Config.spill_tree_memory_limit``) is far
    below their share of the data: they must spill to get through.

    Also the workers' peak RSS, and how many of the workers there at the
    start were replaced by the end (killed over their limit: a nanny restarts
    a worker above it); both are reported when the run fails, before the
    error. The result is checked against sums the client computes one array
    at a time.
    """
    if not system.can_chain:
        raise NotApplicable("futures cannot be passed to tasks")
    k, n = cfg.spill_tree
    expected, probes, at_probes = _expected_tree(k, n)
    started = sorted(system.worker_pids().values())
    wait = min(cfg.spill_tree_timeout, cfg.timeout)
    failure: Optional[Exception] = None
    with PeakMemory(started) as memory:
        t0 = time.perf_counter()
        try:
            leaves = system.map(seeded_array, range(k), [n] * k)
            final = tree_reduce(system.submit, leaves)
            total = final.result(timeout=wait)
        except TimeoutError:
            failure = BenchTimeout(f"no result within {wait:.0f} s")
        except Exception as exc:
            failure = exc
        elapsed = time.perf_counter() - t0
    replaced = [pid for pid in started if not _alive(pid)]
    yield "spill_tree_workers_replaced", float(len(replaced))
    if not replaced:  # a dead worker's peak went with it
        yield "spill_tree_worker_rss_peak_MB", max(memory.peak.values()) / MB
    if failure is not None:
        try:
            then = system.workers_memory()
        except Exception as exc:
            then = f"unknown ({type(exc).__name__}: {exc})"
        raise BenchFailed(
            f"{type(failure).__name__}: {failure}; {len(replaced)} of the {len(started)} "
            f"workers replaced meanwhile; workers then: {then}"
        ) from failure
    check(isinstance(total, np.ndarray) and total.shape == (n,),
          f"the sum is {type(total).__name__} of shape {getattr(total, 'shape', None)}")
    check(bool(np.isclose(float(total.sum()), expected, rtol=1e-9, atol=0)),
          f"the sum of the sum is {float(total.sum())!r}, not {expected!r}")
    check(np.allclose(total[probes], at_probes, rtol=1e-12, atol=0),
          "the sum is wrong at some indices")
    del leaves, final, total
    yield "spill_tree_s", elapsed


BENCHMARKS: dict[str, Callable[[System, Config], Figures]] = {
    "start": bench_start,
    "roundtrip": bench_roundtrip,
    "tasks": bench_tasks,
    "chain": bench_chain,
    "tree": bench_tree,
    "transfer": bench_transfer,
    "scale": bench_scale,
    "dashboard": bench_dashboard,
    "spill": bench_spill,
    "spill_tree": bench_spill_tree,
}


# ---------------------------------------------------------------------------
# Running one system
# ---------------------------------------------------------------------------


@dataclass
class SystemRun:
    """What one system produced: metrics, errors per benchmark, notes."""

    metrics: Metrics = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    not_applicable: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def log(message: str) -> None:
    """Progress on stderr, so that stdout holds the table only."""
    print(message, file=sys.stderr, flush=True)


def stop_system(system: System, tracker: ProcessTracker, run: SystemRun) -> None:
    """Shut the system down (bounded), then kill and report what it left behind."""
    if system.running:
        tracker.snapshot()
        try:
            with time_limit(system.timeout, f"{system.name} shutdown"):
                system.stop()
        except Exception as exc:
            run.notes.append(f"shutdown failed: {type(exc).__name__}: {exc}")
            system.running = False
    leftovers = tracker.reap()
    if leftovers:
        run.notes.append(
            f"{len(leftovers)} process(es) still alive 5 s after shutdown, killed: "
            + "; ".join(leftovers)
        )


def cluster_options(name: str, cfg: Config) -> Optional[dict[str, Any]]:
    """The options (of ``System.start``) of the cluster benchmark ``name``
    runs on: ``{}`` for the default cluster, None for no cluster at all."""
    if name == "spill":
        return None
    if name == "spill_tree":
        return {"memory_limit": cfg.spill_tree_memory_limit}
    return {}


def run_benchmark(
    system: System, name: str, cfg: Config, tracker: ProcessTracker, metrics: Metrics
) -> None:
    """One benchmark under its time limit, on a running, warmed-up cluster
    started with its ``cluster_options`` (or none, if it needs none).

    ``start`` starts the cluster itself; other benchmarks start one first if
    needed, under a separate time limit so that starting is not charged to
    them.  Figures go into ``metrics`` as they come, so a benchmark that
    fails half-way keeps those it produced.
    """
    options = cluster_options(name, cfg)
    if name != "start" and options is not None:
        with time_limit(cfg.timeout, f"{system.name}: starting the cluster"):
            if not system.running:
                system.start(**options)
            tracker.snapshot()
            system.ready()
    with time_limit(cfg.timeout, f"{system.name} {name}"):
        for key, value in BENCHMARKS[name](system, cfg):
            metrics[key] = value
    tracker.snapshot()


def run_system(system: System, names: list[str], cfg: Config) -> SystemRun:
    """Run the chosen benchmarks on one system, one at a time.

    The cluster started by ``start`` (or before the first benchmark) is
    reused; after a failed benchmark it is stopped and a fresh one started,
    as it is before a benchmark that needs another kind of cluster (or none).
    """
    run = SystemRun()
    tracker = ProcessTracker()
    try:
        for name in names:
            log(f"[{system.name}] {name} ...")
            t0 = time.perf_counter()
            if system.running and cluster_options(name, cfg) != system.options:
                stop_system(system, tracker, run)
            try:
                run_benchmark(system, name, cfg, tracker, run.metrics)
                with time_limit(cfg.timeout, f"{system.name}: releasing after {name}"):
                    note = system.settle() if system.running else None
                if note:
                    run.notes.append(f"after {name}: {note}")
            except NotApplicable as exc:
                run.not_applicable.append(name)
                log(f"[{system.name}] {name}: n/a ({exc})")
            except Exception as exc:
                run.errors[name] = f"{type(exc).__name__}: {exc}"
                log(f"[{system.name}] {name} FAILED: {run.errors[name]}")
                stop_system(system, tracker, run)
            run.seconds[name] = time.perf_counter() - t0
            log(f"[{system.name}] {name} done in {run.seconds[name]:.1f} s")
    finally:
        stop_system(system, tracker, run)
    return run


# ---------------------------------------------------------------------------
# Report: metrics, ratios, targets
# ---------------------------------------------------------------------------


@dataclass
class Target:
    """``zfutures <op> factor x peer`` (or ``zfutures value <op> factor``)."""

    peer: Optional[str]
    op: str  # "<=" or ">="
    factor: float

    def describe(self) -> str:
        factor = f"1/{1 / self.factor:.0f}" if self.factor < 0.1 else f"{self.factor:g}"
        return f"{self.op}{factor}" + (f"x {self.peer}" if self.peer else "")

    def met(self, value: Optional[float], ratios: dict[str, Optional[float]]) -> Optional[bool]:
        """True/False, or None when a figure is missing."""
        measured = ratios.get(self.peer) if self.peer else value
        if measured is None:
            return None
        return measured <= self.factor if self.op == "<=" else measured >= self.factor


@dataclass
class Metric:
    """One row of the table."""

    key: str
    label: str
    targets: list[Target] = field(default_factory=list)
    ratios: bool = True  # False for figures whose ratio means little


def metric_rows(cfg: Config) -> list[Metric]:
    """The table's rows, labelled with the sizes of this run."""
    n, big = f"{cfg.n_tasks:,}", f"{cfg.n_scale:,}"
    fast_tasks = [Target("dask", ">=", 25), Target("pool", ">=", 1)]
    rows = [
        Metric("start_s", "start to first result (s)", [Target("dask", "<=", 0.5)]),
        Metric(
            "roundtrip_median_ms",
            "round trip median (ms)",
            [Target("dask", "<=", 1 / 20), Target("pool", "<=", 1.5)],
        ),
        Metric("roundtrip_p99_ms", "round trip p99 (ms)"),
        Metric("submit_tasks_per_s", f"{n} tasks submit (tasks/s)", fast_tasks),
        Metric("map_tasks_per_s", f"{n} tasks map (tasks/s)", fast_tasks),
        Metric(
            "chain_tasks_per_s", f"chain of {cfg.chain:,} (tasks/s)", [Target("dask", ">=", 15)]
        ),
    ]
    for k, size in cfg.tree:
        case = tree_case_name(k, size)
        rows.append(Metric(f"tree_{case}_s", f"tree sum {case} (s)", [Target("dask", "<=", 0.5)]))
    mb = cfg.transfer_bytes // MB
    rows += [
        Metric("transfer_MB_per_s", f"{mb} MB A->B (MB/s)", [Target("dask", ">=", 1.3)]),
        Metric("transfer_rss_growth_a_MB", "  worker A peak RSS growth (MB)", ratios=False),
        Metric("transfer_rss_growth_b_MB", "  worker B peak RSS growth (MB)", ratios=False),
        Metric("scale_tasks_per_s", f"{big} tasks map (tasks/s)"),
        Metric(
            "scale_per_task_ratio",
            f"  time/task {big} vs {n} (x)",
            [Target(None, "<=", 1.2)],
            ratios=False,
        ),
        Metric("scale_center_rss_peak_MB", "  center peak RSS (MB)", ratios=False),
        Metric("scale_center_rss_kept_MB", "  center RSS kept after release (MB)",
               ratios=False),
        Metric("scale_client_rss_peak_MB", "  client peak RSS (MB)", ratios=False),
        Metric("dashboard_map_tasks_per_s", f"{n} tasks map, /status open (tasks/s)",
               ratios=False),
        Metric("dashboard_map_ratio", "  time with /status open vs without (x)",
               ratios=False),
    ]
    spilled = f"{cfg.spill_bytes // MB:,} MB"
    for case, label in (("random", "random float64"), ("compressible", "np.arange")):
        rows += [
            Metric(f"spill_{case}_write_MB_per_s", f"spill store write {spilled} {label} (MB/s)"),
            Metric(f"spill_{case}_read_MB_per_s", "  read back, page cache (MB/s)"),
            Metric(f"spill_{case}_write_vs_dd", "  write / dd write (x)", ratios=False),
            Metric(f"spill_{case}_read_vs_dd", "  read / dd read (x)", ratios=False),
        ]
    rows += [
        Metric("spill_compressible_disk_ratio", "  np.arange: bytes on disk / in memory",
               ratios=False),
        Metric("spill_dd_write_MB_per_s", f"dd bs=1M {spilled}, same dir: write (MB/s)",
               ratios=False),
        Metric("spill_dd_read_MB_per_s", "  read, page cache (MB/s)", ratios=False),
        Metric("spill_fill_MB_per_s",
               f"copy into fresh {cfg.spill_value_bytes // MB} MB buffers (MB/s)", ratios=False),
    ]
    case = tree_case_name(*cfg.spill_tree)
    limit = cfg.spill_tree_memory_limit
    rows += [
        Metric("spill_tree_s", f"tree sum {case}, {limit} workers (s)"),
        Metric("spill_tree_worker_rss_peak_MB", "  worker peak RSS (MB)", ratios=False),
        Metric("spill_tree_workers_replaced", "  workers replaced during it", ratios=False),
    ]
    return rows


def ratio(value: Optional[float], peer: Optional[float]) -> Optional[float]:
    """zfutures / peer, or None."""
    if value is None or peer is None or peer == 0:
        return None
    return value / peer


def fmt(value: Optional[float], missing: str = "-") -> str:
    """A number with about three significant digits, or ``missing``."""
    if value is None:
        return missing
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


BENCH_OF_METRIC = {
    "start": "start_",
    "roundtrip": "roundtrip_",
    "tasks": ("submit_", "map_"),
    "chain": "chain_",
    "tree": "tree_",
    "transfer": "transfer_",
    "scale": "scale_",
    "dashboard": "dashboard_",
    "spill": "spill_",
    "spill_tree": "spill_tree_",
}


def _bench_of(key: str) -> str:
    """The benchmark that produces metric ``key``: the one of the longest
    prefix it starts with (``spill_tree_s`` is spill_tree's, not spill's)."""
    found = [
        (len(prefix), name)
        for name, prefixes in BENCH_OF_METRIC.items()
        for prefix in ((prefixes,) if isinstance(prefixes, str) else prefixes)
        if key.startswith(prefix)
    ]
    if not found:
        raise KeyError(key)
    return max(found)[1]


def compare(
    runs: dict[str, SystemRun], rows: list[Metric], names: list[str]
) -> list[dict[str, Any]]:
    """One dict per row: values, ratios, targets and whether they are met."""
    table = []
    for row in rows:
        bench = _bench_of(row.key)
        if bench not in names:
            continue
        values: dict[str, Any] = {}
        for system in SYSTEMS:
            run = runs.get(system)
            if run is None:
                values[system] = "skipped"
            elif row.key in run.metrics:
                values[system] = run.metrics[row.key]
            elif bench in run.errors:
                values[system] = "error"
            else:
                values[system] = "n/a"
        numbers = {s: v for s, v in values.items() if isinstance(v, float)}
        ratios = {p: ratio(numbers.get("zfutures"), numbers.get(p)) for p in PEERS}
        verdicts = [t.met(numbers.get("zfutures"), ratios) for t in row.targets]
        table.append(
            {
                "metric": row.key,
                "label": row.label.strip(),
                "values": values,
                "ratios": ratios if row.ratios else {},
                "targets": [t.describe() for t in row.targets],
                "met": verdicts,
                "row": row,
            }
        )
    return table


def _verdict(entry: dict[str, Any]) -> str:
    """``yes``/``no``/``?`` per target, in the order of the target column."""
    words = {True: "yes", False: "no", None: "?"}
    return ", ".join(words[ok] for ok in entry["met"])


def format_table(table: list[dict[str, Any]]) -> str:
    """The comparison as aligned text."""
    header = ["benchmark", "zfutures", "dask", "pool", "zf/dask", "zf/pool", "target", "met"]
    lines = []
    for entry in table:
        values = [v if isinstance(v, str) else fmt(v) for v in entry["values"].values()]
        ratios = [fmt(entry["ratios"].get(p), "") for p in PEERS]
        lines.append(
            [entry["row"].label, *values, *ratios, ", ".join(entry["targets"]), _verdict(entry)]
        )
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(len(header))]
    out = []
    for r in [header, *lines]:
        cells = [r[0].ljust(widths[0])]
        cells += [r[i].rjust(widths[i]) for i in range(1, 6)]
        cells += [r[6].ljust(widths[6]), r[7]]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def versions() -> dict[str, str]:
    """Versions of the measured libraries that are installed."""
    found = {"python": platform.python_version(), "numpy": np.__version__}
    for module in ("zfutures", "dask", "distributed", "zmq"):
        with contextlib.suppress(Exception):
            found[module] = getattr(__import__(module), "__version__", "?")
    return found


def write_json(
    path: str, cfg: Config, runs: dict[str, SystemRun], table: list, skipped: dict, load: float
) -> None:
    """Everything measured, for later comparison."""
    document = {
        "meta": {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "versions": versions(),
            "argv": sys.argv[1:],
            "load_average_before": load,
        },
        "config": asdict(cfg),
        "systems": {name: asdict(run) for name, run in runs.items()},
        "skipped": skipped,
        "comparison": [{k: v for k, v in e.items() if k != "row"} for e in table],
    }
    with open(path, "w") as f:
        json.dump(document, f, indent=2)


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _names(text: str, allowed: Sequence[str], what: str) -> list[str]:
    """Parse a comma-separated list, keeping the canonical order."""
    chosen = {name.strip() for name in text.split(",") if name.strip()}
    unknown = chosen - set(allowed)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(sorted(unknown))} (choose from {', '.join(allowed)})"
        )
    return [name for name in allowed if name in chosen]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description="Benchmark zfutures against dask.distributed and ProcessPoolExecutor.",
        epilog=f"benchmarks: {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--only",
        type=lambda s: _names(s, list(BENCHMARKS), "benchmark"),
        default=list(BENCHMARKS),
        metavar="NAME[,NAME]",
        help="benchmarks to run (default: all)",
    )
    parser.add_argument(
        "--systems",
        type=lambda s: _names(s, SYSTEMS, "system"),
        default=list(SYSTEMS),
        metavar="NAME[,NAME]",
        help="systems to measure (default: zfutures,dask,pool)",
    )
    parser.add_argument("--json", default="bench.json", metavar="PATH", help="JSON output file")
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per benchmark (900; quick: 60)"
    )
    parser.add_argument(
        "--total-timeout",
        type=float,
        default=None,
        help="seconds for the whole run before everything is killed (3600; quick: 300)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def make_system(name: str, cfg: Config) -> System:
    """The adapter for ``name``; ImportError if its library is missing."""
    return ADAPTERS[name](cfg.n_workers, cfg.timeout)


def _expire() -> None:
    """Watchdog action: kill our descendants and exit with status 3."""
    log("benchmark: total time limit reached; killing child processes and exiting")
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            proc.kill()
    os._exit(3)


def run_all(names: Sequence[str], benchmarks: list[str], cfg: Config) -> tuple[dict, dict]:
    """Run every system in turn; (runs, skipped systems with the reason)."""
    runs: dict[str, SystemRun] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            system = make_system(name, cfg)
        except Exception as exc:
            hint = "; pip install -e '.[bench]'" if name == "dask" else ""
            skipped[name] = f"cannot import it: {type(exc).__name__}: {exc}{hint}"
            log(f"skipping {name}: {skipped[name]}")
            continue
        runs[name] = run_system(system, benchmarks, cfg)
    return runs, skipped


def print_report(
    cfg: Config, quick: bool, load: float, table: list, runs: dict, skipped: dict
) -> None:
    """The table, then skipped systems, errors and notes."""
    mode = "quick" if quick else "full"
    print(f"\n{cfg.n_workers} single-threaded workers per system, {mode} sizes, ", end="")
    print(f"{os.cpu_count()} CPUs, load average before the run {load:.2f}")
    print("rates (/s) are higher-is-better, times lower-is-better; ratios are zfutures/peer")
    print(format_table(table))
    print()
    for name, reason in skipped.items():
        print(f"{name}: skipped ({reason})")
    for name, run in runs.items():
        for bench, error in run.errors.items():
            print(f"{name} {bench}: ERROR {error}")
        for note in run.notes:
            print(f"{name}: {note}")
    if "dask" in runs and "scale_center_rss_peak_MB" in runs["dask"].metrics:
        print("dask: the scheduler runs in the client process: its center RSS is that process")
    if any("spill_dd_read_MB_per_s" in run.metrics for run in runs.values()):
        print("spill: neither the store nor dd syncs; reads come from the page cache when "
              "memory allows, for both alike")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmarks, print the table, write the JSON; 1 if nothing was measured."""
    args = parse_args(argv)
    cfg = Config.for_mode(args.quick, args.workers, args.timeout)
    total = args.total_timeout or (300.0 if args.quick else 3600.0)
    load = os.getloadavg()[0]  # other work competing for the cores makes figures noisy
    with Watchdog(total, _expire):
        runs, skipped = run_all(args.systems, args.only, cfg)
    table = compare(runs, metric_rows(cfg), args.only)
    print_report(cfg, args.quick, load, table, runs, skipped)
    write_json(args.json, cfg, runs, table, skipped, load)
    print(f"\nwrote {args.json}")
    status = 0 if any(run.metrics for run in runs.values()) else 1
    main_thread = threading.main_thread()
    stray = [t.name for t in threading.enumerate() if not t.daemon and t is not main_thread]
    if stray:  # a library left a thread behind; do not hang at exit because of it
        print(f"non-daemon threads still running after shutdown: {stray}; exiting anyway")
        sys.stdout.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
