"""A lone task sent straight to a worker: whether it may go, and whether its answer counts.

A task through the center takes four hops (client, center, worker, center,
client); sent straight, its small result comes back in two, and the center
hears of it on the side: the worker's reports and our submit travel apart,
and the center matches them by the run id we choose (see
``DirectRuns.runs_direct`` in scheduler/direct.py). The worker refuses the
task if it cannot start it at once, and the center then places it as usual.

One such task at a time, to the worker that last finished one of ours with
a small result (DIRECT_AFTER_NBYTES): a burst of submits goes through the
center, which balances it across the workers. The client's shell lets the
caller wait for the answer on the worker's socket itself (see
``ClientIO.await_direct``).
"""
from __future__ import annotations

import itertools
import random
from collections.abc import Collection, Sequence

from . import serialize
from .client_outbox import RELEASE_DELAY, Outbox
from .client_records import PENDING, DirectRun, KeyRecord, Message
from .messages import DirectResult, RunTask, TaskItem
from .protocol import Frames

#: A lone task's arguments up to this size (bytes) may go straight to a worker;
#: bigger ones go through the center only.
DIRECT_PAYLOAD_LIMIT = 1 << 20
#: Lone tasks go straight to a worker only after one of ours finished there
#: with a result up to this size (bytes): a loop of small calls is latency
#: bound; tasks that make big results are not, and the center spreads their
#: results across the workers, where the worker last used would gather them all.
DIRECT_AFTER_NBYTES = 16 * 1024
#: The fields of a submit item that tell the center its task went straight
#: to a worker (see messages.TaskItem).
DIRECT_FIELDS = ("direct_worker", "direct_run", "direct_ack")


def may_go_direct(item: TaskItem) -> bool:
    """Whether a task may go straight to a worker, as far as it alone goes: no
    inputs, no placement of its own, no retries."""
    return not item.deps and item.workers is None and item.resources is None and \
        not item.retries


class DirectRuns:
    """The lone task sent straight to a worker, and where the next may go."""

    def __init__(self, keys: dict[str, KeyRecord], outbox: Outbox,
                 to_workers: list[tuple[str, Message, Frames]]):
        self._keys = keys
        self._outbox = outbox
        self._to_workers = to_workers
        # The worker that last finished one of our tasks with a small result
        # (None: the next lone task goes through the center).
        self.worker: str | None = None
        # The key sent straight and not answered yet.
        self.pending: KeyRecord | None = None
        # When to look for its answer if no caller reads it (see ClientLoop.must_wake).
        self.due = 0.0
        # Run ids from a random start, as the center's: a run of ours is never
        # taken for one of its.
        self._runs = itertools.count(random.getrandbits(62))
        self.answers = 0  # results that came straight from a worker

    def in_flight(self) -> bool:
        """Whether a task sent straight to a worker awaits its answer (one at a time)."""
        pending = self.pending
        return pending is not None and pending.direct is not None and pending.status == PENDING

    def send(self, info: KeyRecord, item: TaskItem, frames: Frames, own_key: bool, now: float,
             reregistering: bool) -> TaskItem:
        """Send ``info``'s lone task straight to a worker, if it may go, and
        return the submit item that tells the center so; or return ``item``
        unchanged. Not while the center is being told again what we hold.

        The result counts at once if ``own_key`` (the executor made the key),
        else only once the center says it counts that run (direct-accepted).
        """
        address = self.worker
        if address is None or self.in_flight() or not may_go_direct(item) or \
                reregistering or serialize.frames_nbytes(frames) > DIRECT_PAYLOAD_LIMIT:
            return item
        run = next(self._runs)
        self._to_workers.append((address, RunTask(info.key, run), frames))
        self.due = now + RELEASE_DELAY
        info.direct = DirectRun(address, run, own_key)
        self.pending = info
        # (_replace: a microsecond, once or twice per lone task, whose round trip
        # takes hundreds)
        item = item._replace(direct_worker=address, direct_run=run, direct_ack=not own_key)
        if own_key:
            self._outbox.defer(item, now)  # it may wait to go with others
        # (else it goes to the center at once, and waits for its word: direct_ack)
        return item

    def unsent(self, key: str) -> None:
        """The shell could not send ``key``'s task to its worker: it goes
        through the center alone (its submit, still queued, is made plain)."""
        info = self._keys.get(key)
        if info is None or info.direct is None:
            return
        info.direct = None
        if self.pending is info:
            self.pending = None
        self._outbox.undefer(key, DIRECT_FIELDS)

    def answered(self, address: str, msg: DirectResult, frames: Frames) -> KeyRecord | None:
        """A worker sent back the small result of a task we sent it straight:
        the record to finish with it, or None if it does not count (yet)."""
        info = self._keys.get(msg.key)
        direct = info.direct if info is not None and info.status == PENDING else None
        if info is None or direct is None or direct.address != address or \
                direct.run != msg.run:
            return None  # (cancelled, released, or the worker left meanwhile)
        self._outbox.answered(info.key)
        if not direct.trusted:
            direct.early = (msg.nbytes, frames)
            return None
        info.direct = None
        self.answers += 1
        return info

    def accepted(self, keys: list[str], seen: int) -> list[tuple[KeyRecord, str, int, Frames]]:
        """The center counts the direct runs of ``keys`` as the tasks' own:
        (record, worker, nbytes, frames) of those whose answers came already."""
        finished = []
        for key in keys:
            info = self._keys.get(key)
            direct = info.direct if info is not None and info.status == PENDING and \
                seen >= info.since else None
            if info is None or direct is None:
                continue
            direct.trusted = True
            if direct.early is not None:
                info.direct = None
                self.answers += 1
                finished.append((info, direct.address, *direct.early))
        return finished

    def finished_on(self, who_has: Sequence[str], nbytes: int) -> None:
        """One of our tasks finished: the next lone task may go to a worker that is up."""
        self.worker = who_has[0] if who_has and nbytes <= DIRECT_AFTER_NBYTES else None

    def forget(self, info: KeyRecord) -> None:
        """``info``'s key was let go of: its answer is awaited no more."""
        info.direct = None
        if self.pending is info:  # (its frames may be the caller's buffers)
            self.pending = None

    def workers_left(self, addresses: Collection[str]) -> None:
        """``addresses`` left: their tasks are placed again by the center."""
        if self.worker in addresses:
            self.worker = None
        for info in self._keys.values():
            if info.direct is not None and info.direct.address in addresses:
                info.direct = None
