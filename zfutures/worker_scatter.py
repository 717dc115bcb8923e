"""Data a client puts on a worker: stored, and the client answered. No I/O.

A client scatters data straight to a worker (``put-data``); once the worker
answers (``data-stored``, with the size of each value and why any did not
load), the client tells the center where the data is.

:class:`Scatters` is a part of WorkerState, sharing its ``data`` and
``nbytes``: the answers for the data server to send are in
:attr:`Scatters.stored`.
"""
from __future__ import annotations

from typing import Any

#: Values a client puts here: key -> (value, nbytes).
Values = dict[str, tuple[Any, int]]
#: The answer to a put-data: (client, its request id, key -> nbytes of the
#: values stored, key -> why its value did not load).
Stored = tuple[bytes, int, dict[str, int], dict[str, str]]


class Scatters:
    """The data clients put on a worker whose values are ``data`` (key ->
    value) and ``nbytes`` (key -> size), and the answers owed them."""

    def __init__(self, data: dict[str, Any], nbytes: dict[str, int]):
        self.data = data
        self.nbytes = nbytes
        self.stored: list[Stored] = []

    def put(self, client: bytes, request_id: int, values: Values,
            failed: dict[str, str]) -> None:
        """``client`` puts ``values`` here in its request ``request_id``;
        ``failed``: the keys whose values did not load, and why."""
        self._store(client, request_id, values, failed)

    def _store(self, client: bytes, request_id: int, values: Values,
               failed: dict[str, str]) -> None:
        data, nbytes = self.data, self.nbytes
        for key, (value, size) in values.items():
            data[key] = value
            nbytes[key] = size
        self.stored.append((client, request_id, {key: size for key, (_, size) in values.items()},
                            failed))
