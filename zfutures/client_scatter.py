"""Putting the caller's data on workers, then telling the center where it is.

A scatter sends each worker of its plan its part (put-data); a part whose
worker leaves first goes to another worker of the plan (any other failure,
a silent center say, ends the scatter). Once every part is
answered the center hears where each key is (update-data), and the call
ends, with an error only if some data found no worker at all.

Until the center hears of the new copies, its news of the keys is of
earlier copies (one lost with its worker, say) and is ignored: the keys'
``since`` is SCATTERING meanwhile.
"""
from __future__ import annotations

import concurrent.futures
from typing import Any, Callable

from . import serialize
from .client_outbox import Outbox
from .client_records import ERRED, FINISHED, PENDING, KeyRecord, record
from .client_requests import Requests, WorkerLeftError
from .errors import FutureLostError
from .future import Future
from .messages import DataItem, DataStored, PutData, ScatteredItem, UpdateData
from .protocol import Frames

#: A scattered key's ``since`` until the center hears of the copy (see above).
SCATTERING = 1 << 62

#: Where the data of a scatter goes: worker address -> [(key, pickled value)].
Plan = dict[str, list[tuple[str, Frames]]]


def plan(values: list[Any], targets: list[str], broadcast: bool) -> tuple[Plan, list[str]]:
    """Where each of ``values`` goes, pickled: to the workers ``targets`` in
    turn, or to every one of them with ``broadcast``; and the key of each, a
    token of its bytes (the same data scattered twice has the same key)."""
    where: Plan = {}
    keys = []
    for i, value in enumerate(values):
        frames = serialize.dumps(value)
        key = f"{type(value).__name__}-{serialize.token(frames)}"
        for address in targets if broadcast else [targets[i % len(targets)]]:
            where.setdefault(address, []).append((key, frames))
        keys.append(key)
    return where, keys


class Scatter:
    """A scatter under way: its parts out (request id -> (address, [(key,
    frames)])), where each key was stored, and the workers parts may go to."""

    __slots__ = ("result", "out", "holders", "nbytes", "targets", "turn", "error", "keys",
                 "now", "since", "ended")

    def __init__(self, targets: list[str], result: concurrent.futures.Future[None],
                 now: float):
        self.now = now  # (when it began: a worker that left since is known)
        self.result = result
        self.out: dict[int, tuple[str, list[tuple[str, Frames]]]] = {}
        self.holders: dict[str, list[str]] = {}
        self.nbytes: dict[str, int] = {}
        self.targets = targets
        self.turn = 0
        self.error: BaseException | None = None
        self.keys: set[str] = set()
        self.since: dict[str, int] = {}  # its keys' ``since`` before it
        self.ended = False


class Scatters:
    """Scatters under way. ``erred(record, pickled error, now)`` fails a key
    none of whose data was stored."""

    def __init__(self, keys: dict[str, KeyRecord], outbox: Outbox, requests: Requests,
                 ids: Any, erred: Callable[[KeyRecord, Frames, float], None]):
        self._keys = keys
        self._outbox = outbox
        self._requests = requests
        self._ids = ids
        self._erred = erred

    def scatter(self, plan: Plan, futures: list[Future],
                result: concurrent.futures.Future[None], now: float) -> None:
        """Put data on workers (``plan``), then tell the center; ``futures``
        are the keys' new futures."""
        for future in futures:
            # A release of the key still waiting here is taken back: sent, it
            # would reach the worker after our copy, and delete it.
            self._outbox.take_back_release(future.key)
            info = self._keys.get(future.key)
            if info is not None and info.status == ERRED:  # lost, and put there anew
                info.status, info.error = PENDING, None
        job = Scatter(list(plan), result, now)
        for future in futures:
            info = record(self._keys, future.key)
            info.add_future(future)
            # The center's news of the key until it hears of this copy is of
            # earlier ones (a copy lost with its worker): ignored (see _scattered).
            if info.since != SCATTERING:
                job.since[future.key] = info.since
                info.since = SCATTERING
        job.keys = {key for entries in plan.values() for key, _ in entries}
        for address, entries in plan.items():
            self._put_data(job, address, entries)
        if not plan:
            self._scattered(job, now)

    def _put_data(self, job: Scatter, address: str, entries: list[tuple[str, Frames]]) -> None:
        items = [DataItem(key, len(value)) for key, value in entries]
        frames = [frame for _, value in entries for frame in value]
        part = next(self._ids)  # (a part's own number, whatever its request's)
        job.out[part] = (address, entries)
        self._requests.ask_worker(
            address, PutData, {"items": items}, frames,
            lambda msg, _, now: self._data_stored(job, part, msg, now),
            lambda error, now: self._data_not_stored(job, part, error, now), job.now)

    def _data_stored(self, job: Scatter, part: int, msg: DataStored, now: float) -> None:
        address, _ = job.out.pop(part)
        for key, size in msg.nbytes.items():
            job.holders.setdefault(key, []).append(address)
            job.nbytes[key] = size
        for key, why in (msg.failed or {}).items():  # (the same bytes fail anywhere)
            job.error = RuntimeError(f"the data of {key!r} could not be loaded on the worker "
                                     f"{address}: {why}")
        if not job.out:
            self._scattered(job, now)

    def _data_not_stored(self, job: Scatter, part: int, error: BaseException,
                         now: float) -> None:
        address, entries = job.out.pop(part)
        if address in job.targets:
            job.targets.remove(address)
        on_the_way = {key for _, out in job.out.values() for key, _ in out}
        homeless = [(key, frames) for key, frames in entries
                    if key not in job.holders and key not in on_the_way]
        if homeless and job.targets and isinstance(error, WorkerLeftError):
            job.turn += 1
            self._put_data(job, job.targets[job.turn % len(job.targets)], homeless)
        elif homeless:
            job.error = error
        if not job.out:
            self._scattered(job, now)

    def _scattered(self, job: Scatter, now: float) -> None:
        """Every part of a scatter was answered: tell the center where the data
        is, and end the call (with an error if some data found no worker)."""
        if job.ended:  # (a part sent on failed at once, and ended it already)
            return
        job.ended = True
        items = [ScatteredItem(key, job.nbytes[key], holders)
                 for key, holders in job.holders.items()]
        for item in items:
            info = self._keys.get(item.key)
            if info is not None:
                info.scattered, info.who_has = True, item.workers
                info.nbytes = item.nbytes
                if info.status == PENDING:
                    info.status = FINISHED
                    info.on_the_cluster()
        told = bool(items) and self._requests.stopped is None
        seq = self._outbox.seq_after_queued() if told else 0  # (after the submits before)
        for key, since in job.since.items():
            info = self._keys.get(key)
            if info is not None and info.since == SCATTERING:
                # News from this message on; a key no copy of which was stored
                # takes news as before.
                info.since = seq if key in job.holders else since
        if told:
            self._outbox.send(UpdateData(items, seq))
        if job.error is None:
            job.result.set_result(None)
            return
        for key in job.keys - set(job.holders):  # (their futures were never handed out)
            info = self._keys.get(key)
            if info is not None and info.status == PENDING:
                self._erred(info, serialize.dumps((FutureLostError(
                    f"{key!r} could not be scattered: {job.error}"), "")), now)
        if not job.result.done():
            job.result.set_exception(job.error)
