"""A worker's data on the move: served to peers and clients, fetched from peers.

:class:`DataServer` answers on the worker's ROUTER socket: ``get-data``
(results, to peers and clients), ``put-data`` (a client scatters data here),
``run-task`` (a task a client sends straight here), ``run`` (a function run
outside the task graph), ``data-read`` and ``get-logs`` (its recent log
lines, for the dashboard).

:class:`Fetcher` sends the requests for inputs that WorkerState plans, one
DEALER per peer, and hands the answers back to it.

Big buffers between processes of one machine are read from the holder's
memory rather than sent (peer_memory.py): the server offers them, kept
alive by a lease until the reader says ``data-read``; the fetcher reads them
on a reader thread while the loop goes on.
"""
from __future__ import annotations

import functools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import zmq

from . import peer_memory, protocol, serialize
from .addressing import configure, peer_endpoint
from .errors import ProtocolError
from .logs import RateLimitedLog, recent_lines
from .loop import close_drained, drain, send, send_frames
from .messages import (
    Data,
    DataRead,
    DataStored,
    DirectResult,
    GetData,
    GetLogs,
    Logs,
    OfferedItem,
    PutData,
    Run,
    RunResult,
    RunTask,
    op_of,
)
from .protocol import Frames, unpack_items
from .remote_errors import describe, pickle_exception
from .worker_disk import SpillThreads
from .worker_state import WorkerState

#: What a data server holds read back from disk for answers at once, at
#: most (one answer at least, whatever its size): this share of the memory
#: limit, or DISK_SERVE_BYTES without a limit. The gap between the pause
#: and terminate marks (0.8, 0.95) is a little more.
DISK_SERVE_SHARE = 0.1
DISK_SERVE_BYTES = 256 * 2**20

#: Seconds (plus the time to read its bytes at peer_memory.SLOWEST_READ) that
#: what a lease holds read back from disk counts against DISK_SERVE_SHARE: a
#: reader on this machine copies it in well under that, and one that died
#: (its lease lasts a minute) then holds up no one else's answers.
LEASE_COUNTS = 2.0


class _Waiting(NamedTuple):
    """A request for results on disk, waiting to be read back (see read_next)."""

    ident: bytes  # the requester
    request: GetData
    keys: list[str]  # each key asked for, once
    on_disk: list[str]  # those to read back
    since: float  # when it came (time.monotonic)
    size: int  # the bytes to read back
    pinned: list[str]  # the keys it keeps where they are until answered


def contained(handle: Callable[..., None]) -> Callable[..., None]:
    """A message handler, with a BaseException of user code raised as an error
    that :func:`loop.drain` logs and drops, like any failing message.

    User code may raise any BaseException where a worker unpickles or
    measures a value (a ``__reduce__`` that raises SystemExit). The loop
    thread is not the main one, which alone receives KeyboardInterrupt from a
    signal, so every BaseException met there is user code's.
    """
    @functools.wraps(handle)
    def contained(*args: Any) -> None:
        try:
            handle(*args)
        except Exception:
            raise
        except BaseException as exc:  # noqa: B036 - user code (see above)
            raise RuntimeError(describe(exc)) from exc
    return contained


class DataServer:
    """Answers requests on ``server``, the worker's ROUTER socket, from the
    values in ``state``; ``call_soon`` has the loop thread send an answer
    made on another thread."""

    def __init__(self, server: zmq.Socket[Any], state: WorkerState,
                 call_soon: Callable[..., None], dropped: RateLimitedLog,
                 disk: SpillThreads | None = None):
        self.server = server
        self.state = state
        self.disk = disk  # reads results on disk (None: none ever are)
        self.call_soon = call_soon
        self.dropped = dropped
        self.leases = peer_memory.Leases()  # values offered to readers on this machine
        self._leased: dict[int, list[str]] = {}  # lease -> keys it pins in memory
        # Requests for results on disk, waiting to be read (see read_next).
        self._from_disk: deque[_Waiting] = deque()
        self._read_out = 0  # bytes read back for answers not let go of yet
        self._waiting_bytes = 0  # bytes on disk the requests waiting ask for
        # lease -> bytes it holds read from disk, and until when they count
        self._lease_sizes: dict[int, tuple[int, float]] = {}
        #: The requests served: their class -> handler(requester, message, payload frames).
        self._handlers: dict[type, Callable[[bytes, Any, Frames], None]] = {
            GetData: self._get_data, PutData: self._put_data, Run: self._run,
            DataRead: self._data_read, RunTask: self._run_task, GetLogs: self._get_logs}

    @contained
    def on_request(self, frames: Frames) -> None:
        """Handle one request, as received: the requester's identity, then the message."""
        if len(frames) < 2:
            raise ProtocolError("a request without a header")
        ident = frames[0].bytes
        msg, payload = protocol.decode_message(frames[1:])
        handler = self._handlers.get(type(msg))
        if handler is None:
            raise ProtocolError(f"the data server does not serve {op_of(msg)!r}")
        handler(ident, msg, payload)

    def send_result(self, client: bytes, result: DirectResult, frames: Frames) -> None:
        """The small result of a task ``client`` sent straight here (see WorkerState.to_clients)."""
        send_frames(self.server, [client, *protocol.encode_message(result, frames)])

    def _get_data(self, ident: bytes, request: GetData, frames: Frames) -> None:
        """Serve results to a peer or a client; big buffers, to one on this
        machine, by address, to be read from this process's memory. Results
        on disk are read first, as frames, by the disk threads; the answer
        goes once they are in."""
        keys = list(dict.fromkeys(request.keys))  # each key once, however often asked
        data, held = self.state.data, self.state.nbytes
        on_disk = [key for key in keys if key not in data and key in held]
        if on_disk and self.disk is not None:
            # The keys asked for stay where they are until the answer goes (a
            # key in memory moved to disk meanwhile would be answered missing).
            pinned = [key for key in keys if key in held]
            self.state.memory.pin_all(pinned)
            size = self._disk_bytes(on_disk)
            self._from_disk.append(_Waiting(ident, request, keys, on_disk, time.monotonic(),
                                            size, pinned))
            self._waiting_bytes += size
            self.read_next()
            if self._from_disk:  # (tasks give way to answers: see serving_changed)
                self.state.serving_changed(self._read_out, self._waiting_bytes)
            return
        self._answer(ident, request, keys, {})

    def read_next(self, now: float | None = None) -> None:
        """Read back the results of the requests that wait, oldest first:
        while what was read for answers and is still held (sent, or leased to
        a reader) is under DISK_SERVE_SHARE of the memory limit (one at
        least, whatever its size), and the worker has room for it
        (WorkerSpilling.may_serve). The shell calls again as memory frees,
        and every heartbeat."""
        waiting = self._from_disk
        limit = self.state.memory.memory_limit
        budget = DISK_SERVE_SHARE * limit if limit else DISK_SERVE_BYTES
        while waiting and (not self._read_out or self._read_out < budget):
            first = waiting[0]
            if now is None:
                now = time.monotonic()
            if not self.state.may_serve(first.size, now - first.since):
                return
            waiting.popleft()
            self._waiting_bytes -= first.size
            self._count_read(first.size)
            assert self.disk is not None  # (only then are requests queued)
            self.disk.read_frames(first.on_disk, functools.partial(
                self.call_soon, self._answer_read, first))

    @property
    def waiting_for_room(self) -> bool:
        """Whether requests for results on disk wait (see read_next)."""
        return bool(self._from_disk)

    def _answer_read(self, waited: _Waiting, read: dict[str, Frames | BaseException]) -> None:
        """The results on disk of a request that waited were read: answer."""
        lease = self._answer(waited.ident, waited.request, waited.keys, read)
        self.state.memory.unpin_all(waited.pinned)
        size = waited.size
        if lease is None:  # (sent: the socket lets go of them soon)
            self._count_read(-size)
        else:  # (held until the reader is done, or seems gone: see expire_leases)
            self._lease_sizes[lease] = (size, time.monotonic() + LEASE_COUNTS
                                        + size / peer_memory.SLOWEST_READ)

    def _count_read(self, nbytes: int) -> None:
        """``nbytes`` more (or, negative, fewer) read back from disk for answers
        are held: the worker's tasks wait while they take the room (see
        WorkerSpilling.serving_changed), and more requests are read once
        they are let go of."""
        self._read_out += nbytes
        self.state.serving_changed(self._read_out, self._waiting_bytes)
        if nbytes < 0:
            self.read_next()

    def _disk_bytes(self, keys: list[str]) -> int:
        nbytes = self.state.nbytes
        return sum(nbytes.get(key, 0) for key in keys)

    def _answer(self, ident: bytes, request: GetData, keys: list[str],
                read: dict[str, Frames | BaseException]) -> int | None:
        """Answer ``request`` with ``keys``: their frames ``read`` from disk,
        or the values in memory. The lease the answer offers reads under, if any."""
        items: list[OfferedItem] = []
        errors: list[OfferedItem] = []
        missing: list[str] = []
        out_frames: Frames = []
        error_frames: Frames = []
        data, nbytes = self.state.data, self.state.nbytes
        offer, offered, leased = peer_memory.may_offer(request), [], []
        for key in keys:
            value_frames = read.get(key)
            if isinstance(value_frames, BaseException) and key in data:
                value_frames = None  # (released and made again meanwhile: in memory)
            if isinstance(value_frames, BaseException):  # (lost, or released meanwhile)
                self.dropped.warning(f"the result {key!r} could not be read from disk",
                                     describe(value_frames))
                missing.append(key)
                continue
            size = nbytes.get(key, 0)
            if value_frames is None:
                if key not in data:
                    missing.append(key)
                    continue
                try:
                    value_frames = serialize.dumps(data[key])
                except BaseException as e:  # noqa: B036 - the task's fault, reported to whoever wants it
                    self.dropped.warning(f"the result {key!r} cannot be pickled", describe(e))
                    exc = TypeError(f"the result of {key!r} cannot be pickled to leave its "
                                    f"worker: {describe(e)}")
                    frames = pickle_exception(exc)
                    errors.append(OfferedItem(key, len(frames)))
                    error_frames.extend(frames)
                    continue
            remote: list[list[int]] | None = None
            if offer:
                sent, left = peer_memory.split_frames(value_frames)
                if left:
                    offered.append(value_frames)  # alive until read
                    value_frames, remote = sent, left
                    if key in data:
                        leased.append(key)
            items.append(OfferedItem(key, len(value_frames), size, remote))
            out_frames.extend(value_frames)
        lease = pid = proof = None
        if offered:
            proof = peer_memory.holder_proof(request, offered)
            lease = self.leases.grant(ident, offered, time.monotonic(),
                                      peer_memory.read_time(items))
            pid = os.getpid()
            # A value read from here is not moved to disk under its reader:
            # that would free nothing (the lease holds it) and cost a write.
            self.state.memory.pin_all(leased)
            self._leased[lease] = leased
        reply = Data(request.id, items, missing, errors or None, lease, pid, proof)
        send_frames(self.server, [ident, *protocol.encode_message(
            reply, [*out_frames, *error_frames])])
        return lease

    def expire_leases(self, now: float) -> None:
        """End the leases past their time (their readers died). What a lease
        holds read back from disk stops counting sooner (LEASE_COUNTS): a
        reader that died must not keep others from being answered for long."""
        for lease in self.leases.expire(now):
            self._lease_ended(lease)
        for lease, (size, until) in list(self._lease_sizes.items()):
            if until <= now:
                del self._lease_sizes[lease]
                self._count_read(-size)

    def _lease_ended(self, lease: int) -> None:
        """A reader let go of what ``lease`` held: its values may leave memory,
        and what it held read back from disk counts no more."""
        self.state.memory.unpin_all(self._leased.pop(lease, ()))
        counted = self._lease_sizes.pop(lease, None)
        if counted is not None:
            self._count_read(-counted[0])

    def _data_read(self, ident: bytes, msg: DataRead, frames: Frames) -> None:
        """A reader on this machine copied what a lease kept alive."""
        if self.leases.end(msg.lease, ident):
            self._lease_ended(msg.lease)

    def send_stored(self, client: bytes, stored: DataStored) -> None:
        """The answer to a client's put-data (see WorkerState.stored)."""
        self.server.send_multipart([client, *protocol.encode_message(stored)])

    def _put_data(self, ident: bytes, msg: PutData, frames: Frames) -> None:
        """A client scatters data here; it tells the center once we answer
        (WorkerState.put_data decides when)."""
        values, failed = {}, {}
        for item, value_frames in unpack_items(msg.items, frames):
            try:  # (sizeof too: a value's own nbytes may raise)
                value = serialize.loads(value_frames)
                values[item.key] = (value, serialize.sizeof(value))
            except BaseException as exc:  # noqa: B036 - user code: the caller hears why
                failed[item.key] = describe(exc)
        self.state.put_data(ident, msg.id, values, failed)

    def _get_logs(self, ident: bytes, msg: GetLogs, frames: Frames) -> None:
        """This worker's recent log lines (see logs.keep_recent_lines)."""
        send_frames(self.server, [ident, *protocol.encode_message(Logs(msg.id, recent_lines()))])

    def _run_task(self, ident: bytes, msg: RunTask, frames: Frames) -> None:
        """A client sent a task straight here (see WorkerState.run_direct)."""
        self.state.run_direct(msg, frames, ident, time.monotonic())

    def _run(self, ident: bytes, msg: Run, frames: Frames) -> None:
        """Run a function outside the task graph (Executor.run), on a thread of its own."""
        def run() -> None:
            try:
                fn, args, kwargs = serialize.loads(frames)
                out, ok = serialize.dumps(fn(*args, **kwargs)), True
            except BaseException as exc:  # noqa: B036 - reported to the caller
                out, ok = pickle_exception(exc), False
            reply = protocol.encode_message(RunResult(msg.id, ok), out)
            self.call_soon(send_frames, self.server, [ident, *reply])

        threading.Thread(target=run, daemon=True, name="zfutures-run").start()


class Fetcher:
    """Fetches inputs from the peers that hold them, for ``state``: a DEALER
    per peer, in ``context`` (registered with ``poller``), and the reader
    that copies big buffers from a peer on this machine."""

    def __init__(self, state: WorkerState, context: zmq.Context[Any], poller: zmq.Poller,
                 security: Any, call_soon: Callable[..., None], dropped: RateLimitedLog):
        self.state = state
        self.context = context
        self.poller = poller
        self.security = security
        self.call_soon = call_soon
        self.dropped = dropped
        self.peers: dict[str, zmq.Socket[Any]] = {}
        self.reader = peer_memory.Reader()  # reads what peers on this machine offer

    def request(self, request_id: int, peer: str, keys: list[str]) -> None:
        """Ask ``peer`` for ``keys`` (see WorkerState.to_fetch)."""
        send(self._peer(peer), protocol.encode_message(
            peer_memory.data_request(request_id, keys)), self.dropped,
             f"a data request to {peer}")

    def drain(self, events: dict[Any, int], until: float) -> None:
        """Take the answers waiting on the sockets among ``events`` (a poll's),
        until the monotonic time ``until`` (see loop.drain)."""
        for address, sock in list(self.peers.items()):
            if sock in events:
                drain(sock, functools.partial(self.on_data, address), self.dropped, until=until)

    def peer_left(self, address: str, now: float) -> None:
        """A worker left: its socket goes (after taking what it had already
        sent), and fetches from it go to other holders."""
        sock = self.peers.pop(address, None)
        if sock is not None:
            close_drained(sock, self.poller, lambda frames: self.on_data(address, frames),
                          self.dropped)
        self.state.peer_left(address, now)

    def close(self) -> None:
        """Stop reading and close the peers' sockets (the loop is ending)."""
        self.reader.stop()
        for sock in self.peers.values():
            sock.close(linger=0)

    @contained
    def on_data(self, address: str, frames: Frames) -> None:
        """A peer's answer to a request for data."""
        reply, frames = protocol.decode_message(frames)
        if type(reply) is not Data:
            raise ProtocolError(f"expected data from {address}, got {op_of(reply)!r}")
        if reply.lease is not None:
            self._read_offered(address, reply, frames)
        else:
            self._take_data(reply, unpack_items(reply.items + (reply.errors or []),
                                                         frames))

    def _take_data(self, reply: Data, unpacked: Iterable[tuple[OfferedItem, Frames]]) -> None:
        """A peer's answer to a request for data, each item with its frames
        (those past ``reply.items``, its errors)."""
        values, nbytes = {}, {}
        items = reply.items
        for i, (item, value_frames) in enumerate(unpacked):
            key = item.key
            if i >= len(items):  # an error item: the value cannot leave its worker
                self.state.input_failed(key, value_frames)
                continue
            try:
                values[key] = serialize.loads(value_frames)
            except BaseException as e:  # noqa: B036 - user code (see contained); so would a refetch
                self.dropped.warning(f"the input {key!r} cannot be unpickled", describe(e))
                self.state.input_failed(key, pickle_exception(TypeError(
                    f"the input {key!r} cannot be unpickled on {self.state.address}: "
                    f"{describe(e)}")))
                continue
            nbytes[key] = item.nbytes
        self.state.data_received(reply.id, values, nbytes, time.monotonic())

    def _read_offered(self, address: str, reply: Data, frames: Frames) -> None:
        """A peer on this machine left big buffers to read from its memory: read
        them on the reader thread, while this loop goes on serving."""
        fetching = self.state.fetching
        request = fetching.requests.get(reply.id)
        if request is None:  # timed out and asked elsewhere
            self._end_lease(address, reply)
            return
        sent = request[3]
        # The peer has answered: give the read the time it may take.
        self.state.extend_request(reply.id, time.monotonic() + fetching.timeout
                                  + peer_memory.read_time(reply.items))
        self.reader.read(reply, frames, sent, lambda outcome: self.call_soon(
            self._offered_read, address, reply, outcome))

    def _offered_read(self, address: str, reply: Data, outcome: Any) -> None:
        """The reader thread is done with a reply (see peer_memory.Reader)."""
        self._end_lease(address, reply)
        then = peer_memory.after_read(outcome)
        if then == "take":
            self._take_data(reply, outcome)
            return
        request = self.state.fetching.requests.get(reply.id)
        if then == "again" and request is not None:  # at once, as frames this time
            send(self._peer(address), protocol.encode_message(GetData(reply.id, request[1])),
                 self.dropped, f"a data request to {address}")

    def _end_lease(self, address: str, reply: Data) -> None:
        sock = self.peers.get(address)
        if sock is not None:  # (else the peer left: its leases went with it)
            assert reply.lease is not None  # (a reply that offered reads)
            send(sock, protocol.encode_message(DataRead(reply.lease)),
                 self.dropped, f"the end of a read to {address}")

    def _peer(self, address: str) -> zmq.Socket[Any]:
        sock = self.peers.get(address)
        if sock is None:
            sock = self.peers[address] = configure(self.context.socket(zmq.DEALER),
                                                   self.security)
            sock.connect(peer_endpoint(address))
            self.poller.register(sock, zmq.POLLIN)
        return sock
