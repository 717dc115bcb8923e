"""The client's bookkeeping, without I/O: what an Executor knows and decides.

:class:`ClientCore` holds a record of every key this client has futures
for: its status, the futures and how many refer to it, where its value is,
how it was submitted (to send it again to a center that restarted), and
whether its task went straight to a worker. It takes events (a user's call,
a message from the center or from a worker, the passing of time) with the
time as an argument, and answers with

- messages for the center (:attr:`ClientCore.to_center`: op, fields, frames)
  and for workers (:attr:`ClientCore.to_workers`: address, op, fields,
  frames), which the shell (:mod:`zfutures.client_io`) sends and clears;
- buffers to read from the memory of a worker on this machine
  (:attr:`ClientCore.to_read`);
- futures finished: the core completes them itself, a thread-safe call that
  wakes whoever waits on them.

It owns no socket, thread or lock; the shell calls it from one thread at a
time. Tests drive it directly (``tests/test_client_state.py``).

A key's life here::

    submit ──▶ pending ──(key-finished, or a worker's direct answer)──▶ finished
                  │                                                      │
                  └──(key-erred)──▶ erred ◀──(key-erred: data lost)──────┘

and it is forgotten (released at the center) when its last future goes.
A future cancelled is one future let go of: the key's other futures, here
or in other clients, keep waiting for it.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import logging
import random
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, Callable

from . import peer_memory, protocol, serialize
from .errors import ConnectionError, FutureLostError
from .remote_errors import remote_exception

logger = logging.getLogger(__name__)

#: Tasks per submit message: big maps go in several messages, so the center
#: interleaves other peers' messages with them.
SUBMIT_BATCH = 1000
#: Keys let go of are told to the center in one message at most this many
#: seconds later: a loop of submit().result() would otherwise cost the center
#: and the worker one more message per task.
RELEASE_DELAY = 0.01
#: A lone task's arguments up to this size (bytes) may go straight to a worker
#: (see ClientCore._send_direct); bigger ones go through the center only.
DIRECT_PAYLOAD_LIMIT = 1 << 20
#: Lone tasks go straight to a worker only after one of ours finished there
#: with a result up to this size (bytes): a loop of small calls is latency
#: bound; tasks that make big results are not, and the center spreads their
#: results across the workers, where the worker last used would gather them all.
DIRECT_AFTER_NBYTES = 16 * 1024
#: What may overtake keys waiting to be released: nothing in these names a
#: key let go of (a submit that does is sent after the release).
_UNORDERED = frozenset({"heartbeat", "submit", "release"})
#: A key's list of future references is pruned of dead ones when it holds
#: more than twice its live count and this many: a long-lived future of a
#: finished key, beside which a loop makes and drops other futures of the
#: same key, would otherwise grow it by one reference per call.
PRUNE_SLACK = 16

#: A request to a worker the center said left this many seconds ago or less
#: fails at once (see ClientCore._ask_worker); this many such workers are kept.
DEPARTED_KEPT = 60.0
DEPARTED_COUNT = 1000

#: A scattered key's ``since`` until the center hears of the copy (see scatter).
SCATTERING = 1 << 62

PENDING, FINISHED, ERRED = "pending", "finished", "erred"


class KeyRecord:
    """What this client knows of one key it holds futures for."""

    __slots__ = ("key", "refs", "futures", "held", "status", "who_has", "error", "eager",
                 "nbytes", "submitted", "deps", "scattered", "direct", "since")

    def __init__(self, key: str):
        self.key = key
        self.eager = False  # fetch the value as soon as it exists, then release the key
        self.nbytes = 0
        # What to send a center that restarted: the submit item and its payload
        # frames (None for keys this client did not submit), the inputs' records
        # while it is pending (their own submissions may be needed again), and
        # whether it is data this client scattered.
        self.submitted: tuple[dict, list] | None = None
        self.deps: list[KeyRecord] | None = None
        self.scattered = False
        self.refs = 0
        self.futures: list[weakref.ref] = []
        # Futures kept alive until done, for their callbacks; None when there
        # are none (most keys: a list each costs the garbage collector too).
        self.held: list | None = None
        self.status = PENDING
        self.who_has: Sequence[str] = ()
        # An erred key's pickled exception. Each future gets an exception of
        # its own, loaded from it: one raised to a caller carries a traceback
        # whose frames may hold the caller's futures, which a record kept
        # here would then keep alive, and with them the key.
        self.error: list | None = None
        # While its task, sent straight to a worker, may answer us directly
        # (see ClientCore._send_direct).
        self.direct: DirectRun | None = None
        # The seq of the submit that made it (see ClientCore.flush): the
        # center's news of the key stamped earlier is of a submit we let go of.
        self.since = 0

    def hold(self, future: Any) -> None:
        if self.held is None:
            self.held = []
        self.held.append(future)

    def exception(self) -> BaseException:
        """A new copy of an erred key's exception."""
        return remote_exception(self.error)

    def live_futures(self) -> list:
        alive = [f for f in (ref() for ref in self.futures) if f is not None]
        if len(alive) != len(self.futures):
            self.futures = [weakref.ref(f) for f in alive]
        return alive

    def __repr__(self) -> str:
        return f"<KeyRecord {self.key} {self.status} refs={self.refs}>"


class DirectRun:
    """A task sent straight to a worker, whose answer is awaited."""

    __slots__ = ("address", "run", "trusted", "early")

    def __init__(self, address: str, run: int, trusted: bool):
        self.address = address
        self.run = run
        # Whether its answer may complete the futures: at once if the executor
        # made the key (the center counts every run the worker does not
        # refuse, see Scheduler._runs_direct); for a key the caller chose,
        # once the center says it counts this run (direct-accepted): the
        # center may hold that key already, from another run.
        self.trusted = trusted
        self.early: tuple[int, list] | None = None  # (nbytes, frames) come before trust


class Gather:
    """One request for the values of some keys (pickled, by key).

    Its ``result`` ends with ``{key: frames}`` for every key, or with an
    error. A key whose value cannot leave its worker (it fails to pickle)
    is in ``failed`` with that error: with ``per_key``, the other keys go
    on; else the whole request fails with it.
    """

    __slots__ = ("result", "values", "remaining", "tried", "asked", "failed", "per_key")

    def __init__(self, keys: list[str], result: concurrent.futures.Future,
                 per_key: bool = False):
        self.asked: set[str] = set()  # keys the center was asked about, since last in memory
        self.result = result
        self.values: dict[str, list] = {}
        self.failed: dict[str, BaseException] = {}
        self.per_key = per_key
        self.remaining = set(keys)
        self.tried: dict[str, set[str]] = {key: set() for key in keys}


class _Scatter:
    """A scatter under way: its parts out (request id -> (address, [(key,
    frames)])), where each key was stored, and the workers parts may go to."""

    __slots__ = ("result", "out", "holders", "nbytes", "targets", "turn", "error", "keys",
                 "now", "since")

    def __init__(self, targets: list[str], result: concurrent.futures.Future, now: float):
        self.now = now  # (when it began: a worker that left since is known)
        self.result = result
        self.out: dict[int, tuple[str, list[tuple[str, list]]]] = {}
        self.holders: dict[str, list[str]] = {}
        self.nbytes: dict[str, int] = {}
        self.targets = targets
        self.turn = 0
        self.error: BaseException | None = None
        self.keys: set[str] = set()
        self.since: dict[str, int] = {}  # its keys' ``since`` before it (see scatter)


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


def may_go_direct(item: dict) -> bool:
    """Whether a task may go straight to a worker, as far as it alone goes: no
    inputs, no placement of its own, no retries (see ClientCore._send_direct)."""
    return not item["deps"] and "workers" not in item and "resources" not in item and \
        not item.get("retries")


def load_value(frames: list) -> tuple[Any, BaseException | None]:
    """Unpickle a value: (value, None), or (None, the error) if that raised.

    Any exception counts, ``SystemExit`` and ``KeyboardInterrupt`` raised by
    the value's own unpickling too: they fail that value alone, never the
    thread that loads it.
    """
    try:
        return serialize.loads(frames), None
    except BaseException as e:  # noqa: BLE001 (see the docstring)
        if isinstance(e, Exception):
            return None, e
        return None, RuntimeError(f"loading a result raised {e!r}")


class ClientCore:
    """The client's state machine: events in, messages out, futures finished."""

    def __init__(self, name: str, *, fetch_timeout: float = 10.0,
                 heartbeat_interval: float = 0.5, reconnect_deadline: float = 30.0,
                 now: float = 0.0):
        self.name = name
        self.fetch_timeout = fetch_timeout
        self.heartbeat_interval = heartbeat_interval
        self.reconnect_deadline = reconnect_deadline
        # ------------------------------------------------------------ outputs
        self.to_center: list[tuple[str, dict, list]] = []
        self.to_workers: list[tuple[str, str, dict, list]] = []
        # Buffers a worker on this machine offered: (address, header, frames,
        # when the request left), for the shell's reader thread (see
        # peer_memory.Reader), which hands the outcome to offered_read.
        self.to_read: list[tuple[str, dict, list, float]] = []
        # ------------------------------------------------------------ state
        self.keys: dict[str, KeyRecord] = {}
        self.fetches: dict[int, Fetch] = {}
        # Gathers waiting for a key to be in memory again (its holders died, and
        # the center is computing it anew): key -> gathers.
        self.awaiting: dict[str, list[Gather]] = {}
        # Requests to the center awaiting replies: id -> (result, op, fields).
        # A result that is a callable is the core's own (see _ask_where).
        self.rpcs: dict[int, tuple[Any, str, dict]] = {}
        # Requests to workers other than get-data:
        # id -> (worker address, callback(header, frames), the caller's future).
        # id -> (worker address, on_answer(header, frames), on_failure(error)).
        self.worker_requests: dict[int, tuple[str, Callable, Callable]] = {}
        # Workers the center said left, and when: a request to one of them
        # now would never be answered (see _ask_worker).
        self._departed: dict[str, float] = {}
        self.welcomed = False
        self.refusal: str | None = None
        self.reregistering = False
        # Why calls end now that no more will be answered (shut down, or the
        # I/O failed); None while running.
        self.stopped: BaseException | None = None
        # The center's limit (learned from its welcome): larger messages would
        # cost us our connection, so submits are split below it.
        self.max_message_size = protocol.MAX_MESSAGE_SIZE
        # Sending a lone task straight to a worker (see _send_direct): the
        # worker that last finished one of our tasks, the key sent straight
        # and not answered yet, and run ids (from a random start, as the
        # center's: a run of ours is never taken for one of its).
        self.direct_worker: str | None = None
        self.direct_pending: KeyRecord | None = None
        # Direct tasks' submits while queued (key -> item), and until when they
        # may wait there for the workers' answers (see holds).
        self._unsent_direct: dict[str, dict] = {}
        self._unsent_direct_due = 0.0
        self._direct_runs = itertools.count(random.getrandbits(62))
        self.direct_answers = 0  # results that came straight from a worker
        # When to look for the direct task's answer if no caller reads it.
        self.direct_due = 0.0
        # Eager keys finished in the message at hand (see _finished).
        self._eager_fetch: list[str] = []
        self._eager_inline: dict[str, list] = {}
        self._ids = itertools.count(1)
        self._submit_seqs = itertools.count(1)
        self._outgoing: list[list] = []  # [op, items, frames, bytes of frames]
        self._releasing: dict[str, None] = {}  # keys to release at release_due
        self.release_due: float | None = None
        self.last_sent = self.last_heard = now
        self._next_timeout_check = 0.0

    # ================================================================== user calls

    def register(self) -> None:
        self._send("register-client", protocol=protocol.PROTOCOL_VERSION, name=self.name)

    def submit(self, tasks: list[tuple[dict, list, Any]], now: float, eager: bool = False,
               own_key: bool = False) -> None:
        """``tasks``: (item, payload frames, Future) for each new future.

        ``eager`` futures get their values as soon as the cluster has them,
        and are held until then even if their caller drops them.
        ``own_key``: the executor made the key (a pure task's token, or an
        impure task's unique key), not the caller. Alone, a task without
        inputs may go straight to a worker (see _send_direct).
        """
        if self.stopped is not None:
            for _, _, future in tasks:
                if future.running():  # (a PoolExecutor's, which it counts as started)
                    future._set_error(self.stopped)
                else:
                    future._set_cancelled()
            return
        keys = self.keys
        for item, frames, future in tasks:
            key = item["key"]
            info = keys.get(key)
            if info is None:  # new: send it (else the center has it for us)
                info = keys[key] = KeyRecord(key)
                item["nframes"] = len(frames)
                info.submitted = (item, frames)
                info.deps = [keys[d] for d in item["deps"] if d in keys] or None
                if len(tasks) == 1:
                    item = self._send_direct(info, item, frames, own_key, now)
                self._queue("submit", item, frames)
            if eager:
                info.eager = True
                info.hold(future)
            self._add_future(info, future)

    def ref(self, future: Any) -> None:
        """A Future made for a key this client already holds (or will)."""
        if self.stopped is not None:
            future._set_cancelled()
            return
        info = self.keys.get(future.key)
        if info is None:
            info = self.keys[future.key] = KeyRecord(future.key)
        self._add_future(info, future)

    def hold(self, future: Any) -> None:
        """Keep ``future`` alive until it is done: it has callbacks to run."""
        info = self.keys.get(future.key)
        if info is not None and info.status == PENDING:
            info.hold(future)

    def unref(self, key: str, now: float) -> None:
        """A future of ``key`` was dropped, released or cancelled."""
        info = self.keys.get(key)
        if info is None:
            return
        info.refs -= 1
        if info.refs <= 0:
            del self.keys[key]
            info.direct = None  # (its answer is no longer awaited)
            info.held = None
            if self.direct_pending is info:  # (its frames may be the caller's buffers)
                self.direct_pending = None
            if key in self.awaiting:
                self._stop_awaiting(key, FutureLostError(f"{key!r} was released"))
            self._release_later(key, now)
        elif len(info.futures) > 2 * info.refs + PRUNE_SLACK:
            info.live_futures()

    def fetch(self, keys: list[str], result: concurrent.futures.Future, now: float,
              each: bool = False) -> None:
        """Get the pickled values of finished keys from the workers holding them:
        ``result`` ends with {key: frames}, or with the first error; with
        ``each``, a key that cannot be had has its error in place of frames."""
        if self.stopped is not None:
            result.set_exception(self.stopped)
            return
        self._fetch(Gather(keys, result, per_key=each), keys, now)

    def forget_fetch(self, result: concurrent.futures.Future) -> None:
        """The caller stopped waiting for ``result`` (its timeout passed)."""
        for gather in {f.gather for f in self.fetches.values() if f.gather.result is result}:
            self._finish_gather(gather, concurrent.futures.TimeoutError())
        for waiting in list(self.awaiting.values()):
            for gather in [g for g in waiting if g.result is result]:
                self._finish_gather(gather, concurrent.futures.TimeoutError())

    def scatter(self, plan: dict[str, list[tuple[str, list]]], futures: list,
                result: concurrent.futures.Future, now: float) -> None:
        """Put data on workers (``plan``: address -> [(key, frames)]), then tell
        the center. A part whose worker leaves first goes to another worker of
        the plan; ``result`` fails only if some data found no worker at all."""
        if self.stopped is not None:
            result.set_exception(self.stopped)
            for future in futures:
                future._set_cancelled()
            return
        for future in futures:
            # A release of the key still waiting here is taken back: sent, it
            # would reach the worker after our copy, and delete it.
            self._releasing.pop(future.key, None)
            info = self.keys.get(future.key)
            if info is not None and info.status == ERRED:  # lost, and put there anew
                info.status, info.error = PENDING, None
        job = _Scatter(list(plan), result, now)
        for future in futures:
            self.ref(future)
            # The center's news of the key until it hears of this copy is of
            # earlier ones (a copy lost with its worker): ignored (see _scattered).
            info = self.keys[future.key]
            if info.since != SCATTERING:
                job.since[future.key] = info.since
                info.since = SCATTERING
        job.keys = {key for entries in plan.values() for key, _ in entries}
        for address, entries in plan.items():
            self._put_data(job, address, entries)
        if not plan:
            self._scattered(job)

    def _put_data(self, job: _Scatter, address: str, entries: list[tuple[str, list]]) -> None:
        items = [{"key": key} for key, _ in entries]
        frames = protocol.pack_items(items, [f for _, f in entries])
        part = next(self._ids)  # (a part's own number, whatever its request's)
        job.out[part] = (address, entries)
        self._ask_worker(address, "put-data", {"items": items}, frames,
                         lambda header, _: self._data_stored(job, part, header),
                         lambda error: self._data_not_stored(job, part, error), job.now)

    def _data_stored(self, job: _Scatter, request_id: int, header: dict) -> None:
        address, _ = job.out.pop(request_id)
        for key, size in header["nbytes"].items():
            job.holders.setdefault(key, []).append(address)
            job.nbytes[key] = size
        for key, why in header.get("failed", {}).items():  # (the same bytes fail anywhere)
            job.error = RuntimeError(f"the data of {key!r} could not be loaded on the worker "
                                     f"{address}: {why}")
        if not job.out:
            self._scattered(job)

    def _data_not_stored(self, job: _Scatter, request_id: int, error: BaseException) -> None:
        address, entries = job.out.pop(request_id)
        if address in job.targets:
            job.targets.remove(address)
        on_the_way = {key for _, part in job.out.values() for key, _ in part}
        homeless = [(key, frames) for key, frames in entries
                    if key not in job.holders and key not in on_the_way]
        if homeless and job.targets and self.stopped is None:
            job.turn += 1
            self._put_data(job, job.targets[job.turn % len(job.targets)], homeless)
        elif homeless:
            job.error = error
        if not job.out:
            self._scattered(job)

    def _scattered(self, job: _Scatter) -> None:
        """Every part of a scatter was answered: tell the center where the data
        is, and end the call (with an error if some data found no worker)."""
        items = [{"key": k, "nbytes": job.nbytes[k], "workers": w} for k, w in job.holders.items()]
        for item in items:
            info = self.keys.get(item["key"])
            if info is not None:
                info.scattered, info.who_has = True, item["workers"]
                info.nbytes = item["nbytes"]
                if info.status == PENDING:
                    info.status = FINISHED
                    for future in info.live_futures():
                        future._set_remote()
        if items and self.stopped is None:
            if self._releasing:  # keep the order: earlier messages first
                self._release_now()
            self.flush_all()
        told = bool(items) and self.stopped is None
        seq = next(self._submit_seqs) if told else 0  # (after those of the submits before)
        for key, since in job.since.items():
            info = self.keys.get(key)
            if info is not None and info.since == SCATTERING:
                # News from this message on; a key no copy of which was stored
                # takes news as before.
                info.since = seq if key in job.holders else since
        if told:
            self._send("update-data", items=items, seq=seq)
        if job.error is None:
            job.result.set_result(None)
            return
        for key in job.keys - set(job.holders):  # (their futures were never handed out)
            info = self.keys.get(key)
            if info is not None and info.status == PENDING:
                self._erred(info, serialize.dumps((FutureLostError(
                    f"{key!r} could not be scattered: {job.error}"), "")))
        if not job.result.done():
            job.result.set_exception(job.error)

    def run(self, addresses: list[str], frames: list, result: concurrent.futures.Future,
            now: float) -> None:
        """Run a pickled call on each worker in ``addresses``; gather the outcomes."""
        if self.stopped is not None:
            result.set_exception(self.stopped)
            return
        outcomes: dict[str, tuple[bool, list]] = {}

        def answered(address: str, header: dict, reply_frames: list) -> None:
            outcomes[address] = (header["ok"], reply_frames)
            if len(outcomes) == len(addresses) and not result.done():
                result.set_result(outcomes)

        if not addresses:
            result.set_result(outcomes)
        for address in addresses:
            self._ask_worker(address, "run", {}, frames,
                             lambda h, f, a=address: answered(a, h, f),
                             lambda error: result.done() or result.set_exception(error), now)

    def _ask_worker(self, address: str, op: str, fields: dict, frames: list,
                    answered: Callable, failed: Callable, now: float) -> None:
        """Send a request to a worker; ``answered(header, frames)`` or
        ``failed(error)`` is called once. A worker the center said left lately
        fails it at once: no word of it will come again."""
        left = self._departed.get(address)
        if left is not None and now - left < DEPARTED_KEPT:
            failed(ConnectionError(f"the worker {address} left the cluster"))
            return
        request_id = next(self._ids)
        self.worker_requests[request_id] = (address, answered, failed)
        self.to_workers.append((address, op, dict(fields, id=request_id), frames))

    def rpc(self, op: str, fields: dict, result: Any) -> None:
        """Ask the center; ``result`` (a Future, or a callable of the reply) gets the answer."""
        if self.stopped is not None:
            if callable(result):
                result(None, self.stopped)
            else:
                result.set_exception(self.stopped)
            return
        self.flush_all()  # answers then reflect everything asked for before
        request_id = next(self._ids)
        self.rpcs[request_id] = (result, op, fields)
        self._send(op, id=request_id, **fields)

    def pending_futures(self) -> list:
        """The futures not done yet (for a shutdown that waits for them)."""
        return [f for info in self.keys.values() for f in info.live_futures() if not f.done()]

    def close(self) -> None:
        """Say goodbye to the center; pending futures are cancelled, every wait ends."""
        if self.stopped is not None:
            return
        self.flush_all()
        self._send("close-client")
        self.stop(ConnectionError("the executor was shut down"), cancel=True)

    def stop(self, error: BaseException, cancel: bool = False) -> None:
        """No answer will come: every wait ends with ``error`` (pending futures
        are cancelled instead with ``cancel``), and later calls end at once."""
        if self.stopped is None:
            self.stopped = error
        self._fail_everything(error, cancel)

    # ================================================================== direct runs

    def _send_direct(self, info: KeyRecord, item: dict, frames: list, own_key: bool,
                     now: float) -> dict:
        """Send a lone task without inputs straight to a worker, and return the
        item that tells the center so; or return ``item`` unchanged.

        A task through the center takes four hops (client, center, worker,
        center, client); sent straight, its small result comes back in two,
        and the center hears of it on the side: the worker's reports and our
        submit travel apart, and the center matches them by the run id we
        choose (see Scheduler._runs_direct). The worker refuses it if it
        cannot start it at once, and the center then places it as usual.
        The result counts at once if ``own_key``, else only once the center
        says it counts that run (direct-accepted). One such task at a time,
        to the worker that last finished one of ours with a small result
        (DIRECT_AFTER_NBYTES): a burst of submits goes through the center,
        which balances it across the workers.
        """
        address = self.direct_worker
        if address is None or self.direct_in_flight() or not may_go_direct(item) or \
                self.reregistering or serialize.frames_nbytes(frames) > DIRECT_PAYLOAD_LIMIT:
            return item
        run = next(self._direct_runs)
        self.to_workers.append((address, "run-task", {"key": info.key, "run": run}, frames))
        self.direct_due = now + RELEASE_DELAY
        info.direct = DirectRun(address, run, own_key)
        self.direct_pending = info
        item = dict(item, direct_worker=address, direct_run=run)
        if not own_key:
            item["direct_ack"] = True  # (and it goes to the center at once)
        else:  # it may wait to go with others (see holds)
            if not self._unsent_direct:
                self._unsent_direct_due = now + RELEASE_DELAY
            self._unsent_direct[info.key] = item
        return item

    def direct_unsent(self, key: str) -> None:
        """The shell could not send ``key``'s task to its worker: it goes
        through the center alone (its submit, still queued, is made plain)."""
        info = self.keys.get(key)
        if info is None or info.direct is None:
            return
        info.direct = None
        if self.direct_pending is info:
            self.direct_pending = None
        self._unsent_direct.pop(key, None)
        submits = [entry[1] for entry in self._outgoing if entry[0] == "submit"] + \
            [fields["tasks"] for op, fields, _ in self.to_center if op == "submit"]
        for items in submits:
            for i, item in enumerate(items):
                if item["key"] == key:
                    items[i] = {k: v for k, v in item.items()
                                if k not in ("direct_worker", "direct_run", "direct_ack")}

    def direct_in_flight(self) -> bool:
        """Whether a task sent straight to a worker awaits its answer (one at a time)."""
        pending = self.direct_pending
        return pending is not None and pending.direct is not None and pending.status == PENDING

    def _direct_result(self, address: str, header: dict, frames: list, now: float) -> None:
        """A worker sent back the small result of a task we sent it straight."""
        info = self.keys.get(header["key"])
        direct = info.direct if info is not None and info.status == PENDING else None
        if direct is None or direct.address != address or direct.run != header["run"]:
            return  # (cancelled, released, or the worker left meanwhile)
        unsent = self._unsent_direct.get(info.key)
        if unsent is not None:
            unsent["direct_answered"] = True  # (see protocol._TASK_ITEM)
        if not direct.trusted:
            direct.early = (header["nbytes"], frames)
            return
        info.direct = None
        self.direct_answers += 1
        self._finished(info, [address], header["nbytes"], frames)
        self._finish_eager(now)

    def _direct_accepted(self, keys: list[str], seen: int, now: float) -> None:
        """The center counts the direct runs of ``keys`` as the tasks' own."""
        for key in keys:
            info = self.keys.get(key)
            direct = info.direct if info is not None and info.status == PENDING and \
                seen >= info.since else None
            if direct is None:
                continue
            direct.trusted = True
            if direct.early is not None:
                info.direct = None
                self.direct_answers += 1
                self._finished(info, [direct.address], *direct.early)
        self._finish_eager(now)

    # ================================================================== futures

    def _add_future(self, info: KeyRecord, future: Any) -> None:
        info.refs += 1
        info.futures.append(weakref.ref(future))
        if info.status == FINISHED:
            future._set_remote()
        elif info.status == ERRED:
            _fail_future(future, info.exception())

    @staticmethod
    def _complete(info: KeyRecord, frames: list | None, error: BaseException | None = None,
                  detach: bool = False) -> None:
        """Complete the futures of a finished key with its pickled value (or
        ``error``); a value that fails to load fails them, as result() would."""
        value = None
        if error is None:
            value, error = load_value(frames)
        for future in info.live_futures():
            if detach:
                future._executor = None
            if error is None:
                future._set_value(value)
            else:
                future._set_error(error)

    def _finished(self, info: KeyRecord, who_has: Sequence[str], nbytes: int,
                  value: list) -> None:
        """``info``'s key is in memory on ``who_has``; its pickled ``value``
        came along when small. Eager keys are seen to by _finish_eager."""
        info.status = FINISHED
        info.who_has = who_has
        info.nbytes = nbytes
        info.deps = None
        # The next lone task may go to a worker that is up (see _send_direct).
        self.direct_worker = who_has[0] if who_has and nbytes <= DIRECT_AFTER_NBYTES \
            else None
        if info.eager:
            if value:
                self._eager_inline[info.key] = value
            else:
                self._eager_fetch.append(info.key)
            return
        if value:  # small: the result came along, no fetch needed
            self._complete(info, value)
        else:
            for future in info.live_futures():
                future._set_remote()
        info.held = None

    def _erred(self, info: KeyRecord, error: list) -> None:
        info.status = ERRED
        info.deps = None
        info.direct = None
        info.error = error
        for future in info.live_futures():
            _fail_future(future, info.exception())
        info.held = None
        self._key_back(info)

    def _finish_eager(self, now: float) -> None:
        """Fetch the finished eager keys whose values did not come along, and
        deliver those whose values did."""
        if self._eager_fetch:
            keys, self._eager_fetch = self._eager_fetch, []
            result: concurrent.futures.Future = concurrent.futures.Future()
            gather = Gather(keys, result, per_key=True)
            # Runs in this core, when the gather completes.
            result.add_done_callback(lambda done: self._deliver(
                keys, {} if done.exception() else done.result(), gather.failed,
                done.exception()))
            self._fetch(gather, keys, now)
        if self._eager_inline:
            inline, self._eager_inline = self._eager_inline, {}
            self._deliver(list(inline), inline, {}, None)

    def _deliver(self, keys: list[str], values: dict[str, list],
                 failed: dict[str, BaseException], error: BaseException | None) -> None:
        """Eager keys' values (pickled) are here, or their errors: complete
        their futures, which then no longer refer to the keys, and release the keys."""
        for key in keys:
            info = self.keys.pop(key, None)
            if info is not None:
                self._complete(info, values.get(key), failed.get(key, error), detach=True)
                info.held = None
                if self.direct_pending is info:  # (its frames may be the caller's buffers)
                    self.direct_pending = None
                self._release_later(key, None)

    # ================================================================== fetching

    def _fetch(self, gather: Gather, keys: list[str], now: float) -> None:
        """Ask a holder of each key for it, one request per worker."""
        plan: dict[str, list[str]] = {}
        exhausted = []
        for key in keys:
            if key not in gather.remaining:
                continue
            info = self.keys.get(key)
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
            request_id = next(self._ids)
            self.fetches[request_id] = Fetch(gather, address, worker_keys, now, deadline)
            self.to_workers.append((address, "get-data",
                                    dict(id=request_id, keys=worker_keys,
                                         **peer_memory.reader_fields()), []))
        if not gather.remaining and not gather.result.done():
            self._finish_gather(gather)

    def _fail_key(self, gather: Gather, key: str, error: BaseException) -> bool:
        """``key``'s value cannot be had: fail the gather (True), or only that
        key of a gather whose keys end apart (False)."""
        if not gather.per_key:
            self._finish_gather(gather, error)
            return True
        gather.failed[key] = error
        gather.remaining.discard(key)
        return False

    def _ask_where(self, gather: Gather, keys: list[str], now: float) -> None:
        """The holders we knew of failed: ask the center once where the keys are now
        (a worker that left handed them on), then try there. A key held nowhere
        is being computed again (its holders died): the gather waits for it
        (see :meth:`_key_back`)."""
        for key in keys:
            if key in gather.asked:
                info = self.keys.get(key)
                if self._fail_key(gather, key, FutureLostError(
                        f"could not fetch {key!r} from any of the workers holding it "
                        f"({', '.join(info.who_has) if info else 'none'})")):
                    return
        keys = [key for key in keys if key in gather.remaining]
        if not keys:
            if not gather.remaining:
                self._finish_gather(gather)
            return
        gather.asked.update(keys)

        def answered(reply: Any, error: BaseException | None) -> None:
            if error is not None:
                self._finish_gather(gather, error)
                return
            if gather.result.done():
                return
            held = []
            for key, holders in reply.items():
                info = self.keys.get(key)
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
            self._fetch(gather, held, self.last_heard)

        self.rpc("who-has", {"keys": keys}, answered)

    def _key_back(self, info: KeyRecord) -> None:
        """``info``'s key is in memory again, or erred: gathers waiting for it, if
        any, go on."""
        for gather in self.awaiting.pop(info.key, ()):
            if gather.result.done():
                continue
            if info.status == ERRED:
                if not self._fail_key(gather, info.key, info.exception()) and \
                        not gather.remaining:
                    self._finish_gather(gather)
            else:
                gather.tried[info.key] = set()
                gather.asked.discard(info.key)
                self._fetch(gather, [info.key], self.last_heard)

    def _stop_awaiting(self, key: str, error: BaseException) -> None:
        """``key`` was let go of: gathers waiting for it to be back fail."""
        for gather in self.awaiting.pop(key, ()):
            if not gather.result.done():
                if not self._fail_key(gather, key, error) and not gather.remaining:
                    self._finish_gather(gather)

    def _take_data(self, gather: Gather, header: dict,
                   unpacked: Iterable[tuple[dict, list]], now: float) -> None:
        """A worker's answer to a fetch, each item with its frames. Items past
        ``header["items"]`` are values that could not be pickled to leave the
        worker: their frames are the pickled error."""
        items = header["items"]
        for i, (item, value_frames) in enumerate(unpacked):
            key = item["key"]
            if key not in gather.remaining:
                continue
            if i >= len(items):
                if self._fail_key(gather, key, remote_exception(value_frames)):
                    return
                continue
            gather.remaining.discard(key)
            gather.values[key] = value_frames
        if header["missing"]:
            self._fetch(gather, header["missing"], now)
        elif not gather.remaining:
            self._finish_gather(gather)

    def _finish_gather(self, gather: Gather, error: BaseException | None = None) -> None:
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

    def extend_fetch(self, request_id: int, seconds: float, now: float) -> Fetch | None:
        """A worker offered buffers to read from its memory: the request stays
        pending ``seconds`` more than a fetch may take from now. None if the
        request timed out earlier (its lease must end)."""
        fetch = self.fetches.get(request_id)
        if fetch is not None:
            fetch.deadline = max(fetch.deadline, now + self.fetch_timeout + seconds)
        return fetch

    def offered_read(self, address: str, header: dict, outcome: Any, now: float) -> None:
        """The shell read what a worker on this machine offered (see
        peer_memory.Reader); the lease ends."""
        self.to_workers.append((address, "data-read", {"lease": header["lease"]}, []))
        then = peer_memory.after_read(outcome)
        if then == "take":
            fetch = self.fetches.pop(header["id"], None)
            if fetch is not None:
                self._take_data(fetch.gather, header, outcome, now)
            return
        fetch = self.fetches.get(header["id"])
        if then == "again" and fetch is not None:  # at once, as frames this time
            self.to_workers.append((address, "get-data", {"id": header["id"],
                                                          "keys": fetch.keys}, []))

    # ================================================================== messages

    def worker_message(self, address: str, header: dict, frames: list, now: float) -> None:
        op = header["op"]
        if op == "data":
            if "lease" in header:  # buffers to read from its memory
                fetch = self.extend_fetch(header["id"], peer_memory.read_time(header["items"]),
                                          now)
                if fetch is None:
                    self.to_workers.append((address, "data-read",
                                            {"lease": header["lease"]}, []))
                else:
                    self.to_read.append((address, header, frames, fetch.sent))
                return
            fetch = self.fetches.pop(header["id"], None)
            if fetch is not None:  # (else timed out earlier and asked elsewhere)
                self._take_data(fetch.gather, header, protocol.unpack_items(
                    header["items"] + header.get("errors", []), frames), now)
            return
        if op == "direct-result":
            self._direct_result(address, header, frames, now)
            return
        request = self.worker_requests.get(header["id"])
        if request is not None and request[0] == address:  # (only its worker answers it)
            del self.worker_requests[header["id"]]
            request[1](header, frames)

    def center_message(self, header: dict, frames: list, now: float) -> None:
        self.last_heard = now
        op = header["op"]
        seen = header.get("seen", 0)
        if op == "key-finished":
            for item, value in protocol.unpack_items(header["tasks"], frames):
                info = self.keys.get(item["key"])
                if info is not None and seen >= info.since:  # (else stale: see KeyRecord.since)
                    if info.status == FINISHED:  # news of where it is now
                        info.who_has = item["who_has"]
                        info.nbytes = item["nbytes"]
                        self._key_back(info)
                        continue
                    info.direct = None
                    self._finished(info, item["who_has"], item["nbytes"], value)
            self._finish_eager(now)
        elif op == "key-erred":
            for item, exception_frames in protocol.unpack_items(header["tasks"], frames):
                info = self.keys.get(item["key"])
                if info is not None and seen >= info.since:
                    self._erred(info, list(exception_frames))
        elif op == "direct-accepted":
            self._direct_accepted(header["keys"], seen, now)
        elif op == "reply":
            self._reply(header["id"], header["result"])
        elif op == "welcome":
            self.max_message_size = header.get("max_message_size", self.max_message_size)
            if self.reregistering:
                self.reregistering = False
                self._bring_back()
            self.welcomed = True
        elif op == "reregister":
            if self.welcomed and not self.reregistering:
                logger.warning("the center does not know this client (it restarted?); "
                               "registering again")
                self.reregistering = True
                self.register()
        elif op == "workers-left":
            for address in header["addresses"]:
                self._worker_left(address, now)
        elif op == "refused":
            self.refusal = header["reason"]
            self.welcomed = True
        elif op != "heartbeat":
            logger.warning("dropped an unexpected %r from the center", op)

    def _reply(self, request_id: int, reply: Any) -> None:
        result, op, _ = self.rpcs.pop(request_id, (None, None, None))
        if result is None:
            return
        if op == "who-has":
            reply = self._fold_holders(reply)
        elif op == "has-what":
            reply = self._fold_keys(reply)
        if callable(result):
            result(reply, None)
        elif not result.done():
            result.set_result(reply)

    def _fold_holders(self, who_has: dict[str, list[str]]) -> dict[str, list[str]]:
        """The center's who-has, with the holders of keys whose values we had
        straight from a worker before the center heard of them."""
        keys = self.keys
        for key, holders in who_has.items():
            info = keys.get(key)
            if not holders and info is not None and info.status == FINISHED and info.who_has:
                who_has[key] = list(info.who_has)
        return who_has

    def _fold_keys(self, has_what: dict[str, list[str]]) -> dict[str, list[str]]:
        """The center's has-what, with the keys we know a worker holds already
        (see _fold_holders)."""
        held = {key for keys in has_what.values() for key in keys}
        for key, info in self.keys.items():
            if info.status == FINISHED and key not in held:
                for address in info.who_has:
                    if address in has_what:
                        has_what[address].append(key)
        return has_what

    def _worker_left(self, address: str, now: float) -> None:
        """The center says a worker left or died (the shell took what it had
        sent already): calls waiting on it (run, scatter) fail now rather than
        at the reconnect deadline. Fetches from it try other holders at once,
        or wait for the keys to be in memory again (handed on, or
        recomputed), rather than for the fetch timeout."""
        self._departed[address] = now
        if len(self._departed) > 2 * DEPARTED_COUNT:  # (the oldest go)
            self._departed = dict(list(self._departed.items())[-DEPARTED_COUNT:])
        for request_id, (worker, _, failed) in list(self.worker_requests.items()):
            if worker == address and self.worker_requests.pop(request_id, None) is not None:
                failed(ConnectionError(f"the worker {address} left the cluster before "
                                       "answering"))
        if self.direct_worker == address:
            self.direct_worker = None
        for info in self.keys.values():
            if address in info.who_has:
                info.who_has = [a for a in info.who_has if a != address]
            if info.direct is not None and info.direct.address == address:
                info.direct = None  # (the center places its task again)
        for request_id, fetch in list(self.fetches.items()):
            if fetch.address == address and self.fetches.pop(request_id, None) is not None:
                self._fetch(fetch.gather, fetch.keys, now)

    def awaits_worker(self, address: str) -> bool:
        """Whether an answer other than a direct task's is awaited from ``address``."""
        return any(f.address == address for f in self.fetches.values()) or \
            any(entry[0] == address for entry in self.worker_requests.values())

    def _bring_back(self) -> None:
        """The center lost what it knew of us (it restarted): send again every
        key we hold, inputs before the tasks that need them, saying where the
        finished ones were, so the center takes them back instead of
        recomputing; then the requests it had not answered."""
        order: list[tuple[str, KeyRecord]] = []
        seen: set[int] = set()
        for info in list(self.keys.values()):
            stack = [(info, False)]
            while stack:  # depth first, inputs first: a chain can be long
                info, expanded = stack.pop()
                if expanded:
                    order.append((info.key, info))
                    continue
                if id(info) in seen:
                    continue
                seen.add(id(info))
                stack.append((info, True))
                stack.extend((dep, False) for dep in info.deps or () if id(dep) not in seen)
        # Whatever is queued is among the keys brought back here, or about keys
        # the new center never knew.
        self._outgoing.clear()
        self._unsent_direct.clear()
        scattered, inputs_only = [], []
        for key, info in order:
            if info.status == ERRED:
                continue
            if info.scattered:
                scattered.append({"key": key, "nbytes": info.nbytes, "workers": info.who_has})
            elif info.submitted is not None:
                item, frames = info.submitted
                if info.status == FINISHED:
                    item = dict(item, who_has=info.who_has)
                self._queue("submit", item, frames)
            else:
                continue
            if key not in self.keys:  # wanted only as an input of a pending task
                inputs_only.append(key)
        if scattered:
            self._send("update-data", items=scattered)
        for key in inputs_only:
            self._queue("release", key)
        self.flush_all()
        for request_id, (_, op, fields) in self.rpcs.items():
            self._send(op, id=request_id, **fields)
        logger.warning("registered again with the center; brought back %d keys", len(order))

    # ================================================================== time

    def tick(self, now: float) -> None:
        """Heartbeats, releases due, the center's silence, fetch timeouts."""
        if self.release_due is not None and now >= self.release_due:
            self._release_now()
        if now - self.last_sent >= self.heartbeat_interval:
            self._send("heartbeat")
        if now - self.last_heard > self.reconnect_deadline and self.welcomed:
            self._fail_everything(ConnectionError(
                f"the center has been silent for {now - self.last_heard:.0f}s"))
            self.last_heard = now
        if now < self._next_timeout_check:  # fetch timeouts are seconds long: scanning
            return                          # the requests at every message is waste
        self._next_timeout_check = now + self.heartbeat_interval
        for request_id, fetch in list(self.fetches.items()):
            if fetch.deadline < now and self.fetches.pop(request_id, None) is not None:
                logger.warning("worker %s did not answer for %d keys; trying others",
                               fetch.address, len(fetch.keys))
                self._fetch(fetch.gather, fetch.keys, now)

    def next_due(self) -> float | None:
        """When releases, or submits held for their answers (see holds), are due."""
        due = self.release_due
        if self._unsent_direct and (due is None or self._unsent_direct_due < due):
            due = self._unsent_direct_due
        return due

    # ================================================================== output

    def _release_later(self, key: str, now: float | None) -> None:
        """Release ``key`` with others, within RELEASE_DELAY."""
        if self.release_due is None:
            self.release_due = (self.last_sent if now is None else now) + RELEASE_DELAY
        self._releasing[key] = None
        if len(self._releasing) >= SUBMIT_BATCH:
            self._release_now()

    def _release_now(self) -> None:
        for key in self._releasing:
            self._queue("release", key)
        self._releasing.clear()
        self.release_due = None

    def _queue(self, op: str, item: Any, frames: list = ()) -> None:
        """Queue an item for the center, merged with the last message if it is alike
        (up to SUBMIT_BATCH items, and half the center's message size limit)."""
        if op == "submit" and item["key"] in self._releasing:
            self._release_now()  # submitted again: the center must see the release first
        size = serialize.frames_nbytes(frames) if frames else 0
        if self._outgoing and self._outgoing[-1][0] == op:
            last = self._outgoing[-1]
            if len(last[1]) < SUBMIT_BATCH and last[3] + size < self.max_message_size // 2:
                last[1].append(item)
                last[2].extend(frames)
                last[3] += size
                return
        self._outgoing.append([op, [item], list(frames), size])

    def holds(self, now: float) -> bool:
        """Whether all there is to send is submits of direct tasks, which may
        wait (RELEASE_DELAY at most from the first) to go to the center in one
        message: the worker's answers come meanwhile, and the submits say so
        (direct_answered), so the center need not send those results again.
        Its copy of the task is not needed sooner: the worker's reports wait
        for it there. Not for a task that waits on the center's word."""
        outgoing = self._outgoing
        return bool(self._unsent_direct) and now < self._unsent_direct_due and \
            len(outgoing) == 1 and len(outgoing[0][1]) == len(self._unsent_direct)

    def flush(self, now: float) -> None:
        """Move what is queued for the center to :attr:`to_center`, unless it may wait."""
        if self._outgoing and not self.holds(now):
            self.flush_all()

    def flush_all(self) -> None:
        self._unsent_direct.clear()
        keys = self.keys
        for op, items, frames, _ in self._outgoing:
            if op == "submit":
                seq = next(self._submit_seqs)
                self._send("submit", frames, tasks=items, seq=seq)
                for item in items:
                    info = keys.get(item["key"])
                    if info is not None:
                        info.since = seq
            else:  # release
                self._send(op, keys=items)
        self._outgoing.clear()

    def _send(self, op: str, frames: list | None = None, **fields: Any) -> None:
        if self._releasing and op not in _UNORDERED:
            # Scattered data, requests and closing see our releases done first.
            self._release_now()
            self.flush_all()
        self.to_center.append((op, fields, frames or []))

    def sent(self, now: float) -> None:
        """The shell sent :attr:`to_center` (for the heartbeat's timing)."""
        self.last_sent = now

    def _fail_everything(self, error: BaseException, cancel: bool = False) -> None:
        """No answer will come: end every wait with ``error``; with ``cancel``,
        pending futures are cancelled instead (the executor shut down)."""
        rpcs, self.rpcs = self.rpcs, {}
        for result, _, _ in rpcs.values():
            if callable(result):
                result(None, error)
            elif not result.done():
                result.set_exception(error)
        for fetch in list(self.fetches.values()):
            self._finish_gather(fetch.gather, error)
        for waiting in list(self.awaiting.values()):
            for gather in list(waiting):
                self._finish_gather(gather, error)
        requests, self.worker_requests = self.worker_requests, {}
        for _, _, failed in requests.values():
            failed(error)
        for info in self.keys.values():
            if info.status == PENDING:
                for future in info.live_futures():
                    if cancel and not future.running():  # (a PoolExecutor's sent: it ran)
                        future._set_cancelled()
                    else:
                        future._set_error(error)


def _fail_future(future: Any, exception: BaseException) -> None:
    if isinstance(exception, FutureLostError):
        future._set_lost(exception)
    else:
        future._set_error(exception)
