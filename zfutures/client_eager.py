"""Eager keys (a PoolExecutor's): their values come to the client as soon as
they exist, and the keys are let go of.

Their futures then hold their values and refer to the keys no more, so they
stay readable after the cluster forgot them (after shutdown too). The keys
that finish in one message of the center are seen to together: the results
that came along with their completion are delivered at once, the others
fetched in one gather.
"""
from __future__ import annotations

import concurrent.futures

from .client_direct import DirectRuns
from .client_gather import Gathers, Values
from .client_outbox import Outbox
from .client_records import KeyRecord
from .protocol import Frames


class EagerKeys:
    """Eager keys finished in the message at hand, until :meth:`deliver`."""

    def __init__(self, keys: dict[str, KeyRecord], gathers: Gathers, outbox: Outbox,
                 direct: DirectRuns):
        self._keys = keys
        self._gathers = gathers
        self._outbox = outbox
        self._direct = direct
        self._to_fetch: list[str] = []
        self._results: dict[str, Frames] = {}  # (the results that came along)

    def finished(self, info: KeyRecord, value: Frames) -> None:
        """``info``'s key finished; its pickled ``value`` came along if small."""
        if value:
            self._results[info.key] = value
        else:
            self._to_fetch.append(info.key)

    def deliver(self, now: float) -> None:
        """Fetch the finished keys whose values did not come along, and
        deliver those whose values did."""
        if self._to_fetch:
            keys, self._to_fetch = self._to_fetch, []
            result: concurrent.futures.Future[Values] = concurrent.futures.Future()
            gather = self._gathers.gather(keys, result, now, per_key=True)
            # Runs in the core, when the gather completes.
            result.add_done_callback(lambda done: self._complete(
                keys, {} if done.exception() else done.result(), gather.failed,
                done.exception()))
        if self._results:
            results, self._results = self._results, {}
            self._complete(list(results), results, {}, None)

    def _complete(self, keys: list[str], values: Values, failed: dict[str, BaseException],
                  error: BaseException | None) -> None:
        """The keys' values (pickled) are here, or their errors: complete
        their futures, which then no longer refer to the keys, and release the keys."""
        for key in keys:
            info = self._keys.pop(key, None)
            if info is not None:
                info.complete(values.get(key), failed.get(key, error), detach=True)
                info.held = None
                self._direct.forget(info)
                self._outbox.release_later(key, None)
