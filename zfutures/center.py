"""The center process: one ROUTER socket around the Scheduler.

Clients and workers both connect here with DEALER sockets. The shell decodes
each message into its class of :mod:`zfutures.messages`, looks the class up in
:data:`OPS` (its handler, and which peers may send it), calls the matching
Scheduler method with the message's items, and after each slice of messages
(loop.SLICE) runs its timers and sends what the scheduler queued, batched per
peer. Payload frames are kept and forwarded as they came;
the center never unpickles them.

A center may be the restart of one that died: a peer it does not know is
asked to register again (``reregister``), and for ``recovery_window`` seconds
the keys workers bring back wait for the clients that submit them again.
With keys (see security.py), only peers in the allow list get in.
"""
from __future__ import annotations

import gc
import logging
import struct
import time
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

import zmq

from . import protocol
from .addressing import bind_ephemeral, configure
from .errors import ProtocolError
from .logs import RateLimitedLog
from .loop import SLICE, ListeningClock, Waker, receive, send_frames
from .messages import (
    CloseClient,
    Closing,
    DescribeKey,
    HasWhat,
    Heartbeat,
    KeysAdded,
    MissingData,
    Paused,
    Refused,
    RegisterClient,
    RegisterNanny,
    RegisterWorker,
    Release,
    Reply,
    Reregister,
    Retire,
    SchedulerInfo,
    Submit,
    Sync,
    TaskAccepted,
    TaskErred,
    TaskFinished,
    TaskRefused,
    TaskSeceded,
    Unregister,
    Unwatch,
    UpdateData,
    Watch,
    Welcome,
    WhoHas,
    WorkerDied,
    op_of,
)
from .processes import release_free_memory
from .scheduler import Scheduler
from .scheduler.observe import EVENTS_INTERVAL, managed_bytes
from .units import format_bytes

logger = logging.getLogger(__name__)

WORKER, CLIENT, NANNY = "worker", "client", "nanny"
#: The role of a peer the center does not know: it has not registered yet, or
#: registered with an earlier center, or the center gave up on it.
UNREGISTERED = None

_NOBLOCK = int(zmq.NOBLOCK)

#: A center that held at least this many tasks gives memory back once idle.
TRIM_AFTER_TASKS = 10_000

#: Seconds between sweeps of the tasks clients sent straight to workers (see
#: Scheduler.sweep_direct): one the worker has not confirmed within one to
#: two of these is placed again. Workers confirm within a heartbeat interval.
DIRECT_SWEEP = 2.0

#: Milliseconds the center's socket may take, as it closes, to send what it
#: queued last: its workers' word that it is going (see _say_closing).
CLOSING_LINGER = 200


#: Most tasks the scheduler releases or forgets per event, or per turn of the
#: loop for what events left (see Scheduler.collect_limit): about 6 us each,
#: so some 30 ms of work.
COLLECT_PER_TURN = 5_000


#: Garbage-collector thresholds of a center process (see tune_garbage_collector).
GC_THRESHOLDS = (10_000, 50, 100)


def tune_garbage_collector() -> None:
    """Collect cyclic garbage less often, in a process that runs a center.

    The scheduler holds a graph of long-lived objects (a task refers to its
    inputs, its dependents and its workers, and each of those back to it).
    With Python's default thresholds, every 700 net allocations trigger a
    collection, and the full ones traverse the whole graph: with 100,000 tasks
    held, that was a quarter of the center's CPU per task (48 us instead of
    32). The scheduler breaks its own cycles when it forgets a task, and the
    center collects in full when it goes idle after a large graph (see
    Center._give_back_memory), so rarer collections only delay garbage that
    is rare anyway.
    """
    gc.set_threshold(*GC_THRESHOLDS)


#: Messages queued per peer, each way (see Center.__init__).
RCVHWM, SNDHWM = 10_000, 100_000

_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)

class _Peer:
    __slots__ = ("role", "last_heard", "last_sent")

    def __init__(self, role: str, heard: float, now: float):
        self.role = role
        self.last_heard = heard  # on the center's listening clock
        self.last_sent = now


class Center:
    """Route tasks and data notifications between clients and workers.

    >>> center = Center("127.0.0.1", 0)        # doctest: +SKIP
    >>> center.address                          # doctest: +SKIP
    'tcp://127.0.0.1:40423'
    >>> center.run()                            # doctest: +SKIP
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8787, *,
                 allowed_failures: int = 3, heartbeat_interval: float = 0.5,
                 worker_timeout: float = 5.0, client_timeout: float = 30.0,
                 recovery_window: float = 10.0, security: Any = None,
                 max_message_size: int = protocol.MAX_MESSAGE_SIZE):
        self.heartbeat_interval = heartbeat_interval
        self.worker_timeout = worker_timeout
        self.client_timeout = client_timeout
        # A center may be a restart of one that died: for a while, keys workers
        # bring back wait for the clients that want them (see Scheduler.recovering).
        self.scheduler = Scheduler(allowed_failures=allowed_failures, recovering=True,
                                   collect_limit=COLLECT_PER_TURN)
        self.recovery_ends = time.monotonic() + recovery_window
        self._peak_tasks = 0
        self.context = zmq.Context()
        # Keys: the ZAP handler admits only the allow list (see security.py).
        self.auth = security.authenticator(self.context) if security is not None else None
        self.socket = configure(self.context.socket(zmq.ROUTER), security)
        # Connections that fail the handshake (no keys, wrong keys, not ZeroMQ)
        # never reach the ROUTER: the monitor is where they are seen and logged.
        self.monitor = self.socket.get_monitor_socket(_HANDSHAKE_FAILED)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # Bounds against a peer that floods: a larger message drops its
        # connection; past RCVHWM queued messages from one peer, libzmq stops
        # reading its socket (TCP pushes back); past SNDHWM queued for a peer
        # that does not read, messages to it are dropped (see _send).
        self.max_message_size = max_message_size
        self.socket.setsockopt(zmq.MAXMSGSIZE, max_message_size)
        self.socket.rcvhwm = RCVHWM
        self.socket.sndhwm = SNDHWM
        self.socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.address = bind_ephemeral(self.socket, host, port)
        self.peers: dict[bytes, _Peer] = {}
        # A peer is silent for the time the center could have heard it: its
        # own stretches of work past a heartbeat interval do not count.
        self.listening = ListeningClock(heartbeat_interval, time.monotonic())
        self.waker = Waker()
        self.dropped = RateLimitedLog(logger)
        self._stopping = False
        self._next_sweep = time.monotonic() + DIRECT_SWEEP
        #: The link to the dashboard's /status page, set by the command that
        #: started one; told to clients in their welcome and in scheduler_info.
        self.dashboard_link: str | None = None
        # Clients that watch (see _send_events): ident -> whether they want
        # the stream of task runs; those that have not had an events yet.
        self.watchers: dict[bytes, bool] = {}
        self._new_watchers: set[bytes] = set()
        self._next_events = 0.0
        #: Messages handled since the center started (for watchers).
        self.messages = 0

    # ------------------------------------------------------------------ life cycle

    def run(self) -> None:
        """Serve until :meth:`stop`."""
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.waker.read_fd, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        next_tick = time.monotonic()
        try:
            while not self._stopping:
                now = time.monotonic()
                self.listening.polling(now)
                due = min(next_tick, self._next_events) if self.watchers else next_tick
                wait = 0.0 if self.scheduler.garbage_pending else max(0.0, due - now)
                events = dict(poller.poll(int(1000 * wait)))  # (whole ms, as pyzmq would)
                self.listening.working(time.monotonic())
                if self.socket in events:
                    self._drain()
                if self.waker.read_fd in events:
                    self.waker.drain()
                if self.monitor in events:
                    self._log_handshake_failures()
                if self.scheduler.garbage_pending:
                    self.scheduler.collect_garbage()
                now = time.monotonic()
                if now >= next_tick:
                    self._tick(now)
                    next_tick = now + self.heartbeat_interval
                if self.watchers and now >= self._next_events:
                    self._next_events = now + EVENTS_INTERVAL
                    self._send_events(now)
                self._flush()
        finally:
            self._say_closing()
            self.socket.disable_monitor()
            self.monitor.close(linger=0)
            self.socket.close(linger=CLOSING_LINGER)
            if self.auth is not None:
                self.auth.stop()
            self.context.term()
            self.waker.close()

    def _say_closing(self) -> None:
        """Tell the workers this center is going: one told to stop meanwhile
        leaves at once, with nothing to hand its keys on to, rather than
        after its retire timeout (it keeps them for a center that comes back)."""
        for ident, peer in self.peers.items():
            if peer.role == WORKER:
                self._send(ident, Closing())

    def stop(self) -> None:
        """Ask the loop to end; safe from signal handlers and other threads."""
        self._stopping = True
        self.waker.wake()

    # ------------------------------------------------------------------ input

    def _drain(self) -> None:
        """Handle what came, for one slice of time: then the timers run, and
        what the scheduler queued goes out, before the next slice."""
        sock, until = self.socket, time.monotonic() + SLICE
        while True:
            frames = receive(sock)
            if frames is None:
                return
            self._handle(frames)
            if time.monotonic() >= until:
                return

    def _handle(self, frames: list) -> None:
        self.messages += 1
        ident = frames[0].bytes
        if len(frames) < 2:
            self.dropped.warning("dropped a message without a header")
            return
        try:
            msg, payload = protocol.decode_message(frames[1:])
        except ProtocolError as e:
            self.dropped.warning("dropped a malformed message", str(e))
            return
        peer = self.peers.get(ident)
        role = peer.role if peer is not None else UNREGISTERED
        rule = OPS.get(type(msg))
        if rule is None or role not in rule.senders:
            if asks_to_register(rule, role):
                # A peer of an earlier center, or one we gave up on: it registers
                # again, with what it holds, at once rather than after a timeout.
                logger.debug("asked a peer we do not know to register again (it sent %r)",
                             op_of(msg))
                self._send(ident, Reregister())
            else:
                self.dropped.warning(
                    f"dropped {op_of(msg)!r} from a {role or 'peer that has not registered'}")
            return
        if peer is not None:
            peer.last_heard = self.listening.time(time.monotonic())
        try:
            rule.handle(self, ident, msg, payload)
        except ProtocolError as e:
            self.dropped.warning(f"dropped a malformed {op_of(msg)!r}", str(e))
        except Exception:  # a bug must not take the center down with every task
            logger.exception("failed to handle %r; dropped it", op_of(msg))

    def _log_handshake_failures(self) -> None:
        for _ in range(100):
            try:
                frames = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # A monitor event: 16-bit event number and 32-bit value, native
            # order, then the endpoint. (pyzmq's own parser imports asyncio:
            # 45 ms of the center's start.)
            event, value = struct.unpack("=HI", frames[0][:6]) if len(frames[0]) >= 6 \
                else (0, 0)
            self.dropped.warning("refused a connection that failed the handshake (no keys, "
                                 "keys of another cluster, or not a zfutures peer)",
                                 f"event {event}, value {value}")

    def _register_client(self, ident: bytes, msg: RegisterClient, frames: list) -> None:
        if not self._check_protocol(ident, msg.protocol):
            return
        self.peers[ident] = self._new_peer(CLIENT)
        self.scheduler.add_client(ident, msg.name)
        self._send(ident, Welcome(protocol=protocol.PROTOCOL_VERSION,
                                  max_message_size=self.max_message_size,
                                  address=self.address, dashboard=self.dashboard_link))

    def _register_worker(self, ident: bytes, msg: RegisterWorker, frames: list) -> None:
        if not self._check_protocol(ident, msg.protocol):
            return
        if not 1 <= msg.nthreads <= 100_000 or msg.memory_limit < 0:
            reason = (f"nthreads {msg.nthreads} and memory_limit "
                      f"{msg.memory_limit}: a worker needs at least one thread")
            self.dropped.warning("refused a worker", reason)
            self._send(ident, Refused(reason))
            return
        keys, nbytes = msg.keys, msg.nbytes or []
        if len(nbytes) != len(keys):
            nbytes = [0] * len(keys)
        self.peers[ident] = self._new_peer(WORKER)
        self._send(ident, Welcome(protocol=protocol.PROTOCOL_VERSION))
        self.scheduler.add_worker(ident, msg.address, msg.name, msg.nthreads,
                                  msg.memory_limit, msg.resources, dict(zip(keys, nbytes)))
        logger.info("worker %s joined (%d threads)", msg.address, msg.nthreads)

    def _register_nanny(self, ident: bytes, msg: RegisterNanny, frames: list) -> None:
        if self._check_protocol(ident, msg.protocol):
            self.peers[ident] = self._new_peer(NANNY)

    def _new_peer(self, role: str) -> _Peer:
        now = time.monotonic()
        return _Peer(role, self.listening.time(now), now)

    def _worker_died(self, ident: bytes, msg: WorkerDied, frames: list) -> None:
        """A nanny saw its worker process exit: no need to wait for heartbeats."""
        ws = self.scheduler.workers_by_address.get(msg.address)
        if ws is not None:
            logger.warning("worker %s died (its nanny says)", ws.address)
            self._forget_peer(ws.ident)

    def _check_protocol(self, ident: bytes, version: int) -> bool:
        if version == protocol.PROTOCOL_VERSION:
            return True
        reason = (f"protocol version {version} is not the center's "
                  f"{protocol.PROTOCOL_VERSION}: install the same zfutures version everywhere")
        self.dropped.warning("refused a peer", reason)
        self._send(ident, Refused(reason))
        return False

    def _submit(self, ident: bytes, msg: Submit, frames: list) -> None:
        items = msg.tasks
        protocol.unpack_items(items, frames)  # checks the counts before anything changes
        # Small payloads are slices of one packed frame: copied out, so that a
        # task that stays does not keep its whole batch in memory.
        below = protocol.PACK_BELOW
        self.scheduler.submit(ident, items, [bytes(f) if f.nbytes < below else f
                                             for f in frames], msg.seq)

    def _task_finished(self, ident: bytes, msg: TaskFinished, frames: list) -> None:
        finished = self.scheduler.task_finished
        for item, value in protocol.unpack_items(msg.tasks, frames):
            finished(ident, item, value or None)

    def _task_erred(self, ident: bytes, msg: TaskErred, frames: list) -> None:
        for item, exception in protocol.unpack_items(msg.tasks, frames):
            # Kept while the task stays erred: copied out of the packed frame.
            self.scheduler.task_erred(ident, item, [bytes(f) for f in exception])

    def _keys_added(self, ident: bytes, msg: KeysAdded, frames: list) -> None:
        for item in msg.tasks:
            self.scheduler.keys_added(ident, item)

    def _release(self, ident: bytes, msg: Release, frames: list) -> None:
        self.scheduler.release(ident, msg.keys)

    def _update_data(self, ident: bytes, msg: UpdateData, frames: list) -> None:
        self.scheduler.update_data(ident, msg.items, msg.seq)

    def _missing_data(self, ident: bytes, msg: MissingData, frames: list) -> None:
        self.scheduler.missing_data(ident, msg)

    def _task_seceded(self, ident: bytes, msg: TaskSeceded, frames: list) -> None:
        self.scheduler.task_seceded(ident, msg)

    def _task_accepted(self, ident: bytes, msg: TaskAccepted, frames: list) -> None:
        self.scheduler.task_accepted(ident, msg)

    def _task_refused(self, ident: bytes, msg: TaskRefused, frames: list) -> None:
        self.scheduler.task_refused(ident, msg)

    def _retire(self, ident: bytes, msg: Retire, frames: list) -> None:
        self.scheduler.retire_worker(ident)

    def _paused(self, ident: bytes, msg: Paused, frames: list) -> None:
        ws = self.scheduler.workers.get(ident)
        if ws is not None and ws.paused != msg.paused:
            if msg.paused:
                logger.warning("worker %s paused: its process is over its memory's pause mark "
                               "(limit %s); it starts no task until memory falls",
                               ws.address, format_bytes(ws.memory_limit))
            else:
                logger.info("worker %s resumed: its memory fell", ws.address)
        self.scheduler.worker_paused(ident, msg.paused)

    def _sync(self, ident: bytes, msg: Sync, frames: list) -> None:
        self.scheduler.sync(ident, msg.keys)

    def _heartbeat(self, ident: bytes, msg: Heartbeat, frames: list) -> None:
        """Any message a peer sends tells it is alive; a worker's heartbeat
        also says how much memory and CPU its process uses, and where its
        results are (bytes in memory, bytes on disk)."""
        if msg.memory is not None or msg.cpu is not None or msg.managed is not None \
                or msg.spilled is not None:
            ws = self.scheduler.workers.get(ident)
            had_spilled = ws is not None and ws.spilled > 0
            self.scheduler.worker_heartbeat(ident, msg.memory, msg.cpu, msg.managed,
                                            msg.spilled)
            if ws is not None and (ws.spilled > 0) != had_spilled:  # (once per change)
                if had_spilled:
                    logger.info("worker %s has no more results on disk", ws.address)
                else:
                    logger.info("worker %s spills results to disk: %s on disk, %s in "
                                "memory, its process %s", ws.address, format_bytes(ws.spilled),
                                format_bytes(managed_bytes(ws)), format_bytes(ws.rss))

    def _who_has(self, ident: bytes, msg: WhoHas, frames: list) -> None:
        self._send(ident, Reply(msg.id, self.scheduler.who_has(msg.keys)))

    def _scheduler_info(self, ident: bytes, msg: SchedulerInfo, frames: list) -> None:
        info = self.scheduler.info()
        info["address"] = self.address
        info["dashboard"] = self.dashboard_link
        self._send(ident, Reply(msg.id, info))

    def _has_what(self, ident: bytes, msg: HasWhat, frames: list) -> None:
        self._send(ident, Reply(msg.id, self.scheduler.has_what()))

    def _describe_key(self, ident: bytes, msg: DescribeKey, frames: list) -> None:
        self._send(ident, Reply(msg.id, self.scheduler.describe_key(msg.key)))

    # ------------------------------------------------------------------ watchers

    def _watch(self, ident: bytes, msg: Watch, frames: list) -> None:
        """A client watches: it is sent ``events`` from the next tick on, the
        first with every task group."""
        self.watchers[ident] = bool(msg.stream)
        self._new_watchers.add(ident)
        self._watched()

    def _unwatch(self, ident: bytes, msg: Unwatch, frames: list) -> None:
        if self.watchers.pop(ident, None) is not None:
            self._new_watchers.discard(ident)
            self._watched()

    def _watched(self) -> None:
        """The watchers changed: the scheduler observes while there are any,
        and records the task stream while one of them wants it."""
        if self.watchers:
            self.scheduler.watch(stream=any(self.watchers.values()))
        else:
            self.scheduler.unwatch()

    def _send_events(self, now: float) -> None:
        """Tell the watchers what changed since the last tick (see
        messages.Events): the task stream only to those that asked for it."""
        observer = self.scheduler.observer
        if observer is None:
            return
        listened = self.listening.time(now)
        peers = self.peers
        silent = {ident: max(0.0, listened - peers[ident].last_heard)
                  for ident in self.scheduler.workers if ident in peers}
        totals = self.scheduler.run_totals
        counters = {"messages": self.messages,
                    "transfer_bytes": self.scheduler.transfer_bytes,
                    "tasks": self.scheduler.submitted_tasks,
                    "finished": totals.finished, "failed": totals.failed}
        new = self._new_watchers
        events = observer.take(time.time(), self.scheduler.workers.values(), silent, counters,
                               force=bool(new))
        if events is None:
            return
        everything = events._replace(groups=observer.all_groups()) if new else events
        for ident, stream in self.watchers.items():
            msg = everything if ident in new else events
            if not stream and (msg.runs or msg.transfers):
                msg = msg._replace(runs=[], transfers=[])
            self._send(ident, msg)
        new.clear()

    def _goodbye(self, ident: bytes, msg: CloseClient | Unregister, frames: list) -> None:
        """A client closes, or a worker leaves: it is forgotten at once."""
        self._forget_peer(ident)

    def _forget_peer(self, ident: bytes) -> None:
        peer = self.peers.pop(ident, None)
        if peer is None:
            return
        if ident in self.watchers:
            self._unwatch(ident, Unwatch(), [])
        if peer.role == WORKER:
            ws = self.scheduler.workers.get(ident)
            logger.info("worker %s left", ws.address if ws else ident)
            self.scheduler.remove_worker(ident)
        else:
            self.scheduler.remove_client(ident)

    # ------------------------------------------------------------------ timers

    def _tick(self, now: float) -> None:
        """Heartbeat idle peers; declare silent ones gone; end recovery."""
        if self.scheduler.recovering and now >= self.recovery_ends:
            self.scheduler.end_recovery()
        if now >= self._next_sweep:
            self._next_sweep = now + DIRECT_SWEEP
            self.scheduler.sweep_direct()
        self._give_back_memory()
        listened = self.listening.time(now)
        for ident, peer in list(self.peers.items()):
            if peer.role == NANNY:
                continue  # nannies register again with each report
            limit = self.worker_timeout if peer.role == WORKER else self.client_timeout
            if listened - peer.last_heard > limit:
                logger.warning("%s %r silent for %.1fs: removing it", peer.role, ident,
                               listened - peer.last_heard)
                self._forget_peer(ident)
            elif now - peer.last_sent >= self.heartbeat_interval:
                self._send(ident, Heartbeat())

    def _give_back_memory(self) -> None:
        """Once a large graph is all forgotten, hand its memory back to the system.

        Python keeps the tables of emptied dicts and sets, and the C allocator
        keeps freed memory for reuse: a center that ran 100,000 tasks would stay
        at its peak while idle. So, when the scheduler has gone from many tasks
        to none, its largest tables are made anew and glibc is asked to trim.
        """
        count = len(self.scheduler.tasks)
        if count > self._peak_tasks:
            self._peak_tasks = count
        if count or self._peak_tasks < TRIM_AFTER_TASKS:
            return
        self._peak_tasks = 0
        self.scheduler.compact()
        gc.collect()
        release_free_memory()

    # ------------------------------------------------------------------ output

    def _flush(self) -> None:
        for ident, msg, frames in self.scheduler.outbox.take():
            self._send(ident, msg, frames)

    def _send(self, ident: bytes, msg: Any, frames: Sequence[Any] = ()) -> None:
        """Send ``msg`` (a class of :mod:`zfutures.messages`) with its payload."""
        try:
            send_frames(self.socket, [ident, *protocol.encode_message(msg, frames)], _NOBLOCK)
        except zmq.ZMQError as e:
            # EHOSTUNREACH: the peer is gone, which heartbeats or its nanny will
            # report; routine at shutdown, so not worth a warning.
            op = op_of(msg)
            if e.errno == zmq.EHOSTUNREACH:
                logger.debug("could not send %r to a peer that is gone", op)
            elif e.errno == zmq.EAGAIN:
                self.dropped.warning(f"dropped {op!r} to a peer that does not read "
                                     f"({SNDHWM} messages queued for it)")
            else:
                self.dropped.warning(f"could not send {op!r}", str(e))
            return
        peer = self.peers.get(ident)
        if peer is not None:
            peer.last_sent = time.monotonic()


class Op(NamedTuple):
    """How the center takes one op from its peers."""

    #: The Center method that handles it: (center, ident, message, payload frames).
    handle: Callable[[Center, bytes, Any, list], None]
    #: The roles that may send it: from any other, it is dropped (and logged).
    senders: tuple[str | None, ...]
    #: A peer the center does not know that sends it is asked to register
    #: again (``reregister``), for it believes it is registered: it was a
    #: peer of an earlier center, or one this center gave up on.
    reregister: bool = False


#: Every op a peer may send the center, by its message class. Anything else
#: is dropped, and logged.
OPS: dict[type, Op] = {
    RegisterClient: Op(Center._register_client, (UNREGISTERED, CLIENT)),
    RegisterWorker: Op(Center._register_worker, (UNREGISTERED, WORKER)),
    RegisterNanny: Op(Center._register_nanny, (UNREGISTERED, NANNY)),
    Heartbeat: Op(Center._heartbeat, (CLIENT, WORKER, NANNY), reregister=True),
    # client -> center
    Submit: Op(Center._submit, (CLIENT,), reregister=True),
    Release: Op(Center._release, (CLIENT,), reregister=True),
    UpdateData: Op(Center._update_data, (CLIENT,), reregister=True),
    WhoHas: Op(Center._who_has, (CLIENT,), reregister=True),
    SchedulerInfo: Op(Center._scheduler_info, (CLIENT,), reregister=True),
    HasWhat: Op(Center._has_what, (CLIENT,), reregister=True),
    DescribeKey: Op(Center._describe_key, (CLIENT,), reregister=True),
    Watch: Op(Center._watch, (CLIENT,), reregister=True),
    Unwatch: Op(Center._unwatch, (CLIENT,)),
    CloseClient: Op(Center._goodbye, (CLIENT,)),
    # worker -> center
    TaskFinished: Op(Center._task_finished, (WORKER,), reregister=True),
    TaskErred: Op(Center._task_erred, (WORKER,), reregister=True),
    KeysAdded: Op(Center._keys_added, (WORKER,), reregister=True),
    MissingData: Op(Center._missing_data, (WORKER,), reregister=True),
    TaskSeceded: Op(Center._task_seceded, (WORKER,), reregister=True),
    TaskAccepted: Op(Center._task_accepted, (WORKER,), reregister=True),
    TaskRefused: Op(Center._task_refused, (WORKER,), reregister=True),
    Retire: Op(Center._retire, (WORKER,), reregister=True),
    Paused: Op(Center._paused, (WORKER,), reregister=True),
    Sync: Op(Center._sync, (WORKER,), reregister=True),
    Unregister: Op(Center._goodbye, (WORKER,)),
    # nanny -> center
    WorkerDied: Op(Center._worker_died, (NANNY,)),
}


def asks_to_register(rule: Op | None, role: str | None) -> bool:
    """Whether a peer of ``role`` that sent an op of ``rule`` (None: an op the
    center does not take) is asked to register again rather than dropped."""
    return role is UNREGISTERED and rule is not None and rule.reregister
