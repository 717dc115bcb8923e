"""The client's messages for the center: their order, their batches, their timing.

Submits and releases are queued and merged into few messages (a map of
10,000 tasks goes in ten); releases wait a moment (RELEASE_DELAY) to go
together; the submits of lone tasks sent straight to a worker may wait as
long for the workers' answers (see :meth:`Outbox.defers`). Every submit and
scatter carries a sequence number, which the center's news of a key echoes
(``seen``): news stamped before the submit that made a key is of an earlier
life of it (see ``KeyRecord.since``).

Order: a release is sent before any message that could be about the key it
lets go of (a submit of it again, a scatter, a request, closing).
"""
from __future__ import annotations

import itertools
from typing import Any

from . import protocol, serialize
from .client_records import Item, KeyRecord
from .protocol import Frames

#: Tasks per submit message: big maps go in several messages, so the center
#: interleaves other peers' messages with them.
SUBMIT_BATCH = 1000
#: Keys let go of are told to the center in one message at most this many
#: seconds later: a loop of submit().result() would otherwise cost the center
#: and the worker one more message per task.
RELEASE_DELAY = 0.01
#: What may overtake keys waiting to be released: nothing in these names a
#: key let go of (a submit that does is sent after the release).
_UNORDERED = frozenset({"heartbeat", "submit", "release"})


class Outbox:
    """Messages for the center: :attr:`to_center` (op, fields, frames), which
    the shell sends and clears."""

    def __init__(self, keys: dict[str, KeyRecord], now: float):
        self.to_center: list[tuple[str, dict[str, Any], Frames]] = []
        self._keys = keys
        # The center's limit (learned from its welcome): larger messages would
        # cost us our connection, so submits are split below it.
        self.max_message_size = protocol.MAX_MESSAGE_SIZE
        # Messages being filled: [op ("submit" or "release"), items, frames,
        # bytes of frames].
        self._queued: list[list[Any]] = []
        self._releasing: dict[str, None] = {}  # keys to release at release_due
        self.release_due: float | None = None
        # Submits of direct tasks while queued (key -> item), and until when
        # they may wait there for the workers' answers (see defers).
        self.deferred: dict[str, Item] = {}
        self.deferred_due = 0.0
        self._seqs = itertools.count(1)
        self.last_sent = now

    # ------------------------------------------------------------------ queueing

    def queue(self, op: str, item: Any, frames: Frames | tuple[()] = ()) -> None:
        """Queue an item for the center, merged with the last message if it is alike
        (up to SUBMIT_BATCH items, and half the center's message size limit)."""
        if op == "submit" and item["key"] in self._releasing:
            self.release_now()  # submitted again: the center must see the release first
        size = serialize.frames_nbytes(frames) if frames else 0
        queued = self._queued
        if queued and queued[-1][0] == op:
            last = queued[-1]
            if len(last[1]) < SUBMIT_BATCH and last[3] + size < self.max_message_size // 2:
                last[1].append(item)
                last[2].extend(frames)
                last[3] += size
                return
        queued.append([op, [item], list(frames), size])

    def defer(self, item: Item, now: float) -> None:
        """``item``, a queued submit of a direct task, may wait (see defers)."""
        if not self.deferred:
            self.deferred_due = now + RELEASE_DELAY
        self.deferred[item["key"]] = item

    def undefer(self, key: str, drop: tuple[str, ...]) -> None:
        """``key``'s submit, queued or about to be sent, goes without the
        fields ``drop``, and no longer waits."""
        self.deferred.pop(key, None)
        submits = [entry[1] for entry in self._queued if entry[0] == "submit"] + \
            [fields["tasks"] for op, fields, _ in self.to_center if op == "submit"]
        for items in submits:
            for i, item in enumerate(items):
                if item["key"] == key:
                    items[i] = {k: v for k, v in item.items() if k not in drop}

    def release_later(self, key: str, now: float | None) -> None:
        """Release ``key`` with others, within RELEASE_DELAY."""
        if self.release_due is None:
            self.release_due = (self.last_sent if now is None else now) + RELEASE_DELAY
        self._releasing[key] = None
        if len(self._releasing) >= SUBMIT_BATCH:
            self.release_now()

    def take_back_release(self, key: str) -> None:
        """``key`` is not let go of after all (its data is being put back)."""
        self._releasing.pop(key, None)

    def release_now(self) -> None:
        for key in self._releasing:
            self.queue("release", key)
        self._releasing.clear()
        self.release_due = None

    def release_if_due(self, now: float) -> None:
        if self.release_due is not None and now >= self.release_due:
            self.release_now()

    def drop_queued(self) -> None:
        """Forget what is queued (a center that restarted knew none of it)."""
        self._queued.clear()
        self.deferred.clear()

    def queued(self) -> list[tuple[str, list[Any]]]:
        """What is queued, message by message: (op, items)."""
        return [(entry[0], entry[1]) for entry in self._queued]

    # ------------------------------------------------------------------ sending

    def defers(self, now: float) -> bool:
        """Whether all there is to send is submits of direct tasks, which may
        wait (RELEASE_DELAY at most from the first) to go to the center in one
        message: the worker's answers come meanwhile, and the submits say so
        (direct_answered), so the center need not send those results again.
        Its copy of the task is not needed sooner: the worker's reports wait
        for it there. Not for a task that waits on the center's word."""
        queued = self._queued
        return bool(self.deferred) and now < self.deferred_due and \
            len(queued) == 1 and len(queued[0][1]) == len(self.deferred)

    def flush(self, now: float) -> None:
        """Move what is queued to :attr:`to_center`, unless it may wait."""
        if self._queued and not self.defers(now):
            self.flush_all()

    def flush_all(self) -> None:
        """Move what is queued to :attr:`to_center`; the keys submitted take
        the submit's sequence number (see KeyRecord.since)."""
        self.deferred.clear()
        keys = self._keys
        for op, items, frames, _ in self._queued:
            if op == "submit":
                seq = next(self._seqs)
                self.send("submit", frames, tasks=items, seq=seq)
                for item in items:
                    info = keys.get(item["key"])
                    if info is not None:
                        info.since = seq
            else:  # release
                self.send(op, keys=items)
        self._queued.clear()

    def seq_after_queued(self) -> int:
        """Send what is queued, releases too, and return the next sequence
        number: news stamped with it is about what was sent with it."""
        if self._releasing:  # keep the order: earlier messages first
            self.release_now()
        self.flush_all()
        return next(self._seqs)

    def send(self, op: str, frames: Frames | None = None, **fields: Any) -> None:
        """Send a message after everything queued that it must not overtake."""
        if self._releasing and op not in _UNORDERED:
            # Scattered data, requests and closing see our releases done first.
            self.release_now()
            self.flush_all()
        self.to_center.append((op, fields, frames or []))

    def sent(self, now: float) -> None:
        """The shell sent :attr:`to_center` (for the heartbeat's timing)."""
        self.last_sent = now

    def next_due(self) -> float | None:
        """When releases, or submits that may wait (see defers), are due."""
        due = self.release_due
        if self.deferred and (due is None or self.deferred_due < due):
            due = self.deferred_due
        return due
