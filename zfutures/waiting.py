"""Waiting on many futures: ``wait`` and ``as_completed``.

Both accept zfutures Futures and plain ``concurrent.futures.Future`` objects
alike. Inside a task they first give the task's thread slot back to its
worker, so a task may wait on the tasks it submitted.
"""
from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION
from typing import Any

from . import context

__all__ = ["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "as_completed", "wait"]


def wait(fs: Iterable[concurrent.futures.Future], timeout: float | None = None,
         return_when: str = ALL_COMPLETED) -> concurrent.futures._base.DoneAndNotDoneFutures:
    """Wait for futures, as :func:`concurrent.futures.wait`: returns ``(done, not_done)``.

    >>> done, not_done = wait(ex.map(inc, range(10)), timeout=5)   # doctest: +SKIP
    """
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
        raise ValueError(f"return_when must be ALL_COMPLETED, FIRST_COMPLETED or "
                         f"FIRST_EXCEPTION, not {return_when!r}")
    fs = list(fs)
    if not all(f.done() for f in fs):
        context.secede()
    return concurrent.futures.wait(fs, timeout, return_when)


class as_completed(Iterator):  # noqa: N801 - a function-like name, as in concurrent.futures
    """Iterate over futures as they finish; more can be added with :meth:`add`.

    With ``with_results=True`` it yields ``(future, result)`` pairs and raises a
    failed task's exception when it comes to it. ``timeout`` counts from the
    call, as in :func:`concurrent.futures.as_completed`, and raises
    ``concurrent.futures.TimeoutError``.

    >>> for future in as_completed(ex.map(inc, range(3))):      # doctest: +SKIP
    ...     print(future.result())
    """

    def __init__(self, fs: Iterable[concurrent.futures.Future] = (),
                 timeout: float | None = None, with_results: bool = False):
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._with_results = with_results
        self._finished: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending: set = set()
        for future in fs:
            self.add(future)

    def add(self, future: concurrent.futures.Future) -> None:
        """Also yield ``future`` when it finishes (a future already seen is ignored)."""
        with self._lock:
            if future in self._pending:
                return
            self._pending.add(future)
        future.add_done_callback(self._finished.put)

    def count(self) -> int:
        """How many futures are still to be yielded."""
        with self._lock:
            return len(self._pending)

    def is_empty(self) -> bool:
        return self.count() == 0

    def __iter__(self) -> as_completed:
        return self

    def __next__(self) -> Any:
        if self.is_empty():
            raise StopIteration
        if not self._finished.qsize():
            context.secede()
        timeout = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
        try:
            future = self._finished.get(timeout=timeout)
        except queue.Empty:
            raise concurrent.futures.TimeoutError(
                f"{self.count()} futures unfinished when the timeout ran out") from None
        with self._lock:
            self._pending.discard(future)
        if self._with_results:
            return future, future.result()
        return future
