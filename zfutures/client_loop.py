"""The client's sockets, and a turn of its loop: what the holder of the lock does.

:class:`ClientLoop` owns the DEALER to the center, the DEALERs to workers'
data servers (made on first use) and the core (:mod:`zfutures.client_state`);
whoever holds :attr:`ClientLoop.lock` may use them: the I/O thread
(:meth:`ClientLoop.run`), or a caller doing the work itself (see
:mod:`zfutures.client_io`). A turn (:meth:`ClientLoop.pump`) does the
commands queued, hands the sockets' messages to the core, lets time pass in
it, and sends what it has for the cluster.

A caller waiting for the answer of a task sent straight to a worker may read
that worker's socket itself: it *parks* on it (:meth:`ClientLoop.park`), and
the I/O thread leaves that socket out of its own wait meanwhile.
"""
from __future__ import annotations

import logging
import queue
import select
import threading
import time
import uuid
from typing import Any, Callable

import zmq

from . import peer_memory
from .addressing import configure, peer_endpoint
from .client_outbox import RELEASE_DELAY
from .client_records import PENDING, KeyRecord
from .client_state import ClientCore
from .errors import ConnectionError
from .logs import RateLimitedLog
from .loop import EVENTS, POLLIN, SLICE, Waker, drain, send
from .messages import Data, DataRead, RunTask, WorkersLeft, op_of
from .protocol import decode_message, encode_message

logger = logging.getLogger(__name__)
dropped = RateLimitedLog(logger)

#: Rounds of commands, messages and output in one turn of the loop, after
#: which a user thread doing the turn (ClientIO.call_now) leaves the rest to
#: the I/O thread.
PUMP_ROUNDS = 8
#: How long (seconds) a caller waits for the lock before it leaves commands
#: that came after the I/O thread ended unanswered (see refuse_late); and how
#: often a caller waiting without a bound looks whether that thread still runs.
ALIVE_CHECK = 1.0

Socket = zmq.Socket[bytes]


class ClientLoop:
    """The sockets and the core, and the turns of the loop over them."""

    def __init__(self, core: ClientCore, *, heartbeat_interval: float, security: Any):
        self.core = core
        self.heartbeat_interval = heartbeat_interval
        self.security = security
        self.lock = threading.Lock()  # (see the module's docstring)
        self.commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.waker = Waker()  # wakes the I/O thread
        self.welcomed = threading.Event()
        self.context = zmq.Context()
        self.center: Socket = configure(self.context.socket(zmq.DEALER), security)
        self.center.setsockopt(zmq.ROUTING_ID, b"c-" + uuid.uuid4().hex.encode())
        self.workers: dict[str, Socket] = {}
        # The file descriptors that signal news on each socket.
        self.descriptors: dict[Socket, int] = {self.center: self.center.FD}
        # A socket came or went since the I/O thread last looked: it must wait
        # on the new one, and not on a closed descriptor.
        self.sockets_changed = True
        self.stopping = False
        self.sockets_closed = False  # (by the I/O thread as it ended)
        self.asleep_until = 0.0  # when the I/O thread wakes, if nothing happens
        # A caller waiting for the answer of a task sent straight to a worker
        # reads it itself (see ClientIO.await_direct): the socket it waits on,
        # which the I/O thread leaves alone meanwhile, with the task's record
        # and the wait's poll object; a pipe that tells it to look again; and
        # the socket the I/O thread's own poll leaves out (the one parked on
        # at its last turn).
        self.parked: Socket | None = None
        self.parked_info: KeyRecord | None = None
        self.park_poll: tuple[Socket | None, Any] = (None, None)
        self.park_waker = Waker()
        self.poll_skips: Socket | None = None
        self.reader = peer_memory.Reader()  # reads what workers on this machine offer
        # Commands (see ClientIO.call): name -> what the core does with them.
        self.handlers: dict[str, Callable[..., Any]] = {
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
            "offered_read": lambda address, msg, outcome: core.offered_read(
                address, msg, outcome, time.monotonic()),
            "close": self.close,
        }

    # ------------------------------------------------------------------ the I/O thread

    def run(self) -> None:
        """The I/O thread: turns of the loop, and waits on the sockets between them."""
        poll = select.poll()
        try:
            while True:
                with self.lock:
                    if self.stopping:
                        break
                    more = self.pump()
                    if self.stopping:
                        break
                    timeout = 0.0 if more else self.heartbeat_interval
                    now = time.monotonic()
                    due = self.core.next_due()
                    if due is not None:
                        timeout = min(timeout, max(0.0, due - now))
                    self.asleep_until = now + timeout
                    if not self.commands.empty():  # (see ClientIO.call_later)
                        timeout = 0.0
                    parked = self.parked
                    if self.sockets_changed or self.poll_skips is not parked:
                        self.sockets_changed = False
                        self.poll_skips = parked
                        poll = select.poll()
                        poll.register(self.waker.read_fd, select.POLLIN)
                        for sock, fd in self.descriptors.items():
                            if sock is not parked:
                                poll.register(fd, select.POLLIN)
                    self.poke_parked()
                # No zmq call while waiting: another thread may use the sockets.
                poll.poll(1000 * timeout)
        except BaseException:  # a bug here must not leave user calls hanging
            with self.lock:
                self.give_up()
        finally:
            self.reader.stop()  # (before the waker closes: it wakes this thread)
            with self.lock:
                self.stopping = True
                for sock in [self.center, *self.workers.values()]:
                    if sock is self.parked:  # (its caller closes it: see unpark)
                        self.park_waker.wake()
                    else:
                        sock.close(linger=0)
                if self.parked is None:
                    self.park_waker.close()
                # Set before the queue is looked at a last time: a caller that
                # queues a command and then finds it unset knows this thread
                # takes it (see ClientIO.call).
                self.sockets_closed = True
                if self.core.stopped is None:
                    self.core.stop(ConnectionError("the client I/O ended"), time.monotonic())
                self.take_commands()

    def give_up(self) -> None:
        """A bug in a turn of the loop (by the holder of the lock, in an except
        block): every wait ends with an error, and the I/O stops."""
        logger.exception("the zfutures client I/O failed")
        self.core.stop(ConnectionError("the client I/O failed; see the log"), time.monotonic())
        self.stopping = True

    def close(self) -> None:
        now = time.monotonic()
        self.core.close(now)
        self.send_out(now)
        self.stopping = True

    def hand_over(self, *commands: tuple[Any, ...]) -> None:
        """Queue commands for the holder of the lock, and wake the I/O thread to
        do them. Safe from any thread and from ``__del__``."""
        for command in commands:
            self.commands.put(command)
        self.waker.wake()
        if self.sockets_closed:  # (the thread ended: see run)
            self.refuse_late()

    def refuse_late(self) -> None:
        """Commands that came after the I/O thread ended: the core, stopped,
        ends them at once (cancelled futures, errors for waits)."""
        if not self.lock.acquire(timeout=ALIVE_CHECK):
            return
        try:
            self.take_commands()
            self.core.to_center.clear()
            self.core.to_workers.clear()
        finally:
            self.lock.release()

    # ------------------------------------------------------------------ a turn

    def pump(self) -> bool:
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
            self.take_commands(time.monotonic() + SLICE)
            # Workers first: a direct task's answer, which carries its value,
            # must not be overtaken by the center's word of it, which does not.
            # (Not the one a caller waits on: see ClientIO.await_direct.)
            parked = self.parked
            until = time.monotonic() + SLICE
            for address, sock in list(self.workers.items()):
                if sock is not parked:
                    self.drain_worker(address, sock, until)
            drain(self.center, self.on_center_message, dropped, until=time.monotonic() + SLICE)
            now = time.monotonic()
            core.tick(now)
            self.send_out(now)
            if self.stopping:
                return False
            # (sending can take in news the descriptors will not signal)
            if self.commands.empty() and not self.news(parked):
                return False
        return True

    def take_commands(self, until: float | None = None) -> None:
        """Do the commands queued, all of them, or those begun before ``until``."""
        commands, handlers = self.commands, self.handlers
        while True:
            try:
                command = commands.get_nowait()
            except queue.Empty:
                return
            handlers[command[0]](*command[1:])
            if until is not None and time.monotonic() >= until:
                return

    def news(self, skip: Socket | None) -> bool:
        """Whether a socket but ``skip`` has news its descriptor may not signal."""
        return any(sock.getsockopt(EVENTS) & POLLIN  # type: ignore[operator]
                   for sock in self.descriptors if sock is not skip)

    # ------------------------------------------------------------------ output

    def send_out(self, now: float) -> None:
        """Send what the core has for workers and for the center, and start
        reads of what workers on this machine offered."""
        core = self.core
        if core.to_workers:
            for address, msg, frames in _take(core.to_workers):
                kind = type(msg)
                # (a data-read goes only to a worker still connected: one that
                # left took its leases along)
                sock = self.workers.get(address) if kind is DataRead else self.worker(address)
                if sock is None:
                    continue
                sent = self.to_worker(sock, encode_message(msg, frames),
                                      f"{op_of(msg)} to {address}")
                if not sent and kind is RunTask:
                    core.direct.unsent(msg.key)
        core.flush(now)
        if core.to_center:
            for msg, frames in _take(core.to_center):
                send(self.center, encode_message(msg, frames), dropped,
                     f"{op_of(msg)!r} to the center")
            core.sent(now)
        if core.to_read:
            for address, msg, frames, sent_at in _take(core.to_read):
                self.reader.read(msg, frames, sent_at, self._read_by(address, msg))

    def _read_by(self, address: str, msg: Data) -> Callable[[Any], None]:
        """What the reader thread does with the outcome of a read: a command."""
        return lambda outcome: self.hand_over(("offered_read", address, msg, outcome))

    def to_worker(self, sock: Socket, frames: list[Any], what: str) -> bool:
        """Send ``frames`` to a worker (see loop.send)."""
        sent = send(sock, frames, dropped, what)
        if sock is self.parked:  # (sending may take in news its descriptor then
            self.park_waker.wake()  # does not signal: the caller must look)
        return sent

    def worker(self, address: str) -> Socket:
        """The socket to ``address``, connected on first use."""
        sock = self.workers.get(address)
        if sock is None:
            sock = self.workers[address] = configure(self.context.socket(zmq.DEALER),
                                                     self.security)
            sock.connect(peer_endpoint(address))
            self.descriptors[sock] = sock.FD
            self.sockets_changed = True
        return sock

    # ------------------------------------------------------------------ input

    def drain_worker(self, address: str, sock: Socket, until: float | None = None) -> None:
        """Handle what worker ``address`` sent on ``sock`` (see loop.drain)."""
        drain(sock, lambda frames: self.on_worker_message(address, frames), dropped,
              until=until)

    def on_worker_message(self, address: str, frames: list[Any]) -> None:
        msg, payload = decode_message(frames)
        self.core.worker_message(address, msg, payload, time.monotonic())

    def on_center_message(self, frames: list[Any]) -> None:
        msg, payload = decode_message(frames)
        if type(msg) is WorkersLeft:
            for address in msg.addresses:
                self.forget_worker(address)
        self.core.center_message(msg, payload, time.monotonic())
        if self.core.welcomed and not self.welcomed.is_set():  # (set takes a lock)
            self.welcomed.set()

    def forget_worker(self, address: str) -> None:
        """A worker left: take what it answered before it went, then close its socket."""
        sock = self.workers.pop(address, None)
        if sock is None:
            return
        self.drain_worker(address, sock)
        del self.descriptors[sock]
        self.sockets_changed = True
        if sock is not self.parked:  # (else its caller closes it: see unpark)
            sock.close(linger=0)

    # ------------------------------------------------------------------ a caller's own wait

    def park(self, info: KeyRecord) -> tuple[Socket, str] | None:
        """Take the wait for ``info``'s direct answer (see ClientIO.await_direct):
        its worker's socket and address, or None if there is nothing to wait
        for here."""
        direct = info.direct
        if self.stopping or self.parked is not None or info is not self.core.direct.pending \
                or info.status != PENDING or direct is None or not direct.trusted:
            return None
        sock = self.workers.get(direct.address)
        if sock is None:
            return None
        self.parked, self.parked_info = sock, info
        return sock, direct.address

    def park_poll_of(self, sock: Socket) -> Any:
        """A poll of ``sock`` and of :attr:`park_waker` (kept for the next wait)."""
        cached, poll = self.park_poll
        if cached is not sock:
            poll = select.poll()
            poll.register(self.descriptors[sock], select.POLLIN)
            poll.register(self.park_waker.read_fd, select.POLLIN)
            self.park_poll = (sock, poll)
        return poll

    def unpark(self, sock: Socket, address: str) -> None:
        self.parked = self.parked_info = None
        if self.stopping or self.workers.get(address) is not sock:
            sock.close(linger=0)  # (left to us: see forget_worker and run)
        if self.sockets_closed:
            self.park_waker.close()

    def poke_parked(self) -> None:
        """Tell the caller waiting on a worker's socket to look again if its wait
        may be over: its task finished or was let go of by another way, or its
        worker left, or we stop. (By a holder of the lock at the end of its turn.)"""
        info = self.parked_info
        if info is not None and (info.status != PENDING or info.direct is None or
                                 self.stopping):
            self.park_waker.wake()

    def must_wake(self) -> bool:
        """Whether the I/O thread, waiting, must be woken by the thread about to
        leave the lock: to wait on the sockets as they are now (one came or
        went, a caller waits on one it waits on, or the one it leaves out must
        be watched again), for news that sending took in (the descriptors will
        not signal it), or for a release, held submit or direct answer that
        would be late by more than RELEASE_DELAY."""
        if self.stopping:  # (the sockets are closed, or about to be)
            return False
        parked, skipped = self.parked, self.poll_skips
        if self.sockets_changed or parked is not None and skipped is not parked:
            return True
        core = self.core
        due = core.next_due()
        if skipped is not None and skipped is not parked:  # (no one reads that socket)
            address = self._address_of(skipped)
            if address is not None and core.awaits_worker(address):
                return True
            if core.direct.in_flight() and (due is None or core.direct.due < due):
                due = core.direct.due
        if due is not None and due + RELEASE_DELAY < self.asleep_until:
            return True
        return self.news(parked)

    def _address_of(self, sock: Socket) -> str | None:
        for address, worker in self.workers.items():
            if worker is sock:
                return address
        return None


def _take(output: list[Any]) -> list[Any]:
    """What the core put in one of its outputs, which is left empty (the core's
    parts keep appending to that same list)."""
    taken = output[:]
    output.clear()
    return taken
