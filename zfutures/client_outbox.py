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
from .client_records import KeyRecord, Message
from .messages import Heartbeat, Release, Submit, TaskItem
from .protocol import Frames

#: Tasks per submit message: big maps go in several messages, so the center
#: interleaves other peers' messages with them.
SUBMIT_BATCH = 1000
#: Keys let go of are told to the center in one message at most this many
#: seconds later: a loop of submit().result() would otherwise cost the center
#: and the worker one more message per task.
RELEASE_DELAY = 0.01
#: What may overtake keys waiting to be released: no message of these classes names a
#: key let go of (a submit that does is sent after the release).
_UNORDERED = frozenset({Heartbeat, Submit, Release})


class Outbox:
    """Messages for the center: :attr:`to_center` (message, frames), which
    the shell sends and clears."""

    def __init__(self, keys: dict[str, KeyRecord], now: float):
        self.to_center: list[tuple[Message, Frames]] = []
        self._keys = keys
        # The center's limit (learned from its welcome): larger messages would
        # cost us our connection, so submits are split below it.
        self.max_message_size = protocol.MAX_MESSAGE_SIZE
        # Messages being filled: [class (Submit or Release), items (TaskItems,
        # or keys), frames, bytes of frames].
        self._queued: list[list[Any]] = []
        self._releasing: dict[str, None] = {}  # keys to release at release_due
        self.release_due: float | None = None
        # Submits of direct tasks while queued (key -> item), and until when
        # they may wait there for the workers' answers (see defers).
        self.deferred: dict[str, TaskItem] = {}
        self.deferred_due = 0.0
        self._seqs = itertools.count(1)
        self.last_sent = now

    # ------------------------------------------------------------------ queueing

    def queue(self, cls: type, item: Any, frames: Frames | tuple[()] = ()) -> None:
        """Queue an item of a ``Submit`` (a TaskItem) or a ``Release`` (a key)
        for the center, merged with the last message if it is alike (up to
        SUBMIT_BATCH items, and half the center's message size limit)."""
        if cls is Submit and item.key in self._releasing:
            self.release_now()  # submitted again: the center must see the release first
        size = serialize.frames_nbytes(frames) if frames else 0
        queued = self._queued
        if queued and queued[-1][0] is cls:
            last = queued[-1]
            if len(last[1]) < SUBMIT_BATCH and last[3] + size < self.max_message_size // 2:
                last[1].append(item)
                last[2].extend(frames)
                last[3] += size
                return
        queued.append([cls, [item], list(frames), size])

    def defer(self, item: TaskItem, now: float) -> None:
        """``item``, a queued submit of a direct task, may wait (see defers)."""
        if not self.deferred:
            self.deferred_due = now + RELEASE_DELAY
        self.deferred[item.key] = item

    def answered(self, key: str) -> None:
        """The worker answered ``key``'s direct task while its submit waits
        here: the submit says so (direct_answered), and the center need not
        send that result again."""
        item = self.deferred.get(key)
        if item is None:
            return
        # (Items are immutable: the queue holds the new one in its place. Found
        # by identity, at the front of a short queue: this is on the way of
        # every lone task's answer.)
        new = self.deferred[key] = item._replace(direct_answered=True)
        for entry in self._queued:
            if entry[0] is Submit:
                items = entry[1]
                for i, queued in enumerate(items):
                    if queued is item:
                        items[i] = new
                        return

    def undefer(self, key: str, drop: tuple[str, ...]) -> None:
        """``key``'s submit, queued or about to be sent, goes with the fields
        ``drop`` at their defaults, and no longer waits."""
        self.deferred.pop(key, None)
        defaults = TaskItem._field_defaults
        changed = {name: defaults[name] for name in drop}
        submits = [entry[1] for entry in self._queued if entry[0] is Submit] + \
            [msg.tasks for msg, _ in self.to_center if type(msg) is Submit]
        for items in submits:  # (items are immutable: the lists that hold them change)
            for i, item in enumerate(items):
                if item.key == key:
                    items[i] = item._replace(**changed)

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
            self.queue(Release, key)
        self._releasing.clear()
        self.release_due = None

    def release_if_due(self, now: float) -> None:
        if self.release_due is not None and now >= self.release_due:
            self.release_now()

    def drop_queued(self) -> None:
        """Forget what is queued (a center that restarted knew none of it)."""
        self._queued.clear()
        self.deferred.clear()

    def queued(self) -> list[tuple[type, list[Any]]]:
        """What is queued, message by message: (class, items)."""
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
        for cls, items, frames, _ in self._queued:
            if cls is Submit:
                seq = next(self._seqs)
                self.send(Submit(items, seq), frames)
                for item in items:
                    info = keys.get(item.key)
                    if info is not None:
                        info.since = seq
            else:
                self.send(Release(items))
        self._queued.clear()

    def seq_after_queued(self) -> int:
        """Send what is queued, releases too, and return the next sequence
        number: news stamped with it is about what was sent with it."""
        if self._releasing:  # keep the order: earlier messages first
            self.release_now()
        self.flush_all()
        return next(self._seqs)

    def send(self, msg: Message, frames: Frames | None = None) -> None:
        """Send a message after everything queued that it must not overtake."""
        if self._releasing and type(msg) not in _UNORDERED:
            # Scattered data, requests and closing see our releases done first.
            self.release_now()
            self.flush_all()
        self.to_center.append((msg, frames or []))

    def sent(self, now: float) -> None:
        """The shell sent :attr:`to_center` (for the heartbeat's timing)."""
        self.last_sent = now

    def next_due(self) -> float | None:
        """When releases, or submits that may wait (see defers), are due."""
        due = self.release_due
        if self.deferred and (due is None or self.deferred_due < due):
            due = self.deferred_due
        return due
