"""A worker's data on the move: served to peers and clients, fetched from peers.

:class:`DataServer` answers on the worker's ROUTER socket: ``get-data``
(results, to peers and clients), ``put-data`` (a client scatters data here),
``run-task`` (a task a client sends straight here), ``run`` (a function run
outside the task graph) and ``data-read``.

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
from collections.abc import Callable, Iterable
from typing import Any

import zmq

from . import peer_memory, protocol, serialize
from .addressing import configure, peer_endpoint
from .errors import ProtocolError
from .logs import RateLimitedLog
from .loop import close_drained, drain, send, send_frames
from .protocol import Frames, Header
from .remote_errors import describe, pickle_exception
from .worker_state import WorkerState


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
                 call_soon: Callable[..., None], dropped: RateLimitedLog):
        self.server = server
        self.state = state
        self.call_soon = call_soon
        self.dropped = dropped
        self.leases = peer_memory.Leases()  # values offered to readers on this machine
        self._handlers: dict[str, Callable[[bytes, Header, Frames], None]] = {
            "get-data": self._get_data, "put-data": self._put_data, "run": self._run,
            "data-read": self._data_read, "run-task": self._run_task}

    @contained
    def on_request(self, frames: Frames) -> None:
        """Handle one request, as received: the requester's identity, then the message."""
        if len(frames) < 2:
            raise ProtocolError("a request without a header")
        ident = frames[0].bytes
        header, payload = protocol.decode(frames[1:])
        handler = self._handlers.get(header["op"])
        if handler is None:
            raise ProtocolError(f"the data server does not serve {header['op']!r}")
        handler(ident, header, payload)

    def send_result(self, client: bytes, key: str, run: int, nbytes: int,
                    frames: Frames) -> None:
        """The small result of a task ``client`` sent straight here (see WorkerState.to_clients)."""
        send_frames(self.server, [client, *protocol.encode(
            "direct-result", frames, key=key, run=run, nbytes=nbytes)])

    def _get_data(self, ident: bytes, header: Header, frames: Frames) -> None:
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
                self.dropped.warning(f"the result {key!r} cannot be pickled", describe(e))
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

    def _data_read(self, ident: bytes, header: Header, frames: Frames) -> None:
        """A reader on this machine copied what a lease kept alive."""
        self.leases.end(header["lease"], ident)

    def send_stored(self, client: bytes, request_id: int, nbytes: dict[str, int],
                    failed: dict[str, str]) -> None:
        """The answer to a client's put-data (see WorkerState.stored)."""
        fields = {"failed": failed} if failed else {}
        self.server.send_multipart([client, protocol.encode_header(
            "data-stored", id=request_id, nbytes=nbytes, **fields)])

    def _put_data(self, ident: bytes, header: Header, frames: Frames) -> None:
        """A client scatters data here; it tells the center once we answer
        (WorkerState.put_data decides when)."""
        values, failed = {}, {}
        for item, value_frames in protocol.unpack_items(header["items"], frames):
            try:  # (sizeof too: a value's own nbytes may raise)
                value = serialize.loads(value_frames)
                values[item["key"]] = (value, serialize.sizeof(value))
            except BaseException as exc:  # noqa: B036 - user code: the caller hears why
                failed[item["key"]] = describe(exc)
        self.state.put_data(ident, header["id"], values, failed)

    def _run_task(self, ident: bytes, header: Header, frames: Frames) -> None:
        """A client sent a task straight here (see WorkerState.run_direct)."""
        self.state.run_direct(header["key"], frames, header["run"], ident, time.monotonic())

    def _run(self, ident: bytes, header: Header, frames: Frames) -> None:
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
        send(self._peer(peer), [protocol.encode_header(
            "get-data", id=request_id, keys=keys, **peer_memory.reader_fields())],
             self.dropped, f"a data request to {peer}")

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
        header, frames = protocol.decode(frames)
        if header["op"] != "data":
            raise ProtocolError(f"expected data from {address}, got {header['op']!r}")
        if "lease" in header:
            self._read_offered(address, header, frames)
        else:
            self._take_data(header, protocol.unpack_items(
                header["items"] + header.get("errors", []), frames))

    def _take_data(self, header: Header, unpacked: Iterable[tuple[Header, Frames]]) -> None:
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
            except BaseException as e:  # noqa: B036 - user code (see contained); so would a refetch
                self.dropped.warning(f"the input {key!r} cannot be unpickled", describe(e))
                self.state.input_failed(key, pickle_exception(TypeError(
                    f"the input {key!r} cannot be unpickled on {self.state.address}: "
                    f"{describe(e)}")))
                continue
            nbytes[key] = item.get("nbytes", 0)
        self.state.data_received(header["id"], values, nbytes, time.monotonic())

    def _read_offered(self, address: str, header: Header, frames: Frames) -> None:
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

    def _offered_read(self, address: str, header: Header, outcome: Any) -> None:
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
                self.dropped, f"a data request to {address}")

    def _end_lease(self, address: str, header: Header) -> None:
        sock = self.peers.get(address)
        if sock is not None:  # (else the peer left: its leases went with it)
            send(sock, [protocol.encode_header("data-read", lease=header["lease"])],
                 self.dropped, f"the end of a read to {address}")

    def _peer(self, address: str) -> zmq.Socket[Any]:
        sock = self.peers.get(address)
        if sock is None:
            sock = self.peers[address] = configure(self.context.socket(zmq.DEALER),
                                                   self.security)
            sock.connect(peer_endpoint(address))
            self.poller.register(sock, zmq.POLLIN)
        return sock
