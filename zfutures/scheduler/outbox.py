"""Messages the scheduler queues, merged per recipient and op, for the shell to send."""
from __future__ import annotations

from typing import Any

from ..protocol import Frames

#: Items of one message the center sends, at most: a peer handles a message
#: at once, so one of 142,500 keys to copy from a retiring worker held its
#: recipient from its heartbeats for 1.6 s (about 11 us a key). Thousands
#: still make the cost of a message itself vanish.
MAX_ITEMS_PER_MESSAGE = 2_000

#: One queued message: [its class, its items (None: a message without
#: fields), the items' frames, seen].
_Message = list[Any]
#: One recipient's queue: its messages in order, class -> index of its last
#: message, key -> index of the last message that names it.
_Queue = tuple[list[_Message], dict[type, int], dict[str, int]]


class Outbox:
    """Messages queued by the scheduler, merged per recipient and op.

    Items of one op for one recipient become one message, except where that
    would reorder what the recipient hears of one key: a release of a key
    followed by a new compute of it must not arrive the other way round, so
    such an item starts a new message after the one it must follow. A message
    holds at most MAX_ITEMS_PER_MESSAGE items.

    An op is given as its class of :mod:`zfutures.messages`; every class
    queued here takes its list of items first, and the ``seen`` stamp of
    news to a client second (KeyFinished, KeyErred, DirectAccepted). Items
    are those classes' items, or strings (keys, addresses) for a list of
    them. An item that owns frames says how many in its ``nframes``, as its
    maker built it: the outbox only appends the frames after the message's
    others. ``take()`` returns ``[(ident, message, frames)]`` in the order
    each recipient must see them.
    """

    def __init__(self) -> None:
        self._queued: dict[bytes, _Queue] = {}

    def add(self, ident: bytes, cls: type, item: Any, frames: Frames | None = None,
            seen: int | None = None) -> None:
        """Queue ``item`` in a ``cls`` message to ``ident``, with its frames;
        with ``seen``, in a message stamped so (see ClientRecord.seen)."""
        queued = self._queued.get(ident)
        if queued is None:
            queued = self._queued[ident] = ([], {}, {})
        messages, last_of_op, last_naming = queued
        key = item if type(item) is str else item.key
        index = last_of_op.get(cls)
        if index is None or last_naming.get(key, -1) > index or messages[index][3] != seen \
                or len(messages[index][1]) >= MAX_ITEMS_PER_MESSAGE:
            index = last_of_op[cls] = len(messages)
            messages.append([cls, [], [], seen])
        last_naming[key] = index
        message = messages[index]
        message[1].append(item)
        if frames:
            message[2].extend(frames)

    def send(self, ident: bytes, cls: type) -> None:
        """Queue a message without fields (once, however often asked)."""
        queued = self._queued.setdefault(ident, ([], {}, {}))
        if cls not in queued[1]:
            queued[1][cls] = len(queued[0])
            queued[0].append([cls, None, [], None])

    def take(self) -> list[tuple[bytes, Any, Frames]]:
        """Every queued message, in order per recipient; the outbox is empty after."""
        taken = [(ident, cls() if items is None else cls(items) if seen is None
                  else cls(items, seen), frames)
                 for ident, (messages, _, _) in self._queued.items()
                 for cls, items, frames, seen in messages]
        self._queued.clear()
        return taken
