"""Messages the scheduler queues, merged per recipient and op, for the shell to send."""
from __future__ import annotations

from typing import Any, Union

#: Items of one message the center sends, at most: a peer handles a message
#: at once, so one of 142,500 keys to copy from a retiring worker held its
#: recipient from its heartbeats for 1.6 s (about 11 us a key). Thousands
#: still make the cost of a message itself vanish.
MAX_ITEMS_PER_MESSAGE = 2_000

#: One queued message: [op, list_field, items, frames, seen].
_Message = list[Any]
#: One recipient's queue: its messages in order, op -> index of its last
#: message, key -> index of the last message that names it.
_Queue = tuple[list[_Message], dict[str, int], dict[Union[str, None], int]]


class Outbox:
    """Messages queued by the scheduler, merged per recipient and op.

    Items of one op for one recipient become one message, except where that
    would reorder what the recipient hears of one key: a release of a key
    followed by a new compute of it must not arrive the other way round, so
    such an item starts a new message after the one it must follow. A message
    holds at most MAX_ITEMS_PER_MESSAGE items.
    ``take()`` returns ``[(ident, op, fields, frames)]`` in the order each
    recipient must see them; ``fields[list_field]`` holds the items.
    """

    def __init__(self) -> None:
        self._queued: dict[bytes, _Queue] = {}

    def add(self, ident: bytes, op: str, list_field: str, item: Any,
            frames: list[Any] | None = None, seen: int | None = None) -> None:
        """Queue ``item`` in the ``list_field`` of ``op`` to ``ident``, with its
        frames; with ``seen``, in a message stamped so (see ClientRecord.seen)."""
        queued = self._queued.get(ident)
        if queued is None:
            queued = self._queued[ident] = ([], {}, {})
        messages, last_of_op, last_naming = queued
        key = item if isinstance(item, str) else item.get("key")
        index = last_of_op.get(op)
        if index is None or last_naming.get(key, -1) > index or messages[index][4] != seen \
                or len(messages[index][2]) >= MAX_ITEMS_PER_MESSAGE:
            index = last_of_op[op] = len(messages)
            messages.append([op, list_field, [], [], seen])
        if key is not None:
            last_naming[key] = index
        message = messages[index]
        message[2].append(item)
        if frames is not None:
            item["nframes"] = len(frames)
            message[3].extend(frames)

    def send(self, ident: bytes, op: str) -> None:
        """Queue a message without fields."""
        queued = self._queued.setdefault(ident, ([], {}, {}))
        if op not in queued[1]:
            queued[1][op] = len(queued[0])
            queued[0].append([op, "", [], [], None])

    def take(self) -> list[tuple[bytes, str, dict[str, Any], list[Any]]]:
        """Every queued message, in order per recipient; the outbox is empty after."""
        taken = [(ident, op, _fields(list_field, items, seen), frames)
                 for ident, (messages, _, _) in self._queued.items()
                 for op, list_field, items, frames, seen in messages]
        self._queued.clear()
        return taken


def _fields(list_field: str, items: list[Any], seen: int | None) -> dict[str, Any]:
    fields: dict[str, Any] = {list_field: items} if list_field else {}
    if seen is not None:
        fields["seen"] = seen
    return fields
