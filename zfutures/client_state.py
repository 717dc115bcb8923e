"""The client's bookkeeping, without I/O: what an Executor knows and decides.

:class:`ClientCore` takes events (a user's call, a message from the center
or from a worker, the passing of time) with the time as an argument, and
answers with

- messages for the center (:attr:`ClientCore.to_center`: message, frames)
  and for workers (:attr:`ClientCore.to_workers`: address, message, frames),
  each message a class of :mod:`zfutures.messages`, which the shell
  (:mod:`zfutures.client_io`) sends and clears;
- buffers to read from the memory of a worker on this machine
  (:attr:`ClientCore.to_read`);
- futures finished: the core completes them itself, a thread-safe call that
  wakes whoever waits on them.

It owns no socket, thread or lock; the shell calls it from one thread at a
time. Tests drive it directly (``tests/test_client_state.py`` and the
``tests/test_client_*.py`` of its parts).

Each concern is a part of its own, which the core's event methods call in
turn; the parts share the key records (``keys``) and the outputs:

- :mod:`~zfutures.client_records`: a key's record, and what its futures see
- :mod:`~zfutures.client_outbox`: messages for the center: order, batches, timing
- :mod:`~zfutures.client_requests`: requests awaiting answers (center and workers)
- :mod:`~zfutures.client_gather`: getting values from the workers that hold them
- :mod:`~zfutures.client_scatter`: putting the caller's data on workers
- :mod:`~zfutures.client_direct`: a lone task sent straight to a worker
- :mod:`~zfutures.client_eager`: a PoolExecutor's keys, delivered and let go of
- :mod:`~zfutures.client_recovery`: our work brought back to a restarted center

A future cancelled is one future let go of: the key's other futures, here
or in other clients, keep waiting for it.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import logging
from collections.abc import Sequence
from typing import Any, Callable

from .client_direct import DirectRuns
from .client_eager import EagerKeys
from .client_gather import Gathers, Values
from .client_outbox import Outbox
from .client_records import (
    FINISHED,
    PENDING,
    KeyRecord,
    Message,
    end_unsent,
    record,
)
from .client_recovery import bring_back
from .client_requests import ReplyTo, Requests
from .client_scatter import Plan, Scatters
from .errors import ConnectionError, ProtocolError
from .future import Future
from .messages import (
    CloseClient,
    Data,
    DataStored,
    DirectAccepted,
    DirectResult,
    Heartbeat,
    KeyErred,
    KeyFinished,
    Refused,
    RegisterClient,
    Reply,
    Reregister,
    RunResult,
    Submit,
    TaskItem,
    Welcome,
    WorkersLeft,
    op_of,
)
from .protocol import PROTOCOL_VERSION, Frames, unpack_items

logger = logging.getLogger(__name__)


class ClientCore:
    """The client's state machine: events in, messages out, futures finished."""

    def __init__(self, name: str, *, fetch_timeout: float = 10.0,
                 heartbeat_interval: float = 0.5, reconnect_deadline: float = 30.0,
                 now: float = 0.0):
        self.name = name
        self.heartbeat_interval = heartbeat_interval
        self.reconnect_deadline = reconnect_deadline
        # ------------------------------------------------------------ state
        self.keys: dict[str, KeyRecord] = {}
        self.welcomed = False
        self.refusal: str | None = None
        #: the link to the center's dashboard (from its welcome), if it runs one
        self.dashboard_link: str | None = None
        self.reregistering = False
        self.last_heard = now
        self._next_timeout_check = 0.0
        # ------------------------------------------------------------ outputs
        self.to_workers: list[tuple[str, Message, Frames]] = []
        # Buffers a worker on this machine offered: (address, its data reply,
        # frames, when the request left), for the shell's reader thread (see
        # peer_memory.Reader), which hands the outcome to offered_read.
        self.to_read: list[tuple[str, Data, Frames, float]] = []
        # ------------------------------------------------------------ parts
        ids = itertools.count(1)  # (ids of requests to the center and to workers)
        self.outbox = Outbox(self.keys, now)
        self.to_center = self.outbox.to_center
        self.requests = Requests(self.keys, self.outbox, self.to_workers, ids)
        self.gathers = Gathers(self.keys, self.requests, self.to_workers, self.to_read, ids,
                               fetch_timeout)
        self.scatters = Scatters(self.keys, self.outbox, self.requests, ids, self._erred)
        self.direct = DirectRuns(self.keys, self.outbox, self.to_workers)
        self.eager = EagerKeys(self.keys, self.gathers, self.outbox, self.direct)
        # The center's messages, by class: what each is handed to.
        self._center_handlers: dict[type, Callable[[Any, Frames, float], None]] = {
            KeyFinished: self._key_finished,
            KeyErred: self._key_erred,
            DirectAccepted: self._direct_accepted,
            Reply: lambda msg, _, now: self.requests.reply(msg.id, msg.result, now),
            Welcome: self._welcome,
            Reregister: self._reregister,
            WorkersLeft: self._workers_left,
            Refused: self._refused,
            Heartbeat: lambda msg, frames, now: None,
        }

    # ------------------------------------------------------------------ views

    @property
    def stopped(self) -> BaseException | None:
        """Why calls end at once (shut down, or the I/O failed); None while running."""
        return self.requests.stopped

    @property
    def max_message_size(self) -> int:
        """The center's limit on the size of a message (from its welcome)."""
        return self.outbox.max_message_size

    # ================================================================== user calls

    def register(self) -> None:
        self.outbox.send(RegisterClient(PROTOCOL_VERSION, self.name))

    def submit(self, tasks: list[tuple[TaskItem, Frames, Future]], now: float,
               eager: bool = False, own_key: bool = False) -> None:
        """``tasks``: (item, payload frames, Future) for each new future; each
        item's ``nframes`` counts its frames.

        ``eager`` futures get their values as soon as the cluster has them,
        and are held until then even if their caller drops them.
        ``own_key``: the executor made the key (a pure task's token, or an
        impure task's unique key), not the caller. Alone, a task without
        inputs may go straight to a worker (see client_direct).
        """
        stopped = self.requests.stopped
        if stopped is not None:
            for _, _, future in tasks:
                end_unsent(future, stopped)
            return
        keys = self.keys
        queue = self.outbox.queue
        for item, frames, future in tasks:
            key = item.key
            info = keys.get(key)
            if info is None:  # new: send it (else the center has it for us)
                info = keys[key] = KeyRecord(key)
                info.submitted = (item, frames)
                info.deps = [keys[d] for d in item.deps if d in keys] or None
                if len(tasks) == 1:
                    item = self.direct.send(info, item, frames, own_key, now,
                                            self.reregistering)
                queue(Submit, item, frames)
            if eager:
                info.eager = True
                info.hold(future)
            info.add_future(future)

    def ref(self, future: Future) -> None:
        """A Future made for a key this client already holds (or will)."""
        if self.requests.stopped is not None:
            future._set_cancelled()
            return
        record(self.keys, future.key).add_future(future)

    def hold(self, future: Future) -> None:
        """Keep ``future`` alive until it is done: it has callbacks to run."""
        info = self.keys.get(future.key)
        if info is not None and info.status == PENDING:
            info.hold(future)

    def unref(self, key: str, now: float) -> None:
        """A future of ``key`` was dropped, released or cancelled; with the
        last, the key is let go of."""
        info = self.keys.get(key)
        if info is None or not info.drop_future():
            return
        del self.keys[key]
        info.held = None
        self.direct.forget(info)
        self.gathers.stop_awaiting(key)
        self.outbox.release_later(key, now)

    def fetch(self, keys: list[str], result: concurrent.futures.Future[Values], now: float,
              each: bool = False) -> None:
        """Get the pickled values of finished keys from the workers holding them:
        ``result`` ends with {key: frames}, or with the first error; with
        ``each``, a key that cannot be had has its error in place of frames."""
        if self.requests.stopped is not None:
            result.set_exception(self.requests.stopped)
            return
        self.gathers.gather(keys, result, now, per_key=each)

    def forget_fetch(self, result: concurrent.futures.Future[Values]) -> None:
        """The caller stopped waiting for ``result`` (its timeout passed)."""
        self.gathers.forget(result)

    def scatter(self, plan: Plan, futures: list[Future],
                result: concurrent.futures.Future[None], now: float) -> None:
        """Put data on workers (``plan``: address -> [(key, frames)]), then tell
        the center. A part whose worker leaves first goes to another worker of
        the plan; ``result`` fails only if some data found no worker at all."""
        if self.requests.stopped is not None:
            result.set_exception(self.requests.stopped)
            for future in futures:
                future._set_cancelled()
            return
        self.scatters.scatter(plan, futures, result, now)

    def run(self, addresses: list[str], frames: Frames,
            result: concurrent.futures.Future[dict[str, tuple[bool, Frames]]],
            now: float) -> None:
        """Run a pickled call on each worker in ``addresses``; gather the outcomes."""
        self.requests.run(addresses, frames, result, now)

    def rpc(self, cls: type, fields: dict[str, Any], result: ReplyTo) -> None:
        """Ask the center (a message of class ``cls``, with ``fields``: its id is
        added); ``result`` (a Future, or a callable of the reply) gets the answer."""
        self.requests.rpc(cls, fields, result)

    def offered_read(self, address: str, msg: Data, outcome: Any, now: float) -> None:
        """The shell read what a worker on this machine offered in ``msg``."""
        self.gathers.offered_read(address, msg, outcome, now)

    def pending_futures(self) -> list[Future]:
        """The futures not done yet (for a shutdown that waits for them)."""
        return [f for info in self.keys.values() for f in info.live_futures() if not f.done()]

    def close(self, now: float) -> None:
        """Say goodbye to the center; pending futures are cancelled, every wait ends."""
        if self.requests.stopped is not None:
            return
        self.outbox.flush_all()
        self.outbox.send(CloseClient())
        self.stop(ConnectionError("the executor was shut down"), now, cancel=True)

    def stop(self, error: BaseException, now: float, cancel: bool = False) -> None:
        """No answer will come: every wait ends with ``error`` (pending futures
        are cancelled instead with ``cancel``), and later calls end at once."""
        if self.requests.stopped is None:
            self.requests.stopped = error
        self._fail_everything(error, now, cancel)

    # ================================================================== messages

    def worker_message(self, address: str, msg: Message, frames: Frames, now: float) -> None:
        kind = type(msg)
        if kind is Data:
            self.gathers.data(address, msg, frames, now)
        elif kind is DirectResult:
            self._direct_result(address, msg, frames, now)
        elif kind is DataStored or kind is RunResult:
            self.requests.worker_answered(address, msg, frames, now)
        else:  # (raised for the shell's rate-limited log: a worker may send many)
            raise ProtocolError(f"an unexpected {op_of(msg)!r} from the worker {address}")

    def center_message(self, msg: Message, frames: Frames, now: float) -> None:
        self.last_heard = now
        handler = self._center_handlers.get(type(msg))
        if handler is None:
            logger.warning("dropped an unexpected %r from the center", op_of(msg))
        else:
            handler(msg, frames, now)

    def _key_finished(self, msg: KeyFinished, frames: Frames, now: float) -> None:
        seen = msg.seen or 0
        keys = self.keys
        for item, value in unpack_items(msg.tasks, frames):
            info = keys.get(item.key)
            if info is None or seen < info.since:  # (stale: see KeyRecord.since)
                continue
            if info.status == FINISHED:  # news of where it is now
                info.who_has = item.who_has
                info.nbytes = item.nbytes
                self.gathers.key_back(info, now)
                continue
            info.direct = None
            self._finished(info, item.who_has, item.nbytes, value)
        self.eager.deliver(now)

    def _key_erred(self, msg: KeyErred, frames: Frames, now: float) -> None:
        seen = msg.seen or 0
        for item, exception_frames in unpack_items(msg.tasks, frames):
            info = self.keys.get(item.key)
            if info is not None and seen >= info.since:
                self._erred(info, list(exception_frames), now)

    def _direct_result(self, address: str, msg: DirectResult, frames: Frames,
                       now: float) -> None:
        """A worker sent back the small result of a task we sent it straight."""
        info = self.direct.answered(address, msg, frames)
        if info is not None:
            self._finished(info, [address], msg.nbytes, frames)
            self.eager.deliver(now)

    def _direct_accepted(self, msg: DirectAccepted, frames: Frames, now: float) -> None:
        """The center counts the direct runs of some keys as the tasks' own."""
        for info, address, nbytes, value in self.direct.accepted(msg.keys, msg.seen or 0):
            self._finished(info, [address], nbytes, value)
        self.eager.deliver(now)

    def _welcome(self, msg: Welcome, frames: Frames, now: float) -> None:
        if msg.max_message_size is not None:
            self.outbox.max_message_size = msg.max_message_size
        # (a restarted center may run its dashboard elsewhere, or none)
        self.dashboard_link = msg.dashboard
        if self.reregistering:
            self.reregistering = False
            bring_back(self.keys, self.outbox, self.requests)
        self.welcomed = True

    def _reregister(self, msg: Reregister, frames: Frames, now: float) -> None:
        if self.welcomed and not self.reregistering:
            logger.warning("the center does not know this client (it restarted?); "
                           "registering again")
            self.reregistering = True
            self.register()

    def _refused(self, msg: Refused, frames: Frames, now: float) -> None:
        self.refusal = msg.reason
        self.welcomed = True

    def _workers_left(self, msg: WorkersLeft, frames: Frames, now: float) -> None:
        """The center says workers left or died (the shell took what they had
        sent already): calls waiting on them (run, scatter) fail now rather
        than at the reconnect deadline; fetches from them try other holders at
        once, or wait for the keys to be in memory again, rather than for the
        fetch timeout. Every worker of the message is gone before any call
        is tried again: one moved on from a worker that left must not go to
        another that left with it."""
        left = set(msg.addresses)
        self.direct.workers_left(left)
        self.requests.workers_left(left, now)
        # (after the calls failed: a scatter they end names its holders)
        for info in self.keys.values():
            if not left.isdisjoint(info.who_has):
                info.who_has = [a for a in info.who_has if a not in left]
        self.gathers.workers_left(left, now)

    def awaits_worker(self, address: str) -> bool:
        """Whether an answer other than a direct task's is awaited from ``address``."""
        return self.gathers.awaits(address) or self.requests.awaits(address)

    # ================================================================== keys' outcomes

    def _finished(self, info: KeyRecord, who_has: Sequence[str], nbytes: int,
                  value: Frames) -> None:
        """``info``'s key is in memory on ``who_has``; its pickled ``value``
        came along when small. Eager keys are seen to by ``eager.deliver``,
        once the message at hand is read."""
        info.status = FINISHED
        info.who_has = who_has
        info.nbytes = nbytes
        info.deps = None
        self.direct.finished_on(who_has, nbytes)
        if info.eager:
            self.eager.finished(info, value)
            return
        if value:  # small: the result came along, no fetch needed
            info.complete(value)
        else:
            info.on_the_cluster()
        info.held = None

    def _erred(self, info: KeyRecord, error: Frames, now: float) -> None:
        info.err(error)
        self.gathers.key_back(info, now)

    # ================================================================== time

    def tick(self, now: float) -> None:
        """Heartbeats, releases due, the center's silence, fetch timeouts."""
        self.outbox.release_if_due(now)
        if now - self.outbox.last_sent >= self.heartbeat_interval:
            self.outbox.send(Heartbeat())
        if now - self.last_heard > self.reconnect_deadline and self.welcomed:
            self._fail_everything(ConnectionError(
                f"the center has been silent for {now - self.last_heard:.0f}s"), now)
            self.last_heard = now
        if now < self._next_timeout_check:  # fetch timeouts are seconds long: scanning
            return                          # the requests at every message is waste
        self._next_timeout_check = now + self.heartbeat_interval
        self.gathers.expire(now)

    def next_due(self) -> float | None:
        """When releases, or submits that may wait (see Outbox.defers), are due."""
        return self.outbox.next_due()

    # ================================================================== output

    def flush(self, now: float) -> None:
        """Move what is queued for the center to :attr:`to_center`, unless it may wait."""
        self.outbox.flush(now)

    def flush_all(self) -> None:
        """Move everything queued for the center to :attr:`to_center`."""
        self.outbox.flush_all()

    def sent(self, now: float) -> None:
        """The shell sent :attr:`to_center` (for the heartbeat's timing)."""
        self.outbox.sent(now)

    def _fail_everything(self, error: BaseException, now: float, cancel: bool = False) -> None:
        """No answer will come: end every wait with ``error``; with ``cancel``,
        pending futures are cancelled instead (the executor shut down)."""
        self.requests.fail_rpcs(error, now)
        self.gathers.fail_all(error)
        self.requests.fail_worker_requests(error, now)
        for info in self.keys.values():
            info.fail_pending(error, cancel)
