"""The client's I/O: an Executor's sockets, thread and lock around its core.

What the client knows and decides lives in :class:`~zfutures.client_state.ClientCore`,
which owns no socket. This module moves bytes between it and the cluster::

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
waits.
"""
from __future__ import annotations

import concurrent.futures
import logging
import queue
import select
import threading
import time
import uuid
from typing import Any, TypeVar

import zmq

from . import peer_memory, protocol
from .addressing import configure, peer_endpoint
from .client_direct import may_go_direct
from .client_outbox import RELEASE_DELAY, SUBMIT_BATCH
from .client_records import PENDING, KeyRecord
from .client_state import ClientCore
from .errors import ConnectionError
from .logs import RateLimitedLog
from .loop import EVENTS, POLLIN, SLICE, Waker, drain, send

logger = logging.getLogger(__name__)
dropped = RateLimitedLog(logger)
_T = TypeVar("_T")

#: How long (seconds) a caller's submit waits for the I/O thread to end its
#: turn of the loop before handing the command over instead (see call_now).
CALL_NOW_WAIT = 0.001
#: Rounds of commands, messages and output in one turn of the loop, after
#: which a user thread doing the turn (call_now) leaves the rest to the I/O
#: thread.
PUMP_ROUNDS = 8
#: How long a caller waits on its own thread for the answer of a task sent
#: straight to a worker (see ClientIO.await_direct), before it leaves the
#: wait to the I/O thread.
PARK_LIMIT = 0.02
#: How often (seconds) a caller waiting without a bound looks whether the
#: I/O thread still runs: every answer's failure paths end the wait, but a
#: thread that died of a bug would leave it hanging.
ALIVE_CHECK = 1.0


class ClientIO:
    """Owns the DEALER to the center, the DEALERs to workers' data servers, and the core."""

    def __init__(self, address: str, name: str, *, heartbeat_interval: float = 0.5,
                 fetch_timeout: float = 10.0, reconnect_deadline: float = 30.0,
                 security: Any = None):
        self.address = address
        self.name = name
        self.reconnect_deadline = reconnect_deadline
        self.core = ClientCore(name, fetch_timeout=fetch_timeout,
                               heartbeat_interval=heartbeat_interval,
                               reconnect_deadline=reconnect_deadline, now=time.monotonic())
        self.heartbeat_interval = heartbeat_interval
        self.context = zmq.Context()
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.waker = Waker()
        self.welcomed = threading.Event()
        self.workers: dict[str, zmq.Socket] = {}
        self._stopping = False
        self.security = security
        self.center = configure(self.context.socket(zmq.DEALER), security)
        self.center.setsockopt(zmq.ROUTING_ID, b"c-" + uuid.uuid4().hex.encode())
        # The owner of the sockets and the core (see the module's docstring),
        # and the file descriptors that signal news on each socket.
        self.lock = threading.Lock()
        self._descriptors: dict[zmq.Socket, int] = {self.center: self.center.FD}
        self._asleep_until = 0.0  # when the I/O thread wakes, if nothing happens
        # A socket came or went since the I/O thread last looked: it must wait
        # on the new one, and not on a closed descriptor.
        self._sockets_changed = True
        # A caller waiting for the answer of a task sent straight to a worker
        # reads it itself (see await_direct): the socket it waits on, which
        # the I/O thread leaves alone meanwhile, with the task's key and the
        # wait's poll object; a pipe that tells it to look again; and the
        # socket the I/O thread's own poll leaves out (the one parked on at
        # its last turn).
        self._parked: zmq.Socket | None = None
        self._parked_info: KeyRecord | None = None
        self._park_poll: tuple[zmq.Socket | None, Any] = (None, None)
        self._park_waker = Waker()
        self._poll_skips: zmq.Socket | None = None
        self._sockets_closed = False  # (by the I/O thread as it ended)
        self.reader = peer_memory.Reader()  # reads what workers on this machine offer
        self.thread = threading.Thread(target=self._run, name="zfutures-client-io", daemon=True)
        core = self.core
        # Commands (see call): name -> what the core does with them.
        self._commands = {
            "register": lambda: core.register(),
            "submit": lambda tasks, eager=False, own_key=False: core.submit(
                tasks, time.monotonic(), eager, own_key),
            "ref": core.ref,
            "hold": core.hold,
            "unref": lambda key: core.unref(key, time.monotonic()),
            "fetch": lambda keys, result, each=False: core.fetch(keys, result,
                                                                 time.monotonic(), each),
            "forget_fetch": core.forget_fetch,
            "scatter": lambda plan, futures, result: core.scatter(plan, futures, result,
                                                                  time.monotonic()),
            "run": lambda addresses, frames, result: core.run(addresses, frames, result,
                                                              time.monotonic()),
            "rpc": core.rpc,
            "sync": lambda done: done.set_result(None),
            "pending": lambda done: done.set_result(core.pending_futures()),
            "offered_read": lambda address, header, outcome: core.offered_read(
                address, header, outcome, time.monotonic()),
            "close": self._close,
        }

    @property
    def keys(self) -> dict[str, KeyRecord]:
        """The core's key records (read them only where a stale view is fine)."""
        return self.core.keys

    @property
    def failed(self) -> bool:
        """Whether no more calls will be answered (shut down, or the I/O failed)."""
        return self.core.stopped is not None or self._sockets_closed

    # ------------------------------------------------------------------ user-thread side

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

    def call(self, *command: Any) -> None:
        """Hand a command to the I/O thread. Safe from any thread and from ``__del__``.

        A submit of many tasks (a map) goes as several commands of
        SUBMIT_BATCH tasks: the thread's turns stay short, and its timers
        run between them.
        """
        if command[0] == "submit" and len(command[1]) > 2 * SUBMIT_BATCH:
            tasks, rest = command[1], command[2:]
            start = 0
            while start < len(tasks):
                end = start + SUBMIT_BATCH
                if len(tasks) - end < SUBMIT_BATCH:  # (the last takes the rest:
                    end = len(tasks)                 # never one alone, see submit)
                self.commands.put(("submit", tasks[start:end], *rest))
                start = end
        else:
            self.commands.put(command)
        self.waker.wake()
        if self._sockets_closed:  # (the thread ended: see _run)
            self._refuse_late()

    def call_later(self, *command: Any) -> None:
        """Hand the I/O thread a command that may wait RELEASE_DELAY (an unref):
        it is woken for it only if it would sleep longer. Safe from any thread
        and from ``__del__``.

        Each Future dropped unrefs its key: woken for each, the I/O thread
        would take a turn per result in a loop of round trips, and compete
        with the caller's next submit for the interpreter.
        """
        self.commands.put(command)
        # (Put, then read: the I/O thread sets _asleep_until, then looks at the
        # queue a last time before it sleeps, so one of the two sees the other.)
        if self._asleep_until > time.monotonic() + RELEASE_DELAY:
            self.waker.wake()

    def _refuse_late(self) -> None:
        """Commands that came after the I/O thread ended: the core, stopped,
        ends them at once (cancelled futures, errors for waits)."""
        if not self.lock.acquire(timeout=ALIVE_CHECK):
            return
        try:
            self._take_commands()
            self.core.to_center.clear()
            self.core.to_workers.clear()
        finally:
            self.lock.release()

    def submit(self, item: dict, frames: list, future: Any, own_key: bool) -> None:
        """Submit one task (Executor.submit; ``own_key``: see ClientCore.submit).

        One that may go straight to a worker (see ClientCore._send_direct) is
        sent by this thread, if no other is at the sockets (see call_now).
        Others go to the I/O thread, which sends a burst of them in few messages.
        """
        command = ("submit", [(item, frames, future)], False, own_key)
        core = self.core
        if core.direct.worker is not None and not core.direct.in_flight() and \
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
        self.commands.put(command)
        # The I/O thread holds the lock only for a turn of the loop, which may
        # be finishing the answer this caller just had: waiting for it costs
        # less than handing the command over.
        if not self.lock.acquire(timeout=CALL_NOW_WAIT):
            self.waker.wake()  # (its holder may have looked at the queue already)
            return
        wake = True
        try:
            if not self._stopping:
                self._take_commands()
                self._send_out(time.monotonic())
                self._poke_parked()
                wake = self._must_wake()
        except Exception:  # as on the I/O thread: no user call may hang on it
            self._give_up()
        finally:
            self.lock.release()
        if wake:
            self.waker.wake()
        if self._sockets_closed:
            self._refuse_late()

    def await_direct(self, future: Any, timeout: float | None) -> None:
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
        sock = None
        try:
            sock = self._park(info)
            if sock is None:
                return
            address = info.direct.address
            end = time.monotonic() + (PARK_LIMIT if timeout is None else min(timeout, PARK_LIMIT))
            cached, poll = self._park_poll
            if cached is not sock:
                poll = select.poll()
                poll.register(self._descriptors[sock], select.POLLIN)
                poll.register(self._park_waker.read_fd, select.POLLIN)
                self._park_poll = (sock, poll)
            while True:
                if self._park_waker.pending:
                    self._park_waker.drain()
                if not self._stopping and self.workers.get(address) is sock:
                    self._drain_worker(address, sock)
                    if self.core.to_workers or self.core.to_center:
                        self._send_out(time.monotonic())
                left = end - time.monotonic()
                if future.done() or info.status != PENDING or info.direct is None or \
                        self._stopping or self.workers.get(address) is not sock or left <= 0:
                    break
                self.lock.release()
                try:
                    poll.poll(1000 * left)
                finally:
                    self.lock.acquire()
        except Exception:  # as on the I/O thread: no user call may hang on it
            self._give_up()
        finally:
            if sock is not None:
                self._unpark(sock, address)
            wake = self._must_wake()
            self.lock.release()
        if wake:
            self.waker.wake()

    def _park(self, info: KeyRecord) -> zmq.Socket | None:
        """Take the wait for ``info``'s direct answer (see await_direct): its
        worker's socket, or None if there is nothing to wait for here."""
        direct = info.direct
        if self._stopping or self._parked is not None or info is not self.core.direct.pending \
                or info.status != PENDING or direct is None or not direct.trusted:
            return None
        sock = self.workers.get(direct.address)
        if sock is not None:
            self._parked, self._parked_info = sock, info
        return sock

    def _unpark(self, sock: zmq.Socket, address: str) -> None:
        self._parked = self._parked_info = None
        if self._stopping or self.workers.get(address) is not sock:
            sock.close(linger=0)  # (left to us: see _forget_worker and _run)
        if self._sockets_closed:
            self._park_waker.close()

    def watch(self, future: Any) -> None:
        """Someone waits for ``future`` other than by ``result()`` (a callback,
        ``concurrent.futures.wait``): if it is the task sent straight to a
        worker, the I/O thread must read its answer, and may have left that
        worker's socket out of its wait (see await_direct). Safe from any thread."""
        pending = self.core.direct.pending
        if pending is not None and pending.key == future.key:
            self.waker.wake()  # (a turn makes it wait on every socket no one else does)

    def _poke_parked(self) -> None:
        """Tell the caller waiting on a worker's socket to look again if its wait
        may be over: its task finished or was let go of by another way, or its
        worker left, or we stop. (By a holder of the lock at the end of its turn.)"""
        info = self._parked_info
        if info is not None and (info.status != PENDING or info.direct is None or
                                 self._stopping):
            self._park_waker.wake()

    def _must_wake(self) -> bool:
        """Whether the I/O thread, waiting, must be woken by the thread about to
        leave the lock: to wait on the sockets as they are now (one came or
        went, a caller waits on one it waits on, or the one it leaves out must
        be watched again), for news that sending took in (the descriptors will
        not signal it), or for a release, held submit or direct answer that
        would be late by more than RELEASE_DELAY."""
        if self._stopping:  # (the sockets are closed, or about to be)
            return False
        parked, skipped = self._parked, self._poll_skips
        if self._sockets_changed or parked is not None and skipped is not parked:
            return True
        core = self.core
        due = core.next_due()
        if skipped is not None and skipped is not parked:  # (no one reads that socket)
            if core.awaits_worker(self._address_of(skipped)):
                return True
            if core.direct.in_flight() and (due is None or core.direct.due < due):
                due = core.direct.due
        if due is not None and due + RELEASE_DELAY < self._asleep_until:
            return True
        return any(sock.getsockopt(EVENTS) & POLLIN
                   for sock in self._descriptors if sock is not parked)

    def _address_of(self, sock: zmq.Socket) -> str | None:
        for address, worker in self.workers.items():
            if worker is sock:
                return address
        return None

    def request(self, op: str, timeout: float | None = None, **fields: Any) -> Any:
        """Ask the center something and wait for the answer."""
        result: concurrent.futures.Future = concurrent.futures.Future()
        self.call("rpc", op, fields, result)
        return self.wait(result, timeout)

    def wait(self, result: concurrent.futures.Future, timeout: float | None = None) -> Any:
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

    def stop(self, timeout: float = 5.0) -> None:
        """Say goodbye to the center and end the thread."""
        if self.thread.is_alive():
            self.call("close")
            self.thread.join(timeout)
        if not self.thread.is_alive():
            self.context.term()
            self.waker.close()

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        poll = select.poll()
        try:
            while True:
                with self.lock:
                    if self._stopping:
                        break
                    more = self._pump()
                    if self._stopping:
                        break
                    timeout = 0.0 if more else self.heartbeat_interval
                    now = time.monotonic()
                    due = self.core.next_due()
                    if due is not None:
                        timeout = min(timeout, max(0.0, due - now))
                    self._asleep_until = now + timeout
                    if not self.commands.empty():  # (see call_later)
                        timeout = 0.0
                    parked = self._parked
                    if self._sockets_changed or self._poll_skips is not parked:
                        self._sockets_changed = False
                        self._poll_skips = parked
                        poll = select.poll()
                        poll.register(self.waker.read_fd, select.POLLIN)
                        for sock, fd in self._descriptors.items():
                            if sock is not parked:
                                poll.register(fd, select.POLLIN)
                    self._poke_parked()
                # No zmq call while waiting: another thread may use the sockets.
                poll.poll(1000 * timeout)
        except BaseException:  # a bug here must not leave user calls hanging
            with self.lock:
                self._give_up()
        finally:
            self.reader.stop()  # (before the waker closes: it wakes this thread)
            with self.lock:
                self._stopping = True
                for sock in [self.center, *self.workers.values()]:
                    if sock is self._parked:  # (its caller closes it: see _unpark)
                        self._park_waker.wake()
                    else:
                        sock.close(linger=0)
                if self._parked is None:
                    self._park_waker.close()
                # Set before the queue is looked at a last time: a caller that
                # queues a command and then finds it unset knows this thread
                # takes it (see call).
                self._sockets_closed = True
                if self.core.stopped is None:
                    self.core.stop(ConnectionError("the client I/O ended"), time.monotonic())
                self._take_commands()

    def _give_up(self) -> None:
        """A bug in a turn of the loop (by the holder of the lock, in an except
        block): every wait ends with an error, and the I/O stops."""
        logger.exception("the zfutures client I/O failed")
        self.core.stop(ConnectionError("the client I/O failed; see the log"), time.monotonic())
        self._stopping = True

    def _close(self) -> None:
        now = time.monotonic()
        self.core.close(now)
        self._send_out(now)
        self._stopping = True

    def _pump(self) -> bool:
        """A turn of the loop, by the holder of :attr:`lock`: commands, messages,
        time, output. True if news may wait still: the sockets' descriptors
        signal only new news, so the I/O thread must not sleep on them then."""
        core = self.core
        for _ in range(PUMP_ROUNDS):
            if self.waker.pending:
                self.waker.drain()
            # Each part of a round stops after SLICE seconds of work, so the
            # timers (heartbeats, the center's silence, fetch timeouts) run
            # between slices however much came at once.
            self._take_commands(time.monotonic() + SLICE)
            # Workers first: a direct task's answer, which carries its value,
            # must not be overtaken by the center's word of it, which does not.
            # (Not the one a caller waits on: see await_direct.)
            parked = self._parked
            until = time.monotonic() + SLICE
            for address, sock in list(self.workers.items()):
                if sock is not parked:
                    self._drain_worker(address, sock, until)
            drain(self.center, self._on_center_message, dropped, until=time.monotonic() + SLICE)
            now = time.monotonic()
            core.tick(now)
            self._send_out(now)
            if self._stopping:
                return False
            # (sending can take in news the descriptors will not signal)
            if self.commands.empty() and not any(
                    sock.getsockopt(EVENTS) & POLLIN
                    for sock in self._descriptors if sock is not parked):
                return False
        return True

    def _take_commands(self, until: float | None = None) -> None:
        """Do the commands queued, all of them, or those begun before ``until``."""
        commands, handlers = self.commands, self._commands
        while True:
            try:
                command = commands.get_nowait()
            except queue.Empty:
                return
            handlers[command[0]](*command[1:])
            if until is not None and time.monotonic() >= until:
                return

    # ------------------------------------------------------------------ output

    def _send_out(self, now: float) -> None:
        """Send what the core has for workers and for the center, and start
        reads of what workers on this machine offered."""
        core = self.core
        if core.to_workers:
            out = _take(core.to_workers)
            for address, op, fields, frames in out:
                if op == "get-data" or op == "data-read":
                    sock = self.workers.get(address) if op == "data-read" else \
                        self._worker(address)
                    if sock is None:  # (the worker left: its leases went with it)
                        continue
                    self._to_worker(sock, [protocol.encode_header(op, **fields)],
                                    f"{op} to {address}")
                    continue
                sent = self._to_worker(self._worker(address),
                                       protocol.encode(op, frames, **fields),
                                       f"{op} to {address}")
                if not sent and op == "run-task":
                    core.direct.unsent(fields["key"])
        core.flush(now)
        if core.to_center:
            for op, fields, frames in _take(core.to_center):
                send(self.center, protocol.encode(op, frames, **fields), dropped,
                     f"{op!r} to the center")
            core.sent(now)
        if core.to_read:
            for address, header, frames, sent_at in _take(core.to_read):
                self.reader.read(header, frames, sent_at,
                                 lambda outcome, a=address, h=header: self.call(
                                     "offered_read", a, h, outcome))

    def _to_worker(self, sock: zmq.Socket, frames: list, what: str) -> bool:
        """Send ``frames`` to a worker (see loop.send)."""
        sent = send(sock, frames, dropped, what)
        if sock is self._parked:  # (sending may take in news its descriptor then
            self._park_waker.wake()  # does not signal: the caller must look)
        return sent

    def _worker(self, address: str) -> zmq.Socket:
        sock = self.workers.get(address)
        if sock is None:
            sock = self.workers[address] = configure(self.context.socket(zmq.DEALER),
                                                     self.security)
            sock.connect(peer_endpoint(address))
            self._descriptors[sock] = sock.FD
            self._sockets_changed = True
        return sock

    # ------------------------------------------------------------------ input

    def _drain_worker(self, address: str, sock: zmq.Socket, until: float | None = None) -> None:
        """Handle what worker ``address`` sent on ``sock`` (see loop.drain)."""
        drain(sock, lambda frames: self._on_worker_message(address, frames), dropped,
              until=until)

    def _on_worker_message(self, address: str, frames: list) -> None:
        header, frames = protocol.decode(frames)
        self.core.worker_message(address, header, frames, time.monotonic())

    def _on_center_message(self, frames: list) -> None:
        header, frames = protocol.decode(frames)
        if header["op"] == "workers-left":
            for address in header["addresses"]:
                self._forget_worker(address)
        self.core.center_message(header, frames, time.monotonic())
        if self.core.welcomed and not self.welcomed.is_set():  # (set takes a lock)
            self.welcomed.set()

    def _forget_worker(self, address: str) -> None:
        """A worker left: take what it answered before it went, then close its socket."""
        sock = self.workers.pop(address, None)
        if sock is None:
            return
        self._drain_worker(address, sock)
        del self._descriptors[sock]
        self._sockets_changed = True
        if sock is not self._parked:  # (else its caller closes it: see _unpark)
            sock.close(linger=0)


def _take(output: list[_T]) -> list[_T]:
    """What the core put in one of its outputs, which is left empty (the core's
    parts keep appending to that same list)."""
    taken = output[:]
    output.clear()
    return taken
