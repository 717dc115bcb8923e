"""Getting finished keys' values from the workers that hold them.

A :class:`Gather` is one request for the values of some keys; it asks a
holder of each key, one :class:`Fetch` per worker (get-data). A worker
that does not answer in time, or leaves, or no longer has a key, is passed
over for another holder; when the holders we knew of are exhausted, the
center is asked once where the keys are now (a worker that left may have
handed them on), and a key held nowhere is being computed again: the
gather waits for it to be back (:meth:`Gathers.key_back`).

A worker on this machine may offer its buffers to read from its memory
instead of sending the bytes: the read is the shell's (``to_read``), and
its outcome comes back to :meth:`Gathers.offered_read`.
"""
from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Collection, Iterable
from typing import Any

from . import peer_memory
from .client_records import ERRED, FINISHED, KeyRecord, Message
from .client_requests import Requests
from .errors import FutureLostError
from .messages import Data, DataRead, GetData, OfferedItem, WhoHas
from .protocol import Frames, unpack_items
from .remote_errors import remote_exception

logger = logging.getLogger(__name__)

#: A gather asks a worker for at most about this many bytes of results per
#: request (see Gathers._by_size): the worker then holds no more than that
#: read back from disk at once for us.
REQUEST_BYTES = 64 * 2**20

#: What a gather ends with: {key: pickled value, or with per_key the error of a
#: key that cannot be had}.
Values = dict[str, Any]


class Gather:
    """One request for the values of some keys (pickled, by key).

    Its ``result`` ends with ``{key: frames}`` for every key, or with an
    error. A key whose value cannot be had (lost, or it fails to pickle on
    its worker) is in ``failed`` with that error: with ``per_key``, the
    other keys go on and it ends with that error in place of the frames;
    else the whole request fails with it.
    """

    __slots__ = ("result", "values", "remaining", "tried", "asked", "failed", "per_key")

    def __init__(self, keys: list[str], result: concurrent.futures.Future[Values],
                 per_key: bool = False):
        self.asked: set[str] = set()  # keys the center was asked about, since last in memory
        self.result = result
        self.values: Values = {}
        self.failed: dict[str, BaseException] = {}
        self.per_key = per_key
        self.remaining = set(keys)
        self.tried: dict[str, set[str]] = {key: set() for key in keys}


class Fetch:
    """A data request to one worker, part of a :class:`Gather`."""

    __slots__ = ("gather", "address", "keys", "sent", "deadline")

    def __init__(self, gather: Gather, address: str, keys: list[str], sent: float,
                 deadline: float):
        self.gather = gather
        self.address = address
        self.keys = keys
        self.sent = sent
        self.deadline = deadline


class Gathers:
    """The gathers under way: their requests to workers, and those waiting
    for a key to be in memory again."""

    def __init__(self, keys: dict[str, KeyRecord], requests: Requests,
                 to_workers: list[tuple[str, Message, Frames]],
                 to_read: list[tuple[str, Data, Frames, float]], ids: Any,
                 fetch_timeout: float):
        self._keys = keys
        self._requests = requests
        self._to_workers = to_workers
        self._to_read = to_read
        self._ids = ids  # (request ids, shared with other requests)
        self.fetch_timeout = fetch_timeout
        self.fetches: dict[int, Fetch] = {}
        # Gathers waiting for a key to be in memory again (its holders died, and
        # the center is computing it anew): key -> gathers.
        self.awaiting: dict[str, list[Gather]] = {}

    # ------------------------------------------------------------------ starting

    def gather(self, keys: list[str], result: concurrent.futures.Future[Values], now: float,
               per_key: bool = False) -> Gather:
        """Get the pickled values of finished keys: ``result`` ends with
        {key: frames}, or with the first error; with ``per_key``, a key that
        cannot be had has its error in place of frames."""
        gather = Gather(keys, result, per_key)
        self._fetch(gather, keys, now)
        return gather

    def forget(self, result: concurrent.futures.Future[Values]) -> None:
        """The caller stopped waiting for ``result`` (its timeout passed)."""
        for gather in {f.gather for f in self.fetches.values() if f.gather.result is result}:
            self._finish(gather, concurrent.futures.TimeoutError())
        for waiting in list(self.awaiting.values()):
            for gather in [g for g in waiting if g.result is result]:
                self._finish(gather, concurrent.futures.TimeoutError())

    def _fetch(self, gather: Gather, keys: list[str], now: float) -> None:
        """Ask a holder of each key for it, one request per worker."""
        plan: dict[str, list[str]] = {}
        exhausted = []
        for key in keys:
            if key not in gather.remaining:
                continue
            info = self._keys.get(key)
            if info is None:
                if self._fail_key(gather, key, FutureLostError(f"{key!r} was released")):
                    return
                continue
            if info.status == ERRED:
                if self._fail_key(gather, key, info.exception()):
                    return
                continue
            untried = [w for w in info.who_has if w not in gather.tried[key]]
            if not untried:
                exhausted.append(key)
                continue
            gather.tried[key].add(untried[0])
            plan.setdefault(untried[0], []).append(key)
        if exhausted:
            self._ask_where(gather, exhausted, now)
        deadline = now + self.fetch_timeout
        for address, worker_keys in plan.items():
            for some_keys in self._by_size(worker_keys):
                request_id = next(self._ids)
                self.fetches[request_id] = Fetch(gather, address, some_keys, now, deadline)
                self._to_workers.append((address, peer_memory.data_request(request_id,
                                                                           some_keys), []))
        if not gather.remaining and not gather.result.done():
            self._finish(gather)

    def _by_size(self, keys: list[str]) -> list[list[str]]:
        """``keys`` in requests of at most REQUEST_BYTES each (as their sizes
        are known; one key per request at least): a worker answers a request
        whole, and one whose results are on disk reads them all back first."""
        records, size = self._keys, 0
        requests: list[list[str]] = [[]]
        for key in keys:
            info = records.get(key)
            nbytes = info.nbytes if info is not None else 0
            if size + nbytes > REQUEST_BYTES and requests[-1]:
                requests.append([])
                size = 0
            requests[-1].append(key)
            size += nbytes
        return requests

    def _ask_where(self, gather: Gather, keys: list[str], now: float) -> None:
        """The holders we knew of failed: ask the center once where the keys are now
        (a worker that left handed them on), then try there. A key held nowhere
        is being computed again (its holders died): the gather waits for it
        (see :meth:`key_back`)."""
        for key in keys:
            if key in gather.asked:
                info = self._keys.get(key)
                if self._fail_key(gather, key, FutureLostError(
                        f"could not fetch {key!r} from any of the workers holding it "
                        f"({', '.join(info.who_has) if info else 'none'})")):
                    return
        keys = [key for key in keys if key in gather.remaining]
        if not keys:
            if not gather.remaining:
                self._finish(gather)
            return
        gather.asked.update(keys)

        def answered(reply: Any, error: BaseException | None, now: float) -> None:
            if error is not None:
                self._finish(gather, error)
                return
            if gather.result.done():
                return
            held = []
            for key, holders in reply.items():
                info = self._keys.get(key)
                if info is not None and info.status == FINISHED and not holders:
                    # Being computed again: its key-finished (or key-erred)
                    # comes after this reply. (A key that erred or was released
                    # meanwhile goes on to _fetch, which fails it.)
                    self.awaiting.setdefault(key, []).append(gather)
                    continue
                if info is not None:
                    info.who_has = holders
                    if any(h not in gather.tried[key] for h in holders):
                        gather.asked.discard(key)  # (handed on: it may move again)
                held.append(key)
            self._fetch(gather, held, now)

        self._requests.rpc(WhoHas, {"keys": keys}, answered)

    # ------------------------------------------------------------------ answers

    def data(self, address: str, msg: Data, frames: Frames, now: float) -> None:
        """A worker's answer to a fetch: the values, or buffers to read from its memory."""
        if msg.lease is not None:
            fetch = self._extend(msg.id, peer_memory.read_time(msg.items), now)
            if fetch is None:  # (timed out earlier: the lease must end)
                self._to_workers.append((address, DataRead(msg.lease), []))
            else:
                self._to_read.append((address, msg, frames, fetch.sent))
            return
        fetch = self.fetches.pop(msg.id, None)
        if fetch is not None:  # (else timed out earlier and asked elsewhere)
            items = msg.items + msg.errors if msg.errors else msg.items
            self._take_data(fetch.gather, msg, unpack_items(items, frames), now)

    def _extend(self, request_id: int, seconds: float, now: float) -> Fetch | None:
        """A worker offered buffers to read from its memory: the request stays
        pending ``seconds`` more than a fetch may take from now. None if the
        request timed out earlier."""
        fetch = self.fetches.get(request_id)
        if fetch is not None:
            fetch.deadline = max(fetch.deadline, now + self.fetch_timeout + seconds)
        return fetch

    def offered_read(self, address: str, msg: Data, outcome: Any, now: float) -> None:
        """The shell read what a worker on this machine offered (see
        peer_memory.Reader); the lease ends."""
        assert msg.lease is not None, "only a reply that offers reads is read"
        self._to_workers.append((address, DataRead(msg.lease), []))
        then = peer_memory.after_read(outcome)
        if then == "take":
            fetch = self.fetches.pop(msg.id, None)
            if fetch is not None:
                self._take_data(fetch.gather, msg, outcome, now)
            return
        fetch = self.fetches.get(msg.id)
        if then == "again" and fetch is not None:  # at once, as frames this time
            self._to_workers.append((address, GetData(msg.id, fetch.keys), []))

    def _take_data(self, gather: Gather, msg: Data,
                   unpacked: Iterable[tuple[OfferedItem, Frames]], now: float) -> None:
        """The values a worker sent, each item with its frames. Items past
        ``msg.items`` are values that could not be pickled to leave the
        worker (``msg.errors``): their frames are the pickled error."""
        count = len(msg.items)
        for i, (item, value_frames) in enumerate(unpacked):
            key = item.key
            if key not in gather.remaining:
                continue
            if i >= count:
                if self._fail_key(gather, key, remote_exception(value_frames)):
                    return
                continue
            gather.remaining.discard(key)
            gather.values[key] = value_frames
        if msg.missing:
            self._fetch(gather, msg.missing, now)
        elif not gather.remaining:
            self._finish(gather)

    # ------------------------------------------------------------------ keys' news

    def key_back(self, info: KeyRecord, now: float) -> None:
        """``info``'s key is in memory again, or erred: gathers waiting for it, if
        any, go on."""
        for gather in self.awaiting.pop(info.key, ()):
            if gather.result.done():
                continue
            if info.status == ERRED:
                if not self._fail_key(gather, info.key, info.exception()) and \
                        not gather.remaining:
                    self._finish(gather)
            else:
                gather.tried[info.key] = set()
                gather.asked.discard(info.key)
                self._fetch(gather, [info.key], now)

    def stop_awaiting(self, key: str) -> None:
        """``key`` was let go of: gathers waiting for it to be back fail."""
        waiting = self.awaiting.pop(key, None)
        if waiting is None:  # (as for most keys: this is on the way of every release)
            return
        error = FutureLostError(f"{key!r} was released")
        for gather in waiting:
            if not gather.result.done():
                if not self._fail_key(gather, key, error) and not gather.remaining:
                    self._finish(gather)

    def workers_left(self, addresses: Collection[str], now: float) -> None:
        """Fetches from workers that left try other holders at once, or wait
        for the keys to be in memory again (handed on, or recomputed). The
        keys' holders no longer name any of ``addresses``: no fetch moves on
        to a worker that left in the same message."""
        for request_id, fetch in list(self.fetches.items()):
            if fetch.address in addresses and self.fetches.pop(request_id, None) is not None:
                self._fetch(fetch.gather, fetch.keys, now)

    def expire(self, now: float) -> None:
        """Fetches past their deadline try other holders."""
        for request_id, fetch in list(self.fetches.items()):
            if fetch.deadline < now and self.fetches.pop(request_id, None) is not None:
                logger.warning("worker %s did not answer for %d keys; trying others",
                               fetch.address, len(fetch.keys))
                self._fetch(fetch.gather, fetch.keys, now)

    def awaits(self, address: str) -> bool:
        """Whether values are awaited from worker ``address``."""
        return any(f.address == address for f in self.fetches.values())

    # ------------------------------------------------------------------ endings

    def _fail_key(self, gather: Gather, key: str, error: BaseException) -> bool:
        """``key``'s value cannot be had: fail the gather (True), or only that
        key of a gather whose keys end apart (False)."""
        if not gather.per_key:
            self._finish(gather, error)
            return True
        gather.failed[key] = error
        gather.remaining.discard(key)
        return False

    def _finish(self, gather: Gather, error: BaseException | None = None) -> None:
        if gather.result.done():
            return
        for request_id in [i for i, f in self.fetches.items() if f.gather is gather]:
            del self.fetches[request_id]
        for key in gather.tried:
            waiting = self.awaiting.get(key)
            if waiting is not None and gather in waiting:
                waiting.remove(gather)
                if not waiting:
                    del self.awaiting[key]
        if error is None:
            if gather.failed:
                gather.values.update(gather.failed)
            gather.result.set_result(gather.values)
        else:
            gather.result.set_exception(error)

    def fail_all(self, error: BaseException) -> None:
        """No answer will come: every gather ends with ``error``."""
        for fetch in list(self.fetches.values()):
            self._finish(fetch.gather, error)
        for waiting in list(self.awaiting.values()):
            for gather in list(waiting):
                self._finish(gather, error)
