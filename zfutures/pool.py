"""PoolExecutor: a ``concurrent.futures.Executor`` backed by a zfutures cluster.

A drop-in replacement for :class:`concurrent.futures.ProcessPoolExecutor`:
code that takes an executor, or its ``map``, runs on the cluster unchanged.
Its futures receive their results as soon as the tasks finish (the cluster
then forgets them), so they stay readable after :meth:`PoolExecutor.shutdown`.
"""
from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Callable

from . import serialize
from .executor import Executor, _funcname
from .future import Future


def _call_chunk(fn: Callable, chunk: list[tuple]) -> list:
    """Runs on a worker: ``fn`` over several argument tuples, for ``map(chunksize=)``."""
    return [fn(*args) for args in chunk]


class PoolExecutor(concurrent.futures.Executor):
    """An executor whose workers are a zfutures cluster.

    Parameters
    ----------
    max_workers
        Without ``address``: the number of worker processes of the local
        cluster it starts (default: one per CPU core). With ``address``: how
        many of its tasks may run at once on that cluster (default: no cap).
    address
        A running center to use instead of a local cluster.

    >>> with PoolExecutor(2) as pool:                       # doctest: +SKIP
    ...     list(pool.map(pow, [2, 3], [5, 2]))
    [32, 9]
    """

    def __init__(self, max_workers: int | None = None, *, address: str | None = None):
        if max_workers is not None and (type(max_workers) is not int or max_workers <= 0):
            raise ValueError("max_workers must be greater than 0")
        if address is None:
            # A task that kills its worker fails at once, as in ProcessPoolExecutor
            # (with BrokenProcessPool); the nanny replaces the worker, and the
            # other tasks go on.
            self._executor = Executor(n_workers=max_workers or os.cpu_count() or 1,
                                      allowed_failures=1)
            self._max_running = None  # the cluster's size is the cap
        else:
            self._executor = Executor(address)
            self._max_running = max_workers
        self._max_workers = max_workers
        # With a cap: tasks beyond it wait here, unsent, until earlier ones finish.
        self._slot_lock = threading.Lock()
        self._unsent: collections.deque = collections.deque()
        self._sent: set = set()
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._pending: weakref.WeakSet = weakref.WeakSet()
        # At interpreter exit, let pending work finish first, as the stdlib pools
        # do; registered after the Executor's own finalizer, so it runs before it.
        self._finalizer = weakref.finalize(self, _finish_then_close, self._pending,
                                           self._executor)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Schedule ``fn(*args, **kwargs)``; return a future of its result."""
        return self._submit_many(fn, [(args, kwargs)])[0]

    def _submit_many(self, fn: Callable, calls: list[tuple[tuple, dict]]) -> list[Future]:
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if not callable(fn):
                raise TypeError(f"{fn!r} is not callable")
            tasks, futures = [], []
            name = _funcname(fn)
            function = serialize.dumps_function(fn, Future)  # once for all the calls
            for args, kwargs in calls:
                frames, deps = serialize.dumps_task(fn, args, kwargs, Future, function)
                self._executor._check_size(frames)
                key = f"{name}-{serialize.unique_token()}"
                future = Future(key, self._executor)
                item = {"key": key, "deps": deps, "priority": 0, "retries": 0}
                tasks.append((item, frames, future))
                futures.append(future)
                self._pending.add(future)
            if self._max_running is None:
                self._executor._io.call("submit", tasks, True, True)  # (unique keys)
            else:
                with self._slot_lock:
                    self._unsent.extend(tasks)
                self._send_unsent()
            return futures

    def _send_unsent(self, finished: Future | None = None) -> None:
        """Send waiting tasks while fewer than ``max_workers`` of ours are out."""
        to_send = []
        with self._slot_lock:
            self._sent.discard(finished)
            while self._unsent and len(self._sent) < self._max_running:
                task = self._unsent.popleft()
                if task[2].cancelled():
                    continue
                self._sent.add(task[2])
                to_send.append(task)
        for task in to_send:
            task[2].add_done_callback(self._send_unsent)
        if to_send:
            self._executor._io.call("submit", to_send, True, True)

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None,
            chunksize: int = 1) -> Iterator:
        """Like builtin ``map``, run on the cluster; results in order, as an iterator.

        All calls are submitted at once. ``timeout`` counts from this call;
        a result not ready by then raises ``TimeoutError``. ``chunksize`` runs
        that many elements per task.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        deadline = None if timeout is None else time.monotonic() + timeout
        argument_lists = zip(*iterables)
        if chunksize == 1:
            futures = self._submit_many(fn, [(args, {}) for args in argument_lists])
        else:
            chunks = iter(lambda: list(itertools.islice(argument_lists, chunksize)), [])
            futures = self._submit_many(_call_chunk, [((fn, chunk), {}) for chunk in chunks])
        return _results_in_order(futures, deadline, chunked=chunksize > 1)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; with ``wait``, let pending work finish; free the cluster.

        ``cancel_futures`` cancels work that has not finished yet. Futures that
        finished keep their results.
        """
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            for future in list(self._pending):
                future.cancel()
        if wait:
            concurrent.futures.wait(list(self._pending))
        self._executor.shutdown(wait=False)
        self._finalizer.detach()


def _results_in_order(futures: list[Future], deadline: float | None, chunked: bool) -> Iterator:
    """Yield results in order; cancel what is left if the consumer stops early.

    While it waits to be asked for the next one, it holds no result it gave
    (CPython #14406): neither its future nor the rest of its chunk.
    """
    try:
        futures.reverse()  # pop from the end
        while futures:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if chunked:
                chunk = _result(futures.pop(), remaining)
                chunk.reverse()
                while chunk:
                    yield chunk.pop()
            else:
                yield _result(futures.pop(), remaining)
    finally:
        for future in futures:
            future.cancel()


def _result(future: Future, timeout: float | None) -> Any:
    """``future.result(timeout)``, in a frame that ends with it: the caller's
    frame keeps no reference to the future, and so to the result."""
    return future.result(timeout)


def _finish_then_close(pending: weakref.WeakSet, executor: Executor) -> None:
    concurrent.futures.wait(list(pending))
    executor.shutdown(wait=False)
