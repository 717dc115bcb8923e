"""The wire protocol: messages are checked in one place and only ProtocolError escapes."""
from __future__ import annotations

from typing import Any, get_type_hints

import msgpack
import numpy as np
import pytest
import raw_wire
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from raw_wire import SCHEMAS

from zfutures import loop, messages, protocol, serialize
from zfutures.errors import ProtocolError
from zfutures.messages import (
    MESSAGES,
    Compute,
    ComputeItem,
    Heartbeat,
    Release,
    Reply,
    Submit,
    TaskItem,
)
from zfutures.protocol import decode_message, encode_message, unpack_items

encode_header = raw_wire.header  # any fields, unchecked: what a peer could send


def decode_header(data: bytes | memoryview) -> Any:
    """The message of a header without payload."""
    msg, payload = decode_message([data])
    assert payload == []
    return msg


def valid(kind: Any) -> Any:
    """A value that fits a schema kind of :data:`protocol.SCHEMAS`."""
    if kind is object:
        return {"anything": [1, "goes"]}
    if kind is bool:
        return True
    if kind is int:
        return 3
    if kind == (int, float):
        return 1.5
    if kind is str:
        return "s"
    tag = kind[0]
    if tag == "list":
        return [valid(kind[1]), valid(kind[1])]
    if tag == "map":
        inner = kind[1:] if len(kind) > 2 else kind[1]
        return {"k": valid(inner)}
    if tag == "items":
        return [{name(field): valid(k) for field, k in kind[1].items()}]
    raise AssertionError(kind)


def wrong(kind: Any) -> list:
    """Values that do not fit a schema kind."""
    if kind is bool:
        return [1, 0, "true", None]
    if kind is int:
        return ["3", 3.0, True, None]
    if kind == (int, float):
        return ["1.5", None, [1], True]
    if kind is str:
        return [3, b"bytes", None, ["s"]]
    tag = kind[0]
    if tag == "list":
        return ["not a list", {"k": valid(kind[1])}] + [[w] for w in wrong(kind[1])[:2]]
    if tag == "map":
        inner = kind[1:] if len(kind) > 2 else kind[1]
        return [[], "map"] + [{"k": w} for w in wrong(inner)[:2]]
    if tag == "items":
        return [{}, "items", ["not a map"], [{}]]
    raise AssertionError(kind)


def name(field: str) -> str:
    """A schema field's name on the wire: a trailing "?" marks it optional."""
    return field[:-1] if field.endswith("?") else field


def example_fields(op: str) -> dict:
    """Every field of ``op``, optional ones too, with fitting values."""
    return {name(field): valid(kind) for field, kind in SCHEMAS[op].items()}


def raw(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


OPS = sorted(SCHEMAS)
FIELDS = [(op, field) for op in OPS for field in SCHEMAS[op]]
REQUIRED_FIELDS = [(op, field) for op, field in FIELDS if not field.endswith("?")]
TYPED_FIELDS = [(op, field) for op, field in FIELDS if SCHEMAS[op][field] is not object]


# --------------------------------------------------------------------------- round trips


def build(cls: Any, fields: dict) -> Any:
    """An instance of a message or item class, items given as dicts made too."""
    schema = raw_wire.schema_of(cls)
    hints = {name(f): k for f, k in schema.items()}
    made = {}
    for field, value in fields.items():
        kind = hints[field]
        if isinstance(kind, tuple) and kind[0] == "items":
            item_cls = raw_wire.item_class(get_type_hints(cls)[field])
            value = [build(item_cls, item) for item in value]
        made[field] = value
    return cls(**made)


@pytest.mark.parametrize("op", OPS)
def test_every_op_round_trips_through_encode_and_decode(op):
    msg = build(MESSAGES[op], example_fields(op))
    assert decode_message(encode_message(msg)) == (msg, [])
    assert messages.op_of(decode_header(encode_message(msg)[0])) == op


def test_every_op_has_its_own_class():
    assert len(set(MESSAGES.values())) == len(MESSAGES)
    assert all(messages.OP_NAMES[cls] == op for op, cls in MESSAGES.items())


def test_decode_accepts_a_memoryview():
    data = encode_message(Release(["a", "b"]))[0]
    assert decode_header(memoryview(data)) == Release(["a", "b"])


def test_fields_a_newer_peer_adds_at_the_end_are_ignored():
    assert decode_header(msgpack.packb(["release", None, None, ["a"], 7, "new"])) == \
        Release(["a"])


def test_a_heartbeat_reads_with_or_without_where_a_workers_results_are():
    older = decode_header(msgpack.packb(["heartbeat", None, None, 5000, 12.5]))
    assert older == Heartbeat(memory=5000, cpu=12.5, managed=None, spilled=None)
    assert decode_header(msgpack.packb(["heartbeat", None, None])) == Heartbeat()
    full = Heartbeat(memory=5000, cpu=12.5, managed=1000, spilled=4000)
    assert decode_header(encode_message(full)[0]) == full
    for bad in (1.5, "4000", True, [1]):
        with pytest.raises(ProtocolError, match="spilled"):
            decode_header(encode_header("heartbeat", memory=5000, cpu=1.0, managed=1,
                                        spilled=bad))
        with pytest.raises(ProtocolError, match="managed"):
            decode_header(encode_header("heartbeat", managed=bad))


def test_strings_and_binary_stay_distinct():
    msg = decode_header(encode_message(Reply(1, {"text": "é", "data": b"\x00"}))[0])
    assert msg.result == {"text": "é", "data": b"\x00"}


def test_a_header_is_an_array_of_op_layout_inline_and_the_fields_in_order():
    item = TaskItem("x", ["a"], 2, nframes=1)
    assert msgpack.unpackb(encode_message(Submit([item], seq=4))[0]) == \
        ["submit", None, None, [list(item)], 4]


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize("data", [
    b"",                                   # nothing
    b"\xc1",                               # a byte msgpack never uses
    encode_header("release", keys=["a"])[:-2],          # truncated
    encode_header("release", keys=["a"]) + b"trailing",  # extra data after the header
    b"\x80\x03\x7d\x71\x00\x2e",           # a pickle, of all things
], ids=["empty", "reserved-byte", "truncated", "trailing-bytes", "pickle"])
def test_bytes_that_are_not_one_msgpack_object_are_rejected(data):
    with pytest.raises(ProtocolError):
        decode_header(data)


@pytest.mark.parametrize("obj", [{"op": "release", "keys": ["a"]}, "release", 3, None,
                                 b"release", 1.5, ["release"], ["release", None]])
def test_header_that_is_not_an_array_of_op_layout_and_inline_is_rejected(obj):
    with pytest.raises(ProtocolError, match="not an array"):
        decode_header(raw(obj))


@pytest.mark.parametrize("op", ["no-such-op", "", "RELEASE", 3, None, ["release"]])
def test_unknown_op_is_rejected(op):
    with pytest.raises(ProtocolError, match="unknown op"):
        decode_header(raw([op, None, None, ["a"]]))


@pytest.mark.parametrize(("op", "field"), REQUIRED_FIELDS)
def test_header_missing_a_required_field_is_rejected(op, field):
    fields = example_fields(op)
    del fields[field]  # (the fields after it are left out too: the message ends there)
    with pytest.raises(ProtocolError, match=field):
        decode_header(encode_header(op, **fields))


def optional_fields(schema: dict) -> list[str]:
    return [name(field) for field in schema if field.endswith("?")]


def test_optional_fields_may_be_left_out_and_read_as_their_defaults():
    for op, schema in SCHEMAS.items():
        fields = {name(f): valid(k) for f, k in schema.items() if not f.endswith("?")}
        for field, kind in schema.items():       # optional fields of items too
            if isinstance(kind, tuple) and kind[0] == "items" and not field.endswith("?"):
                for item in fields[name(field)]:
                    for optional in optional_fields(kind[1]):
                        item.pop(optional, None)
        msg = decode_header(encode_header(op, **fields))
        cls = MESSAGES[op]
        assert msg == build(cls, fields)
        assert all(getattr(msg, f) == d for f, d in cls._field_defaults.items())


@pytest.mark.parametrize(("op", "field"), TYPED_FIELDS)
def test_field_of_the_wrong_type_is_rejected(op, field):
    for bad in wrong(SCHEMAS[op][field]):
        fields = example_fields(op)
        fields[name(field)] = bad
        if bad is None and field.endswith("?"):
            continue  # nil: an optional field left unset
        with pytest.raises(ProtocolError):
            decode_header(encode_header(op, **fields))


ITEM_FIELDS = [(op, field, item_field)
               for op in OPS for field, kind in SCHEMAS[op].items()
               if isinstance(kind, tuple) and kind[0] == "items"
               for item_field in kind[1] if kind[1][item_field] is not object]


@pytest.mark.parametrize(("op", "field", "item_field"), ITEM_FIELDS)
def test_item_field_of_the_wrong_type_is_rejected(op, field, item_field):
    kind = SCHEMAS[op][field][1][item_field]
    for bad in wrong(kind):
        if bad is None and item_field.endswith("?"):
            continue  # nil: an optional field left unset
        fields = example_fields(op)
        fields[name(field)][0][name(item_field)] = bad
        with pytest.raises(ProtocolError):
            decode_header(encode_header(op, **fields))


@pytest.mark.parametrize("tasks", [
    "not a list",
    ["not an array"],
    [{"key": "x", "deps": []}],                                      # no priority
    [{"key": 1, "deps": [], "priority": 0, "nframes": 1}],           # key not a string
    [{"key": "x", "deps": "y", "priority": 0, "nframes": 1}],        # deps not a list
    [{"key": "x", "deps": [1], "priority": 0, "nframes": 1}],        # dep not a string
    [{"key": "x", "deps": [], "priority": 0.5, "nframes": 1}],       # priority not an int
    [{"key": "x", "deps": [], "priority": 0, "nframes": 1}, 7],      # one bad item of two
], ids=["not-list", "not-array", "no-priority", "int-key", "str-deps", "int-dep",
        "float-priority", "second-item"])
def test_submit_with_a_bad_item_is_rejected(tasks):
    with pytest.raises(ProtocolError):
        decode_header(encode_header("submit", tasks=tasks))


def test_compute_deps_must_map_keys_to_lists_of_addresses():
    good = {"key": "y", "deps": {"x": ["tcp://a:1"]}, "priority": 0, "run": 3, "nframes": 1}
    assert decode_header(encode_header("compute", tasks=[good])) == \
        Compute([ComputeItem(**good)])
    for deps in [{"x": "tcp://a:1"}, {"x": [1]}, ["x"], {"x": None}]:
        with pytest.raises(ProtocolError):
            decode_header(encode_header("compute", tasks=[dict(good, deps=deps)]))


def test_oversized_header_is_rejected_before_unpacking(monkeypatch):
    monkeypatch.setattr(protocol, "MAX_HEADER_BYTES", 100)
    small = encode_message(Release(["a"]))[0]
    big = encode_message(Release(["a" * 200]))[0]
    assert decode_header(small).keys == ["a"]
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_header(big)


# --------------------------------------------------------------------------- items and frames


def test_items_and_their_frames_survive_the_wire():
    items = [TaskItem("a", [], 0, nframes=1), TaskItem("b", ["a"], 1, nframes=2)]
    msg, payload = decode_message(encode_message(Submit(items), [b"fa", b"fb1", b"fb2"]))
    assert [(item.key, [bytes(f) for f in frames])
            for item, frames in unpack_items(msg.tasks, payload)] == [
        ("a", [b"fa"]), ("b", [b"fb1", b"fb2"])]


@pytest.mark.parametrize("nframes", [[2, 1], [1, 0], [0, 0], [-1, 3]],
                         ids=["more-announced", "fewer-announced", "none-announced",
                              "negative"])
def test_unpack_items_rejects_frame_counts_that_do_not_match(nframes):
    items = [TaskItem("a", [], 0, nframes=nframes[0]), TaskItem("b", [], 0, nframes=nframes[1])]
    with pytest.raises(ProtocolError):
        list(unpack_items(items, [b"1", b"2"]))


def test_unpack_items_checks_counts_before_yielding_anything():
    items = [TaskItem("a", [], 0, nframes=1), TaskItem("b", [], 0, nframes=5)]
    with pytest.raises(ProtocolError):  # at the call, so a handler can check first
        unpack_items(items, [b"1", b"2"])


# --------------------------------------------------------------------------- fuzzing

FIELD_NAMES = sorted({name(field) for schema in SCHEMAS.values() for field in schema}
                     | {name(field) for schema in SCHEMAS.values() for kind in schema.values()
                        if isinstance(kind, tuple) and kind[0] == "items"
                        for field in kind[1]})

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
           | st.text(max_size=8) | st.binary(max_size=8))
values = st.recursive(
    scalars,
    lambda children: (st.lists(children, max_size=3)
                      | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=4)
                                        | st.integers(-3, 3), children, max_size=3)),
    max_leaves=10)


def near(kind: Any) -> st.SearchStrategy:
    """Values that mostly fit a schema kind, with misfits at every depth."""
    if kind is object:
        return values
    if kind is bool:
        fit = st.booleans()
    elif kind is int:
        fit = st.integers(-3, 3)
    elif kind == (int, float):
        fit = st.integers(-3, 3) | st.floats()
    elif kind is str:
        fit = st.text(max_size=4)
    elif not isinstance(kind, tuple):
        return values                           # a kind this test does not know yet
    elif kind[0] == "list":
        fit = st.lists(near(kind[1]), max_size=3)
    elif kind[0] == "map":
        inner = kind[1:] if len(kind) > 2 else kind[1]
        fit = st.dictionaries(st.text(max_size=3), near(inner), max_size=3)
    elif kind[0] == "items":
        fit = st.lists(st.fixed_dictionaries(
            {f: near(k) for f, k in kind[1].items() if not f.endswith("?")},
            optional={name(f): near(k) for f, k in kind[1].items() if f.endswith("?")}),
            max_size=3)
    else:
        return values                           # a kind this test does not know yet
    return st.one_of(fit, fit, fit, scalars)


headers = st.one_of([
    st.fixed_dictionaries(
        {"op": st.just(op), **{f: near(k) for f, k in SCHEMAS[op].items() if f[-1] != "?"}},
        optional={name(f): near(k) for f, k in SCHEMAS[op].items() if f[-1] == "?"})
    for op in OPS])

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def decode_or_protocol_error(data: bytes) -> None:
    """decode_header either accepts (and then unpack_items is safe) or raises ProtocolError."""
    try:
        msg = decode_header(data)
    except ProtocolError:
        return
    op = messages.op_of(msg)
    for field, kind in SCHEMAS[op].items():
        items = getattr(msg, name(field))
        if isinstance(kind, tuple) and kind[0] == "items" and items is not None \
                and "nframes?" in kind[1]:  # (items that own frames)
            for nframes in (0, 1, 3):
                try:
                    list(unpack_items(items, [b""] * nframes))
                except ProtocolError:
                    pass


@FUZZ
@given(st.binary(max_size=300))
@example(b"\xdd\xff\xff\xff\xff")         # announces a 4-billion-element array
@example(b"\xdf\xff\xff\xff\xff")         # ... and map
@example(b"\x91" * 5000)                  # deeply nested arrays
def test_random_bytes_never_raise_anything_but_ProtocolError(data):
    decode_or_protocol_error(data)


@FUZZ
@given(values)
def test_random_msgpack_values_never_raise_anything_but_ProtocolError(value):
    decode_or_protocol_error(raw(value))


@FUZZ
@given(headers)
@example({"op": "submit", "tasks": [{"key": "x", "deps": [], "priority": 0, "nframes": -1}]})
@example({"op": "compute", "tasks": [{"key": "x", "deps": {"a": 1}, "nframes": 0, "run": 0}]})
@example({"op": "acquire", "tasks": [{"key": "", "holders": []}]})  # items owning no frames
def test_random_headers_of_real_ops_never_raise_anything_but_ProtocolError(header):
    decode_or_protocol_error(encode_header(**header))


# --------------------------------------------------------------------------- packed frames


@FUZZ
@given(st.lists(st.sampled_from([0, 1, 100, protocol.INLINE_BELOW - 1, protocol.INLINE_BELOW,
                                 protocol.PACK_BELOW - 1, protocol.PACK_BELOW,
                                 protocol.PACK_BELOW + 7]), max_size=12))
def test_small_frames_travel_packed_and_come_out_as_they_went_in(sizes):
    frames = [bytes([i % 256]) * n for i, n in enumerate(sizes)]
    wire = encode_message(messages.Run(1), frames)
    small = [n for n in sizes if n < protocol.PACK_BELOW]
    if sizes and sum(sizes) < protocol.INLINE_BELOW:  # all in the header
        assert len(wire) == 1
    elif len(small) > 1:  # one frame for all the small ones
        assert len(wire) == 1 + 1 + (len(sizes) - len(small))
    else:
        assert len(wire) == 1 + len(sizes)
    msg, payload = decode_message(wire)
    assert msg == messages.Run(1)
    assert [bytes(p) for p in payload] == frames


def test_a_small_payload_makes_a_message_of_one_frame(socket_pair):
    a, b = socket_pair
    pickled = serialize.dumps({"x": 1})
    wire = encode_message(messages.DirectResult("k", 3, 28), pickled)
    assert len(wire) == 1
    loop.send_frames(a, wire)
    msg, payload = decode_message(loop.receive(b))
    assert msg == messages.DirectResult(key="k", run=3, nbytes=28)
    assert serialize.loads(payload) == {"x": 1}


@pytest.mark.parametrize("layout", [[5, 6], [3], [-1, 10], [10, -2], "10", [10.0], [10, None]])
def test_a_layout_that_does_not_match_its_frames_is_rejected(layout):
    wire = [encode_header("run", id=1, layout=layout), b"x" * 10]
    with pytest.raises(ProtocolError):
        decode_message(wire)


@pytest.mark.parametrize("fields, frames", [
    ({"inline": b"abc"}, []),                           # no layout to cut it
    ({"layout": [3], "inline": "abc"}, []),             # not bytes
    ({"layout": [4], "inline": b"abc"}, []),            # cut past its end
    ({"layout": [1, 1], "inline": b"abc"}, []),         # bytes left over
    ({"layout": [3, -2], "inline": b"abc"}, []),        # a large frame missing
    ({"layout": [-2], "inline": b"abc"}, [b"xy"]),      # inline, but nothing cut from it
])
def test_an_inline_payload_that_does_not_match_its_layout_is_rejected(fields, frames):
    with pytest.raises(ProtocolError):
        decode_message([encode_header("run", id=1, **fields), *frames])


@pytest.fixture
def socket_pair():
    context = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    a.bind("inproc://wire")
    b.connect("inproc://wire")
    yield a, b
    a.close(0)
    b.close(0)
    context.term()


def test_large_frames_travel_on_their_own_and_small_ones_packed(socket_pair):
    a, b = socket_pair
    big = np.arange(200_000, dtype=np.float64)
    frames = [b"small", memoryview(big), b"x" * 100, bytes(protocol.PACK_BELOW)]
    wire = encode_message(messages.Run(7), frames)
    assert len(wire) == 1 + 1 + 2     # the header, the packed small ones, two large
    loop.send_frames(a, wire)
    msg, payload = decode_message(loop.receive(b))
    assert msg == messages.Run(7)
    assert [bytes(p) for p in payload] == [bytes(f) for f in frames]
    assert np.array_equal(np.frombuffer(payload[1], np.float64), big)
    assert loop.receive(b) is None    # nothing more, and no exception to say so
