"""PoolExecutor: a ``concurrent.futures.Executor`` backed by a zfutures cluster.

A drop-in replacement for :class:`concurrent.futures.ProcessPoolExecutor`:
code that takes an executor, or its ``map``, runs on the cluster unchanged.
Its futures receive their results as soon as the tasks finish (the cluster
then forgets them), so they stay readable after :meth:`PoolExecutor.shutdown`.

How a task goes, as in ProcessPoolExecutor::

    submit, map --> _Feeder.unsent       PENDING: cancel() drops it
                        |  while fewer tasks than the window are out
                        v
                    sent to the cluster  RUNNING: cancel() returns False
                        |  done: a place in the window is free again

Tasks wait in the pool, cancellable, until the cluster is about to run them;
the window of tasks out on the cluster is its threads plus what it finishes
in a moment (see QUEUED_TIME). At shutdown, and at interpreter exit, the
tasks given finish before the cluster closes, also with ``wait=False``.
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
from concurrent.futures._base import PENDING
from typing import Any, Callable

from . import serialize
from .errors import ConnectionError
from .executor import Executor, _funcname
from .future import Future
from .messages import TaskItem

#: Tasks out on the cluster beyond its task threads: what a thread takes up
#: next without waiting for a round trip through this client, like the call
#: ProcessPoolExecutor queues beyond its processes (its EXTRA_QUEUED_CALLS).
EXTRA_QUEUED_CALLS = 1
#: ... or, if more, as many as the cluster finished in the last QUEUED_TIME
#: seconds: short tasks need many out to keep the workers busy over the round
#: trip, long ones few, so that the others stay cancellable (a task of 0.1 s
#: or longer leaves one queued per thread at most). Measured with a map of
#: 10,000 trivial tasks on two workers: 0.1 s is within the noise of sending
#: them all at once (0.5-0.7 s either way, about 1,000 out at most); 0.01 s
#: was 40% slower (about 100 out).
QUEUED_TIME = 0.1

#: Set at interpreter exit, before atexit hooks run: no pool takes work then.
_global_shutdown = False
#: The feeders of live pools, and of pools whose tasks are not all done yet.
_feeders: weakref.WeakSet = weakref.WeakSet()


def _python_exit() -> None:
    """At interpreter exit, let every pool's tasks finish, then close the clusters.

    Runs before atexit hooks (as concurrent.futures' own): the Executors'
    finalizers, which are atexit hooks, find their clusters closed, and a
    hook that submits to a pool gets RuntimeError.
    """
    global _global_shutdown
    _global_shutdown = True
    for feeder in list(_feeders):
        feeder.close()


# Before the interpreter joins non-daemon threads, as concurrent.futures does.
threading._register_atexit(_python_exit)  # type: ignore[attr-defined]


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
            n_workers = max_workers or os.cpu_count() or 1
            executor = Executor(n_workers=n_workers, allowed_failures=1)
            feeder = _Feeder(executor, n_workers, cap=False)
        elif max_workers is None:
            executor = Executor(address)
            feeder = _Feeder(executor, max(1, sum(executor.nthreads().values())), cap=False)
        else:
            executor = Executor(address)
            feeder = _Feeder(executor, max_workers, cap=True)
        self._executor = executor
        self._max_workers = max_workers
        self._feeder = feeder
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        # Dropped without shutdown(), as shutdown(wait=False): its tasks go on.
        self._finalizer = weakref.finalize(self, feeder.close_later)
        self._finalizer.atexit = False  # (at exit, _python_exit sees to it)

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Schedule ``fn(*args, **kwargs)``; return a future of its result."""
        return self._submit_many(fn, [(args, kwargs)])[0]

    def _submit_many(self, fn: Callable, calls: list[tuple[tuple, dict]]) -> list[Future]:
        with self._shutdown_lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _global_shutdown:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
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
                tasks.append((TaskItem(key, deps, 0, len(frames)), frames, future))
                futures.append(future)
            self._feeder.put(tasks)
            return futures

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
        """Stop taking work; the tasks given finish, then the cluster is freed.

        ``wait``: return once that is done; else at once, and the tasks go on
        (the program does not exit before they are done). ``cancel_futures``
        cancels the tasks that have not started (not sent to the cluster);
        those that have finish. Futures that finished keep their results.
        """
        with self._shutdown_lock:
            self._shutdown = True
        if cancel_futures:
            self._feeder.cancel_unsent()
        if wait:
            self._feeder.close()
        else:
            self._feeder.close_later()
        self._finalizer.detach()


class _Feeder:
    """Sends a pool's tasks to the cluster as it takes them; closes the cluster
    once they are done.

    Holds no reference to its pool: dropped, a pool's tasks go on, as a
    ProcessPoolExecutor's do. A task's future is RUNNING from the moment it
    is sent: ``cancel()`` then returns False, as it does for a task a
    ProcessPoolExecutor has queued to its processes.
    """

    def __init__(self, executor: Executor, threads: int, cap: bool):
        self.executor = executor
        self.threads = threads
        self.cap = cap  # at most ``threads`` out (max_workers on a shared cluster)
        self.lock = threading.Lock()
        self.unsent: collections.deque = collections.deque()  # (item, frames, future)
        self.out = 0  # tasks sent whose futures are not done
        self.extra = 0 if cap else EXTRA_QUEUED_CALLS  # the window beyond the threads
        self.finished_at: collections.deque = collections.deque()  # recent, monotonic
        self.closing = False
        self.drained = threading.Event()  # closing, and no task left
        self.close_lock = threading.Lock()
        self.closer: threading.Thread | None = None
        self.on_done = self.done  # (one bound method for all the futures)
        _feeders.add(self)

    def put(self, tasks: list[tuple[TaskItem, list, Future]]) -> None:
        with self.lock:
            self.unsent.extend(tasks)
        self.send()

    def send(self) -> None:
        """Send the waiting tasks the window has room for."""
        to_send = []
        with self.lock:
            if not self.cap:
                self.extra = self._recently_finished()
            window = self.threads + self.extra
            while self.unsent and self.out < window:
                task = self.unsent.popleft()
                future = task[2]
                with future._condition:  # (Future.cancel decides under it too)
                    if future._state != PENDING:
                        continue  # cancelled while it waited
                    future.set_running_or_notify_cancel()
                self.out += 1
                to_send.append(task)
            if self.closing and not self.unsent and not self.out:
                self.drained.set()
        if to_send:
            for _, _, future in to_send:
                # The stdlib's: the callback runs where the future completes
                # (the I/O thread, which holds the future until then), not on
                # the callback thread, and without a command per future.
                concurrent.futures.Future.add_done_callback(
                    future, self.on_done)  # type: ignore[arg-type]  # (a zfutures Future)
            self.executor._io.call("submit", to_send, True, True)  # (eager; unique keys)

    def _recently_finished(self) -> int:
        """Tasks finished in the last QUEUED_TIME seconds, at least EXTRA_QUEUED_CALLS."""
        recent = self.finished_at
        since = time.monotonic() - QUEUED_TIME
        while recent and recent[0] < since:
            recent.popleft()
        return max(EXTRA_QUEUED_CALLS, len(recent))

    def done(self, future: Future) -> None:
        """A task sent finished (or failed): its place in the window is free.

        Places are filled once half the tasks queued beyond the threads are
        done (at once when one is queued): tasks go many to a message, the
        threads always have one to take up next.
        """
        if isinstance(future._exception, ConnectionError):  # (done: read unlocked)
            self.fail_unsent(future._exception)  # the cluster is gone: fail fast
        with self.lock:
            self.out -= 1
            self.finished_at.append(time.monotonic())
            if self.unsent and self.out > self.threads + self.extra // 2:
                return
        self.send()

    def fail_unsent(self, error: BaseException) -> None:
        """The tasks not sent yet fail with ``error`` (the cluster cannot be reached)."""
        with self.lock:
            unsent, self.unsent = self.unsent, collections.deque()
        for _, _, future in unsent:
            future._set_error(error)

    def cancel_unsent(self) -> None:
        """Cancel the tasks not sent yet (the cluster never heard of them)."""
        with self.lock:
            unsent, self.unsent = self.unsent, collections.deque()
        for _, _, future in unsent:
            future._set_cancelled()
        self.send()  # (drained, maybe)

    def close_later(self) -> None:
        """Close once the tasks given are done, on a thread of its own."""
        with self.lock:
            if self.closer is not None:
                return
            self.closer = threading.Thread(target=self.close, name="zfutures-pool-close",
                                           daemon=True)  # (joined at exit: _python_exit)
        self.closer.start()

    def close(self) -> None:
        """Take no more tasks; wait until the tasks given are done; close the cluster."""
        with self.lock:
            self.closing = True
            if not self.unsent and not self.out:
                self.drained.set()
        self.drained.wait()
        with self.close_lock:
            if not self.executor._closed:
                self.executor.shutdown(wait=False)
        _feeders.discard(self)


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
