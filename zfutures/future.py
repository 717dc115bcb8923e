"""Future: a handle on a key computed on the cluster.

A subclass of :class:`concurrent.futures.Future`, so the standard library's
``wait``, ``as_completed`` and ``asyncio.wrap_future`` accept it. It becomes
*done* as soon as the cluster holds the result; the value itself stays on the
worker until :meth:`Future.result` fetches it (straight from that worker), so
chaining futures into further tasks never moves data through the client.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
import traceback as _traceback
from collections.abc import Generator
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any, Callable, NoReturn, Protocol, cast

from . import context
from .errors import RemoteTraceback


class FutureOwner(Protocol):
    """What a Future needs from the executor that made it (an
    :class:`~zfutures.executor.Executor`), which completes it."""

    def _fetch_values(self, keys: list[str], timeout: float | None) -> dict[str, Any]:
        """The values of finished keys, fetched from the workers holding them."""

    def _await_direct(self, future: Future, timeout: float | None) -> None:
        """Wait a moment on this thread for the answer of a task sent straight
        to a worker (see ClientIO.await_direct)."""

    def _watch(self, future: Future) -> None:
        """Someone waits for ``future`` other than by ``result()``."""

    def _hold(self, future: Future) -> None:
        """Keep ``future`` alive until it is done (it has callbacks)."""

    def _run_callback(self, fn: Callable[[Future], object], future: Future) -> None:
        """Call ``fn(future)`` on the callback thread."""

    def _unref(self, key: str) -> None:
        """A future of ``key`` was dropped or released."""


class _Remote:
    """Placeholder result of a future whose value is still on a worker."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<on the cluster>"


REMOTE = _Remote()

#: What concurrent.futures.Future.add_done_callback takes.
_Callback = Callable[["concurrent.futures.Future[Any]"], object]

#: Serializes making a future's condition with completing a future that has none.
_LAZY = threading.Lock()
_CANCELLED = (CANCELLED, CANCELLED_AND_NOTIFIED)
_DONE = (*_CANCELLED, FINISHED)


class Future(concurrent.futures.Future[Any]):
    """The result of a task that runs, or ran, on the cluster.

    >>> x = executor.submit(inc, 1)       # doctest: +SKIP
    >>> x                                 # doctest: +SKIP
    <Future: status: pending, key: inc-8bca9db48807c7d8bf613135d01b875f>
    >>> x.result()                        # doctest: +SKIP
    2
    """

    def __init__(self, key: str, executor: FutureOwner | None):
        # Not concurrent.futures.Future.__init__: it makes a Condition (a lock,
        # a deque, five bound methods) and two lists per future, about 4 us and
        # a dozen objects for the garbage collector to traverse, for each of the
        # thousands of futures a map returns. They are made on first use (a
        # wait, a callback, as_completed); the stdlib's methods reach them
        # through the properties below. A future completed before anyone used
        # them has no one to wake and is completed without them (_complete).
        self._state = PENDING
        self._result = None
        self._exception: BaseException | None = None
        self.key = key
        self._executor: FutureOwner | None = executor
        self._lost: BaseException | None = None  # the data is gone for good

    def _lazily(self, name: str) -> Any:
        """The condition or one of its lists (``name``), all three made on first use."""
        if "_lazy_condition" not in self.__dict__:
            with _LAZY:
                made = "_lazy_condition" not in self.__dict__
                if made:
                    self._lazy_waiters: list[Any] = []
                    self._lazy_callbacks: list[Any] = []
                    self._lazy_condition = threading.Condition()  # last: all three made
            executor = self._executor
            if made and executor is not None and self._state == PENDING:
                executor._watch(self)  # (someone waits on it: see ClientIO.watch)
        return self.__dict__[name]

    _condition = property(lambda self: self._lazily("_lazy_condition"))
    _waiters = property(lambda self: self._lazily("_lazy_waiters"))  # (for wait, as_completed)
    _done_callbacks = property(lambda self: self._lazily("_lazy_callbacks"))

    # Reading the state needs no lock (one attribute read), and taking the
    # condition would make one for each of the many futures a gather looks at.
    def done(self) -> bool:
        """True if finished (with a value or an error) or cancelled."""
        return self._state in _DONE

    def cancelled(self) -> bool:
        """True if the future was cancelled."""
        return self._state in _CANCELLED

    # ------------------------------------------------------------------ state

    @property
    def status(self) -> str:
        """One of ``pending``, ``finished``, ``error``, ``cancelled``, ``lost``."""
        state = self._state  # (no lock: see done())
        if self._lost is not None:
            return "lost"
        if state == FINISHED:
            return "error" if self._exception is not None else "finished"
        if state in _CANCELLED:
            return "cancelled"
        return "pending"

    def __repr__(self) -> str:
        return f"<Future: status: {self.status}, key: {self.key}>"

    # ------------------------------------------------------------------ results

    def result(self, timeout: float | None = None) -> Any:
        """The value, fetched from the worker that holds it.

        Raises the task's own exception (with the remote traceback chained as
        ``__cause__``), ``concurrent.futures.TimeoutError`` after ``timeout``
        seconds, or ``CancelledError``.
        """
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            if not self.done():
                context.secede()  # inside a task, waiting gives the thread slot back
                executor = self._executor
                if executor is not None:  # (a lone task's answer: read on this thread)
                    executor._await_direct(self, timeout)
                    if deadline is not None:
                        timeout = max(0.0, deadline - time.monotonic())
            if self._state == FINISHED and self._exception is None:
                value = self._result  # (final once finished: no lock needed)
            else:
                value = super().result(timeout)
            if value is not REMOTE:
                return value
            if self._lost is not None:
                raise self._lost
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            executor = self._executor
            if executor is None:  # (released: nothing fetches its value any more)
                raise RuntimeError(f"the future of {self.key!r} was released")
            value = executor._fetch_values([self.key], remaining)[self.key]
            with self._condition:
                if self._result is REMOTE:
                    self._result = value
            return value
        finally:
            # The exception raised keeps this frame in its traceback, and the
            # exception is this future's: break the cycle, as concurrent.futures
            # does, so that a future dropped after a failed result() goes at once.
            self = None  # type: ignore[assignment]  # noqa: PLW0642

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's exception, or None if it succeeded; waits like :meth:`result`."""
        if self._lost is not None:  # (the data is gone, even if it had finished)
            return self._lost
        if self._state == FINISHED:
            return self._exception
        if not self.done():
            context.secede()
        return super().exception(timeout)

    def traceback(self, timeout: float | None = None) -> str | None:
        """The formatted traceback of the task's exception, as the worker saw it.

        None if the task succeeded. Waits like :meth:`result`.

        >>> print(executor.submit(int, "x").traceback())   # doctest: +SKIP
        Traceback (most recent call last):
          ...
        ValueError: invalid literal for int() with base 10: 'x'
        """
        exc = self.exception(timeout)
        if exc is None:
            return None
        cause = exc.__cause__
        if isinstance(cause, RemoteTraceback):
            return cause.tb
        return "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))

    def release(self) -> None:
        """Drop this reference; the cluster forgets the key when no one holds it."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor._unref(self.key)

    def __del__(self) -> None:
        executor = getattr(self, "_executor", None)
        if executor is not None:
            executor._unref(self.key)

    def add_done_callback(self, fn: Callable[[Future], object]) -> None:
        """Call ``fn(future)`` when done, on the executor's callback thread.

        Callbacks never run on the I/O thread, so a callback may call
        :meth:`result` (which needs that thread to fetch the value).
        """
        executor = self._executor
        if executor is None:
            super().add_done_callback(cast(_Callback, fn))  # (it is called with this future)
            return
        if not self.done():
            # Like a concurrent.futures executor, keep a future with callbacks
            # alive until it is done, even if the caller drops it.
            executor._hold(self)
        super().add_done_callback(lambda f: executor._run_callback(fn, cast(Future, f)))

    def __await__(self) -> Generator[Any, None, Any]:
        return self._wait_async().__await__()

    async def _wait_async(self) -> Any:
        import asyncio

        if not self.done():
            # Wait on a plain future set from a callback: cancelling this await
            # then leaves no thread blocked behind it.
            done: concurrent.futures.Future[None] = concurrent.futures.Future()

            def wake(_: Future) -> None:
                if not done.done():
                    done.set_result(None)

            self.add_done_callback(wake)
            await asyncio.wrap_future(done)
        if self._state == FINISHED and self._exception is None and self._result is REMOTE:
            # Fetching is bounded by the fetch timeouts; off the event loop's thread.
            return await asyncio.get_running_loop().run_in_executor(None, self.result)
        return self.result(0)

    # ------------------------------------------------------------------ I/O thread side

    def _complete(self, value: Any, exception: BaseException | None) -> None:
        """Finish with ``value`` or ``exception``, unless done or cancelled already."""
        with _LAZY:
            if "_lazy_condition" not in self.__dict__:  # no waiter, no callback
                if self._state == PENDING:
                    self._result, self._exception = value, exception
                    self._state = FINISHED
                return
        try:
            if exception is None:
                self.set_result(value)
            else:
                self.set_exception(exception)
        except concurrent.futures.InvalidStateError:
            pass  # already done, or cancelled

    def _set_remote(self) -> None:
        """The cluster holds the result (called from the executor's I/O thread)."""
        self._complete(REMOTE, None)

    def _set_value(self, value: Any) -> None:
        self._complete(value, None)

    def _set_cancelled(self) -> None:
        with self._condition:
            if self._state != PENDING:
                return
            super().cancel()
            # Waiters of concurrent.futures.wait and as_completed only count a
            # cancellation once the executor acknowledges it, as this does.
            self.set_running_or_notify_cancel()

    def cancel(self) -> bool:
        """Cancel this future: True if it is now cancelled, False if it was done
        or is running (a PoolExecutor's future sent to the cluster).

        It cancels this future alone, as with a ``concurrent.futures`` future:
        other futures of the same key, here or in other clients, keep waiting
        for its value. The cluster drops the task (pending work not started,
        a running task's result discarded) once no future wants its key.
        """
        with self._condition:
            if self._state in (RUNNING, FINISHED):
                return False
            if self._state not in _CANCELLED:
                super().cancel()
                # Waiters of concurrent.futures.wait and as_completed only count
                # a cancellation once the executor acknowledges it, as this does.
                self.set_running_or_notify_cancel()
        self.release()  # (a cancelled future refers to its key no more)
        return True

    def _set_lost(self, exception: BaseException) -> None:
        """The key's data is gone and cannot be recomputed, even if it had finished."""
        self._lost = exception
        self._set_error(exception)

    def _set_error(self, exception: BaseException) -> None:
        self._complete(None, exception)

    # Pickled into a task, a Future is replaced by its value (see serialize.py);
    # pickled any other way it would carry a dead socket, so refuse clearly.
    def __reduce__(self) -> NoReturn:
        raise TypeError(
            f"a Future ({self.key}) can only be sent to the cluster as a task argument")
