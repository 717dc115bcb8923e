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

:class:`Scatters` is a part of WorkerState, sharing its ``data`` and
``nbytes``: the answers for the data server to send are in
:attr:`Scatters.stored`.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .messages import DataStored

#: Values a client puts here: key -> (value, nbytes).
Values = dict[str, tuple[Any, int]]
#: The answer to a put-data, and the client to send it to.
Stored = tuple[bytes, DataStored]


class WaitingPut:
    """A client's put-data that waits for the center's answers to the sync
    of the keys it holds here already (``unsynced``)."""

    __slots__ = ("unsynced", "client", "request_id", "values", "failed")

    def __init__(self, unsynced: set[str], client: bytes, request_id: int, values: Values,
                 failed: dict[str, str]):
        self.unsynced = unsynced
        self.client = client
        self.request_id = request_id
        self.values = values
        self.failed = failed


class Scatters:
    """The data clients put on a worker whose values are ``data`` (key ->
    value) and ``nbytes`` (key -> size), and the answers owed them."""

    def __init__(self, data: dict[str, Any], nbytes: dict[str, int]):
        self.data = data
        self.nbytes = nbytes
        self.stored: list[Stored] = []
        self.waiting: list[WaitingPut] = []  # in the order their syncs were asked

    def put(self, client: bytes, request_id: int, values: Values,
            failed: dict[str, str]) -> list[str]:
        """``client`` puts ``values`` here in its request ``request_id``;
        ``failed``: the keys whose values did not load, and why. Returns the
        keys held here already, whose sync the center is to answer before
        the values are stored; none: they are stored now."""
        held = [key for key in values if key in self.data]
        if held:
            self.waiting.append(WaitingPut(set(held), client, request_id, values, failed))
        else:
            self._store(client, request_id, values, failed)
        return held

    def synced(self, keys: Iterable[str]) -> None:
        """The center answered the syncs of ``keys``: each answer is the one
        the put that waits longest for that key asked for (the center answers
        in the order it was asked). A put with every answer in is stored."""
        waiting = self.waiting
        for key in keys:
            for put in waiting:
                if key in put.unsynced:
                    put.unsynced.discard(key)
                    break
        if any(not put.unsynced for put in waiting):
            self.waiting = [put for put in waiting if put.unsynced]
            for put in waiting:
                if not put.unsynced:
                    self._store(put.client, put.request_id, put.values, put.failed)

    def store_waiting(self) -> None:
        """No word the center sent before can come any more (this worker
        registers again): the puts that wait are stored."""
        waiting, self.waiting = self.waiting, []
        for put in waiting:
            self._store(put.client, put.request_id, put.values, put.failed)

    def _store(self, client: bytes, request_id: int, values: Values,
               failed: dict[str, str]) -> None:
        data, nbytes = self.data, self.nbytes
        for key, (value, size) in values.items():
            data[key] = value
            nbytes[key] = size
        self.stored.append((client, DataStored(
            request_id, {key: size for key, (_, size) in values.items()}, failed or None)))
