"""Headers built by hand, unchecked: what a broken or hostile peer could send.

:func:`header` lays a message out as :mod:`zfutures.protocol` does (an array:
op, layout, inline, then the fields in the order of the op's class) but takes
any values, of any type, so that tests can send what protocol.encode_message
would refuse to build. A field left out that has a default is sent as its
default if a later one is given; a required field left out ends the message
there (the fields after it are left out too).
"""
from __future__ import annotations

from typing import Any, Union, get_args, get_origin, get_type_hints

import msgpack

from zfutures.messages import MESSAGES


def header(op: Any, *, layout: Any = None, inline: Any = None, **fields: Any) -> bytes:
    """The packed header of ``op`` with ``fields``; items may be given as dicts."""
    cls = MESSAGES.get(op)
    values = _in_order(cls, fields) if cls is not None else list(fields.values())
    return msgpack.packb([op, layout, inline, *values], use_bin_type=True)


def _in_order(cls: Any, fields: dict[str, Any]) -> list[Any]:
    hints = get_type_hints(cls)
    values = []
    given = [index for index, name in enumerate(cls._fields) if name in fields]
    for name in cls._fields[:max(given, default=-1) + 1]:
        if name not in fields:
            if name not in cls._field_defaults:
                break
            values.append(cls._field_defaults[name])
            continue
        value, item_cls = fields[name], item_class(hints[name])
        if item_cls is not None and isinstance(value, list):
            value = [_in_order(item_cls, item) if isinstance(item, dict) else item
                     for item in value]
        values.append(value)
    return values


def item_class(hint: Any) -> Any:
    if get_origin(hint) is Union:
        hint = get_args(hint)[0]
    args = get_args(hint)
    return args[0] if get_origin(hint) is list and hasattr(args[0], "_fields") else None


def kind_of(hint: Any) -> Any:
    """A field's type as the tests' value generators take it: int, str, bool,
    (int, float), object (anything), ("list", kind), ("map", kind) or
    ("items", schema of the item)."""
    if get_origin(hint) is Union:
        hint = get_args(hint)[0]
    if hint in (int, str, bool):
        return hint
    if hint is float:
        return (int, float)
    item_cls = item_class(hint)
    if item_cls is not None:
        return ("items", schema_of(item_cls))
    if get_origin(hint) is list:
        return ("list", kind_of(get_args(hint)[0]))
    if get_origin(hint) is dict:
        return ("map", kind_of(get_args(hint)[1]))
    return object


def schema_of(cls: Any) -> dict[str, Any]:
    """{field: kind} of a message or item class, in order; a field that may be
    left out (it has a default) ends in "?"."""
    hints = get_type_hints(cls)
    return {name + ("?" if name in cls._field_defaults else ""): kind_of(hints[name])
            for name in cls._fields}


#: op -> {field: kind}, for every op (see schema_of).
SCHEMAS = {op: schema_of(cls) for op, cls in MESSAGES.items()}
