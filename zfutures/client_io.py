"""The client's I/O: an Executor's sockets, and the state behind its Futures.

One thread at a time owns the sockets and this state: the one holding
:attr:`ClientIO.lock`. User threads put commands on a queue and wake the I/O
thread (:meth:`ClientIO.call`), or, for a submit, do the work themselves
when no other thread is at it (:meth:`ClientIO.call_now`). Either way, what
they asked for is batched into as few messages as possible; the owner
tracks how many live Futures refer to each key, resolves futures when the
center reports on their keys, and fetches results straight from the
workers that hold them. The I/O thread waits on the sockets' file
descriptors, not on the sockets, so it holds nothing while it waits.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import logging
import queue
import random
import select
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import zmq

from . import peer_memory, protocol, serialize
from .addressing import configure, peer_endpoint
from .errors import ConnectionError, FutureLostError
from .logs import RateLimitedLog
from .loop import EVENTS, POLLIN, Waker, drain, send
from .remote_errors import remote_exception

logger = logging.getLogger(__name__)
dropped = RateLimitedLog(logger)

#: Tasks per submit message: big maps go in several messages, so the center
#: interleaves other peers' messages with them.
SUBMIT_BATCH = 1000
#: Keys let go of are told to the center in one message at most this many
#: seconds later: a loop of submit().result() would otherwise cost the center
#: and the worker one more message per task.
RELEASE_DELAY = 0.01
#: A lone task's arguments up to this size (bytes) may go straight to a worker
#: (see ClientIO._send_direct); bigger ones go through the center only.
DIRECT_PAYLOAD_LIMIT = 1 << 20
#: Lone tasks go straight to a worker only after one of ours finished there
#: with a result up to this size (bytes): a loop of small calls is latency
#: bound; tasks that make big results are not, and the center spreads their
#: results across the workers, where the worker last used would gather them all.
DIRECT_AFTER_NBYTES = 16 * 1024
#: What may overtake keys waiting to be released: nothing in these names a
#: key let go of (a submit that does is sent after the release).
_UNORDERED = frozenset({"heartbeat", "submit", "release", "cancel"})

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

PENDING, FINISHED, ERRED, CANCELLED = "pending", "finished", "erred", "cancelled"


class _Key:
    """What this client knows of one key it holds futures for."""

    __slots__ = ("key", "refs", "futures", "held", "status", "who_has", "exception", "eager",
                 "nbytes", "submitted", "deps", "scattered", "direct", "since")

    def __init__(self, key: str):
        self.key = key
        self.eager = False  # fetch the value as soon as it exists, then release the key
        self.nbytes = 0
        # What to send a center that restarted: the submit item and its payload
        # frames (None for keys this client did not submit), the inputs' entries
        # while it is pending (their own submissions may be needed again), and
        # whether it is data this client scattered.
        self.submitted: tuple[dict, list] | None = None
        self.deps: list[_Key] | None = None
        self.scattered = False
        self.refs = 0
        self.futures: list[weakref.ref] = []
        # Futures kept alive until done, for their callbacks; None when there
        # are none (most keys: a list each costs the garbage collector too).
        self.held: list | None = None
        self.status = PENDING
        self.who_has: Sequence[str] = ()
        self.exception: BaseException | None = None
        # While its task, sent straight to a worker, may answer us directly
        # (see ClientIO._send_direct).
        self.direct: _Direct | None = None
        # The seq of the submit that made it (see _flush): the center's news
        # of the key stamped earlier is of a submit we let go of since.
        self.since = 0

    def hold(self, future: Any) -> None:
        if self.held is None:
            self.held = []
        self.held.append(future)

    def live_futures(self) -> list:
        alive = [f for f in (ref() for ref in self.futures) if f is not None]
        if len(alive) != len(self.futures):
            self.futures = [weakref.ref(f) for f in alive]
        return alive


class _Direct:
    """A task sent straight to a worker, whose answer is awaited."""

    __slots__ = ("address", "run", "trusted", "early")

    def __init__(self, address: str, run: int, trusted: bool):
        self.address = address
        self.run = run
        # Whether its answer may complete the futures: at once if the executor
        # made the key (the center counts every run the worker does not
        # refuse, see Scheduler._runs_direct); for a key the caller chose,
        # once the center says it counts this run (direct-accepted): the
        # center may hold that key already, from another run.
        self.trusted = trusted
        self.early: tuple[int, list] | None = None  # (nbytes, frames) come before trust


class _Gather:
    """One user request for the values of some keys."""

    __slots__ = ("result", "values", "remaining", "tried", "asked")

    def __init__(self, keys: list[str], result: concurrent.futures.Future):
        self.asked: set[str] = set()  # keys the center was asked about, since last in memory
        self.result = result
        self.values: dict[str, list] = {}
        self.remaining = set(keys)
        self.tried: dict[str, set[str]] = {key: set() for key in keys}


def _may_go_direct(item: dict) -> bool:
    """Whether a task may go straight to a worker, as far as it alone goes: no
    inputs, no placement of its own, no retries (see ClientIO._send_direct)."""
    return not item["deps"] and "workers" not in item and "resources" not in item and \
        not item.get("retries")


class ClientIO:
    """Owns the DEALER to the center and the DEALERs to workers' data servers."""

    def __init__(self, address: str, name: str, *, heartbeat_interval: float = 0.5,
                 fetch_timeout: float = 10.0, reconnect_deadline: float = 30.0,
                 security: Any = None):
        self.address = address
        self.name = name
        self.heartbeat_interval = heartbeat_interval
        self.fetch_timeout = fetch_timeout
        self.reconnect_deadline = reconnect_deadline
        self.context = zmq.Context()
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.waker = Waker()
        self.welcomed = threading.Event()
        self.refusal: str | None = None
        self.keys: dict[str, _Key] = {}
        self.gathers: dict[int, tuple[_Gather, str, list[str], float]] = {}
        # Gathers waiting for a key to be in memory again (its holders died, and
        # the center is computing it anew): key -> gathers.
        self.awaiting: dict[str, list[_Gather]] = {}
        # Requests to the center awaiting replies: id -> (result, op, fields).
        self.rpcs: dict[int, tuple[concurrent.futures.Future, str, dict]] = {}
        self._reregistering = False
        # The center's limit (learned from its welcome): larger messages would
        # cost us our connection, so submits are split below it.
        self.max_message_size = protocol.MAX_MESSAGE_SIZE
        # Requests to workers other than get-data:
        # id -> (worker address, callback(header, frames), the caller's future).
        self.worker_requests: dict[int, tuple[str, Any, concurrent.futures.Future]] = {}
        self.workers: dict[str, zmq.Socket] = {}
        # Sending a lone task straight to a worker (see _send_direct): the
        # worker that last finished one of our tasks, the key sent straight
        # and not answered yet, and run ids (from a random start, as the
        # center's: a run of ours is never taken for one of its).
        self._direct_worker: str | None = None
        self._direct_pending: _Key | None = None
        # Direct tasks' submits while queued (key -> item), and until when they
        # may wait there for the workers' answers (see _holds).
        self._unsent_direct: dict[str, dict] = {}
        self._unsent_direct_due = 0.0
        self._direct_runs = itertools.count(random.getrandbits(62))
        self.direct_answers = 0  # results that came straight from a worker
        # Eager keys finished in the message at hand (see _finished).
        self._eager_fetch: list[str] = []
        self._eager_inline: dict[str, list] = {}
        self._ids = itertools.count(1)
        self._submit_seqs = itertools.count(1)
        self._outgoing: list[list] = []  # [op, items, frames, bytes of frames]
        self._releasing: dict[str, None] = {}  # keys to release at _release_due
        self._release_due: float | None = None
        self._stopping = False
        self._last_sent = self._last_heard = time.monotonic()
        self._next_timeout_check = 0.0
        self.security = security
        self.center = configure(self.context.socket(zmq.DEALER), security)
        self.center.setsockopt(zmq.ROUTING_ID, b"c-" + uuid.uuid4().hex.encode())
        # The owner of the sockets and the state (see the module's docstring),
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
        self._parked_info: _Key | None = None
        self._park_poll: tuple[zmq.Socket | None, Any] = (None, None)
        self._park_waker = Waker()
        self._poll_skips: zmq.Socket | None = None
        self._sockets_closed = False  # (by the I/O thread as it ended)
        # When the I/O thread must wait on the socket of a task sent straight,
        # if no caller waits on it (see _must_wake).
        self._direct_due = 0.0
        self.reader = peer_memory.Reader()  # reads what workers on this machine offer
        self.thread = threading.Thread(target=self._run, name="zfutures-client-io", daemon=True)

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
        if self.refusal:
            self.stop()
            raise ConnectionError(f"the center at {self.address} refused us: {self.refusal}")

    def call(self, *command: Any) -> None:
        """Hand a command to the I/O thread. Safe from any thread and from ``__del__``."""
        self.commands.put(command)
        self.waker.wake()

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

    def submit(self, item: dict, frames: list, future: Any, own_key: bool) -> None:
        """Submit one task (Executor.submit; ``own_key``: see _cmd_submit).

        One that may go straight to a worker (see _send_direct) is sent by
        this thread, if no other is at the sockets (see call_now). Others go
        to the I/O thread, which sends a burst of them in few messages.
        """
        command = ("submit", [(item, frames, future)], False, own_key)
        if self._direct_worker is not None and not self._direct_in_flight() and \
                _may_go_direct(item):  # (read unlocked: _send_direct decides)
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
                if not self._holds(time.monotonic()):
                    self._flush()
                self._poke_parked()
                wake = self._must_wake()
        except Exception:  # as on the I/O thread: no user call may hang on it
            self._give_up()
        finally:
            self.lock.release()
        if wake:
            self.waker.wake()

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
        info = self._direct_pending
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

    def _park(self, info: _Key) -> zmq.Socket | None:
        """Take the wait for ``info``'s direct answer (see await_direct): its
        worker's socket, or None if there is nothing to wait for here."""
        direct = info.direct
        if self._stopping or self._parked is not None or info is not self._direct_pending or \
                info.status != PENDING or direct is None or not direct.trusted:
            return None
        sock = self.workers.get(direct.address)
        if sock is not None:
            self._parked, self._parked_info = sock, info
        return sock

    def _unpark(self, sock: zmq.Socket, address: str) -> None:
        self._parked = self._parked_info = None
        if self._stopping or self.workers.get(address) is not sock:
            sock.close(linger=0)  # (left to us: see _worker_left and _run)
        if self._sockets_closed:
            self._park_waker.close()

    def watch(self, future: Any) -> None:
        """Someone waits for ``future`` other than by ``result()`` (a callback,
        ``concurrent.futures.wait``): if it is the task sent straight to a
        worker, the I/O thread must read its answer, and may have left that
        worker's socket out of its wait (see await_direct). Safe from any thread."""
        pending = self._direct_pending
        if pending is not None and pending.key == future.key:
            self.waker.wake()  # (a turn makes it wait on every socket no one else does)

    def _poke_parked(self) -> None:
        """Tell the caller waiting on a worker's socket to look again if its wait
        may be over: its task finished or was cancelled by another way, or its
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
        due = self._next_due()
        if skipped is not None and skipped is not parked:  # (no one reads that socket)
            if self._awaits(skipped):
                return True
            if self._direct_in_flight() and (due is None or self._direct_due < due):
                due = self._direct_due
        if due is not None and due + RELEASE_DELAY < self._asleep_until:
            return True
        return any(sock.getsockopt(EVENTS) & POLLIN
                   for sock in self._descriptors if sock is not parked)

    def _next_due(self) -> float | None:
        """When releases, or submits held for their answers (see _holds), are due."""
        due = self._release_due
        if self._unsent_direct and (due is None or self._unsent_direct_due < due):
            due = self._unsent_direct_due
        return due

    def _awaits(self, sock: zmq.Socket) -> bool:
        """Whether an answer other than a direct task's is awaited on a worker's socket."""
        workers = self.workers
        return any(workers.get(entry[1]) is sock for entry in self.gathers.values()) or \
            any(workers.get(entry[0]) is sock for entry in self.worker_requests.values())

    def request(self, op: str, timeout: float | None = None, **fields: Any) -> Any:
        """Ask the center something and wait for the answer."""
        result: concurrent.futures.Future = concurrent.futures.Future()
        self.call("rpc", op, fields, result)
        if timeout is not None:
            return result.result(timeout)
        return self.wait(result, f"the center at {self.address}")

    def wait(self, result: concurrent.futures.Future, who: str) -> Any:
        """Wait for an answer from ``who`` within the reconnect deadline, or raise
        ConnectionError."""
        try:
            return result.result(self.reconnect_deadline)
        except concurrent.futures.TimeoutError:
            raise ConnectionError(f"{who} did not answer within the reconnect deadline "
                                  f"of {self.reconnect_deadline}s") from None

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
                    due = self._next_due()
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
        except Exception:  # a bug here must not leave user calls hanging
            with self.lock:
                self._give_up()
        finally:
            self.reader.stop()  # (before the waker closes: it wakes this thread)
            with self.lock:
                for sock in [self.center, *self.workers.values()]:
                    if sock is self._parked:  # (its caller closes it: see _unpark)
                        self._park_waker.wake()
                    else:
                        sock.close(linger=0)
                if self._parked is None:
                    self._park_waker.close()
                self._sockets_closed = True

    def _give_up(self) -> None:
        """A bug in a turn of the loop (by the holder of the lock, in an except
        block): every wait ends with an error, and the I/O stops."""
        logger.exception("the zfutures client I/O failed")
        self._fail_everything(ConnectionError("the client I/O failed; see the log"))
        self._stopping = True

    def _pump(self) -> bool:
        """A turn of the loop, by the holder of :attr:`lock`: commands, messages,
        releases due, output. True if news may wait still: the sockets'
        descriptors signal only new news, so the I/O thread must not sleep
        on them then."""
        for _ in range(PUMP_ROUNDS):
            if self.waker.pending:
                self.waker.drain()
            self._take_commands()
            # Workers first: a direct task's answer, which carries its value,
            # must not be overtaken by the center's word of it, which does not.
            # (Not the one a caller waits on: see await_direct.)
            parked = self._parked
            for address, sock in list(self.workers.items()):
                if sock is not parked:
                    self._drain_worker(address, sock)
            drain(self.center, self._on_center_message, dropped)
            now = time.monotonic()
            if self._release_due is not None and now >= self._release_due:
                self._release_now()
            if not self._holds(now):
                self._flush()
            self._tick(now)
            if self._stopping:
                return False
            # (sending can take in news the descriptors will not signal)
            if self.commands.empty() and not any(
                    sock.getsockopt(EVENTS) & POLLIN
                    for sock in self._descriptors if sock is not parked):
                return False
        return True

    def _tick(self, now: float) -> None:
        if now - self._last_sent >= self.heartbeat_interval:
            self._send("heartbeat")
        if now - self._last_heard > self.reconnect_deadline and self.welcomed.is_set():
            self._fail_everything(ConnectionError(
                f"the center at {self.address} has been silent for "
                f"{now - self._last_heard:.0f}s"))
            self._last_heard = now
        if now < self._next_timeout_check:  # fetch timeouts are seconds long: scanning
            return                          # the requests at every message is waste
        self._next_timeout_check = now + self.heartbeat_interval
        for request_id, (gather, address, keys, deadline) in list(self.gathers.items()):
            if deadline < now:
                del self.gathers[request_id]
                logger.warning("worker %s did not answer for %d keys; trying others",
                               address, len(keys))
                self._fetch(gather, keys)

    # ------------------------------------------------------------------ commands

    def _take_commands(self) -> None:
        commands = self.commands
        while True:
            try:
                command = commands.get_nowait()
            except queue.Empty:
                return
            getattr(self, "_cmd_" + command[0])(*command[1:])

    def _cmd_sync(self, done: concurrent.futures.Future) -> None:
        """Commands are taken in order: once this runs, all before it have."""
        done.set_result(None)

    def _cmd_register(self) -> None:
        self._send("register-client", protocol=protocol.PROTOCOL_VERSION, name=self.name)

    def _cmd_submit(self, tasks: list[tuple[dict, list, Any]], eager: bool = False,
                    own_key: bool = False) -> None:
        """``tasks``: (item, payload frames, Future) for each new future.

        ``eager`` futures get their values as soon as the cluster has them,
        and are held until then even if their caller drops them.
        ``own_key``: the executor made the key (a pure task's token, or an
        impure task's unique key), not the caller. Alone, a task without
        inputs may go straight to a worker (see _send_direct).
        """
        for item, frames, future in tasks:
            key = item["key"]
            info = self.keys.get(key)
            if info is None or info.status == CANCELLED:
                # New, or cancelled earlier: the center forgot it for us, send it again.
                if info is None:
                    info = self.keys[key] = _Key(key)
                info.status, info.exception = PENDING, None
                item["nframes"] = len(frames)
                info.submitted = (item, frames)
                keys = self.keys
                info.deps = [keys[d] for d in item["deps"] if d in keys] or None
                if len(tasks) == 1 and info.refs == 0:  # (new: not sent before)
                    item = self._send_direct(info, item, frames, own_key)
                self._queue("submit", item, frames)
            if eager:
                info.eager = True
                info.hold(future)
            self._add_future(info, future)

    def _send_direct(self, info: _Key, item: dict, frames: list, own_key: bool) -> dict:
        """Send a lone task without inputs straight to a worker, and return the
        item that tells the center so; or return ``item`` unchanged.

        A task through the center takes four hops (client, center, worker,
        center, client); sent straight, its small result comes back in two,
        and the center hears of it on the side: the worker's reports and our
        submit travel apart, and the center matches them by the run id we
        choose (see Scheduler._runs_direct). The worker refuses it if it
        cannot start it at once, and the center then places it as usual.
        The result counts at once if ``own_key``, else only once the center
        says it counts that run (direct-accepted). One such task at a time,
        to the worker that last finished one of ours with a small result
        (DIRECT_AFTER_NBYTES): a burst of submits goes through the center,
        which balances it across the workers.
        """
        address = self._direct_worker
        if address is None or self._direct_in_flight() or not _may_go_direct(item) or \
                self._reregistering or serialize.frames_nbytes(frames) > DIRECT_PAYLOAD_LIMIT:
            return item
        run = next(self._direct_runs)
        if not self._to_worker(self._worker(address),
                               protocol.encode("run-task", frames, key=info.key, run=run),
                               f"a task to {address}"):
            return item
        self._direct_due = time.monotonic() + RELEASE_DELAY
        info.direct = _Direct(address, run, own_key)
        self._direct_pending = info
        item = dict(item, direct_worker=address, direct_run=run)
        if not own_key:
            item["direct_ack"] = True  # (and it goes to the center at once)
        else:  # it may wait to go with others (see _holds)
            if not self._unsent_direct:
                self._unsent_direct_due = time.monotonic() + RELEASE_DELAY
            self._unsent_direct[info.key] = item
        return item

    def _direct_in_flight(self) -> bool:
        """Whether a task sent straight to a worker awaits its answer (one at a time)."""
        pending = self._direct_pending
        return pending is not None and pending.direct is not None and pending.status == PENDING

    def _direct_result(self, address: str, header: dict, frames: list) -> None:
        """A worker sent back the small result of a task we sent it straight."""
        info = self.keys.get(header["key"])
        direct = info.direct if info is not None and info.status == PENDING else None
        if direct is None or direct.address != address or direct.run != header["run"]:
            return  # (cancelled, released, or the worker left meanwhile)
        unsent = self._unsent_direct.get(info.key)
        if unsent is not None:
            unsent["direct_answered"] = True  # (see protocol._TASK_ITEM)
        if not direct.trusted:
            direct.early = (header["nbytes"], frames)
            return
        info.direct = None
        self.direct_answers += 1
        self._finished(info, [address], header["nbytes"], frames)
        self._finish_eager()

    def _direct_accepted(self, keys: list[str], seen: int) -> None:
        """The center counts the direct runs of ``keys`` as the tasks' own."""
        for key in keys:
            info = self.keys.get(key)
            direct = info.direct if info is not None and info.status == PENDING and \
                seen >= info.since else None
            if direct is None:
                continue
            direct.trusted = True
            if direct.early is not None:
                info.direct = None
                self.direct_answers += 1
                self._finished(info, [direct.address], *direct.early)
        self._finish_eager()

    def _cmd_ref(self, future: Any) -> None:
        """A Future made for a key this client already holds (or will)."""
        info = self.keys.get(future.key)
        if info is None:
            info = self.keys[future.key] = _Key(future.key)
        self._add_future(info, future)

    def _add_future(self, info: _Key, future: Any) -> None:
        info.refs += 1
        info.futures.append(weakref.ref(future))
        if info.status == FINISHED:
            future._set_remote()
        elif info.status == ERRED:
            if isinstance(info.exception, concurrent.futures.CancelledError):
                future._set_cancelled()
            else:
                future._set_error(info.exception)

    def _cmd_hold(self, future: Any) -> None:
        """Keep ``future`` alive until it is done: it has callbacks to run."""
        info = self.keys.get(future.key)
        if info is not None and info.status == PENDING:
            info.hold(future)

    def _cmd_unref(self, key: str) -> None:
        info = self.keys.get(key)
        if info is None:
            return
        info.refs -= 1
        if info.refs <= 0:
            del self.keys[key]
            info.direct = None  # (its answer is no longer awaited)
            self._release_later(key)

    def _cmd_cancel(self, keys: list[str]) -> None:
        for key in keys:
            info = self.keys.get(key)
            if info is not None and info.status != FINISHED:
                info.status = CANCELLED
                info.held = None
            self._queue("cancel", key)

    def _cmd_fetch(self, keys: list[str], result: concurrent.futures.Future) -> None:
        gather = _Gather(keys, result)
        self._fetch(gather, keys)

    def _cmd_scatter(self, plan: dict[str, list[tuple[str, list]]], futures: list,
                     result: concurrent.futures.Future) -> None:
        """Put data on workers (``plan``: address -> [(key, frames)]), then tell the center."""
        for future in futures:
            self._cmd_ref(future)
        holders: dict[str, list[str]] = {}
        nbytes: dict[str, int] = {}
        waiting = set(plan)

        def stored(address: str, header: dict, frames: list) -> None:
            waiting.discard(address)
            for key, size in header["nbytes"].items():
                holders.setdefault(key, []).append(address)
                nbytes[key] = size
            if not waiting:
                items = [{"key": k, "nbytes": nbytes[k], "workers": w} for k, w in holders.items()]
                for item in items:
                    info = self.keys.get(item["key"])
                    if info is not None:
                        info.scattered, info.who_has = True, item["workers"]
                        info.nbytes = item["nbytes"]
                self._flush()  # keep the order: earlier messages first
                self._send("update-data", items=items)
                result.set_result(None)

        for address, entries in plan.items():
            items = [{"key": key} for key, _ in entries]
            frames = protocol.pack_items(items, [f for _, f in entries])
            request_id = next(self._ids)
            self.worker_requests[request_id] = (address, lambda h, f, a=address: stored(a, h, f),
                                                result)
            self._to_worker(self._worker(address),
                            protocol.encode("put-data", frames, id=request_id, items=items),
                            f"data to {address}")

    def _cmd_run(self, addresses: list[str], frames: list,
                 result: concurrent.futures.Future) -> None:
        """Run a pickled call on each worker in ``addresses``; gather the outcomes."""
        outcomes: dict[str, tuple[bool, list]] = {}

        def answered(address: str, header: dict, reply_frames: list) -> None:
            outcomes[address] = (header["ok"], reply_frames)
            if len(outcomes) == len(addresses) and not result.done():
                result.set_result(outcomes)

        if not addresses:
            result.set_result(outcomes)
        for address in addresses:
            request_id = next(self._ids)
            self.worker_requests[request_id] = (address,
                                                lambda h, f, a=address: answered(a, h, f), result)
            self._to_worker(self._worker(address), protocol.encode("run", frames, id=request_id),
                            f"a call to {address}")

    def _cmd_rpc(self, op: str, fields: dict, result: concurrent.futures.Future) -> None:
        self._flush()  # answers then reflect everything asked for before
        request_id = next(self._ids)
        self.rpcs[request_id] = (result, op, fields)
        self._send(op, id=request_id, **fields)

    def _cmd_close(self) -> None:
        self._flush()
        self._send("close-client")
        self._stopping = True
        self._fail_everything(ConnectionError("the executor was shut down"), cancel=True)

    # ------------------------------------------------------------------ fetching results

    def _fetch(self, gather: _Gather, keys: list[str]) -> None:
        """Ask a holder of each key for it, one request per worker."""
        plan: dict[str, list[str]] = {}
        exhausted = []
        for key in keys:
            if key not in gather.remaining:
                continue
            info = self.keys.get(key)
            if info is None:
                self._finish_gather(gather, FutureLostError(f"{key!r} was released"))
                return
            if info.status == ERRED:
                self._finish_gather(gather, info.exception)
                return
            untried = [w for w in info.who_has if w not in gather.tried[key]]
            if not untried:
                exhausted.append(key)
                continue
            gather.tried[key].add(untried[0])
            plan.setdefault(untried[0], []).append(key)
        if exhausted:
            self._ask_where(gather, exhausted)
        deadline = time.monotonic() + self.fetch_timeout
        for address, worker_keys in plan.items():
            request_id = next(self._ids)
            self.gathers[request_id] = (gather, address, worker_keys, deadline)
            header = protocol.encode_header("get-data", id=request_id, keys=worker_keys,
                                            **peer_memory.reader_fields())
            self._to_worker(self._worker(address), [header], f"a data request to {address}")

    def _ask_where(self, gather: _Gather, keys: list[str]) -> None:
        """The holders we knew of failed: ask the center once where the keys are now
        (a worker that left handed them on), then try there. A key held nowhere
        is being computed again (its holders died): the gather waits for it
        (see :meth:`_key_back`)."""
        for key in keys:
            if key in gather.asked:
                info = self.keys.get(key)
                self._finish_gather(gather, FutureLostError(
                    f"could not fetch {key!r} from any of the workers holding it "
                    f"({', '.join(info.who_has) if info else 'none'})"))
                return
        gather.asked.update(keys)

        def answered(reply: concurrent.futures.Future) -> None:  # runs on this thread
            if reply.exception() is not None:
                self._finish_gather(gather, reply.exception())
                return
            held = []
            for key, holders in reply.result().items():
                info = self.keys.get(key)
                if info is not None and info.status == FINISHED and not holders \
                        and not gather.result.done():
                    # Being computed again: its key-finished (or key-erred)
                    # comes after this reply. (A key that erred or was released
                    # meanwhile goes on to _fetch, which fails the gather.)
                    self.awaiting.setdefault(key, []).append(gather)
                    continue
                if info is not None:
                    info.who_has = holders
                    if any(h not in gather.tried[key] for h in holders):
                        gather.asked.discard(key)  # (handed on: it may move again)
                held.append(key)
            self._fetch(gather, held)

        reply: concurrent.futures.Future = concurrent.futures.Future()
        reply.add_done_callback(answered)
        self._cmd_rpc("who-has", {"keys": keys}, reply)

    def _key_back(self, info: _Key) -> None:
        """``info``'s key is in memory again, or erred: gathers waiting for it, if
        any, go on."""
        for gather in self.awaiting.pop(info.key, ()):
            if gather.result.done():
                continue
            if info.status == ERRED:
                self._finish_gather(gather, info.exception)
            else:
                gather.tried[info.key] = set()
                gather.asked.discard(info.key)
                self._fetch(gather, [info.key])

    def _fetch_eager(self, keys: list[str]) -> None:
        """Fetch finished eager keys now; their futures complete with the values."""
        result: concurrent.futures.Future = concurrent.futures.Future()
        gather = _Gather(keys, result)
        # Runs on this thread, when the gather completes.
        result.add_done_callback(lambda done: self._deliver(
            keys, {} if done.exception() else done.result(), done.exception()))
        self._fetch(gather, keys)

    def _deliver(self, keys: list[str], values: dict[str, list],
                 error: BaseException | None = None) -> None:
        """Eager keys' values (pickled) are here, or ``error``: complete their
        futures, which then no longer refer to the keys, and release the keys."""
        for key in keys:
            info = self.keys.pop(key, None)
            if info is not None:
                self._complete(info, values.get(key), error, detach=True)
                info.held = None
                if self._direct_pending is info:  # (its frames may be the caller's buffers)
                    self._direct_pending = None
                self._release_later(key)

    @staticmethod
    def _complete(info: _Key, frames: list | None, error: BaseException | None = None,
                  detach: bool = False) -> None:
        """Complete the futures of a finished key with its pickled value (or
        ``error``); a value that fails to load fails them, as result() would."""
        if error is None:
            try:
                value = serialize.loads(frames)
            except Exception as e:
                error = e
        for future in info.live_futures():
            if detach:
                future._executor = None
            if error is None:
                future._set_value(value)
            else:
                future._set_error(error)

    def _drain_worker(self, address: str, sock: zmq.Socket) -> None:
        """Handle what worker ``address`` sent on ``sock``."""
        drain(sock, lambda frames: self._on_worker_message(address, frames), dropped)

    def _on_worker_message(self, address: str, frames: list) -> None:
        header, frames = protocol.decode(frames)
        if header["op"] == "data":
            self._on_data(address, header, frames)
            return
        if header["op"] == "direct-result":
            self._direct_result(address, header, frames)
            return
        request = self.worker_requests.get(header["id"])
        if request is not None and request[0] == address:  # (only its worker answers it)
            del self.worker_requests[header["id"]]
            request[1](header, frames)

    def _on_data(self, address: str, header: dict, frames: list) -> None:
        if "lease" in header:
            self._read_offered(address, header, frames)
            return
        entry = self.gathers.pop(header["id"], None)
        if entry is None:
            return  # timed out earlier and asked elsewhere
        self._take_data(entry[0], header, protocol.unpack_items(
            header["items"] + header.get("errors", []), frames))

    def _take_data(self, gather: _Gather, header: dict,
                   unpacked: Iterable[tuple[dict, list]]) -> None:
        """A worker's answer to a fetch, each item with its frames."""
        items = header["items"]
        for i, (item, value_frames) in enumerate(unpacked):
            key = item["key"]
            if i >= len(items):  # the value cannot be pickled to leave its worker
                self._finish_gather(gather, remote_exception(value_frames))
                return
            if key in gather.remaining:
                gather.remaining.discard(key)
                gather.values[key] = value_frames
        if header["missing"]:
            self._fetch(gather, header["missing"])
        elif not gather.remaining:
            self._finish_gather(gather)

    def _read_offered(self, address: str, header: dict, frames: list) -> None:
        """A worker on this machine left big buffers to read from its memory:
        read them on the reader thread, while this thread goes on serving. The
        request stays pending meanwhile, given the time the read may take."""
        entry = self.gathers.get(header["id"])
        if entry is None:  # timed out earlier and asked elsewhere
            self._end_lease(address, header)
            return
        gather, worker, keys, deadline = entry
        sent = deadline - self.fetch_timeout
        self.gathers[header["id"]] = (gather, worker, keys, max(
            deadline,
            time.monotonic() + self.fetch_timeout + peer_memory.read_time(header["items"])))
        self.reader.read(header, frames, sent, lambda outcome: self.call(
            "offered_read", address, header, outcome))

    def _cmd_offered_read(self, address: str, header: dict, outcome: Any) -> None:
        """The reader thread is done with a reply (see peer_memory.Reader)."""
        self._end_lease(address, header)
        then = peer_memory.after_read(outcome)
        if then == "take":
            entry = self.gathers.pop(header["id"], None)
            if entry is not None:
                self._take_data(entry[0], header, outcome)
            return
        entry = self.gathers.get(header["id"])
        sock = self.workers.get(address)  # (None: the worker left; the fetch times out)
        if then == "again" and entry is not None and sock is not None:
            self._to_worker(sock, [protocol.encode_header("get-data", id=header["id"],
                                                          keys=entry[2])],
                            f"a data request to {address}")  # at once, as frames this time

    def _end_lease(self, address: str, header: dict) -> None:
        sock = self.workers.get(address)
        if sock is not None:  # (else the worker left: its leases went with it)
            self._to_worker(sock, [protocol.encode_header("data-read", lease=header["lease"])],
                            f"the end of a read to {address}")

    def _finish_gather(self, gather: _Gather, error: BaseException | None = None) -> None:
        if gather.result.done():
            return
        for request_id in [i for i, entry in self.gathers.items() if entry[0] is gather]:
            del self.gathers[request_id]
        for key in gather.remaining:
            waiting = self.awaiting.get(key)
            if waiting is not None and gather in waiting:
                waiting.remove(gather)
                if not waiting:
                    del self.awaiting[key]
        if error is None:
            gather.result.set_result(gather.values)
        else:
            gather.result.set_exception(error)

    def _worker(self, address: str) -> zmq.Socket:
        sock = self.workers.get(address)
        if sock is None:
            sock = self.workers[address] = configure(self.context.socket(zmq.DEALER),
                                                     self.security)
            sock.connect(peer_endpoint(address))
            self._descriptors[sock] = sock.FD
            self._sockets_changed = True
        return sock

    # ------------------------------------------------------------------ center messages

    def _on_center_message(self, frames: list) -> None:
        self._last_heard = time.monotonic()
        header, frames = protocol.decode(frames)
        op = header["op"]
        seen = header.get("seen", 0)
        if op == "key-finished":
            for item, value in protocol.unpack_items(header["tasks"], frames):
                info = self.keys.get(item["key"])
                if info is not None and seen >= info.since:  # (else stale: see _Key.since)
                    if info.status == FINISHED:  # news of where it is now
                        info.who_has = item["who_has"]
                        info.nbytes = item["nbytes"]
                        self._key_back(info)
                        continue
                    info.direct = None
                    self._finished(info, item["who_has"], item["nbytes"], value)
            self._finish_eager()
        elif op == "key-erred":
            for item, exception_frames in protocol.unpack_items(header["tasks"], frames):
                info = self.keys.get(item["key"])
                if info is not None and seen >= info.since:
                    info.status = ERRED
                    info.deps = None
                    info.exception = remote_exception(exception_frames)
                    cancelled = isinstance(info.exception, concurrent.futures.CancelledError)
                    lost = isinstance(info.exception, FutureLostError)
                    for future in info.live_futures():
                        if cancelled:
                            future._set_cancelled()
                        elif lost:
                            future._set_lost(info.exception)
                        else:
                            future._set_error(info.exception)
                    info.held = None
                    self._key_back(info)
        elif op == "direct-accepted":
            self._direct_accepted(header["keys"], seen)
        elif op == "reply":
            result, _, _ = self.rpcs.pop(header["id"], (None, None, None))
            if result is not None and not result.done():
                result.set_result(header["result"])
        elif op == "welcome":
            self.max_message_size = header.get("max_message_size", self.max_message_size)
            if self._reregistering:
                self._reregistering = False
                self._bring_back()
            self.welcomed.set()
        elif op == "reregister":
            if self.welcomed.is_set() and not self._reregistering:
                logger.warning("the center at %s does not know this client (it restarted?); "
                               "registering again", self.address)
                self._reregistering = True
                self._cmd_register()
        elif op == "workers-left":
            for address in header["addresses"]:
                self._worker_left(address)
        elif op == "refused":
            self.refusal = header["reason"]
            self.welcomed.set()
        elif op != "heartbeat":
            logger.warning("dropped an unexpected %r from the center", op)

    def _finished(self, info: _Key, who_has: Sequence[str], nbytes: int,
                  value: list) -> None:
        """``info``'s key is in memory on ``who_has``; its pickled ``value``
        came along when small. Eager keys are seen to by _finish_eager."""
        info.status = FINISHED
        info.who_has = who_has
        info.nbytes = nbytes
        info.deps = None
        # The next lone task may go to a worker that is up (see _send_direct).
        self._direct_worker = who_has[0] if who_has and nbytes <= DIRECT_AFTER_NBYTES \
            else None
        if info.eager:
            if value:
                self._eager_inline[info.key] = value
            else:
                self._eager_fetch.append(info.key)
            return
        if value:  # small: the result came along, no fetch needed
            self._complete(info, value)
        else:
            for future in info.live_futures():
                future._set_remote()
        info.held = None

    def _finish_eager(self) -> None:
        """Fetch the finished eager keys whose values did not come along, and
        deliver those whose values did."""
        if self._eager_fetch:
            eager, self._eager_fetch = self._eager_fetch, []
            self._fetch_eager(eager)
        if self._eager_inline:
            inline, self._eager_inline = self._eager_inline, {}
            self._deliver(list(inline), inline)

    def _worker_left(self, address: str) -> None:
        """The center says a worker left or died: calls waiting on it (run,
        scatter) fail now rather than at the reconnect deadline, and its socket
        goes. Fetches from it try other holders at once, or wait for the keys
        to be in memory again (handed on, or recomputed), rather than for the
        fetch timeout."""
        for request_id, (worker, _, result) in list(self.worker_requests.items()):
            if worker == address:
                del self.worker_requests[request_id]
                if not result.done():
                    result.set_exception(ConnectionError(
                        f"the worker {address} left the cluster before answering"))
        sock = self.workers.pop(address, None)
        if sock is not None:  # (what it answered before it went is taken first)
            self._drain_worker(address, sock)
            del self._descriptors[sock]
            self._sockets_changed = True
            if sock is not self._parked:  # (else its caller closes it: see _unpark)
                sock.close(linger=0)
        if self._direct_worker == address:
            self._direct_worker = None
        for info in self.keys.values():
            if address in info.who_has:
                info.who_has = [a for a in info.who_has if a != address]
            if info.direct is not None and info.direct.address == address:
                info.direct = None  # (the center places its task again)
        for request_id, (gather, worker, keys, _) in list(self.gathers.items()):
            if worker == address and self.gathers.pop(request_id, None) is not None:
                self._fetch(gather, keys)

    def _bring_back(self) -> None:
        """The center lost what it knew of us (it restarted): send again every
        key we hold, inputs before the tasks that need them, saying where the
        finished ones were, so the center takes them back instead of
        recomputing; then the requests it had not answered."""
        order: list[tuple[str, _Key]] = []
        seen: set[int] = set()
        for info in list(self.keys.values()):
            stack = [(info, False)]
            while stack:  # depth first, inputs first: a chain can be long
                info, expanded = stack.pop()
                if expanded:
                    order.append((info.key, info))
                    continue
                if id(info) in seen:
                    continue
                seen.add(id(info))
                stack.append((info, True))
                stack.extend((dep, False) for dep in info.deps or () if id(dep) not in seen)
        # Whatever is queued is among the keys brought back here, or about keys
        # the new center never knew.
        self._outgoing.clear()
        self._unsent_direct.clear()
        scattered, inputs_only = [], []
        for key, info in order:
            if info.status in (ERRED, CANCELLED):
                continue
            if info.scattered:
                scattered.append({"key": key, "nbytes": info.nbytes, "workers": info.who_has})
            elif info.submitted is not None:
                item, frames = info.submitted
                if info.status == FINISHED:
                    item = dict(item, who_has=info.who_has)
                self._queue("submit", item, frames)
            else:
                continue
            if key not in self.keys:  # wanted only as an input of a pending task
                inputs_only.append(key)
        if scattered:
            self._send("update-data", items=scattered)
        for key in inputs_only:
            self._queue("release", key)
        self._flush()
        for request_id, (_, op, fields) in self.rpcs.items():
            self._send(op, id=request_id, **fields)
        logger.warning("registered again with the center at %s; brought back %d keys",
                       self.address, len(order))

    # ------------------------------------------------------------------ output

    def _release_later(self, key: str) -> None:
        """Release ``key`` with others, within RELEASE_DELAY."""
        if self._release_due is None:
            self._release_due = time.monotonic() + RELEASE_DELAY
        self._releasing[key] = None
        if len(self._releasing) >= SUBMIT_BATCH:
            self._release_now()

    def _release_now(self) -> None:
        for key in self._releasing:
            self._queue("release", key)
        self._releasing.clear()
        self._release_due = None

    def _queue(self, op: str, item: Any, frames: list = ()) -> None:
        """Queue an item for the center, merged with the last message if it is alike
        (up to SUBMIT_BATCH items, and half the center's message size limit)."""
        if op == "submit" and item["key"] in self._releasing:
            self._release_now()  # submitted again: the center must see the release first
        size = serialize.frames_nbytes(frames) if frames else 0
        if self._outgoing and self._outgoing[-1][0] == op:
            last = self._outgoing[-1]
            if len(last[1]) < SUBMIT_BATCH and last[3] + size < self.max_message_size // 2:
                last[1].append(item)
                last[2].extend(frames)
                last[3] += size
                return
        self._outgoing.append([op, [item], list(frames), size])

    def _holds(self, now: float) -> bool:
        """Whether all there is to send is submits of direct tasks, which may
        wait (RELEASE_DELAY at most from the first) to go to the center in one
        message: the worker's answers come meanwhile, and the submits say so
        (direct_answered), so the center need not send those results again.
        Its copy of the task is not needed sooner: the worker's reports wait
        for it there. Not for a task that waits on the center's word."""
        outgoing = self._outgoing
        return bool(self._unsent_direct) and now < self._unsent_direct_due and \
            len(outgoing) == 1 and len(outgoing[0][1]) == len(self._unsent_direct)

    def _flush(self) -> None:
        self._unsent_direct.clear()
        keys = self.keys
        for op, items, frames, _ in self._outgoing:
            if op == "submit":
                seq = next(self._submit_seqs)
                self._send("submit", frames, tasks=items, seq=seq)
                for item in items:
                    info = keys.get(item["key"])
                    if info is not None:
                        info.since = seq
            else:  # release, cancel
                self._send(op, keys=items)
        self._outgoing.clear()

    def _to_worker(self, sock: zmq.Socket, frames: list, what: str) -> bool:
        """Send ``frames`` to a worker (see loop.send)."""
        sent = send(sock, frames, dropped, what)
        if sock is self._parked:  # (sending may take in news its descriptor then
            self._park_waker.wake()  # does not signal: the caller must look)
        return sent

    def _send(self, op: str, frames: list | None = None, **fields: Any) -> None:
        if self._releasing and op not in _UNORDERED:
            # Scattered data, requests and closing see our releases done first.
            self._release_now()
            self._flush()
        send(self.center, protocol.encode(op, frames or (), **fields), dropped,
             f"{op!r} to the center")
        self._last_sent = time.monotonic()

    def _fail_everything(self, error: BaseException, cancel: bool = False) -> None:
        """No answer will come: end every wait with ``error``; with ``cancel``,
        pending futures are cancelled instead (the executor shut down)."""
        for result, _, _ in self.rpcs.values():
            if not result.done():
                result.set_exception(error)
        self.rpcs.clear()
        for gather, *_ in list(self.gathers.values()):
            self._finish_gather(gather, error)
        for waiting in list(self.awaiting.values()):
            for gather in list(waiting):
                self._finish_gather(gather, error)
        for info in self.keys.values():
            if info.status == PENDING:
                for future in info.live_futures():
                    if cancel:
                        future._set_cancelled()
                    else:
                        future._set_error(error)
