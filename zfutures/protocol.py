"""The wire protocol: how every zfutures message is laid out in ZeroMQ frames.

A message is one multipart ZeroMQ message::

    [identity]   only on the ROUTER side, added and removed by ZeroMQ
    header       msgpack array [op, layout, inline, field, ...]: plain data, never pickle
    frame ...    opaque payload frames (pickled functions, arguments, results)

Each op has its class in :mod:`zfutures.messages`, whose fields travel in the
header in the class's order; that class is the one place their names and
types are written. The center reads headers only; payload frames pass through
it untouched, so it never runs code that arrived on a socket.

Ops that are produced in bursts carry a list of items (``tasks`` or ``keys``)
so that many tasks, results or releases travel in one message. An item that
owns payload frames says how many with ``nframes``; its frames follow the
header in item order (see :func:`unpack_items`).
On the wire, the small payload frames of a message travel packed into one
frame, which the header's ``layout`` cuts again (:func:`encode_message`,
:func:`decode_message`); if they are few bytes in all, that packed frame rides
in the header itself (``inline``), and the message is a single frame.

Every header is checked against its class by :func:`decode_message` before
any handler sees it: a message that does not fit is rejected there, in one
place, with a :class:`~zfutures.errors.ProtocolError`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar, Union, get_args, get_origin, get_type_hints

import msgpack

from .errors import ProtocolError
from .messages import MESSAGES, OP_NAMES

#: Payload frames: bytes, memoryviews or zmq Frames, in order.
Frames = list[Any]


def same_call(payload: Frames, other: Frames) -> bool:
    """Whether two tasks' payloads are the same pickled call, byte for byte
    (compared in place: no frame is copied)."""
    return len(payload) == len(other) and \
        all(memoryview(a) == memoryview(b) for a, b in zip(payload, other))

#: Bumped whenever a message changes shape; peers must register with the same.
PROTOCOL_VERSION = 10

#: Largest header accepted, in bytes. Headers hold keys and small numbers only.
MAX_HEADER_BYTES = 64 * 1024 * 1024

#: Largest message the center and the workers' data servers accept by default
#: (``--max-message-size``), payload frames included: room for big task
#: arguments and scattered data, while a peer cannot make a server buffer
#: without bound. libzmq drops the connection of a peer that sends more.
MAX_MESSAGE_SIZE = 2**30

#: Payload frames smaller than this travel packed together in one frame: each
#: frame costs several microseconds to send and receive, whatever its size, and
#: a batch of a thousand small tasks would otherwise pay that thousands of times.
PACK_BELOW = 64 * 1024

#: A payload smaller than this in all travels packed inside the header: a
#: message of one frame costs microseconds less to send and to receive than
#: one of two, which is a good part of a lone task's round trip.
INLINE_BELOW = 16 * 1024


def encode_message(msg: Any, frames: Sequence[Any] = ()) -> Frames:
    """The wire frames of ``msg`` (a class of :mod:`zfutures.messages`): its
    header, then its payload ``frames``.

    The header is a msgpack array: the op, the layout and inline payload (see
    below; nil without), then the message's fields in order.
    With more than one payload frame, or a small one, the layout gives each
    frame in order: its size ``n >= 0`` if it is packed with the other small
    ones, or ``-size`` if it travels on its own, zero-copy. The packed frames
    travel inline, in the header, if they are fewer than INLINE_BELOW bytes in
    all, else in the first frame after the header (see :func:`decode_message`).

    >>> from zfutures.messages import Release
    >>> encode_message(Release(["x"]))
    [b'\\x94\\xa7release\\xc0\\xc0\\x91\\xa1x']
    """
    op = OP_NAMES[type(msg)]
    if not frames:
        return [_pack([op, None, None, *msg])]
    sizes = [memoryview(frame).nbytes for frame in frames]
    if sum(sizes) < INLINE_BELOW:
        inline = frames[0] if len(frames) == 1 and type(frames[0]) is bytes \
            else b"".join(frames)
        return [_pack([op, sizes, inline, *msg])]
    if len(frames) < 2:
        return [_pack([op, None, None, *msg]), *frames]
    layout, small, large = [], [], []
    for frame, size in zip(frames, sizes):
        if size < PACK_BELOW:
            layout.append(size)
            small.append(frame)
        else:
            layout.append(-size)
            large.append(frame)
    packed = [b"".join(small)] if small else []
    return [_pack([op, layout, None, *msg]), *packed, *large]


def _pack(header: list[Any]) -> bytes:
    packed: bytes = msgpack.packb(header, use_bin_type=True)
    return packed


def decode_message(frames: Sequence[Any]) -> tuple[Any, Frames]:
    """``(message, payload buffers)`` of a message's frames (zmq Frames or
    bytes): the header checked and made into its class of
    :mod:`zfutures.messages`, the packed frames cut out again;
    ProtocolError if anything does not fit."""
    if not frames:
        raise ProtocolError("a message without a header")
    msg, layout, inline = _read_header(_bytes(frames[0]))
    rest = [_buffer(f) for f in frames[1:]]
    if layout is None:
        if inline is not None:
            raise ProtocolError("an inline payload without a layout")
        return msg, rest
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
    return msg, payload


def _read_header(raw: bytes | memoryview) -> tuple[Any, Any, Any]:
    """``(message, layout, inline)`` of a packed header, checked."""
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise ProtocolError(f"header is not msgpack: {type(e).__name__}: {e}") from None
    if type(header) is not list or len(header) < 3:
        raise ProtocolError(f"header is a {type(header).__name__}, not an array of "
                            "op, layout, inline and fields")
    op = header[0]
    make = _MAKERS.get(op) if type(op) is str else None
    if make is None:
        raise ProtocolError(f"unknown op {op!r}")
    return make(header[3:]), header[1], header[2]


def _bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def _buffer(frame: Any) -> memoryview:
    return frame.buffer if hasattr(frame, "buffer") else memoryview(frame)


# ---------------------------------------------------------------- checks
#
# Each message class is turned, once, into a function that checks a header's
# fields against the class's annotations and makes the instance: messages
# are checked at every hop, for every item of a batch, so this is a hot path.
# The fields arrive as a list; a list of items, each a list, is made into
# the items' class in place.

_Maker = Callable[[list[Any]], Any]


def _maker(cls: type, where: str) -> _Maker:
    """The function that checks ``values`` and makes a ``cls`` of them."""
    fields: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]
    defaults: dict[str, Any] = cls._field_defaults  # type: ignore[attr-defined]
    hints = get_type_hints(cls)
    count, required = len(fields), len(fields) - len(defaults)
    tail = [defaults[name] for name in fields[required:]]
    exact: list[tuple[int, type]] = []  # fields of exactly one plain type
    checked: list[tuple[int, Callable[[Any], Any]]] = []  # checked, maybe made anew
    unset: list[tuple[int, Callable[[Any], Any]]] = []  # the same, when not nil
    for index, name in enumerate(fields):
        hint = hints[name]
        if hint in (int, str, bool):
            exact.append((index, hint))
        elif get_origin(hint) is Union:  # Optional[X]: mostly nil, so tested here first
            inner = next(a for a in get_args(hint) if a is not type(None))
            unset.append((index, _converter(inner, f"{where}: field {name!r}")))
        elif hint is not Any:
            checked.append((index, _converter(hint, f"{where}: field {name!r}")))
    new = tuple.__new__

    def make(values: list[Any]) -> Any:
        given = len(values)
        if given != count:
            if given < required:
                raise ProtocolError(f"{where}: {given} fields, needs "
                                    f"{', '.join(fields[:required])}")
            values = values[:count] if given > count else values + tail[given - required:]
        for index, kind in exact:
            if type(values[index]) is not kind:  # exactly: a bool is not an int here
                raise ProtocolError(f"{where}: field {fields[index]!r} has type "
                                    f"{type(values[index]).__name__}")
        for index, convert in checked:
            values[index] = convert(values[index])
        for index, convert in unset:
            if values[index] is not None:
                values[index] = convert(values[index])
        return new(cls, values)
    return make


def _converter(hint: Any, where: str) -> Callable[[Any], Any]:
    """A function returning a value of type ``hint`` as the message holds it
    (a list of items made into their class), or raising ProtocolError."""
    def wrong(value: Any) -> ProtocolError:
        return ProtocolError(f"{where} has type {type(value).__name__}")

    origin, args = get_origin(hint), get_args(hint)
    if hint is float:
        def number(value: Any) -> Any:
            if type(value) is int or type(value) is float:
                return value
            raise wrong(value)
        return number
    if hint in (int, str, bool):
        def plain(value: Any) -> Any:
            if type(value) is hint:
                return value
            raise wrong(value)
        return plain
    if hint is Any:
        return lambda value: value
    if origin is list and hasattr(args[0], "_fields"):  # a list of items
        make_item = _maker(args[0], f"{where}: item")

        def items(value: Any) -> Any:
            if type(value) is not list:
                raise wrong(value)
            for position, item in enumerate(value):
                if type(item) is not list:
                    raise ProtocolError(f"{where}: an item has type {type(item).__name__}")
                value[position] = make_item(item)
            return value
        return items
    if origin is list:
        inner = _converter(args[0], where)

        def listed(value: Any) -> Any:
            if type(value) is not list:
                raise wrong(value)
            for item in value:
                inner(item)
            return value
        return listed
    if origin is dict and args[0] is str:
        inner = _converter(args[1], where)

        def mapped(value: Any) -> Any:
            if type(value) is not dict:
                raise wrong(value)
            for key, item in value.items():
                if type(key) is not str:
                    raise wrong(key)
                inner(item)
            return value
        return mapped
    raise AssertionError(f"{where}: a field of type {hint!r} cannot travel")


_MAKERS: dict[str, _Maker] = {op: _maker(cls, op) for op, cls in MESSAGES.items()}


class _OwnsFrames(Protocol):
    """An item that says how many payload frames follow for it."""

    @property
    def nframes(self) -> int: ...


_Item = TypeVar("_Item", bound=_OwnsFrames)


def unpack_items(items: Sequence[_Item], frames: Sequence[Any]) -> Iterator[tuple[_Item, Frames]]:
    """``(item, its frames)`` for each item of a message, in order.

    The counts are checked at the call, before anything is yielded: raises
    ProtocolError if they disagree with the frames.
    """
    counts = [item.nframes for item in items]
    total = sum(counts)
    if total != len(frames) or any(n < 0 for n in counts):
        raise ProtocolError(f"items announce {total} frames, message has {len(frames)}")
    return _slices(items, counts, frames)


def _slices(items: Sequence[_Item], counts: list[int], frames: Sequence[Any]
            ) -> Iterator[tuple[_Item, Frames]]:
    start = 0
    for item, count in zip(items, counts):
        yield item, list(frames[start:start + count])
        start += count
