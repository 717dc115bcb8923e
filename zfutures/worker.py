"""The worker process: sockets, task threads and a poll loop around WorkerState.

One thread at a time, the loop thread, owns every socket:

- a DEALER to the center, for tasks in and reports out;
- a ROUTER data server, from which peers and clients fetch results;
- a DEALER per peer it fetches inputs from.

Task threads run user code and hand results back through a queue and a
:class:`~zfutures.loop.Waker`, so the loop never blocks on a task and keeps
heartbeating while tasks run. Short tasks are handed over a few at a time
(see ``HAND_AHEAD_TIME`` in worker_state.py), and a small result a client
waits for is pickled on the task thread and sent with the completion.

A lone task a client sent straight here runs on the loop thread itself when
no other task waits for a thread (see ``LOOP_RUN_CHECK``): its client waits on
each hop, and a handoff between threads costs tens of microseconds where the
wakeup crosses CPUs. Should it run long, a standby thread takes the loop
over, and the task finishes where it started, as on a task thread. The
thread that calls :meth:`Worker.run` only waits, so signals reach it at once.
"""
from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from . import context, peer_memory, protocol, remote_errors, serialize
from .addressing import (
    LOCAL_TRANSPORT,
    bind_ephemeral,
    configure,
    interface_towards,
    local_endpoint,
    normalize_address,
    peer_endpoint,
)
from .errors import ProtocolError
from .logs import RateLimitedLog
from .loop import SLICE, ListeningClock, Waker, close_drained, drain, send, send_frames
from .processes import own_rss, release_free_memory
from .worker_state import Task, WorkerState

logger = logging.getLogger(__name__)
dropped = RateLimitedLog(logger)

#: A worker idle this long (seconds) after running tasks or releasing results
#: gives the memory they freed back to the system. Not sooner: reusing it is
#: what makes a burst of tasks on big arrays fast (processes._HUGE_PAGES_TUNABLE).
GIVE_BACK_AFTER = 1.0

#: How often (seconds) the standby thread looks at a task running on the loop
#: thread: if the same one runs at two looks, it takes the loop over. A task
#: may so hold the loop for up to twice this; heartbeats are far apart.
LOOP_RUN_CHECK = 0.002

#: The standby thread sleeps once no task has run on the loop thread for this
#: long (seconds), so an idle worker does not wake every LOOP_RUN_CHECK.
STANDBY_IDLE = 0.5

#: Reports to the center that travel many to a message, and their list field.
_BATCHED = {"task-finished": "tasks", "task-erred": "tasks", "keys-added": "tasks"}



# User code may raise any BaseException where a worker pickles, unpickles or
# measures a value (a __reduce__ that raises SystemExit): on a task thread it
# would end the thread, on the loop thread the worker. Neither thread is the
# main one, which alone receives KeyboardInterrupt from a signal, so every
# BaseException met there is user code's, and caught as an error of the value.


describe = remote_errors.describe


def pickle_exception(exc: BaseException) -> list:
    """Frames of the exception and its traceback for the client to re-raise
    (see remote_errors.py: the client fills in source lines not found here)."""
    return remote_errors.pickle_exception(exc)


def _contained(handle: Callable[..., None]) -> Callable[..., None]:
    """A message handler, with a BaseException of user code (see above) raised
    as an error that :func:`loop.drain` logs and drops, like any failing message."""
    @functools.wraps(handle)
    def contained(*args: Any) -> None:
        try:
            handle(*args)
        except Exception:
            raise
        except BaseException as exc:  # noqa: B036 - user code (see above)
            raise RuntimeError(describe(exc)) from exc
    return contained


#: Functions unpickled before, shared by the task threads (see serialize.loads_task).
_functions: dict = {}


#: Results up to this size (bytes, estimated) travel with the task's completion
#: to the clients waiting for them, saving the fetch that would follow.
SEND_RESULT_LIMIT = 16 * 1024


def run_task(task: Task, inputs: dict[str, Any]) -> tuple:
    """Unpickle and run one task:
    ``(key, value, nbytes, duration, error frames, pickled value or None)``."""
    start = time.perf_counter()
    try:
        fn, args, kwargs = serialize.loads_task(task.payload, inputs, _functions)
        value = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: B036 - a task's failure must reach its future
        return task.key, None, 0, time.perf_counter() - start, pickle_exception(exc), None
    duration = time.perf_counter() - start
    try:
        nbytes = serialize.sizeof(value)
    except BaseException:  # noqa: B036 - user code (see above): size unknown
        nbytes = 0
    pickled = None
    if task.send_result and nbytes <= SEND_RESULT_LIMIT:
        try:
            pickled = serialize.dumps(value)
        except BaseException:  # noqa: B036 - fetched, and its error reported, the usual way
            pickled = None
        # An object can hide big buffers from sizeof: those are fetched from
        # here, never carried through the center.
        if pickled is not None and serialize.frames_nbytes(pickled) > SEND_RESULT_LIMIT:
            pickled = None
    return task.key, value, nbytes, duration, None, pickled


class _LoopMoved(Exception):
    """The standby thread took the loop over while this thread ran a task."""


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
                 security: Any = None, max_message_size: int = protocol.MAX_MESSAGE_SIZE):
        self.center_address = normalize_address(center_address)
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.resources = resources or {}
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.security = security
        self.context = zmq.Context()
        self.auth = security.authenticator(self.context) if security is not None else None
        self.server = configure(self.context.socket(zmq.ROUTER), security)
        self.server.setsockopt(zmq.MAXMSGSIZE, max_message_size)  # e.g. scattered data
        host = host or interface_towards(self.center_address)
        self.address = bind_ephemeral(self.server, host, port)
        if LOCAL_TRANSPORT:  # peers in this network namespace come this way
            self.server.bind(local_endpoint(self.address))
        self.name = name or self.address
        self.state = WorkerState(self.address, nthreads, fetch_timeout, memory_limit,
                                 retire_timeout)
        self.center: zmq.Socket | None = None
        self.peers: dict[str, zmq.Socket] = {}
        self.poller = zmq.Poller()
        self.poller.register(self.server, zmq.POLLIN)
        self.waker = Waker()
        self.poller.register(self.waker.read_fd, zmq.POLLIN)
        # Calls for the loop thread, made by other threads: (function, args).
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.executor = None  # a client for tasks that submit tasks (context.get_executor)
        self._data_handlers = {"get-data": self._get_data, "put-data": self._put_data,
                               "run": self._run, "data-read": self._data_read,
                               "run-task": self._run_task}
        self.leases = peer_memory.Leases()  # values offered to readers on this machine
        self.reader = peer_memory.Reader()  # reads what peers on this machine offer
        self.registered = False
        self._stopping = False
        self._leave_requested = False
        self._last_sent = self._last_heard = self._next_timeout_check = 0.0
        # The center is silent for the time this loop could have heard it:
        # its own stretches of work past a heartbeat interval do not count.
        self.listening = ListeningClock(heartbeat_interval, time.monotonic())
        self._center_closed = False  # it said it was going
        # Tasks ran or results were released since memory was last given back.
        self._trim_due = False
        self._last_busy = 0.0
        # Tasks on the loop thread (see LOOP_RUN_CHECK). The lock orders a run's
        # end with the standby's takeover, and hands the sockets over safely.
        self._loop_run_lock = threading.Lock()
        self._loop_run_job: tuple[Task, dict] | None = None  # to run at the end of this turn
        self._loop_runs = 0  # counts them
        self._on_loop = 0  # the one running on the loop thread now, if any
        self._taken_during: set[int] = set()  # ones the standby took the loop over from
        self._off_pool: set[str] = set()  # keys running on a loop thread, or a former one
        self._last_loop_run = 0.0
        self._standby: threading.Thread | None = None
        self._standby_wake = threading.Event()  # set while tasks run on the loop thread
        self._closed = threading.Event()
        self._loop_error: BaseException | None = None

    # ------------------------------------------------------------------ life cycle

    def run(self) -> None:
        """Serve until :meth:`stop` is called (from a signal handler or a thread)."""
        for _ in range(self.nthreads):
            self._start_thread()
        self._connect()
        logger.info("worker %s serving for %s", self.address, self.center_address)
        threading.Thread(target=self._serve, daemon=True, name="zfutures-loop").start()
        while not self._closed.wait(1.0):  # (wakes for signals meanwhile)
            pass
        if self._loop_error is not None:
            raise self._loop_error

    def _serve(self) -> None:
        """Run the loop on this thread until the worker stops, or until the
        standby takes it over while this thread runs a task (see _run_on_loop)."""
        try:
            while not self._stopping:
                self._loop_once()
        except _LoopMoved:
            return
        except BaseException as exc:  # noqa: B036 - run() raises it, once closed
            logger.exception("the worker loop failed")
            self._loop_error = exc
        try:
            self._close()
        finally:
            self._closed.set()
            self._standby_wake.set()  # (the standby ends)

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
        keys = list(self.state.data)
        self._send_center("register-worker", protocol=protocol.PROTOCOL_VERSION,
                          address=self.address, name=self.name, nthreads=self.nthreads,
                          memory_limit=self.memory_limit, resources=self.resources,
                          keys=keys, nbytes=[self.state.nbytes.get(k, 0) for k in keys])
        if self.state.paused:
            self._send_center("paused", paused=True)

    def _close(self) -> None:
        if self.center is not None and self.registered:
            try:
                self.center.send(protocol.encode_header("unregister"), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        if self.executor is not None:
            self.executor.shutdown(wait=False)
        for _ in self.threads:
            self.work.put(None)
        self.reader.stop()
        sockets = [self.server, *self.peers.values()]
        if self.center is not None:
            sockets.append(self.center)
        for sock in sockets:
            sock.close(linger=100 if sock is self.center else 0)
        if self.auth is not None:
            self.auth.stop()
        self.context.term()
        self.waker.close()
        logger.info("worker %s stopped", self.address)

    # ------------------------------------------------------------------ the loop

    def _loop_once(self) -> None:
        now = time.monotonic()
        timeout_ms = max(0, int(1000 * (self._last_sent + self.heartbeat_interval - now)))
        held_until = self.state.held_until
        if held_until is not None:  # (+1: poll's milliseconds must not round to 0)
            timeout_ms = min(timeout_ms, max(0, int(1000 * (held_until - now)) + 1))
        self.listening.polling(now)
        events = dict(self.poller.poll(min(timeout_ms, 1000 * self.heartbeat_interval)))
        now = time.monotonic()
        self.listening.working(now)
        # One slice of work, each socket read at least once, then the timers.
        until = now + SLICE
        if self.center in events:
            drain(self.center, self._on_center_message, dropped, until=until)
        if self.server in events:
            drain(self.server, self._on_data_request, dropped, until=until)
        for address, sock in list(self.peers.items()):
            if sock in events:
                drain(sock, lambda frames, a=address: self._on_peer_data(a, frames),
                      dropped, until=until)
        if self.waker.read_fd in events:
            self.waker.drain()
        self._take_inbox(until)
        if now >= self._next_timeout_check:  # timeouts are seconds long: no need to scan
            self._next_timeout_check = now + self.heartbeat_interval  # requests per message
            self.state.check_timeouts(now)
            self.leases.expire(now)
            self._give_back_memory(now)
            self._check_memory()
        if self._leave_requested and not self._stopping:
            self._stopping = self.state.leave(now, self.registered)
        self._flush()
        if self._center_closed:
            self._center_closed = False
            self._connect()  # (its registration waits for the next center)
        silent = self.listening.time(now) - self._last_heard
        if silent > self.heartbeat_timeout:
            logger.warning("no word from the center at %s for %.1fs; reconnecting",
                           self.center_address, silent)
            self._connect()
        elif now - self._last_sent >= self.heartbeat_interval:
            self._send_center("heartbeat")
        while self._loop_run_job is not None:  # (its _flush may set the next one aside)
            self._run_on_loop()

    def _run_on_loop(self) -> None:
        """Run the task _flush set aside on this, the loop thread, and send its
        result at once; or, if the standby took the loop over meanwhile, hand
        the result to the loop as a task thread would, and leave the loop."""
        (task, inputs), self._loop_run_job = self._loop_run_job, None
        with self._loop_run_lock:
            self._loop_runs += 1
            self._on_loop = mine = self._loop_runs
            self._off_pool.add(task.key)
            self._last_loop_run = time.monotonic()
            if self._standby is None:  # (the first, or the last took the loop over)
                self._standby = threading.Thread(target=self._watch_loop_run, daemon=True,
                                                 name="zfutures-standby")
                self._standby.start()
            if not self._standby_wake.is_set():
                self._standby_wake.set()
        context.enter_task(self, task.key)
        result = run_task(task, inputs)
        context.leave_task()  # (seceded or not, this thread goes on)
        with self._loop_run_lock:
            self._off_pool.discard(task.key)
            moved = mine in self._taken_during
            if moved:  # (the loop may have run others on its new thread since)
                self._taken_during.discard(mine)
            else:
                self._on_loop = 0
        del task, inputs
        if moved:
            self.call_soon(self.state.task_done, *result)
            raise _LoopMoved
        self.state.task_done(*result)
        self._flush()

    def _watch_loop_run(self) -> None:
        """The standby: take the loop over from a task that runs on it too long."""
        seen = 0
        while not self._closed.is_set():
            if not self._standby_wake.wait(1.0) or self._closed.wait(LOOP_RUN_CHECK):
                continue  # (parked: no task ran on the loop thread lately)
            with self._loop_run_lock:
                running = self._on_loop
                take = running and running == seen
                if take:
                    self._taken_during.add(running)
                    self._on_loop, self._standby = 0, None
                    logger.debug("a task runs long on the loop thread; the standby "
                                 "takes the loop over")
                elif not running and time.monotonic() - self._last_loop_run > STANDBY_IDLE:
                    self._standby_wake.clear()
                seen = running
            if take:
                threading.current_thread().name = "zfutures-loop"
                self._serve()
                return

    def _give_back_memory(self, now: float) -> None:
        """Once idle for a while after work, return the memory it freed."""
        if self.state.executing or self.state.fetches:
            self._last_busy = now
        elif self._trim_due and now - self._last_busy >= GIVE_BACK_AFTER:
            self._trim_due = False
            release_free_memory()

    def _check_memory(self) -> None:
        """Tell the state machine how much memory this process holds (it pauses
        or resumes: see WorkerState.memory_measured)."""
        if not self.memory_limit:
            return
        rss = own_rss()
        if self._trim_due and self.state.memory_high(rss):
            self._trim_due = False  # (until more is freed: not at every check)
            release_free_memory()  # what is only free to reuse should not count
            rss = own_rss()
        self.state.memory_measured(rss)

    # ------------------------------------------------------------------ handlers

    @_contained
    def _on_center_message(self, frames: list) -> None:
        now = time.monotonic()
        self._last_heard = self.listening.time(now)
        header, frames = protocol.decode(frames)
        op = header["op"]
        if op == "compute":
            # (the wire's "inline" asks for the small result sent with the completion)
            for item, payload in protocol.unpack_items(header["tasks"], frames):
                self.state.compute(item["key"], item["deps"], item.get("priority", 0),
                                   payload, now, item.get("inline", False), item["run"])
        elif op == "release-keys":
            self.state.release(header["keys"])
            self._trim_due = True
        elif op == "drop-direct":
            for item in header["tasks"]:
                self.state.drop_direct(item["key"], item["run"], now)
        elif op == "acquire":
            for item in header["tasks"]:
                self.state.acquire(item["key"], item["holders"], now)
        elif op == "workers-left":
            for address in header["addresses"]:
                self._peer_left(address, now)
        elif op == "retired":
            logger.info("worker %s handed its keys on; leaving", self.address)
            self.state.closing = self._stopping = True
        elif op == "welcome":
            self.registered = True
            logger.info("registered with the center at %s", self.center_address)
        elif op == "reregister":
            if self.registered:  # (else our registration is on its way already)
                logger.warning("the center at %s does not know this worker (it restarted?); "
                               "registering again with %d keys", self.center_address,
                               len(self.state.data))
                self._register()
        elif op == "refused":
            logger.error("the center refused this worker: %s", header["reason"])
            self.stop()
        elif op == "closing":
            logger.info("the center at %s is closing; keeping %d keys for it to come back",
                        self.center_address, len(self.state.data))
            self._center_closed = True  # (reconnects after this drain: see _loop_once)
        elif op != "heartbeat":
            logger.warning("dropped an unexpected %r from the center", op)

    def _peer_left(self, address: str, now: float) -> None:
        """A worker left: its socket goes (after taking what it had already
        sent), and fetches from it go to other holders."""
        sock = self.peers.pop(address, None)
        if sock is not None:
            close_drained(sock, self.poller, lambda frames: self._on_peer_data(address, frames),
                          dropped)
        self.state.peer_left(address, now)

    @_contained
    def _on_data_request(self, frames: list) -> None:
        if len(frames) < 2:
            raise ProtocolError("a request without a header")
        ident = frames[0].bytes
        header, payload = protocol.decode(frames[1:])
        handler = self._data_handlers.get(header["op"])
        if handler is None:
            raise ProtocolError(f"the data server does not serve {header['op']!r}")
        handler(ident, header, payload)

    def _get_data(self, ident: bytes, header: dict, frames: list) -> None:
        """Serve results to a peer or a client; big buffers, to one on this
        machine, by address, to be read from this process's memory."""
        items, out_frames, missing, errors, error_frames = [], [], [], [], []
        data, nbytes = self.state.data, self.state.nbytes
        offer, offered = peer_memory.may_offer(header), []
        for key in dict.fromkeys(header["keys"]):  # each key once, however often asked
            if key not in data:
                missing.append(key)
                continue
            try:
                value_frames = serialize.dumps(data[key])
            except BaseException as e:  # noqa: B036 - the task's fault, reported to whoever wants it
                dropped.warning(f"the result {key!r} cannot be pickled", describe(e))
                exc = TypeError(f"the result of {key!r} cannot be pickled to leave its "
                                f"worker: {describe(e)}")
                frames = pickle_exception(exc)
                errors.append({"key": key, "nframes": len(frames)})
                error_frames.extend(frames)
                continue
            item = {"key": key, "nbytes": nbytes[key]}
            if offer:
                sent, remote = peer_memory.split_frames(value_frames)
                if remote:
                    item["remote"] = remote
                    offered.append(value_frames)  # alive until read
                    value_frames = sent
            item["nframes"] = len(value_frames)
            items.append(item)
            out_frames.extend(value_frames)
        fields: dict[str, Any] = {"errors": errors} if errors else {}
        if offered:
            fields["proof"] = peer_memory.holder_proof(header, offered)
            fields["lease"] = self.leases.grant(ident, offered, time.monotonic(),
                                                peer_memory.read_time(items))
            fields["pid"] = os.getpid()
        reply = protocol.encode("data", [*out_frames, *error_frames], id=header["id"],
                                items=items, missing=missing, **fields)
        send_frames(self.server, [ident, *reply])

    def _data_read(self, ident: bytes, header: dict, frames: list) -> None:
        """A reader on this machine copied what a lease kept alive."""
        self.leases.end(header["lease"], ident)

    def _put_data(self, ident: bytes, header: dict, frames: list) -> None:
        """A client scatters data here; it tells the center once we answer."""
        nbytes, failed = {}, {}
        for item, value_frames in protocol.unpack_items(header["items"], frames):
            try:
                value = serialize.loads(value_frames)
            except BaseException as exc:  # noqa: B036 - user code: the caller hears why
                failed[item["key"]] = describe(exc)
                continue
            nbytes[item["key"]] = serialize.sizeof(value)
            self.state.add_data(item["key"], value, nbytes[item["key"]])
        fields = {"failed": failed} if failed else {}
        self.server.send_multipart(
            [ident, protocol.encode_header("data-stored", id=header["id"], nbytes=nbytes,
                                           **fields)])

    def _run_task(self, ident: bytes, header: dict, frames: list) -> None:
        """A client sent a task straight here (see WorkerState.run_direct)."""
        self.state.run_direct(header["key"], frames, header["run"], ident, time.monotonic())

    def _run(self, ident: bytes, header: dict, frames: list) -> None:
        """Run a function outside the task graph (Executor.run), on a thread of its own."""
        def run() -> None:
            try:
                fn, args, kwargs = serialize.loads(frames)
                out, ok = serialize.dumps(fn(*args, **kwargs)), True
            except BaseException as exc:  # noqa: B036 - reported to the caller
                out, ok = pickle_exception(exc), False
            reply = protocol.encode("run-result", out, id=header["id"], ok=ok)
            self.call_soon(send_frames, self.server, [ident, *reply])

        threading.Thread(target=run, daemon=True, name="zfutures-run").start()

    @_contained
    def _on_peer_data(self, address: str, frames: list) -> None:
        header, frames = protocol.decode(frames)
        if header["op"] != "data":
            raise ProtocolError(f"expected data from {address}, got {header['op']!r}")
        if "lease" in header:
            self._read_offered(address, header, frames)
        else:
            self._take_data(header, protocol.unpack_items(
                header["items"] + header.get("errors", []), frames))

    def _take_data(self, header: dict, unpacked: Iterable[tuple[dict, list]]) -> None:
        """A peer's answer to a request for data, each item with its frames."""
        values, nbytes = {}, {}
        items = header["items"]
        for i, (item, value_frames) in enumerate(unpacked):
            key = item["key"]
            if i >= len(items):  # an error item: the value cannot leave its worker
                self.state.input_failed(key, value_frames)
                continue
            try:
                values[key] = serialize.loads(value_frames)
            except BaseException as e:  # noqa: B036 - user code (see above); so would a refetch
                dropped.warning(f"the input {key!r} cannot be unpickled", describe(e))
                self.state.input_failed(key, pickle_exception(TypeError(
                    f"the input {key!r} cannot be unpickled on {self.address}: "
                    f"{describe(e)}")))
                continue
            nbytes[key] = item.get("nbytes", 0)
        self.state.data_received(header["id"], values, nbytes, time.monotonic())

    def _read_offered(self, address: str, header: dict, frames: list) -> None:
        """A peer on this machine left big buffers to read from its memory: read
        them on the reader thread, while this loop goes on serving."""
        request = self.state.requests.get(header["id"])
        if request is None:  # timed out and asked elsewhere
            self._end_lease(address, header)
            return
        sent = request[2] - self.state.fetch_timeout
        # The peer has answered: give the read the time it may take.
        self.state.extend_request(header["id"], time.monotonic() + self.state.fetch_timeout
                                  + peer_memory.read_time(header["items"]))
        self.reader.read(header, frames, sent, lambda outcome: self.call_soon(
            self._offered_read, address, header, outcome))

    def _offered_read(self, address: str, header: dict, outcome: Any) -> None:
        """The reader thread is done with a reply (see peer_memory.Reader)."""
        self._end_lease(address, header)
        then = peer_memory.after_read(outcome)
        if then == "take":
            self._take_data(header, outcome)
            return
        request = self.state.requests.get(header["id"])
        if then == "again" and request is not None:  # at once, as frames this time
            send(self._peer(address), [protocol.encode_header(
                "get-data", id=header["id"], keys=request[1])],
                dropped, f"a data request to {address}")

    def _end_lease(self, address: str, header: dict) -> None:
        sock = self.peers.get(address)
        if sock is not None:  # (else the peer left: its leases went with it)
            send(sock, [protocol.encode_header("data-read", lease=header["lease"])],
                 dropped, f"the end of a read to {address}")

    def call_soon(self, fn, *args: Any) -> None:
        """Have the loop thread call ``fn(*args)``; safe from any thread."""
        self.inbox.put((fn, args))
        self.waker.wake()

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

    # ------------------------------------------------------------------ output

    def _flush(self) -> None:
        """Send what the state machine asked for since the last flush."""
        state = self.state
        if state.to_execute:
            self._last_busy = time.monotonic()  # (see _give_back_memory)
            self._trim_due = True  # (tasks free what they used, too)
            on_loop = state.take_loop_run(self._loop_run_job is None and not self._stopping
                                          and self.work.empty())
            if on_loop is not None:  # (run at the end of this turn: see LOOP_RUN_CHECK)
                self._loop_run_job = (on_loop, {})
            for task in state.to_execute:
                self.work.put((task, state.inputs_of(task)))
            state.to_execute.clear()
        if state.to_clients:
            for ident, key, run, nbytes, frames in state.to_clients:
                send_frames(self.server, [ident, *protocol.encode(
                    "direct-result", frames, key=key, run=run, nbytes=nbytes)])
            state.to_clients.clear()
        if state.to_fetch:
            for request_id, peer, keys in state.to_fetch:
                send(self._peer(peer), [protocol.encode_header(
                    "get-data", id=request_id, keys=keys, **peer_memory.reader_fields())],
                     dropped, f"a data request to {peer}")
            state.to_fetch.clear()
        if state.to_center or state.held:
            self._report(state.take_reports(time.monotonic()))

    def _report(self, reports: list[tuple[str, dict, list]]) -> None:
        """Send reports to the center, those of a kind many to a message."""
        if reports:
            batches: dict[str, tuple[list, list]] = {}
            for op, item, frames in reports:
                if op in _BATCHED:
                    items, all_frames = batches.setdefault(op, ([], []))
                    items.append(item)
                    if frames:
                        item["nframes"] = len(frames)
                        all_frames.extend(frames)
                    elif op == "task-erred":
                        item["nframes"] = 0
                else:
                    self._send_center(op, **item)
            for op, (items, frames) in batches.items():
                self._send_center(op, frames, **{_BATCHED[op]: items})

    def _send_center(self, op: str, frames: list | None = None, **fields: Any) -> None:
        send(self.center, protocol.encode(op, frames or (), **fields), dropped,
             f"{op!r} to the center")
        self._last_sent = time.monotonic()

    def _peer(self, address: str) -> zmq.Socket:
        sock = self.peers.get(address)
        if sock is None:
            sock = self.peers[address] = configure(self.context.socket(zmq.DEALER),
                                                   self.security)
            sock.connect(peer_endpoint(address))
            self.poller.register(sock, zmq.POLLIN)
        return sock

    # ------------------------------------------------------------------ task threads

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._task_thread, daemon=True,
                                  name=f"zfutures-task-{len(self.threads)}")
        self.threads.append(thread)
        thread.start()

    def secede(self, key: str) -> None:
        """Called from the task thread running ``key``, which waits on futures."""
        self.call_soon(self._secede, key, key not in self._off_pool)

    def _secede(self, key: str, on_task_thread: bool = True) -> None:
        run = self.state.secede(key)
        if run is not None:
            direct = {"direct": True} if self.state.tasks[key].direct else {}
            self._send_center("task-seceded", key=key, run=run, **direct)
        if on_task_thread:  # (a task on the loop thread took no task thread)
            self._start_thread()  # takes the slot; the seceded thread ends with its task

    def _skipped(self, job: tuple) -> None:
        """A task thread did not start a task released while it waited in line."""
        task = job[0]
        if task.key in self.state.released_running:
            self.state.task_skipped(task.key)
        else:  # the center asked for it again meanwhile: run it after all
            self.work.put(job)

    def _task_thread(self) -> None:
        work, task_done = self.work, self.state.task_done
        while True:
            job = work.get()
            if job is None:
                return
            task = job[0]
            if task.key in self.state.released_running:  # released before it started
                self.call_soon(self._skipped, job)
                del job, task
                continue
            context.enter_task(self, task.key)
            result = run_task(*job)
            seceded = context.leave_task()
            self.call_soon(task_done, *result)
            # Hold nothing while waiting for the next job: the inputs and the
            # result must go when the center releases them.
            del job, task, result
            if seceded:
                return
