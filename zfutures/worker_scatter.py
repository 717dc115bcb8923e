"""Data a client puts on a worker: when it is stored. No I/O.

A client scatters data straight to a worker (``put-data``); once the worker
answers (``data-stored``, with the size of each value and why any did not
load), the client tells the center where the data is. Data of keys not held
here is stored at once.

A key held here already may have just been let go of and scattered again
(a scattered value's key names its bytes). The center's word to drop the old
copy (``release-keys``) comes over the worker's connection to the center,
the new copy over the client's to the worker, and either may come first:
stored at once, the new copy would be dropped by that word coming after it,
while the center believes it is here. So such data waits until the center
answers a ``sync`` of those keys (``synced``): the center sends its answer
after anything it said of them before, so a release of the old copy comes,
and is done, first. Scattering data already held costs a round trip to the
center.

:class:`Scatters` is a part of WorkerState, which owns the data and stores
it: Scatters holds the puts that wait, and says when each may be stored.
"""
from __future__ import annotations

from collections.abc import Container, Iterable
from typing import Any

#: Values a client puts here: key -> (value, nbytes).
Values = dict[str, tuple[Any, int]]


class Put:
    """A client's put-data: its request, and the keys it holds that are held
    here already, whose syncs the center has yet to answer (``unsynced``)."""

    __slots__ = ("client", "request_id", "values", "failed", "unsynced")

    def __init__(self, client: bytes, request_id: int, values: Values,
                 failed: dict[str, str]):
        self.client = client
        self.request_id = request_id
        self.values = values  # key -> (value, nbytes)
        self.failed = failed  # key -> why its value did not load
        self.unsynced: set[str] = set()


class Scatters:
    """The data clients put on a worker that waits for the center's word."""

    def __init__(self) -> None:
        self.waiting: list[Put] = []  # in the order their syncs were asked

    def put(self, put: Put, held: Container[str]) -> list[str]:
        """A client puts data here; ``held``: the keys held here. Returns the
        keys of ``put`` held here already: it waits until the center answers
        their sync. An empty list: it is to be stored now."""
        unsynced = [key for key in put.values if key in held]
        if unsynced:
            put.unsynced.update(unsynced)
            self.waiting.append(put)
        return unsynced

    def synced(self, keys: Iterable[str]) -> list[Put]:
        """The center answered the syncs of ``keys``: each answer is the one
        the put that waits longest for that key asked for (the center answers
        in the order it was asked). Returns the puts with every answer in, to
        store now."""
        waiting = self.waiting
        for key in keys:
            for put in waiting:
                if key in put.unsynced:
                    put.unsynced.discard(key)
                    break
        if all(put.unsynced for put in waiting):
            return []
        self.waiting = [put for put in waiting if put.unsynced]
        return [put for put in waiting if not put.unsynced]

    def take_waiting(self) -> list[Put]:
        """No word the center sent before can come any more (this worker
        registers again): the puts that wait, to store now."""
        waiting, self.waiting = self.waiting, []
        return waiting
