"""What a task knows about where it runs: its worker, and whether it seceded.

Task threads of a worker record the worker and the task they run in a
thread-local; :func:`zfutures.executor.get_executor` uses it to connect back
to the same center, and waits on futures call :func:`secede` so that a task
waiting for the tasks it submitted gives its thread slot to them.

This module imports no other of zfutures: the worker, the executor and the
futures all use it.
"""
from __future__ import annotations

import threading
from typing import Any

_local = threading.local()


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
