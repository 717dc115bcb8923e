"""The worker process: its sockets and poll loop around WorkerState.

One thread at a time, the loop thread, owns every socket:

- a DEALER to the center, for tasks in and reports out: the center's
  messages go to the handlers of :attr:`Worker.center_handlers`;
- a ROUTER data server, from which peers and clients fetch results
  (worker_data.DataServer);
- a DEALER per peer it fetches inputs from (worker_data.Fetcher).

Each turn of the loop handles what came, then the timers, then sends what
the state machine asked for. Tasks run on task threads, or on the loop
thread itself (task_runner.py); the thread that calls :meth:`Worker.run`
only waits, so signals reach it at once.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from . import protocol
from .addressing import (
    LOCAL_TRANSPORT,
    bind_ephemeral,
    configure,
    interface_towards,
    local_endpoint,
    normalize_address,
)
from .errors import ProtocolError
from .logs import RateLimitedLog
from .loop import SLICE, ListeningClock, Waker, drain, send
from .memory_thresholds import MemoryThresholds
from .messages import (
    Acquire,
    Closing,
    Compute,
    DoneItem,
    DropDirect,
    FailedItem,
    Heartbeat,
    KeyAdded,
    KeysAdded,
    Paused,
    Refused,
    RegisterWorker,
    ReleaseKeys,
    Reregister,
    Retired,
    Synced,
    TaskErred,
    TaskFinished,
    Unregister,
    Welcome,
    WorkersLeft,
    op_of,
)
from .processes import own_rss, release_free_memory
from .protocol import Frames, unpack_items
from .task_runner import LoopMoved, TaskRunner
from .worker_data import DataServer, Fetcher, contained
from .worker_disk import SpillThreads
from .worker_state import Report, WorkerState

logger = logging.getLogger(__name__)
dropped = RateLimitedLog(logger)

#: A worker idle this long (seconds) after running tasks or releasing results
#: gives the memory they freed back to the system. Not sooner: reusing it is
#: what makes a burst of tasks on big arrays fast (processes._HUGE_PAGES_TUNABLE).
GIVE_BACK_AFTER = 1.0

#: How often (seconds) a worker with a memory limit measures its process's
#: memory while it works (when idle: every heartbeat interval). Between
#: measures, results that come in are counted at once (see
#: MemoryManager.estimated_rss); what a running task allocates is seen here.
MEMORY_CHECK_INTERVAL = 0.05

#: Reports to the center that travel many to a message: the item's class ->
#: the message that carries a list of them.
_BATCHED: dict[type, Callable[[list[Any]], Any]] = {
    DoneItem: TaskFinished, FailedItem: TaskErred, KeyAdded: KeysAdded}


class CpuMeter:
    """This process's CPU use between two readings, in percent of one core."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), self._used())

    @staticmethod
    def _used() -> float:
        times = os.times()
        return times.user + times.system

    def percent(self, now: float) -> float:
        """Since the last reading (``now``: time.monotonic())."""
        used = self._used()
        then, before = self._last
        self._last = (now, used)
        elapsed = now - then
        return round(100.0 * max(0.0, used - before) / elapsed, 1) if elapsed > 0 else 0.0


class Worker:
    """Serve tasks for the center at ``center_address`` until :meth:`stop`.

    >>> worker = Worker("127.0.0.1:8787", nthreads=2)   # doctest: +SKIP
    >>> worker.run()                                     # doctest: +SKIP
    """

    def __init__(self, center_address: str, *, nthreads: int = 1, name: str | None = None,
                 host: str | None = None, port: int = 0, memory_limit: int = 0,
                 resources: dict[str, float] | None = None,
                 heartbeat_interval: float = 0.5, heartbeat_timeout: float = 5.0,
                 fetch_timeout: float = 10.0, retire_timeout: float = 10.0,
                 security: Any = None, max_message_size: int = protocol.MAX_MESSAGE_SIZE,
                 memory_thresholds: MemoryThresholds | None = None,
                 spill_dir: str | None = None):
        self.center_address = normalize_address(center_address)
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.resources = resources or {}
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.security = security
        self.context = zmq.Context()
        self.auth = security.authenticator(self.context) if security is not None else None
        server = configure(self.context.socket(zmq.ROUTER), security)
        server.setsockopt(zmq.MAXMSGSIZE, max_message_size)  # e.g. scattered data
        host = host or interface_towards(self.center_address)
        self.address = bind_ephemeral(server, host, port)
        if LOCAL_TRANSPORT:  # peers in this network namespace come this way
            server.bind(local_endpoint(self.address))
        self.name = name or self.address
        self.state = WorkerState(self.address, nthreads, fetch_timeout, memory_limit,
                                 retire_timeout, memory_thresholds)
        self.center: zmq.Socket[Any] | None = None
        self.poller = zmq.Poller()
        self.poller.register(server, zmq.POLLIN)
        self.waker = Waker()
        self.poller.register(self.waker.read_fd, zmq.POLLIN)
        # Calls for the loop thread, made by other threads: (function, args).
        self.inbox: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = \
            queue.SimpleQueue()
        self.executor: Any = None  # a client for tasks that submit tasks (executor.get_executor)
        self.state.measure_rss = own_rss
        self.disk = SpillThreads(spill_dir, self.state, self.call_soon)
        self.data_server = DataServer(server, self.state, self.call_soon, dropped, self.disk)
        self.fetcher = Fetcher(self.state, self.context, self.poller, security,
                               self.call_soon, dropped)
        self._closed = threading.Event()
        self.runner = TaskRunner(self, self.state, nthreads, self.call_soon, self._serve,
                                 self._closed)
        #: The center's messages: their class -> handler(message, payload frames, now).
        self.center_handlers: dict[type, Callable[[Any, Frames, float], None]] = {
            Compute: self._compute, ReleaseKeys: self._release_keys,
            DropDirect: self._drop_direct, Acquire: self._acquire,
            Synced: self._synced,
            WorkersLeft: self._workers_left, Welcome: self._welcome,
            Reregister: self._reregister, Refused: self._refused,
            Closing: self._center_closing, Retired: self._retired,
            Heartbeat: lambda msg, frames, now: None}  # (heard: see _on_center_message)
        self.registered = False
        self._stopping = False
        self._leave_requested = False
        self._last_heard = self._next_timeout_check = 0.0
        self._last_heartbeat = 0.0  # sent every interval, busy or not (see _heartbeat)
        self.cpu = CpuMeter()
        self._rss = (0, -1e9)  # (the last memory measured, and when: see _heartbeat)
        self._next_memory_check = 0.0
        self.state.wall_offset = time.time() - time.monotonic()
        # The center is silent for the time this loop could have heard it:
        # its own stretches of work past a heartbeat interval do not count.
        self.listening = ListeningClock(heartbeat_interval, time.monotonic())
        self._center_closed = False  # it said it was going
        # Tasks ran or results were released since memory was last given back.
        self._trim_due = False
        self._last_busy = 0.0
        self._loop_error: BaseException | None = None

    # ------------------------------------------------------------------ life cycle

    def run(self) -> None:
        """Serve until :meth:`stop` is called (from a signal handler or a thread)."""
        self.runner.start()
        self._connect()
        logger.info("worker %s serving for %s", self.address, self.center_address)
        threading.Thread(target=self._serve, daemon=True, name="zfutures-loop").start()
        while not self._closed.wait(1.0):  # (wakes for signals meanwhile)
            pass
        if self._loop_error is not None:
            raise self._loop_error

    def stop(self) -> None:
        """Leave gracefully; safe from signal handlers and other threads.

        The keys only this worker holds are first handed on to other workers
        (for at most ``retire_timeout`` seconds); a second call leaves at once.
        """
        if self._leave_requested:
            self._stopping = True
        self._leave_requested = True
        self.state.closing = True  # (clients' lone tasks go through the center now)
        self.waker.wake()

    def secede(self, key: str) -> None:
        """Called from the thread running ``key``, which waits on futures (context.secede)."""
        self.runner.secede(key)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Have the loop thread call ``fn(*args)``; safe from any thread."""
        self.inbox.put((fn, args))
        self.waker.wake()

    def _serve(self) -> None:
        """Run the loop on this thread until the worker stops, or until the
        standby takes it over while this thread runs a task (see task_runner.py)."""
        try:
            while not self._stopping:
                self._loop_once()
        except LoopMoved:
            return
        except BaseException as exc:  # noqa: B036 - run() raises it, once closed
            logger.exception("the worker loop failed")
            self._loop_error = exc
        try:
            self._close()
        finally:
            self._closed.set()
            self.runner.release_standby()

    def _connect(self) -> None:
        """(Re)connect to the center and register, announcing the keys held here."""
        if self.center is not None:
            self.poller.unregister(self.center)
            self.center.close(linger=0)
        self.center = configure(self.context.socket(zmq.DEALER), self.security)
        self.center.setsockopt(zmq.ROUTING_ID, b"w-" + uuid.uuid4().hex.encode())
        self.center.connect(self.center_address)
        self.poller.register(self.center, zmq.POLLIN)
        self._last_heard = self.listening.time(time.monotonic())
        self._register()

    def _register(self) -> None:
        """Announce this worker and the keys it holds; the center answers ``welcome``."""
        self.registered = False
        self.state.forget_queue()
        keys = list(self.state.nbytes)
        self._send_center(RegisterWorker(
            protocol.PROTOCOL_VERSION, self.address, self.name, self.nthreads,
            self.memory_limit, self.resources, keys, [self.state.nbytes.get(k, 0) for k in keys]))
        if self.state.paused:
            self._send_center(Paused(True))

    def _close(self) -> None:
        if self.center is not None and self.registered:
            try:
                self.center.send_multipart(protocol.encode_message(Unregister()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        if self.executor is not None:
            self.executor.shutdown(wait=False)
        self.runner.stop()
        self.disk.close()  # (the spill directory goes, with its files)
        self.fetcher.close()
        self.data_server.server.close(linger=0)
        if self.center is not None:
            self.center.close(linger=100)
        if self.auth is not None:
            self.auth.stop()
        self.context.term()
        self.waker.close()
        logger.info("worker %s stopped", self.address)

    # ------------------------------------------------------------------ the loop

    def _loop_once(self) -> None:
        now = time.monotonic()
        timeout_ms = max(0, int(1000 * (self._last_heartbeat + self.heartbeat_interval - now)))
        held_until = self.state.held_until
        if held_until is not None:  # (+1: poll's milliseconds must not round to 0)
            timeout_ms = min(timeout_ms, max(0, int(1000 * (held_until - now)) + 1))
        if self.memory_limit and self.state.executing:  # (a task may be filling memory)
            timeout_ms = min(timeout_ms, max(0, int(1000 * (self._next_memory_check - now)) + 1))
        self.listening.polling(now)
        events = dict(self.poller.poll(int(min(timeout_ms, 1000 * self.heartbeat_interval))))
        now = time.monotonic()
        self.listening.working(now)
        # One slice of work, each socket read at least once, then the timers.
        until = now + SLICE
        center = self.center
        if center is not None and center in events:
            drain(center, self._on_center_message, dropped, until=until)
        if self.data_server.server in events:
            drain(self.data_server.server, self.data_server.on_request, dropped, until=until)
        self.fetcher.drain(events, until)
        if self.waker.read_fd in events:
            self.waker.drain()
        self._take_inbox(until)
        if now >= self._next_timeout_check:  # timeouts are seconds long: no need to scan
            self._next_timeout_check = now + self.heartbeat_interval  # requests per message
            self.state.check_timeouts(now)
            self.data_server.expire_leases(now)
            self.data_server.read_next(now)  # (requests that waited for room long enough)
            self._give_back_memory(now)
        if now >= self._next_memory_check:
            self._check_memory(now)
        self._flush()
        if self._center_closed:
            self._center_closed = False
            self._connect()  # (its registration waits for the next center)
        if self._leave_requested and not self._stopping:
            self._stopping = self.state.leave(now, self.registered)
            self._flush()  # (a retire goes after this turn's reports, at once)
        silent = self.listening.time(now) - self._last_heard
        if silent > self.heartbeat_timeout:
            logger.warning("no word from the center at %s for %.1fs; reconnecting",
                           self.center_address, silent)
            self._connect()
        elif now - self._last_heartbeat >= self.heartbeat_interval:
            self._heartbeat(now)
        if self.runner.job is not None:  # (a lone task set aside for this thread)
            self.runner.run_set_aside(self._flush)

    def _heartbeat(self, now: float) -> None:
        """Every heartbeat interval, busy or not: the center hears this worker
        is alive, how much memory and CPU its process uses, and how many bytes
        of results it holds in memory and on disk (a few bytes)."""
        self._last_heartbeat = now
        # (the wall clock may have been set meanwhile: transfers' times follow it)
        self.state.wall_offset = time.time() - now
        # (the memory check of this turn measured it already, if there is a limit)
        rss, measured = self._rss
        if now - measured >= self.heartbeat_interval:
            rss = own_rss()
        memory = self.state.memory
        self._send_center(Heartbeat(rss, self.cpu.percent(now), memory.managed, memory.spilled))

    def _take_inbox(self, until: float) -> None:
        """Make the calls other threads asked for, until the slice is over."""
        inbox = self.inbox
        while True:
            try:
                fn, args = inbox.get_nowait()
            except queue.Empty:
                return
            fn(*args)
            if time.monotonic() >= until:
                if not inbox.empty():
                    self.waker.wake()  # (the next turn polls without waiting)
                return

    def _give_back_memory(self, now: float) -> None:
        """Once idle for a while after work, return the memory it freed."""
        if self.state.executing or self.state.fetching.fetches:
            self._last_busy = now
        elif self._trim_due and now - self._last_busy >= GIVE_BACK_AFTER:
            self._trim_due = False
            release_free_memory()

    def _check_memory(self, now: float) -> None:
        """Tell the state machine how much memory this process holds: it
        moves results to disk, pauses or resumes (see worker_memory.py)."""
        self._next_memory_check = now + MEMORY_CHECK_INTERVAL
        state = self.state
        if not self.memory_limit:
            return
        rss = own_rss()
        if self._trim_due and state.memory.high(rss):
            self._trim_due = False  # (until more is freed: not at every check)
            release_free_memory()  # what is only free to reuse should not count
            rss = own_rss()
        self._rss = rss, now
        state.memory_measured(rss)

    # ------------------------------------------------------------------ the center's messages

    @contained
    def _on_center_message(self, frames: Frames) -> None:
        now = time.monotonic()
        self._last_heard = self.listening.time(now)
        msg, frames = protocol.decode_message(frames)
        handler = self.center_handlers.get(type(msg))
        if handler is None:
            raise ProtocolError(f"a worker has no use for {op_of(msg)!r} from the center")
        handler(msg, frames, now)

    def _compute(self, msg: Compute, frames: Frames, now: float) -> None:
        compute = self.state.compute
        for item, payload in unpack_items(msg.tasks, frames):
            compute(item, payload, now)

    def _release_keys(self, msg: ReleaseKeys, frames: Frames, now: float) -> None:
        self.state.release(msg.keys)
        self._trim_due = True

    def _drop_direct(self, msg: DropDirect, frames: Frames, now: float) -> None:
        for item in msg.tasks:
            self.state.drop_direct(item, now)

    def _acquire(self, msg: Acquire, frames: Frames, now: float) -> None:
        for item in msg.tasks:
            self.state.acquire(item, now)

    def _synced(self, msg: Synced, frames: Frames, now: float) -> None:
        self.state.synced(msg.keys)

    def _workers_left(self, msg: WorkersLeft, frames: Frames, now: float) -> None:
        for address in msg.addresses:
            self.fetcher.peer_left(address, now)

    def _welcome(self, msg: Welcome, frames: Frames, now: float) -> None:
        self.registered = True
        logger.info("registered with the center at %s", self.center_address)

    def _reregister(self, msg: Reregister, frames: Frames, now: float) -> None:
        if self.registered:  # (else our registration is on its way already)
            logger.warning("the center at %s does not know this worker (it restarted?); "
                           "registering again with %d keys", self.center_address,
                           len(self.state.nbytes))
            self._register()

    def _refused(self, msg: Refused, frames: Frames, now: float) -> None:
        logger.error("the center refused this worker: %s", msg.reason)
        self.stop()

    def _center_closing(self, msg: Closing, frames: Frames, now: float) -> None:
        logger.info("the center at %s is closing; keeping %d keys for it to come back",
                    self.center_address, len(self.state.nbytes))
        self._center_closed = True  # (reconnects after this drain: see _loop_once)

    def _retired(self, msg: Retired, frames: Frames, now: float) -> None:
        logger.info("worker %s handed its keys on; leaving", self.address)
        self.state.closing = self._stopping = True

    # ------------------------------------------------------------------ output

    def _flush(self) -> None:
        """Send what the state machine asked for since the last flush."""
        state = self.state
        if state.to_execute:
            self._last_busy = time.monotonic()  # (see _give_back_memory)
            self._trim_due = True  # (tasks free what they used, too)
            self.runner.start_tasks(self._stopping)
        if state.to_clients:
            for client, result, frames in state.to_clients:
                self.data_server.send_result(client, result, frames)
            state.to_clients.clear()
        if state.stored:
            for client, stored in state.stored:
                self.data_server.send_stored(client, stored)
            state.stored.clear()
        if self.data_server.waiting_for_room:  # (memory may have freed since)
            self.data_server.read_next()
        if state.fetching.held_back:  # (inputs held back while memory was short)
            state.to_fetch += state.request_inputs(time.monotonic())
        if state.to_fetch:
            for request in state.to_fetch:
                self.fetcher.request(*request)
            state.to_fetch.clear()
        if state.to_spill:
            self.disk.submit(state.to_spill)
            state.to_spill.clear()
        changes = state.memory.take_changes()
        if changes:
            for change in changes:
                logger.log(change.level, "worker %s %s", self.address, change)
        if state.to_center or state.held:
            self._report(state.take_reports(time.monotonic()))

    def _report(self, reports: list[Report]) -> None:
        """Send reports to the center in their order: the items of each class
        of _BATCHED in one message per run of them, a message of its own as
        it is. The order matters: a pause told before the completions that
        came first would have the center take back, as queued, a task the
        worker already runs (and drop its result)."""
        batches: dict[type, tuple[list[Any], Frames]] = {}
        for report, frames in reports:
            kind = type(report)
            if kind in _BATCHED:
                items, all_frames = batches.setdefault(kind, ([], []))
                items.append(report)
                if frames:
                    all_frames.extend(frames)
            else:
                self._send_batches(batches)
                self._send_center(report)
        self._send_batches(batches)

    def _send_batches(self, batches: dict[type, tuple[list[Any], Frames]]) -> None:
        for kind, (items, frames) in batches.items():
            self._send_center(_BATCHED[kind](items), frames)
        batches.clear()

    def _send_center(self, msg: Any, frames: Frames | None = None) -> None:
        assert self.center is not None  # (connected before the loop starts)
        send(self.center, protocol.encode_message(msg, frames or ()), dropped,
             f"{op_of(msg)!r} to the center")
