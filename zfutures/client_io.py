"""The client's I/O: an Executor's sockets, thread and lock around its core.

What the client knows and decides lives in :class:`~zfutures.client_state.ClientCore`,
which owns no socket. This module and :mod:`zfutures.client_loop` move bytes
between it and the cluster::

    user threads                       ClientIO                          cluster
    ────────────                       ────────                          ───────
    submit, map ──▶ commands ──┐
    fetch, scatter, run, rpc   │  (the holder of ``lock``: the I/O
    unref (dropped futures)    │   thread, or a caller doing a turn)
                               ▼
                    ClientCore.<command>(now) ── to_center ──▶ DEALER ──▶ center
                    ClientCore.center_message ◀──── decode ◀── DEALER ◀── center
                    ClientCore.worker_message ◀──── decode ◀── DEALERs ◀─ workers
                               │         └────── to_workers ──▶ DEALERs ─▶ workers
                               ▼
                    futures finished ──▶ the callers waiting on them

One thread at a time owns the sockets and the core: the one holding
:attr:`ClientIO.lock`. User threads put commands on a queue and wake the I/O
thread (:meth:`ClientIO.call`), or, for a submit, do the work themselves
when no other thread is at it (:meth:`ClientIO.call_now`); a caller waiting
for the answer of a task sent straight to a worker reads that worker's
socket itself (:meth:`ClientIO.await_direct`). The I/O thread waits on the
sockets' file descriptors, not on the sockets, so it holds nothing while it
waits. What the holder of the lock does, and the I/O thread, are
:class:`~zfutures.client_loop.ClientLoop`'s; this module is the callers' side.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any, Callable

from .client_direct import may_go_direct
from .client_loop import ALIVE_CHECK, ClientLoop, Socket
from .client_outbox import RELEASE_DELAY, SUBMIT_BATCH
from .client_records import PENDING, KeyRecord
from .client_state import ClientCore
from .errors import ConnectionError
from .future import Future
from .messages import TaskItem
from .protocol import Frames

#: How long (seconds) a caller's submit waits for the I/O thread to end its
#: turn of the loop before handing the command over instead (see call_now).
CALL_NOW_WAIT = 0.001
#: How long a caller waits on its own thread for the answer of a task sent
#: straight to a worker (see ClientIO.await_direct), before it leaves the
#: wait to the I/O thread.
PARK_LIMIT = 0.02


class ClientIO:
    """An Executor's connection to the cluster: its core, sockets and I/O thread."""

    def __init__(self, address: str, name: str, *, heartbeat_interval: float = 0.5,
                 fetch_timeout: float = 10.0, reconnect_deadline: float = 30.0,
                 security: Any = None):
        self.address = address
        self.core = ClientCore(name, fetch_timeout=fetch_timeout,
                               heartbeat_interval=heartbeat_interval,
                               reconnect_deadline=reconnect_deadline, now=time.monotonic())
        self.loop = loop = ClientLoop(self.core, heartbeat_interval=heartbeat_interval,
                                      security=security)
        # The loop's parts a caller uses (none of them is ever replaced).
        self.lock, self.commands, self.waker = loop.lock, loop.commands, loop.waker
        self.context, self.center, self.workers = loop.context, loop.center, loop.workers
        self.welcomed = loop.welcomed
        self._commands = loop.handlers
        self.thread = threading.Thread(target=loop.run, name="zfutures-client-io", daemon=True)

    @property
    def keys(self) -> dict[str, KeyRecord]:
        """The core's key records (read them only where a stale view is fine)."""
        return self.core.keys

    @property
    def failed(self) -> bool:
        """Whether no more calls will be answered (shut down, or the I/O failed)."""
        return self.core.stopped is not None or self.loop.sockets_closed

    @property
    def _parked(self) -> Socket | None:
        """The worker's socket a caller waits on itself, if any (see await_direct)."""
        return self.loop.parked

    # ------------------------------------------------------------------ start and stop

    def start(self, timeout: float) -> None:
        """Connect and register; raise ConnectionError if no welcome in ``timeout``."""
        self.center.connect(self.address)
        self.thread.start()
        self.call("register")
        if not self.welcomed.wait(timeout):
            self.stop()
            raise ConnectionError(f"no zfutures center answered at {self.address} "
                                  f"within {timeout}s")
        if self.core.refusal:
            self.stop()
            raise ConnectionError(f"the center at {self.address} refused us: "
                                  f"{self.core.refusal}")

    def stop(self, timeout: float = 5.0) -> None:
        """Say goodbye to the center and end the thread."""
        if self.thread.is_alive():
            self.call("close")
            self.thread.join(timeout)
        if not self.thread.is_alive():
            self.context.term()
            self.waker.close()

    # ------------------------------------------------------------------ commands

    def call(self, *command: Any) -> None:
        """Hand a command to the I/O thread. Safe from any thread and from ``__del__``.

        A submit of many tasks (a map) goes as several commands of
        SUBMIT_BATCH tasks: the thread's turns stay short, and its timers
        run between them.
        """
        if command[0] == "submit" and len(command[1]) > 2 * SUBMIT_BATCH:
            tasks, rest = command[1], command[2:]
            parts, start = [], 0
            while start < len(tasks):
                end = start + SUBMIT_BATCH
                if len(tasks) - end < SUBMIT_BATCH:  # (the last takes the rest:
                    end = len(tasks)                 # never one alone, see submit)
                parts.append(("submit", tasks[start:end], *rest))
                start = end
            self.loop.hand_over(*parts)
        else:
            self.loop.hand_over(command)

    def call_later(self, *command: Any) -> None:
        """Hand the I/O thread a command that may wait RELEASE_DELAY (an unref):
        it is woken for it only if it would sleep longer. Safe from any thread
        and from ``__del__``.

        Each Future dropped unrefs its key: woken for each, the I/O thread
        would take a turn per result in a loop of round trips, and compete
        with the caller's next submit for the interpreter.
        """
        self.commands.put(command)
        # (Put, then read: the I/O thread sets asleep_until, then looks at the
        # queue a last time before it sleeps, so one of the two sees the other.)
        if self.loop.asleep_until > time.monotonic() + RELEASE_DELAY:
            self.waker.wake()

    def submit(self, item: TaskItem, frames: Frames, future: Future, own_key: bool) -> None:
        """Submit one task (Executor.submit; ``own_key``: see ClientCore.submit).

        One that may go straight to a worker (see client_direct) is sent by
        this thread, if no other is at the sockets (see call_now). Others go
        to the I/O thread, which sends a burst of them in few messages.
        """
        command = ("submit", [(item, frames, future)], False, own_key)
        direct = self.core.direct
        if direct.worker is not None and not direct.in_flight() and \
                may_go_direct(item):  # (read unlocked: the core decides)
            self.call_now(*command)
        else:
            self.call(*command)

    def call_now(self, *command: Any) -> None:
        """Do a command on this thread if no other thread is at the sockets,
        else hand it to the I/O thread. Not from ``__del__`` (see :meth:`call`).

        Done here, a lone task leaves for its worker without a wakeup of the
        I/O thread: on a machine where a wakeup that crosses CPUs costs tens
        of microseconds, that is a good part of a round trip.
        """
        loop = self.loop
        self.commands.put(command)
        # The I/O thread holds the lock only for a turn of the loop, which may
        # be finishing the answer this caller just had: waiting for it costs
        # less than handing the command over.
        if not self.lock.acquire(timeout=CALL_NOW_WAIT):
            self.waker.wake()  # (its holder may have looked at the queue already)
            return
        self._holding(self._turn)
        if loop.sockets_closed:
            loop.refuse_late()

    def _turn(self) -> None:
        """The commands queued, and what they have for the cluster (see call_now)."""
        loop = self.loop
        if not loop.stopping:
            loop.take_commands()
            loop.send_out(time.monotonic())
            loop.poke_parked()

    # ------------------------------------------------------------------ waits

    def await_direct(self, future: Future, timeout: float | None) -> None:
        """Wait for ``future`` on this thread if it is a task's that went
        straight to a worker: read the worker's answer here. Returns when the
        future is done, or after PARK_LIMIT (or ``timeout``), the wait then
        left to the I/O thread (as for any other future).

        Read by the I/O thread, the answer would reach the caller only after
        that thread's wakeup, its turn, and the caller's wakeup: on a machine
        where a wakeup that crosses CPUs costs tens of microseconds, a good
        part of a round trip. The caller waits on that worker's socket alone
        (the I/O thread leaves it out of its own wait meanwhile), and takes
        the lock only to read it.
        """
        info = self.core.direct.pending
        if info is None or info.key != future.key or \
                not self.lock.acquire(timeout=CALL_NOW_WAIT):
            return
        self._holding(self._read_direct, future, info, timeout)

    def _read_direct(self, future: Future, info: KeyRecord, timeout: float | None) -> None:
        """Read the answer for ``info`` on its worker's socket (see await_direct)."""
        loop = self.loop
        parked = loop.park(info)
        if parked is None:
            return
        sock, address = parked
        try:
            end = time.monotonic() + (PARK_LIMIT if timeout is None else min(timeout, PARK_LIMIT))
            poll = loop.park_poll_of(sock)
            while True:
                if loop.park_waker.pending:
                    loop.park_waker.drain()
                if not loop.stopping and self.workers.get(address) is sock:
                    loop.drain_worker(address, sock)
                    if self.core.to_workers or self.core.to_center:
                        loop.send_out(time.monotonic())
                left = end - time.monotonic()
                if future.done() or info.status != PENDING or info.direct is None or \
                        loop.stopping or self.workers.get(address) is not sock or left <= 0:
                    break
                self.lock.release()
                try:
                    poll.poll(1000 * left)
                finally:
                    self.lock.acquire()
        finally:
            loop.unpark(sock, address)

    def _holding(self, work: Callable[..., None], *args: Any) -> None:
        """``work(*args)`` by a caller that took :attr:`lock`, which is then left:
        the I/O thread is woken if it must be (see ClientLoop.must_wake), or
        if the I/O stops, to end at once."""
        loop, wake = self.loop, True
        try:
            work(*args)
            wake = loop.stopping or loop.must_wake()
        except Exception:  # as on the I/O thread: no user call may hang on it
            loop.give_up()
        finally:
            self.lock.release()
            if wake:  # (also after an interrupt: the loop may have a socket to take back)
                self.waker.wake()

    def watch(self, future: Future) -> None:
        """Someone waits for ``future`` other than by ``result()`` (a callback,
        ``concurrent.futures.wait``): if it is the task sent straight to a
        worker, the I/O thread must read its answer, and may have left that
        worker's socket out of its wait (see await_direct). Safe from any thread."""
        pending = self.core.direct.pending
        if pending is not None and pending.key == future.key:
            self.waker.wake()  # (a turn makes it wait on every socket no one else does)

    def request(self, cls: type, timeout: float | None = None, **fields: Any) -> Any:
        """Ask the center something (a message of class ``cls``, with ``fields``:
        the core adds its id) and wait for the answer."""
        result: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.call("rpc", cls, fields, result)
        return self.wait(result, timeout)

    def wait(self, result: concurrent.futures.Future[Any], timeout: float | None = None) -> Any:
        """Wait for an answer, up to ``timeout`` seconds if given.

        Without a bound of the caller's, the wait lasts as long as the work:
        the core ends it with an error when its peer goes (a worker that
        leaves, a center silent past the reconnect deadline, a shutdown), and
        it ends with ConnectionError if the I/O thread itself is gone.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = ALIVE_CHECK if deadline is None else min(ALIVE_CHECK,
                                                            deadline - time.monotonic())
            try:
                return result.result(max(0.0, left))
            except concurrent.futures.TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                if not self.thread.is_alive():
                    raise ConnectionError("the client's I/O thread has ended") from None
