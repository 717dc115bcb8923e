"""Requests that await an answer: to the center (who-has, scheduler-info, ...)
and to workers (put-data, run), and when none will come.

Every request ends exactly once: with its answer, or with an error when its
peer goes (a worker the center says left, a center silent past the
reconnect deadline, a shutdown). A request to a worker that left lately
fails at once: no word of it will come again.
"""
from __future__ import annotations

import concurrent.futures
from collections.abc import Collection
from typing import Any, Callable, Union

from .client_outbox import Outbox
from .client_records import FINISHED, KeyRecord, Message
from .errors import ConnectionError
from .messages import HasWhat, Run, RunResult, SchedulerInfo, WhoHas
from .protocol import Frames

#: A request to a worker the center said left this many seconds ago or less
#: fails at once (see Requests.ask_worker); this many such workers are kept.
DEPARTED_KEPT = 60.0
DEPARTED_COUNT = 1000

#: The core's own use of an answer from the center: called with the reply, or
#: with the error that ended the request, and the time.
OnReply = Callable[[Any, Union[BaseException, None], float], None]
#: Who gets a reply: a caller's future, or the core's own callable.
ReplyTo = Union["concurrent.futures.Future[Any]", OnReply]
#: What a worker's answer is handed to (message, frames, now), and its failure (error, now).
OnAnswer = Callable[[Any, Frames, float], None]
OnFailure = Callable[[BaseException, float], None]


class WorkerLeftError(ConnectionError):
    """A request failed because its worker left the cluster: another worker
    may serve it (unlike a failure of the whole client, such as a silent
    center)."""


class Requests:
    """Requests to the center and to workers awaiting answers."""

    def __init__(self, keys: dict[str, KeyRecord], outbox: Outbox,
                 to_workers: list[tuple[str, Message, Frames]], ids: Any):
        self._keys = keys
        self._outbox = outbox
        self._to_workers = to_workers
        self._ids = ids  # (request ids, shared with fetches)
        # Requests to the center: id -> (who gets the reply, the request).
        self.rpcs: dict[int, tuple[ReplyTo, Message]] = {}
        # Requests to workers other than get-data: id -> (worker address,
        # on_answer(message, frames, now), on_failure(error, now)).
        self.worker_requests: dict[int, tuple[str, OnAnswer, OnFailure]] = {}
        # Workers the center said left, and when (see ask_worker).
        self._departed: dict[str, float] = {}
        # Why calls end now that no more will be answered (shut down, or the
        # I/O failed); None while running.
        self.stopped: BaseException | None = None

    # ------------------------------------------------------------------ the center

    def rpc(self, cls: type, fields: dict[str, Any], result: ReplyTo) -> None:
        """Ask the center (a message of class ``cls``, with ``fields`` and its
        id); ``result`` (a Future, or a callable of the reply) gets the answer."""
        if self.stopped is not None:
            _end(result, self.stopped, 0.0)
            return
        self._outbox.flush_all()  # answers then reflect everything asked for before
        request_id = next(self._ids)
        msg = cls(id=request_id, **fields)
        self.rpcs[request_id] = (result, msg)
        self._outbox.send(msg)

    def reply(self, request_id: int, reply: Any, now: float) -> None:
        """The center answered request ``request_id``."""
        entry = self.rpcs.pop(request_id, None)
        if entry is None:
            return
        result, asked = entry
        kind = type(asked)
        if kind is WhoHas:
            reply = self._fold_holders(reply)
        elif kind is HasWhat:
            reply = self._fold_keys(reply)
        elif kind is SchedulerInfo and self._departed:
            # A worker the center lists came back (at the same address) after
            # it left: the center's messages come in order. Ask it again.
            for address in reply.get("workers", ()):
                self._departed.pop(address, None)
        if callable(result):
            result(reply, None, now)
        elif not result.done():
            result.set_result(reply)

    def ask_again(self) -> None:
        """Send the requests not answered yet again (to a center that restarted)."""
        for _, msg in self.rpcs.values():
            self._outbox.send(msg)

    def _fold_holders(self, who_has: dict[str, list[str]]) -> dict[str, list[str]]:
        """The center's who-has, with the holders of keys whose values we had
        straight from a worker before the center heard of them."""
        keys = self._keys
        for key, holders in who_has.items():
            info = keys.get(key)
            if not holders and info is not None and info.status == FINISHED and info.who_has:
                who_has[key] = list(info.who_has)
        return who_has

    def _fold_keys(self, has_what: dict[str, list[str]]) -> dict[str, list[str]]:
        """The center's has-what, with the keys we know a worker holds already
        (see _fold_holders)."""
        held = {key for keys in has_what.values() for key in keys}
        for key, info in self._keys.items():
            if info.status == FINISHED and key not in held:
                for address in info.who_has:
                    if address in has_what:
                        has_what[address].append(key)
        return has_what

    # ------------------------------------------------------------------ workers

    def ask_worker(self, address: str, cls: type, fields: dict[str, Any], frames: Frames,
                   answered: OnAnswer, failed: OnFailure, now: float) -> None:
        """Send a request to a worker (a message of class ``cls``, with
        ``fields`` and its id); ``answered(message, frames, now)`` or
        ``failed(error, now)`` is called once."""
        left = self._departed.get(address)
        if left is not None and now - left < DEPARTED_KEPT:
            failed(WorkerLeftError(f"the worker {address} left the cluster"), now)
            return
        request_id = next(self._ids)
        self.worker_requests[request_id] = (address, answered, failed)
        self._to_workers.append((address, cls(id=request_id, **fields), frames))

    def worker_answered(self, address: str, msg: Any, frames: Frames, now: float) -> None:
        """A worker answered a request (``msg`` has its ``id``: data-stored, run-result)."""
        request = self.worker_requests.get(msg.id)
        if request is not None and request[0] == address:  # (only its worker answers it)
            del self.worker_requests[msg.id]
            request[1](msg, frames, now)

    def run(self, addresses: list[str], frames: Frames,
            result: concurrent.futures.Future[dict[str, tuple[bool, Frames]]],
            now: float) -> None:
        """Run a pickled call on each worker in ``addresses``; gather the outcomes."""
        if self.stopped is not None:
            result.set_exception(self.stopped)
            return
        outcomes: dict[str, tuple[bool, Frames]] = {}

        def answered_by(address: str) -> OnAnswer:
            def answered(msg: RunResult, reply_frames: Frames, now: float) -> None:
                outcomes[address] = (msg.ok, reply_frames)
                if len(outcomes) == len(addresses) and not result.done():
                    result.set_result(outcomes)
            return answered

        def failed(error: BaseException, now: float) -> None:
            if not result.done():
                result.set_exception(error)

        if not addresses:
            result.set_result(outcomes)
        for address in addresses:
            self.ask_worker(address, Run, {}, frames, answered_by(address), failed, now)

    def workers_left(self, addresses: Collection[str], now: float) -> None:
        """The center says ``addresses`` left: requests to them fail now, and
        those asked of them from now on fail at once. All are marked before
        any request fails: one moved on to another worker (a part of a
        scatter) must not go to a worker that left in the same message."""
        for address in addresses:
            self._departed[address] = now
        if len(self._departed) > 2 * DEPARTED_COUNT:  # (the oldest go)
            self._departed = dict(list(self._departed.items())[-DEPARTED_COUNT:])
        for request_id, (worker, _, failed) in list(self.worker_requests.items()):
            if worker in addresses and self.worker_requests.pop(request_id, None) is not None:
                failed(WorkerLeftError(f"the worker {worker} left the cluster before "
                                       "answering"), now)

    def awaits(self, address: str) -> bool:
        """Whether an answer is awaited from worker ``address``."""
        return any(entry[0] == address for entry in self.worker_requests.values())

    # ------------------------------------------------------------------ the end

    def fail_rpcs(self, error: BaseException, now: float) -> None:
        rpcs, self.rpcs = self.rpcs, {}
        for result, _ in rpcs.values():
            _end(result, error, now)

    def fail_worker_requests(self, error: BaseException, now: float) -> None:
        requests, self.worker_requests = self.worker_requests, {}
        for _, _, failed in requests.values():
            failed(error, now)


def _end(result: ReplyTo, error: BaseException, now: float) -> None:
    if callable(result):
        result(None, error, now)
    elif not result.done():
        result.set_exception(error)
