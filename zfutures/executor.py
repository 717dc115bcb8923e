"""Executor: the user's handle on a zfutures cluster."""
from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from typing import Any, Callable

from . import context, serialize
from .addressing import normalize_address
from .arguments import (
    Placement,
    check_callable,
    check_options,
    check_seconds,
    check_size,
    check_task_options,
    chosen_workers,
    map_keys,
    placement,
)
from .client_io import ClientIO
from .client_records import load_values
from .client_scatter import plan as scatter_plan
from .executor_html import executor_html
from .future import REMOTE, Future
from .messages import HasWhat, SchedulerInfo, TaskItem, WhoHas
from .remote_errors import remote_exception

logger = logging.getLogger(__name__)

#: A done-callback and its future, for the callback thread.
_Callback = tuple[Callable[[Future], object], Future]


def _funcname(fn: Callable[..., Any]) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "lambda" if name == "<lambda>" else name


def _wait_all(futures: list[Future], timeout: float | None) -> int:
    """Wait for every future, up to ``timeout`` seconds; return how many are not done.

    One future at a time: those done by the time we look cost one lock, where
    concurrent.futures.wait hangs a waiter on each and takes it off again.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    for index, future in enumerate(futures):
        if future.done():
            continue
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        concurrent.futures.wait((future,), remaining)
        if not future.done():
            return sum(1 for f in futures[index:] if not f.done())
    return 0


def _walk_futures(obj: Any, found: list[Future]) -> None:
    """Collect the Futures in a nested list/tuple/set/dict structure."""
    kind = type(obj)
    if kind is Future:
        found.append(obj)
    elif kind in (list, tuple, set, frozenset):
        for item in obj:
            _walk_futures(item, found)
    elif kind is dict:
        for item in obj.values():
            _walk_futures(item, found)


_SKIP = object()


def _substitute(obj: Any, values: dict[str, Any], left_out: set[int]) -> Any:
    """Rebuild a nested structure with every Future replaced by its value; those
    in ``left_out`` (by id) are left out."""
    kind = type(obj)
    if kind is Future:
        return _SKIP if id(obj) in left_out else values.get(obj.key, _SKIP)
    if kind in (list, tuple, set, frozenset):
        items = [_substitute(item, values, left_out) for item in obj]
        return kind(item for item in items if item is not _SKIP)
    if kind is dict:
        pairs = ((k, _substitute(v, values, left_out)) for k, v in obj.items())
        return {k: v for k, v in pairs if v is not _SKIP}
    return obj


class Executor:
    """Run Python functions on a zfutures cluster, concurrent.futures style.

    Parameters
    ----------
    address
        The center, as ``"host:port"``, ``"tcp://host:port"`` or ``"host"``
        (port 8787). ``None`` starts a local cluster owned by this executor.
    n_workers, threads_per_worker
        Size of the local cluster (default: one worker per CPU core).
    timeout
        Seconds to wait for the center before raising
        :class:`zfutures.ConnectionError`.
    security
        Keys for a secured cluster: a directory made by ``zfut-keygen`` (it
        needs ``center.key`` and ``client.key_secret``) or a
        :class:`zfutures.Security`. Default: the directory named by the
        ``ZFUTURES_KEYS`` environment variable, if set.
    name
        How this client appears in the center's logs.
    reconnect_deadline
        Seconds a call waits for a center that went silent (it may be
        restarting: one that comes back sooner loses no work) before raising
        :class:`zfutures.ConnectionError`.
    cluster_options
        For a local cluster only: ``allowed_failures``, ``heartbeat_interval``
        (seconds between heartbeats), ``worker_timeout`` (seconds of silence
        after which a worker is declared dead) and ``memory_limit`` (per
        worker: bytes, ``"300MB"``, ``"4GB"``, or a share of this machine's
        memory such as ``0.25``; 0 for none; default: an equal share for each
        worker). A worker near its limit pauses, and its nanny restarts it
        above the limit.

    Examples
    --------
    >>> from zfutures import Executor
    >>> with Executor(n_workers=2) as ex:          # doctest: +SKIP
    ...     x = ex.submit(inc, 1)
    ...     y = ex.submit(inc, x)                    # x's value moves worker to worker
    ...     y.result()
    3
    """

    def __init__(self, address: str | None = None, *, n_workers: int | None = None,
                 threads_per_worker: int = 1, timeout: float = 10, security: Any = None,
                 name: str | None = None, reconnect_deadline: float = 30.0,
                 **cluster_options: Any):
        check_options(address, n_workers, threads_per_worker, timeout, name)
        check_seconds("reconnect_deadline", reconnect_deadline)
        from .security import Security

        security = Security.coerce(security)
        self.cluster = None
        self._closed = True
        self._callbacks: queue.SimpleQueue[_Callback] | None = None
        if address is None:
            from .local_cluster import LocalCluster

            self.cluster = LocalCluster(n_workers=n_workers,
                                        threads_per_worker=threads_per_worker,
                                        timeout=timeout, security=security,
                                        **cluster_options)
            address = self.cluster.address
        elif cluster_options:
            raise TypeError(f"unexpected keyword arguments {sorted(cluster_options)}: "
                            "they configure a local cluster, started when address is None")
        self.address = normalize_address(address)
        self.name = name or f"client-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.security = security
        self._io = ClientIO(self.address, self.name, reconnect_deadline=reconnect_deadline,
                            security=security)
        try:
            self._io.start(timeout)
            if self.cluster is not None:
                self.cluster.wait_for_workers(self._io, timeout)
        except BaseException:
            if self.cluster is not None:
                self.cluster.close()
            raise
        self._closed = False
        _opened[:] = [ref for ref in _opened if (e := ref()) is not None and not e._closed]
        _opened.append(weakref.ref(self))
        # Stops the I/O thread and the local cluster even if the user never calls
        # shutdown(); holds no reference to self, so it cannot keep it alive.
        self._finalizer = weakref.finalize(self, _close, self._io, self.cluster)

    def __repr__(self) -> str:
        return f"<Executor: center={self.address!r}{' (local cluster)' if self.cluster else ''}>"

    @property
    def dashboard_link(self) -> str | None:
        """The link to the cluster's dashboard (its /status page), or None if
        the center runs none. With keys, the link holds the dashboard's token:
        share it as you would the keys.

        >>> ex = Executor(n_workers=2)                # doctest: +SKIP
        >>> ex.dashboard_link                         # doctest: +SKIP
        'http://127.0.0.1:8788/status'
        >>> import webbrowser                         # doctest: +SKIP
        >>> webbrowser.open(ex.dashboard_link)        # doctest: +SKIP
        """
        return self._io.core.dashboard_link

    def _repr_html_(self) -> str:
        """The executor in a notebook: its center, workers, threads, memory and
        dashboard link."""
        return executor_html(self)

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        # Leaving on an error: do not wait for futures the error left behind.
        self.shutdown(wait=exc_type is None)

    # ------------------------------------------------------------------ submitting

    def submit(self, fn: Callable[..., Any], /, *args: Any, key: str | None = None,
               pure: bool = True,
               retries: int = 0, priority: int = 0, workers: Any = None,
               allow_other_workers: bool = False, resources: dict[str, float] | None = None,
               **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on a worker; return a Future of its result.

        Futures anywhere in the arguments are replaced by their values on the
        worker; the data moves worker to worker, never through this client.

        >>> x = ex.submit(inc, 1)      # doctest: +SKIP
        >>> y = ex.submit(inc, x)      # doctest: +SKIP
        >>> y.result()                 # doctest: +SKIP
        3
        """
        self._check_open()
        check_callable("submit", fn)
        check_task_options(retries, priority, workers, resources)
        item, frames = self._task(fn, args, kwargs, key, pure, retries, priority,
                                  placement(workers, allow_other_workers, resources))
        future = Future(item.key, self)
        self._io.submit(item, frames, future, own_key=key is None)
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            key: str | list[str] | None = None,
            pure: bool = True, retries: int = 0, priority: int = 0, workers: Any = None,
            allow_other_workers: bool = False,
            resources: dict[str, float] | None = None) -> list[Future]:
        """One task per element (zipped like builtin ``map``); a list of Futures.

        ``key`` is a list of keys, one per element, or a prefix for them.

        >>> xs = ex.map(inc, range(10))            # doctest: +SKIP
        >>> ex.gather(xs)                          # doctest: +SKIP
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
        """
        self._check_open()
        check_callable("map", fn)
        if not iterables:
            raise TypeError("map needs at least one iterable")
        check_task_options(retries, priority, workers, resources)
        argument_lists = list(zip(*iterables))
        keys = map_keys(key, len(argument_lists))
        tasks, futures = [], []
        function = serialize.dumps_function(fn, Future)  # once for all the tasks
        place = placement(workers, allow_other_workers, resources)
        for args, task_key in zip(argument_lists, keys):
            item, frames = self._task(fn, args, {}, task_key, pure, retries, priority, place,
                                      prefix=key if isinstance(key, str) else None,
                                      function=function)
            future = Future(item.key, self)
            tasks.append((item, frames, future))
            futures.append(future)
        self._io.call("submit", tasks)
        return futures

    def _task(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
              key: str | None, pure: bool, retries: int, priority: int, place: Placement,
              prefix: str | None = None, function: serialize.PickledFunction | None = None
              ) -> tuple[TaskItem, list[Any]]:
        frames, deps = serialize.dumps_task(fn, args, kwargs, Future, function)
        self._check_size(frames)
        if key is None:
            token = serialize.token(frames) if pure else serialize.unique_token()
            key = f"{prefix or _funcname(fn)}-{token}"
        elif not isinstance(key, str):
            raise TypeError(f"key must be a string, not {type(key).__name__}")
        return TaskItem(key, deps, priority, len(frames), retries, *place), frames

    def _check_size(self, frames: list[Any]) -> None:
        """Refuse, here and now, a call the center would refuse to receive."""
        check_size(frames, self._io.core.max_message_size)

    # ------------------------------------------------------------------ results

    def gather(self, futures: Any, errors: str = "raise", timeout: float | None = None) -> Any:
        """The same structure with every Future replaced by its result.

        ``errors="skip"`` leaves out futures whose task failed.

        >>> ex.gather({"a": ex.submit(inc, 1), "b": [ex.submit(inc, 2)]})   # doctest: +SKIP
        {'a': 2, 'b': [3]}
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
        found: list[Future] = []
        _walk_futures(futures, found)
        deadline = None if timeout is None else time.monotonic() + timeout
        context.secede()  # inside a task, waiting gives the thread slot back
        not_done = _wait_all(found, timeout)
        if not_done:
            raise concurrent.futures.TimeoutError(
                f"{not_done} of {len(found)} futures not done after {timeout}s")
        values: dict[str, Any] = {}
        to_fetch = []
        left_out: set[int] = set()
        for future in found:
            # Each future on its own: one cancelled among others of its key
            # is cancelled alone.
            if future.cancelled() or future._exception is not None or \
                    future._lost is not None and future._result is REMOTE:  # (all done here)
                if errors == "raise":
                    try:
                        future.result(0)  # the task's exception, CancelledError, or
                    except BaseException:  # FutureLostError (its data is gone)
                        # The exception stays with its future, and its traceback
                        # keeps this frame: let it hold none of the caller's futures.
                        del futures, found, values, future
                        raise
                left_out.add(id(future))
                continue
            if future.key in values:
                continue
            cached = future._result
            if cached is not REMOTE:
                values[future.key] = cached
            else:
                to_fetch.append(future.key)
        if to_fetch:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.update(self._fetch_values(to_fetch, remaining, skip_failed=errors == "skip"))
        return _substitute(futures, values, left_out)

    def _fetch_values(self, keys: list[str], timeout: float | None,
                      skip_failed: bool = False) -> dict[str, Any]:
        """Fetch the values of finished keys straight from the workers; a key
        whose value cannot be had (lost, or it fails to load) raises its error,
        or is left out with ``skip_failed``."""
        self._check_open()
        result: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        self._io.call("fetch", list(dict.fromkeys(keys)), result, skip_failed)
        try:
            frames_by_key = self._io.wait(result, timeout)
        except concurrent.futures.TimeoutError:
            self._io.call("forget_fetch", result)  # (its requests need not be kept)
            raise
        return load_values(frames_by_key, skip_failed)

    def scatter(self, data: Any, workers: Any = None, broadcast: bool = False,
                timeout: float | None = None) -> Any:
        """Put local data on workers; return a Future for it (a list or dict of them
        for a list or dict).

        Keys are a deterministic token of the data, so scattering the same data
        twice gives the same key. ``workers`` limits where it goes;
        ``broadcast=True`` puts a copy on every (chosen) worker. It waits as
        long as the copies take, or ``timeout`` seconds if given
        (``concurrent.futures.TimeoutError``).

        >>> [a, b] = ex.scatter([np.arange(10), np.ones(10)])   # doctest: +SKIP
        >>> ex.submit(np.add, a, b).result()                      # doctest: +SKIP
        array([ 1.,  2.,  3.,  4.,  5.,  6.,  7.,  8.,  9., 10.])
        """
        self._check_open()
        if isinstance(data, (list, tuple, dict)) and not data:
            return type(data)()
        values = list(data.values() if isinstance(data, dict) else
                      data if isinstance(data, (list, tuple)) else [data])
        targets = self._worker_addresses(workers)
        if not targets:
            raise RuntimeError("no workers to scatter to: the cluster has none yet")
        plan, keys = scatter_plan(values, targets, broadcast)
        futures = [Future(key, self) for key in keys]
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._io.call("scatter", plan, futures, done)
        self._io.wait(done, timeout)
        if isinstance(data, dict):
            return dict(zip(data, futures))
        if isinstance(data, (list, tuple)):
            return type(data)(futures)
        return futures[0]

    def cancel(self, futures: Any) -> None:
        """``future.cancel()`` for each of ``futures`` (nested like gather's).

        Each future given is cancelled, unless it finished already; the
        cluster drops a task once no future (of any client) and no pending
        task wants its key.

        >>> x = ex.submit(slow, 1)      # doctest: +SKIP
        >>> ex.cancel([x]); x.status    # doctest: +SKIP
        'cancelled'
        """
        found: list[Future] = []
        _walk_futures(futures if not isinstance(futures, Future) else [futures], found)
        for future in found:
            future.cancel()

    def run(self, fn: Callable[..., Any], *args: Any, workers: Any = None,
            timeout: float | None = None, **kwargs: Any) -> dict[str, Any]:
        """Run ``fn(*args, **kwargs)`` now on every (or the named) worker.

        Outside the task graph: nothing is scheduled or kept. Returns
        ``{worker address: result}``; a call that raised re-raises here. It
        waits as long as the calls run, or ``timeout`` seconds if given
        (``concurrent.futures.TimeoutError``); a worker that leaves before
        it answers raises :class:`zfutures.ConnectionError`.

        >>> ex.run(os.getpid)                      # doctest: +SKIP
        {'tcp://127.0.0.1:40405': 5141, 'tcp://127.0.0.1:35797': 5143}
        """
        self._check_open()
        check_callable("run", fn)
        frames = serialize.dumps((fn, args, kwargs))
        addresses = self._worker_addresses(workers)
        done: concurrent.futures.Future[dict[str, tuple[bool, list[Any]]]] = \
            concurrent.futures.Future()
        self._io.call("run", addresses, frames, done)
        outcomes = self._io.wait(done, timeout)
        results = {}
        for address in addresses:
            ok, out = outcomes[address]
            if not ok:
                raise remote_exception(out)
            results[address] = serialize.loads(out)
        return results

    def _worker_addresses(self, workers: Any) -> list[str]:
        """Addresses of the named workers (addresses or names), or of all workers."""
        return chosen_workers(self.scheduler_info()["workers"], workers)

    def who_has(self, futures: Any = None) -> dict[str, list[str]]:
        """Which workers hold each key (the keys of ``futures``, or all of ours)."""
        if futures is None:
            keys = list(self._io.keys)
        else:
            found: list[Future] = []
            _walk_futures(futures if not isinstance(futures, Future) else [futures], found)
            keys = [f.key for f in found]
        who_has: dict[str, list[str]] = self._io.request(WhoHas, keys=keys)
        return who_has

    def scheduler_info(self) -> dict[str, Any]:
        """The center's view of the cluster: workers and task counts by state."""
        self._check_open()
        info: dict[str, Any] = self._io.request(SchedulerInfo)
        return info

    def has_what(self) -> dict[str, list[str]]:
        """The keys each worker holds (every worker, empty ones too)."""
        self._check_open()
        has_what: dict[str, list[str]] = self._io.request(HasWhat)
        return has_what

    def nthreads(self) -> dict[str, int]:
        """The number of task threads of each worker."""
        return {address: w["nthreads"] for address, w in self.scheduler_info()["workers"].items()}

    # ------------------------------------------------------------------ life cycle

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Release this client's keys and stop an owned local cluster.

        With ``wait`` (and without ``cancel_futures``), first wait for this
        client's pending futures to finish, as ``concurrent.futures`` does.
        Futures still pending after that are cancelled.
        """
        if self._closed:
            return
        if wait and not cancel_futures:
            pending: concurrent.futures.Future[list[Future]] = concurrent.futures.Future()
            self._io.call("pending", pending)  # (after the submits made so far)
            concurrent.futures.wait(self._io.wait(pending))
        self._closed = True
        self._finalizer()

    close = shutdown

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Executor was shut down; create a new one")
        if self._io.failed:
            raise RuntimeError("this Executor's connection failed (see the log); "
                               "create a new one")

    # ------------------------------------------------------------------ for Future
    # (what a Future needs from its owner: see future.FutureOwner)

    def _unref(self, key: str) -> None:
        if not self._closed:
            self._io.call_later("unref", key)

    def _await_direct(self, future: Future, timeout: float | None) -> None:
        self._io.await_direct(future, timeout)

    def _watch(self, future: Future) -> None:
        self._io.watch(future)

    def _hold(self, future: Future) -> None:
        self._io.call("hold", future)

    def _run_callback(self, fn: Callable[[Future], object], future: Future) -> None:
        """Run a done-callback on the callback thread, never on the I/O thread."""
        if self._callbacks is None:
            self._callbacks = queue.SimpleQueue()
            threading.Thread(target=_callback_thread, args=(self._callbacks,),
                             name="zfutures-callbacks", daemon=True).start()
        self._callbacks.put((fn, future))


#: Executors opened in this process, oldest first (weakly: see latest_executor).
_opened: list[weakref.ref[Executor]] = []


def latest_executor() -> Executor | None:
    """The Executor opened last in this process that is still open, if any:
    whose cluster ``performance_report`` reports on when not told."""
    while _opened:
        executor = _opened[-1]()
        if executor is not None and not executor._closed:
            return executor
        _opened.pop()
    return None


def get_executor(timeout: float = 10) -> Executor:
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
    worker = context.current_worker()
    if worker is None:
        raise RuntimeError("get_executor() works only inside a task running on a worker")
    with _task_executor_lock:
        executor: Executor | None = worker.executor
        if executor is None:
            executor = worker.executor = Executor(worker.center_address, timeout=timeout,
                                                  name=f"tasks-of-{worker.name}")
        return executor


#: One executor per worker for its tasks (see get_executor), made by the first.
_task_executor_lock = threading.Lock()


def _callback_thread(callbacks: queue.SimpleQueue[_Callback]) -> None:
    while True:
        fn, future = callbacks.get()
        try:
            fn(future)
        except Exception:
            logger.exception("exception calling callback for %r", future)
        del fn, future  # hold no future while waiting: it would keep its key alive


def _close(io: ClientIO, cluster: Any) -> None:
    io.stop()
    if cluster is not None:
        cluster.close()
