"""The wire protocol: how every zfutures message is laid out in ZeroMQ frames.

A message is one multipart ZeroMQ message::

    [identity]   only on the ROUTER side, added and removed by ZeroMQ
    header       msgpack map {"op": str, ...}: plain data, never pickle
    frame ...    opaque payload frames (pickled functions, arguments, results)

The center reads headers only; payload frames pass through it untouched, so it
never runs code that arrived on a socket.

Ops that are produced in bursts carry a list of items (``tasks`` or ``keys``)
so that many tasks, results or releases travel in one message. An item that
owns payload frames says how many with ``nframes``; its frames follow the
header in item order (see :func:`pack_items` and :func:`unpack_items`).
On the wire, the small payload frames of a message travel packed into one
frame, which the header's ``layout`` cuts again (:func:`encode`, :func:`decode`);
if they are few bytes in all, that packed frame rides in the header itself
(``inline``), and the message is a single frame.

Every header is checked against :data:`SCHEMAS` by :func:`decode_header`
before any handler sees it: a message that does not fit is rejected there, in
one place, with a :class:`~zfutures.errors.ProtocolError`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgpack

from .errors import ProtocolError

#: A decoded header: the op and its fields, as msgpack gives them.
Header = dict[str, Any]
#: Payload frames: bytes, memoryviews or zmq Frames, in order.
Frames = list[Any]


def same_call(payload: Frames, other: Frames) -> bool:
    """Whether two tasks' payloads are the same pickled call, byte for byte
    (compared in place: no frame is copied)."""
    return len(payload) == len(other) and \
        all(memoryview(a) == memoryview(b) for a, b in zip(payload, other))

#: Bumped whenever a message changes shape; peers must register with the same.
PROTOCOL_VERSION = 7

#: Largest header accepted, in bytes. Headers hold keys and small numbers only.
MAX_HEADER_BYTES = 64 * 1024 * 1024

#: Largest message the center and the workers' data servers accept by default
#: (``--max-message-size``), payload frames included: room for big task
#: arguments and scattered data, while a peer cannot make a server buffer
#: without bound. libzmq drops the connection of a peer that sends more.
MAX_MESSAGE_SIZE = 2**30

# Field types, as accepted by _type_check. A tuple means "one of these".
_STR = str
_INT = int
_NUM = (int, float)
_STRS = ("list", str)
_ANY = object

# Item schemas, for the lists inside batched messages.
_TASK_ITEM = {"key": _STR, "deps": _STRS, "priority": _INT, "nframes": _INT,
              "retries?": _INT, "workers?": _STRS, "allow_other_workers?": bool,
              "resources?": ("map", _NUM), "who_has?": _STRS,
              "direct_worker?": _STR, "direct_run?": _INT, "direct_ack?": bool,
              "direct_answered?": bool}
# direct_answered: the client has the direct run's result already (sent after
# the answer came): the center need not send it key-finished for that run

# run: the id of this assignment, which the worker's reports on the task
# carry back (a report of an earlier run of the same key is then told apart);
# send_result: a client waits for it, so a small result goes with the report
_COMPUTE_ITEM = {"key": _STR, "deps": ("map", "list", str), "nframes": _INT,
                 "run": _INT, "send_result?": bool}
_FINISHED_ITEM = {"key": _STR, "nbytes": _INT}
# A finished task's small result may ride along (nframes) to the clients waiting for it.
# direct: the run is one a client chose, sending the task straight to the
# worker (see "run-task"); the center may hear of it before the client's submit.
# answered: its client had the result straight from the worker too.
_DONE_ITEM = {"key": _STR, "nbytes": _INT, "run": _INT, "nframes?": _INT, "direct?": bool,
              "answered?": bool}
_FAILED_ITEM = {"key": _STR, "nframes": _INT, "run": _INT, "direct?": bool}
_ERRED_ITEM = {"key": _STR, "nframes": _INT}
_RESULT_ITEM = {"key": _STR, "who_has": _STRS, "nbytes": _INT, "nframes?": _INT}
_DATA_ITEM = {"key": _STR, "nframes": _INT}
# In a "data" reply to a reader on the holder's machine: buffers left to be
# read from the holder's memory, [position among the value's frames, address,
# size] each (see peer_memory.py).
_OFFERED_ITEM = {"key": _STR, "nframes": _INT, "nbytes?": _INT,
                 "remote?": ("list", ("list", _INT))}
_SCATTERED_ITEM = {"key": _STR, "nbytes": _INT, "workers": _STRS}

#: op -> {field: type}. Every listed field is required, except those whose
#: name ends in "?", which are checked only when present. Other fields are
#: allowed (and ignored) so that newer peers can add optional information.
SCHEMAS: dict[str, dict[str, Any]] = {
    # client -> center
    "register-client": {"protocol": _INT, "name": _STR},
    # seq: numbers the client's submits; news of their keys carries the last
    # one the center had handled (seen), so a client that let a key go and
    # submitted it again tells news of the earlier submit from the later
    "submit": {"tasks": ("items", _TASK_ITEM), "seq?": _INT},
    "release": {"keys": _STRS},
    # seq: numbered with the submits (see "submit"): news of the data's keys
    # told before it came is of earlier copies
    "update-data": {"items": ("items", _SCATTERED_ITEM), "seq?": _INT},
    "who-has": {"id": _INT, "keys": _STRS},
    "scheduler-info": {"id": _INT},
    "has-what": {"id": _INT},
    "close-client": {},
    # worker -> center
    "register-worker": {
        "protocol": _INT, "address": _STR, "name": _STR, "nthreads": _INT,
        "memory_limit": _INT, "resources": ("map", _NUM), "keys": _STRS,
        "nbytes?": ("list", _INT),
    },
    "task-finished": {"tasks": ("items", _DONE_ITEM)},
    "task-erred": {"tasks": ("items", _FAILED_ITEM)},
    "keys-added": {"tasks": ("items", _FINISHED_ITEM)},
    # tried: the holders the worker asked in vain (others may hold a copy)
    "missing-data": {"key": _STR, "missing": _STRS, "run": _INT, "tried?": _STRS},
    "task-seceded": {"key": _STR, "run": _INT, "direct?": bool},
    # a task a client sent straight here is running (see "run-task")
    "task-accepted": {"key": _STR, "run": _INT},
    # ... or will not run it: it could not start it at once, or holds the key
    # already, or the center gave up on that run (see WorkerState.run_direct)
    "task-refused": {"key": _STR, "run": _INT},
    "retire": {},
    "unregister": {},
    "paused": {"paused": bool},
    # a client put data here while these keys were here already: answer once
    # what was said of them before is on its way (see worker_scatter.py)
    "sync": {"keys": _STRS},
    # nanny -> center
    "register-nanny": {"protocol": _INT},
    "worker-died": {"address": _STR},
    # center -> worker
    "welcome": {"protocol": _INT, "max_message_size?": _INT},
    "compute": {"tasks": ("items", _COMPUTE_ITEM)},
    "release-keys": {"keys": _STRS},
    "acquire": {"tasks": ("items", {"key": _STR, "holders": _STRS})},
    "synced": {"keys": _STRS},  # the answer to "sync", after what came before
    "retired": {},
    # the center has not heard of this direct run for seconds: refuse it if it
    # never came (see WorkerState.drop_direct)
    "drop-direct": {"tasks": ("items", {"key": _STR, "run": _INT})},
    # center -> client
    "key-finished": {"tasks": ("items", _RESULT_ITEM), "seen?": _INT},
    "key-erred": {"tasks": ("items", _ERRED_ITEM), "seen?": _INT},
    "reply": {"id": _INT, "result": _ANY},
    # the center counts these keys' direct runs (see "run-task") as theirs;
    # sent when the submit asked (direct_ack: a key the client chose)
    "direct-accepted": {"keys": _STRS, "seen?": _INT},
    # workers that left or died: calls waiting on them fail at once
    "workers-left": {"addresses": _STRS},
    "refused": {"reason": _STR},
    # center -> a worker or client it does not know (it restarted, or gave up on
    # the peer): register again, bringing back your keys and tasks
    "reregister": {},
    "closing": {},  # the center is going (see Center._say_closing)
    # both directions, center <-> anyone
    "heartbeat": {},
    # data server (any peer -> worker) and its answers
    # machine: the requester may read the holder's memory, token: the bytes
    # its holder keeps a copy of, to prove who it is (see peer_memory.py)
    "get-data": {"id": _INT, "keys": _STRS, "machine?": _STR, "token?": _STR},
    # errors: results that could not be pickled to leave their worker; lease
    # and pid: items with remote buffers are read from process pid's memory,
    # and "data-read" with the lease says when that is done; proof: where in
    # that memory the holder keeps its copy of the reader's token
    "data": {"id": _INT, "items": ("items", _OFFERED_ITEM), "missing": _STRS,
             "errors?": ("items", _DATA_ITEM), "lease?": _INT, "pid?": _INT,
             "proof?": _INT},
    "data-read": {"lease": _INT},
    "put-data": {"id": _INT, "items": ("items", _DATA_ITEM)},
    # failed: keys whose data did not load here, each with why (nothing stored)
    "data-stored": {"id": _INT, "nbytes": ("map", _INT), "failed?": ("map", _STR)},
    "run": {"id": _INT},
    "run-result": {"id": _INT, "ok": bool},
    # a client sends a lone task without inputs straight to a worker, in a run
    # of its own choosing, and tells the center in its submit (direct_worker,
    # direct_run); the worker sends a small result straight back
    "run-task": {"key": _STR, "run": _INT},
    "direct-result": {"key": _STR, "run": _INT, "nbytes": _INT},
}


#: Payload frames smaller than this travel packed together in one frame: each
#: frame costs several microseconds to send and receive, whatever its size, and
#: a batch of a thousand small tasks would otherwise pay that thousands of times.
PACK_BELOW = 64 * 1024

#: A payload smaller than this in all travels packed inside the header: a
#: message of one frame costs microseconds less to send and to receive than
#: one of two, which is a good part of a lone task's round trip.
INLINE_BELOW = 16 * 1024


def encode(op: str, frames: Sequence[Any] = (), **fields: Any) -> Frames:
    """The wire frames of a message: its header, then its payload ``frames``.

    With more than one payload frame, or a small one, the header's ``layout``
    gives each frame in order: its size ``n >= 0`` if it is packed with the
    other small ones, or ``-size`` if it travels on its own, zero-copy. The
    packed frames travel in the header's ``inline`` if they are fewer than
    INLINE_BELOW bytes in all, else in the first frame after the header (see
    :func:`decode`).
    """
    if not frames:
        return [encode_header(op, **fields)]
    sizes = [memoryview(frame).nbytes for frame in frames]
    if sum(sizes) < INLINE_BELOW:
        fields["layout"] = sizes
        fields["inline"] = frames[0] if len(frames) == 1 and type(frames[0]) is bytes \
            else b"".join(frames)
        return [encode_header(op, **fields)]
    if len(frames) < 2:
        return [encode_header(op, **fields), *frames]
    layout, small, large = [], [], []
    for frame, size in zip(frames, sizes):
        if size < PACK_BELOW:
            layout.append(size)
            small.append(frame)
        else:
            layout.append(-size)
            large.append(frame)
    fields["layout"] = layout
    packed = [b"".join(small)] if small else []
    return [encode_header(op, **fields), *packed, *large]


def decode(frames: Sequence[Any]) -> tuple[Header, Frames]:
    """``(header, payload buffers)`` of a message's frames (zmq Frames or bytes),
    the packed frames cut out again; ProtocolError if anything does not fit."""
    if not frames:
        raise ProtocolError("a message without a header")
    header = decode_header(_bytes(frames[0]))
    rest = [_buffer(f) for f in frames[1:]]
    layout = header.pop("layout", None)
    inline = header.pop("inline", None)
    if layout is None:
        if inline is not None:
            raise ProtocolError("an inline payload without a layout")
        return header, rest
    if type(layout) is not list or not all(type(n) is int for n in layout):
        raise ProtocolError("a malformed layout")
    large_sizes = [-n for n in layout if n < 0]
    if inline is not None:
        if type(inline) is not bytes:
            raise ProtocolError("an inline payload that is not bytes")
        blob: memoryview | None = memoryview(inline)
    else:
        blob = rest[0] if any(n >= 0 for n in layout) and rest else None
    large = rest[blob is not None and inline is None:]
    if len(large) != len(large_sizes) or \
            (blob is None) != all(n < 0 for n in layout) or \
            (blob is not None and sum(n for n in layout if n >= 0) != blob.nbytes) or \
            any(f.nbytes != size for f, size in zip(large, large_sizes)):
        raise ProtocolError("the layout does not match the frames")
    packed = blob if blob is not None else memoryview(b"")  # (none: no n >= 0 below)
    payload: Frames = []
    start, large_iter = 0, iter(large)
    for n in layout:
        if n < 0:
            payload.append(next(large_iter))
        else:
            payload.append(packed[start:start + n])
            start += n
    return header, payload


def _bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def _buffer(frame: Any) -> memoryview:
    return frame.buffer if hasattr(frame, "buffer") else memoryview(frame)


def encode_header(op: str, **fields: Any) -> bytes:
    """Pack a header for ``op``. Fields must be plain data (msgpack types)."""
    fields["op"] = op
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def decode_header(raw: bytes | memoryview) -> Header:
    """Unpack and validate a header; raise ProtocolError if it does not fit.

    >>> decode_header(encode_header("release", keys=["a"]))["keys"]
    ['a']
    """
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise ProtocolError(f"header is not msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"header is a {type(header).__name__}, not a map")
    op = header.get("op")
    check = _CHECKS.get(op) if isinstance(op, str) else None
    if check is None:
        raise ProtocolError(f"unknown op {op!r}")
    check(header)
    return header


def _type_check(kind: Any) -> Callable[[Any], bool]:
    """A function telling whether a value is of the schema type ``kind``."""
    if kind is object:
        return lambda value: True
    if kind in (int, str, bool):  # exactly: a bool is not an int here
        return lambda value: type(value) is kind
    if kind == (int, float):
        return lambda value: type(value) is int or type(value) is float
    tag = kind[0]
    if tag == "list":
        inner = _type_check(kind[1])
        return lambda value: type(value) is list and all(map(inner, value))
    if tag == "map":
        inner = _type_check(kind[1:] if len(kind) > 2 else kind[1])
        return lambda value: type(value) is dict and all(
            type(k) is str and inner(v) for k, v in value.items())
    if tag == "items":
        check_item = _fields_check(kind[1], "item")

        def check_items(value: Any) -> bool:
            if type(value) is not list:
                return False
            for item in value:
                if type(item) is not dict:
                    return False
                check_item(item)
            return True
        return check_items
    raise AssertionError(f"bad schema kind {kind!r}")


def _fields_check(schema: dict[str, Any], where: str) -> Callable[[Header], None]:
    """A function raising ProtocolError where a mapping does not fit ``schema``.

    Schemas are turned into these once: messages are checked field by field
    at every hop, for every item of a batch, so this is a hot path.
    """
    # Fields of a plain type are checked inline; the others by a function.
    plain = [(f, k) for f, k in schema.items() if f[-1] != "?" and k in (int, str, bool)]
    other = [(f, _type_check(k)) for f, k in schema.items()
             if f[-1] != "?" and k not in (int, str, bool)]
    optional = [(f[:-1], _type_check(k)) for f, k in schema.items() if f[-1] == "?"]

    def wrong(mapping: Header, field: str) -> ProtocolError:
        if field not in mapping:
            return ProtocolError(f"{where}: missing field {field!r}")
        return ProtocolError(
            f"{where}: field {field!r} has type {type(mapping[field]).__name__}")

    def check(mapping: Header) -> None:
        try:
            for field, kind in plain:
                if type(mapping[field]) is not kind:
                    raise wrong(mapping, field)
            for field, ok in other:
                if not ok(mapping[field]):
                    raise wrong(mapping, field)
        except KeyError as e:
            raise wrong(mapping, e.args[0]) from None
        for field, ok in optional:
            if field in mapping and not ok(mapping[field]):
                raise wrong(mapping, field)
    return check


_CHECKS = {op: _fields_check(schema, op) for op, schema in SCHEMAS.items()}


def pack_items(items: list[Header], frame_lists: Sequence[Sequence[Any]]) -> Frames:
    """Set each item's ``nframes`` and return all their frames, in order."""
    frames: Frames = []
    for item, item_frames in zip(items, frame_lists):
        item["nframes"] = len(item_frames)
        frames.extend(item_frames)
    return frames


def unpack_items(items: list[Header], frames: Sequence[Any]) -> Iterator[tuple[Header, Frames]]:
    """``(item, its frames)`` for each item, an item without ``nframes`` owning none.

    The counts are checked at the call, before anything is yielded: raises
    ProtocolError if they disagree with the frames.
    """
    counts = [item.get("nframes", 0) for item in items]
    total = sum(counts)
    if total != len(frames) or any(n < 0 for n in counts):
        raise ProtocolError(f"items announce {total} frames, message has {len(frames)}")
    return _slices(items, counts, frames)


def _slices(items: list[Header], counts: list[int], frames: Sequence[Any]
            ) -> Iterator[tuple[Header, Frames]]:
    start = 0
    for item, count in zip(items, counts):
        yield item, list(frames[start:start + count])
        start += count
