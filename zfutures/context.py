"""What a task knows about where it runs: its worker, and a client from there.

Task threads of a worker record the worker and the task they run in a
thread-local; :func:`get_executor` uses it to connect back to the same
center, and waits on futures call :func:`secede` so that a task waiting for
the tasks it submitted gives its thread slot to them.
"""
from __future__ import annotations

import threading
from typing import Any

_local = threading.local()
_executor_lock = threading.Lock()


def enter_task(worker: Any, key: str) -> None:
    """Called by a task thread before it runs ``key``."""
    _local.worker = worker
    _local.key = key
    _local.seceded = False


def leave_task() -> bool:
    """Called after the task ran; returns whether it seceded meanwhile."""
    seceded = getattr(_local, "seceded", False)
    _local.key = None
    _local.seceded = False
    return seceded


def current_worker() -> Any:
    """The worker whose task is running in this thread, else None."""
    return getattr(_local, "worker", None) if getattr(_local, "key", None) else None


def secede() -> None:
    """If this thread runs a task, give its thread slot back to its worker.

    Called before any wait on futures; harmless outside tasks and when called
    twice. The task keeps running on its thread, outside the worker's count.
    """
    key = getattr(_local, "key", None)
    if key is None or _local.seceded:
        return
    _local.seceded = True
    _local.worker.secede(key)


def get_executor(timeout: float = 10) -> Any:
    """Inside a task: an Executor connected to the center this worker serves.

    Tasks can then submit tasks and wait on them; a task waiting on futures
    gives its thread slot back, so fan-outs cannot deadlock a worker.

    >>> def fib(n):                                  # doctest: +SKIP
    ...     if n < 2:
    ...         return n
    ...     ex = get_executor()
    ...     a, b = ex.submit(fib, n - 1), ex.submit(fib, n - 2)
    ...     return a.result() + b.result()
    """
    worker = current_worker()
    if worker is None:
        raise RuntimeError("get_executor() works only inside a task running on a worker")
    with _executor_lock:
        executor = worker.executor
        if executor is None:
            from .executor import Executor

            executor = worker.executor = Executor(worker.center_address, timeout=timeout,
                                                  name=f"tasks-of-{worker.name}")
        return executor
