"""The center's scheduler: the task graph as a state machine with no I/O.

Every public method takes one event (a client submitted tasks, a worker
finished one, a worker was lost, ...) and queues the messages it causes in an
:class:`Outbox`; the center's shell sends them after each burst of events, so
messages to the same peer are batched. Nothing here touches a socket, a clock
or a thread, so every path can be tested directly. A task's states and the
changes between them: see :mod:`.states`.

A task is *wanted* while a client holds a future for it or a dependent still
waits for it; a task that is not wanted is released, and a released task that
no dependent refers to is forgotten.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import pickle
import random
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from .. import errors
from ..errors import FutureLostError
from .outbox import Outbox
from .records import NO_TASKS as _NO_TASKS
from .records import ClientRecord, TaskState, WorkerRecord
from .records import is_direct as _is_direct
from .records import with_task as _with
from .states import (
    ERRED,
    FLIGHT_STEP,
    IN_FLIGHT,
    MEMORY,
    PROCESSING,
    READY,
    RELEASED,
    WAITING,
    IllegalTransition,
)

logger = logging.getLogger(__name__)

#: Assumed network bandwidth, bytes/s, to weigh moving data against waiting.
BANDWIDTH = 500e6
#: Roughly how long a result takes to reach the center and the next task to
#: reach the worker, in seconds: a worker is sent enough short tasks ahead to
#: stay busy meanwhile, and only a few long ones, so the rest stays here, where
#: any worker that frees up can take it. Durations are measured per task group
#: (a task's key up to its last "-": its function's name); a task of a group
#: not timed yet counts as a round trip, so none is sent beyond a worker's
#: capacity until one has been.
ROUND_TRIP = 0.002
#: The most tasks queued ahead per thread, however short they are.
MAX_AHEAD_PER_THREAD = 50
#: Task groups whose durations are kept, the most recently timed: a key
#: without "-" is a group of its own, so a long-lived center that runs
#: chosen keys would otherwise keep one figure per key it ever ran. A group
#: forgotten counts as ROUND_TRIP again until timed anew.
MAX_GROUPS = 10_000
#: Sizes reported by workers are capped here (a petabyte), so that sums of
#: them always fit in a message.
MAX_NBYTES = 2**50


def _frames_differ(a: list, b: list) -> bool:
    """Whether two payloads (lists of frames) hold different bytes."""
    return len(a) != len(b) or any(bytes(x) != bytes(y) for x, y in zip(a, b))


def _pickled_error(exc: BaseException) -> list:
    """Frames of an error made by the center itself (never user payload)."""
    return [pickle.dumps((exc, ""), protocol=5)]


class Scheduler:
    """The task graph and the scheduling policy of one center.

    Parameters
    ----------
    allowed_failures
        How many workers may die while running a task before it errs with
        :class:`~zfutures.errors.KilledWorker`.
    extra_queue
        How many tasks beyond its thread count a worker is sent ahead at the
        least, so it never idles while the next task travels; more when tasks
        are short (see ROUND_TRIP). The rest waits here, where a worker that
        joins later can take it.
    collect_limit
        The most tasks one event looks at to release or forget (None: all).
        The rest waits for :meth:`collect_garbage`, which the center calls
        between its turns, so that a client letting go of 300,000 keys at once
        (1.4 s of work) does not keep it from its heartbeats meanwhile. A task
        that waits so is wanted again as usual, and then stays.

    >>> s = Scheduler()
    >>> s.add_worker(b"w1", "tcp://127.0.0.1:9000", "w1", nthreads=1)
    >>> s.add_client(b"c1", "me")
    >>> s.submit(b"c1", [{"key": "x", "deps": [], "priority": 0, "nframes": 1}], [b"..."])
    >>> s.tasks["x"].state
    'processing'
    """

    def __init__(self, allowed_failures: int = 3, extra_queue: int = 2,
                 recovering: bool = False, collect_limit: int | None = None):
        self.allowed_failures = allowed_failures
        self.collect_limit = collect_limit
        self.extra_queue = extra_queue
        self.tasks: dict[str, TaskState] = {}
        self.workers: dict[bytes, WorkerRecord] = {}
        self.workers_by_address: dict[str, WorkerRecord] = {}
        self.clients: dict[bytes, ClientRecord] = {}
        # Heap of (priority, task): tuples compare in C, far faster than __lt__.
        self.ready: list[tuple[tuple, TaskState]] = []
        self.with_room: set[WorkerRecord] = set()
        self.affine = 0  # ready tasks kept in workers' ready_here heaps
        # Ready tasks to take out of their heaps, all in one pass per heap, before
        # the heaps are next read or pushed to (see _remove_ready).
        self._unready: set[TaskState] = set()
        self.outbox = Outbox()
        # Task group -> seconds, measured; the MAX_GROUPS timed last (see _timed).
        self.durations: OrderedDict[str, float] = OrderedDict()
        self._order = itertools.count()
        # Run ids, from a random start: a worker's report naming a run of this
        # center's is told from one of a run a previous center assigned.
        self._first_run = self._next_run = random.getrandbits(62)
        self._maybe_unwanted: list[TaskState] = []
        # Recovery, after the center (re)starts: workers come back holding keys
        # this center never saw, and clients submit those keys again. Until
        # end_recovery(), such keys wait unclaimed (key -> holder -> nbytes), and a
        # key a client says is held by a worker that has not come back yet waits
        # for it (key -> addresses) rather than being recomputed.
        self.recovering = recovering
        self.unclaimed: dict[str, dict[WorkerRecord, int]] = {}
        self.expected: dict[str, set[str]] = {}
        # Tasks clients sent straight to workers (see submit): those the worker
        # has not confirmed yet (task -> generation), and the workers' reports
        # that came before the client's submit (key -> [(generation, worker
        # ident, method, args)]), and the direct runs released before their
        # worker reported on them ((key, run) -> generation: see _park).
        # sweep_direct() ages all three.
        self.unconfirmed: dict[TaskState, int] = {}
        self.parked: dict[str, list[tuple[int, bytes, str, tuple]]] = {}
        self.released_direct: dict[tuple[str, int], int] = {}
        self._generation = 0

    # ------------------------------------------------------------------ peers

    def add_client(self, ident: bytes, name: str) -> None:
        if ident not in self.clients:  # a reconnect with the same identity keeps its keys
            self.clients[ident] = ClientRecord(ident, name)

    def remove_client(self, ident: bytes) -> None:
        """A client closed or vanished: it no longer wants any of its keys."""
        client = self.clients.pop(ident, None)
        if client is not None:
            for ts in client.wants:
                ts.who_wants.discard(client)
                self._maybe_unwanted.append(ts)
            client.wants.clear()
        self._settle()

    def add_worker(self, ident: bytes, address: str, name: str, nthreads: int,
                   memory_limit: int = 0, resources: dict | None = None,
                   keys: Mapping[str, int] | Iterable[str] = ()) -> None:
        """A worker registered, possibly already holding ``keys`` (key -> nbytes)."""
        # A worker that registers again (it reconnected, or was restarted on
        # its address) replaces its old self: clients need not hear it left.
        if ident in self.workers:
            self.remove_worker(ident, replaced=True)
        old = self.workers_by_address.get(address)
        if old is not None:
            self.remove_worker(old.ident, replaced=True)
        ws = WorkerRecord(ident, address, name, nthreads, memory_limit, resources)
        self._refresh_capacity(ws)
        self.workers[ident] = ws
        self.workers_by_address[address] = ws
        self.with_room.add(ws)
        if not isinstance(keys, Mapping):
            keys = dict.fromkeys(keys, 0)
        for key, nbytes in keys.items():
            ts = self.tasks.get(key)
            if self._takes_result(ts):  # computed here meanwhile (the center was away)
                self._take_result(ts, ws, nbytes or ts.nbytes)
            elif ts is None and self.recovering:
                self.unclaimed.setdefault(key, {})[ws] = nbytes
            else:
                self.outbox.add(ident, "release-keys", "keys", key)
        if self.expected:  # keys a client expected here that it did not bring back
            for key, addresses in list(self.expected.items()):
                addresses.discard(address)
                if not addresses:
                    del self.expected[key]
                    self._recompute_if_wanted(self.tasks.get(key))
        self._settle()

    def end_recovery(self) -> None:
        """Recovery is over: release unclaimed keys; recompute what never came back."""
        self.recovering = False
        for key, holders in self.unclaimed.items():
            for ws in holders:
                self.outbox.add(ws.ident, "release-keys", "keys", key)
        self.unclaimed.clear()
        expected, self.expected = self.expected, {}
        for key in expected:
            self._recompute_if_wanted(self.tasks.get(key))
        self._settle()

    def _recompute_if_wanted(self, ts: TaskState | None) -> None:
        if ts is not None and ts.state == RELEASED and self._is_wanted(ts):
            self._recompute(ts)

    def _claim(self, ts: TaskState, holders: Iterable[str]) -> None:
        """During recovery, a client brought back ``ts``, last seen on ``holders``:
        take it from the workers that came back with it, or wait for them."""
        for ws, nbytes in self.unclaimed.pop(ts.key, {}).items():
            self._add_holder(ts, ws, nbytes)
        if ts.who_has:
            self._finish(ts)
            return
        absent = {a for a in holders if a not in self.workers_by_address}
        if absent:
            self.expected[ts.key] = absent

    def remove_worker(self, ident: bytes, replaced: bool = False) -> None:
        """A worker left or died: reschedule its tasks, recompute its lost keys.
        ``replaced``: it registers again at the same address, this instant."""
        ws = self.workers.pop(ident, None)
        if ws is None:
            return
        del self.workers_by_address[ws.address]
        self._stop_sending_to(ws)
        if not replaced:  # (calls to it fail at once; fetches from it go elsewhere)
            for peer in [*self.clients.values(), *self.workers.values()]:
                self.outbox.add(peer.ident, "workers-left", "addresses", ws.address)
        for other in self.workers.values():
            if other.moving:  # it may have been copying their keys: plan anew
                self._hand_on(other)
        if self.unclaimed:
            for key, holders in list(self.unclaimed.items()):
                if holders.pop(ws, None) is not None and not holders:
                    del self.unclaimed[key]
        # Only the tasks it was probably running are suspected of killing it; the
        # rest of its queue is innocent and just goes elsewhere.
        by_order, running = self._probably_running(ws)
        for ts in by_order:
            if ts.processing_on is not ws:  # erred meanwhile, with an input it waited for
                continue
            self._unassign(ts)
            if ts not in running:
                self._set_state(ts, WAITING)
                self._try_ready(ts)
                continue
            ts.suspicious += 1
            if ts.suspicious >= self.allowed_failures:
                self._err(ts, _pickled_error(errors.KilledWorker(
                    f"task {ts.key!r} was running on {ts.suspicious} workers that died, "
                    f"the last one {ws.address}")))
            else:
                self._set_state(ts, WAITING)
                self._try_ready(ts)
        lost = []
        for ts in ws.has_what:
            ts.who_has.discard(ws)
            if not ts.who_has and ts.state == MEMORY:
                self._set_state(ts, RELEASED)
                lost.append(ts)
            elif ts.state == MEMORY:  # clients fetch from the holders that remain
                item = {"key": ts.key, "who_has": [w.address for w in ts.who_has],
                        "nbytes": ts.nbytes}
                for client in ts.who_wants:
                    self._tell(client, "key-finished", dict(item))
        ws.has_what.clear()
        for ts in lost:
            if self._is_wanted(ts):
                self._recompute(ts)
        # Dependents that were waiting for lost keys wait again. Those sent
        # elsewhere are fetching a lost key from the dead worker, and would
        # wait out their fetch timeout (then report it missing): they come
        # back, to wait for it like the others.
        for ts in lost:
            for dependent in list(ts.dependents):
                if dependent.state == PROCESSING and ts not in dependent.waiting_on:
                    self._take_back(dependent)
                    self._recall_early(dependent)
                if dependent.state in (WAITING, READY):
                    if dependent.state == READY:
                        self._remove_ready(dependent)
                        self._set_state(dependent, WAITING)
                    dependent.waiting_on = _with(dependent.waiting_on, ts)
        self._settle()

    # ------------------------------------------------------------------ clients' events

    def submit(self, client_ident: bytes, items: list[dict], frames: list,
               seq: int | None = None) -> None:
        """A client submitted tasks: ``items`` as in the ``submit`` message,
        whose ``seq`` the news of them carries back (see ClientRecord.seen)."""
        client = self.clients[client_ident]
        if seq is not None:
            client.seen = seq
        blocks = self._root_blocks(items)
        start = 0
        for index, item in enumerate(items):
            end = start + item["nframes"]
            self._add_task(client, item, frames[start:end], blocks.get(index))
            start = end
        if self.parked:  # the worker's reports on direct tasks came first
            for item in items:
                if "direct_run" in item:
                    for _, ident, method, args in self.parked.pop(item["key"], ()):
                        getattr(self, method)(ident, *args)
        self._settle()

    def _root_blocks(self, items: list[dict]) -> dict[int, WorkerRecord]:
        """Split the new tasks without inputs of one submit into contiguous blocks,
        one per worker, in proportion to its threads: item index -> worker.

        Neighbours in a ``map`` are usually combined later (a tree reduction
        adds x[0] to x[1]); made on the same worker, they are combined there
        without a transfer. A worker that runs out of its block takes the back
        half of the largest other one (see _split_largest_block), so this costs
        no balance. Only for
        tasks of one priority, with no placement of their own, and enough of
        them for blocks of two.
        """
        if len(items) < 4:  # (the common submit of one task: no workers to list)
            return {}
        slots = [ws for ws in self.workers.values() if self._takes_tasks(ws)
                 for _ in range(ws.nthreads)]
        if len(slots) < 2 or len(items) < 2 * len(slots):
            return {}
        roots = [index for index, item in enumerate(items)
                 if not item["deps"] and not item.get("workers")
                 and not item.get("resources") and item["key"] not in self.tasks]
        if len(roots) < 2 * len(slots) or \
                len({items[index]["priority"] for index in roots}) != 1:
            return {}
        return {index: slots[position * len(slots) // len(roots)]
                for position, index in enumerate(roots)}

    def _add_task(self, client: ClientRecord, item: dict, payload: list,
                  affinity: WorkerRecord | None = None) -> None:
        key = item["key"]
        ts = self.tasks.get(key)
        if ts is not None and not self._is_wanted(ts) and payload and \
                ts.payload is not None and _frames_differ(payload, ts.payload):
            # Let go of and not collected yet (see collect_limit), and now the
            # key the caller chose names another call: released first, as it
            # would have been, so that the new call gets its own value, not
            # the old call's. (The same call again keeps the task and its value.)
            self._release(ts)
            ts = self.tasks.get(key)
            if ts is not None and payload:  # (kept for its dependents: released)
                ts.payload = payload
        if ts is not None:  # the same pure call again: one task, one more client
            if ts.payload is None and payload:
                ts.payload = payload
            if ts.direct_run is None and "direct_run" in item:  # (see _runs_direct)
                ts.direct_run = item["direct_run"]
            self._want(ts, client)
            return
        ts = self.tasks[key] = TaskState(
            key, payload, (-item["priority"], next(self._order)), item.get("retries", 0))
        if item.get("workers"):
            ts.restrictions = frozenset(item["workers"])
            ts.loose = bool(item.get("allow_other_workers"))
        if item.get("resources"):
            ts.resources = item["resources"]
        ts.affinity = affinity
        missing = None
        for dep_key in item["deps"]:
            dep = self.tasks.get(dep_key)
            if dep is None:
                missing = dep_key
                continue
            ts.dependencies.append(dep)
            dep.dependents = _with(dep.dependents, ts)
        if missing is not None:
            self._err(ts, _pickled_error(FutureLostError(
                f"task {key!r} depends on {missing!r}, which the center does not know "
                "(released, or lost in a restart)")))
        elif self.recovering and (self.unclaimed or item.get("who_has")):
            # (every center starts out recovering; most submits claim nothing)
            self._claim(ts, item.get("who_has", ()))
        if "direct_run" in item and self._runs_direct(ts, item, client):
            return
        self._want(ts, client)

    def _runs_direct(self, ts: TaskState, item: dict, client: ClientRecord) -> bool:
        """The client sent ``ts`` straight to a worker too (``direct_worker``),
        in a run of its own (``direct_run``): count it as processing there, in
        that run, without sending it. The worker confirms it with its first
        report (see sweep_direct), or refuses it (see task_refused).

        The worker decides whether it runs the task (worker_state.WorkerState.run_direct),
        and the client may take its result at once: so a run on a worker the
        center knows is counted whatever the center thinks of that worker
        (paused, retiring, busy), and is placed again only if the worker
        refuses it or dies. If the worker left, or the key is no longer new,
        the task is placed as usual, and the worker drops any copy; a report
        of the direct run is stale. A client that chose the key itself takes
        the result only once told ``direct-accepted`` (``direct_ack``).
        """
        ts.direct_run = item["direct_run"]
        if ts.state != RELEASED or ts.dependencies or ts.restrictions is not None or \
                ts.resources:
            return False
        ws = self.workers_by_address.get(item.get("direct_worker", ""))
        if ws is None:
            return False
        ts.who_wants.add(client)
        client.wants.add(ts)
        self._occupy(ts, ws)
        ts.run = item["direct_run"]
        if item.get("direct_answered"):
            ts.answered = client
        self.unconfirmed[ts] = self._generation
        if item.get("direct_ack"):
            self._tell(client, "direct-accepted", ts.key, list_field="keys")
        return True

    def release(self, client_ident: bytes, keys: Iterable[str]) -> None:
        """A client dropped its last future for each of ``keys``."""
        client = self.clients.get(client_ident)
        if client is None:
            return
        for key in keys:
            ts = self.tasks.get(key)
            if ts is not None and ts in client.wants:
                client.wants.discard(ts)
                ts.who_wants.discard(client)
                self._maybe_unwanted.append(ts)
        self._settle()

    def update_data(self, client_ident: bytes, items: list[dict],
                    seq: int | None = None) -> None:
        """A client put data on workers itself (scatter): ``{key, nbytes, workers}``,
        in a message numbered ``seq`` with its submits (see ClientRecord.seen).

        During recovery it may also name workers that have not come back yet.
        """
        client = self.clients.get(client_ident)
        if client is None:
            return
        if seq is not None:
            client.seen = seq
        for item in items:
            ts = self.tasks.get(item["key"])
            if ts is None:
                ts = self.tasks[item["key"]] = TaskState(item["key"], None, (0, next(self._order)))
            holders = [self.workers_by_address[a] for a in item["workers"]
                       if a in self.workers_by_address]
            if holders and ts.state in (READY, PROCESSING):  # the data is here: no need
                self._stop_pending_work(ts)
            for ws in holders:
                self._add_holder(ts, ws, item["nbytes"])
            if self.recovering and ts.state != MEMORY:
                self._claim(ts, item["workers"])
            if ts.state != MEMORY and ts.who_has:
                self._finish(ts)
            self._want(ts, client)
        self._settle()

    def who_has(self, keys: Iterable[str]) -> dict[str, list[str]]:
        """Addresses of the workers holding each key (empty when none does)."""
        tasks = self.tasks
        return {key: [ws.address for ws in tasks[key].who_has] if key in tasks else []
                for key in keys}

    def has_what(self) -> dict[str, list[str]]:
        """The keys each worker holds, every worker listed."""
        return {ws.address: [ts.key for ts in ws.has_what] for ws in self.workers.values()}

    # ------------------------------------------------------------------ workers' events

    def task_finished(self, worker_ident: bytes, key: str, nbytes: int,
                      duration: float | None = None, value: list | None = None,
                      run: int | None = None, direct: bool = False) -> None:
        """A worker computed ``key`` and holds its result of ``nbytes``.

        ``value``: the pickled result, when small and sent along for the
        clients waiting for it (see ``inline`` in :meth:`_assign`).
        ``run``: the run id of the compute message the worker answers (None:
        the current one). Only a report of the task's current run on that
        worker counts: an earlier run's report may come after the center told
        the worker to drop the key, so that data may be gone.
        ``direct``: a run a client chose (see _runs_direct).
        """
        if direct and self._park(worker_ident, key, run, "task_finished",
                                 (key, nbytes, duration, value, run, True)):
            return
        ws = self.workers.get(worker_ident)
        if ws is None:
            return
        ts = self.tasks.get(key)
        if ts is None and self.recovering and not self._assigned_here(run):
            # submitted to the center before this one: a client may claim it
            self.unclaimed.setdefault(key, {})[ws] = nbytes
            return
        if ts is None or ts.processing_on is not ws:
            if run is not None and not direct and not self._assigned_here(run) \
                    and self._takes_result(ts):
                # A run a previous center assigned, which this center never told
                # the worker to drop: as for a key a worker registers with.
                # (Not a direct run the center did not count: it may have told
                # the worker to drop that one.)
                self._take_result(ts, ws, nbytes, value)
                self._settle()
            elif ts is None or ws not in ts.who_has:
                # Forgotten, failed, taken back, or run by a worker the center
                # gave up on and done elsewhere since: the worker drops its copy.
                self.outbox.add(ws.ident, "release-keys", "keys", key)
            return
        if run is not None and run != ts.run:
            # An earlier run here, released since and assigned again: the worker
            # reports the current run too (see worker_state.WorkerState.compute).
            return
        self.expected.pop(key, None)
        if duration is not None and 0.0 <= duration < 1e9:  # (NaN fails this too)
            self._timed(ts.group, duration)
        if ts.processing_on is not None:
            self._unassign(ts)
        self._add_holder(ts, ws, nbytes)
        if ts.state != MEMORY:
            self._finish(ts, value)
        if ws.retiring:  # a direct run it finished: hand its result on too
            self._hand_on_key(ws, ts, self._staying())
            self._check_retired(ws)
        self._settle()

    def keys_added(self, worker_ident: bytes, key: str, nbytes: int) -> None:
        """A worker fetched a copy of ``key`` for a task of its own."""
        ws = self.workers.get(worker_ident)
        if ws is None:
            return
        ts = self.tasks.get(key)
        if ts is None or ts.state != MEMORY:
            self.outbox.add(ws.ident, "release-keys", "keys", key)
        else:
            self._add_holder(ts, ws, nbytes)
            for holder in ts.who_has:
                if ts in holder.moving:
                    holder.moving.discard(ts)
                    self._check_retired(holder)

    def retire_worker(self, worker_ident: bytes) -> None:
        """A worker wants to leave: its tasks go elsewhere, and the keys only it
        holds are copied to other workers first, so nothing needs recomputing.
        It is told ``retired`` when it may go. Direct runs stay: the worker
        runs them or refuses them, and hands their results on as they come."""
        ws = self.workers.get(worker_ident)
        if ws is None or ws.retiring:
            return
        ws.retiring = True
        self._stop_sending_to(ws)
        for ts in sorted(ws.processing, key=lambda t: t.priority):
            if ts.processing_on is ws and not _is_direct(ts):  # (else erred meanwhile)
                self._take_back(ts)
                self._try_ready(ts)
        self._hand_on(ws)
        self._settle()

    def _hand_on(self, ws: WorkerRecord) -> None:
        """Have workers that stay copy the wanted keys only ``ws`` holds; tell
        ``ws`` it may go once none is left to copy (or no worker stays)."""
        ws.moving.clear()
        targets = self._staying()
        for ts in ws.has_what:
            self._hand_on_key(ws, ts, targets)
        self._check_retired(ws)

    def _staying(self) -> list[WorkerRecord]:
        """The workers not retiring: those that may take keys on."""
        return [w for w in self.workers.values() if not w.retiring]

    def _hand_on_key(self, ws: WorkerRecord, ts: TaskState,
                     targets: list[WorkerRecord]) -> None:
        """Have one of ``targets`` copy ``ts`` from retiring ``ws``, if wanted
        and only there."""
        if ts.who_has != {ws} or not self._is_wanted(ts):
            return
        if targets:
            target = min(targets, key=lambda w: w.nbytes)
            target.nbytes += ts.nbytes  # counted now, so the next key goes elsewhere
            self.outbox.add(target.ident, "acquire", "tasks",
                            {"key": ts.key, "holders": [ws.address]})
            ws.moving.add(ts)

    def _timed(self, group: str, duration: float) -> None:
        """A task of ``group`` ran for ``duration`` seconds. The table keeps the
        MAX_GROUPS groups timed last, the latest at its end."""
        durations = self.durations
        known = durations.get(group)
        if known is None:
            durations[group] = duration
            if len(durations) > MAX_GROUPS:
                durations.popitem(last=False)
        else:
            durations[group] = 0.8 * known + 0.2 * duration
            durations.move_to_end(group)

    def worker_paused(self, worker_ident: bytes, paused: bool) -> None:
        """A worker's memory crossed its high mark (``paused``) or fell back.

        A paused worker finishes what it runs but starts nothing new; the tasks
        queued on it go back to be placed elsewhere.
        """
        ws = self.workers.get(worker_ident)
        if ws is None or ws.paused == paused:
            return
        ws.paused = paused
        if paused:
            self._stop_sending_to(ws)
            by_order, running = self._probably_running(ws)
            for ts in by_order:  # (a direct run runs, or the worker refuses it)
                if ts not in running and ts.processing_on is ws and not _is_direct(ts):
                    self._take_back(ts)
                    self._try_ready(ts)
        else:
            self._refresh_capacity(ws)
        self._settle()

    @staticmethod
    def _probably_running(ws: WorkerRecord) -> tuple[list[TaskState], set[TaskState]]:
        """``ws``'s tasks by priority, and those it is probably running: a worker
        starts its tasks in priority order as they arrive, so the first that could
        start (not waiting for inputs), one per thread, plus seceded ones."""
        by_order = sorted(ws.processing, key=lambda t: t.priority)
        startable = [ts for ts in by_order if not ts.waiting_on]
        return by_order, set(startable[:ws.nthreads]) | ws.seceded

    def _take_back(self, ts: TaskState) -> None:
        """Take ``ts`` off its worker (which drops it): it waits to be placed anew."""
        self.outbox.add(ts.processing_on.ident, "release-keys", "keys", ts.key)
        self._unassign(ts)
        self._set_state(ts, WAITING)

    def _check_retired(self, ws: WorkerRecord) -> None:
        if ws.retiring and not ws.moving and not any(_is_direct(ts) for ts in ws.processing):
            self.outbox.send(ws.ident, "retired")

    def task_erred(self, worker_ident: bytes, key: str, exception: list,
                   run: int | None = None, direct: bool = False) -> None:
        """A task raised on a worker; ``exception`` is the pickled error, opaque here.
        (``run`` and ``direct``: as for :meth:`task_finished`.)"""
        if direct and self._park(worker_ident, key, run, "task_erred",
                                 (key, exception, run, True)):
            return
        ts = self._current_run(worker_ident, key, run)
        if ts is None:
            return
        ws = ts.processing_on
        self._unassign(ts)
        if ts.retries > 0:
            ts.retries -= 1
            self._recall_early(ts)
            self._set_state(ts, WAITING)
            self._try_ready(ts)
        else:
            self._err(ts, exception)
        self._check_retired(ws)  # (a direct run may have kept it)
        self._settle()

    def task_seceded(self, worker_ident: bytes, key: str, run: int | None = None,
                     direct: bool = False) -> None:
        """A running task waits on other tasks and gave its thread back: the worker
        may take one more task, or a task waiting on tasks would deadlock it."""
        if direct and self._park(worker_ident, key, run, "task_seceded", (key, run, True)):
            return
        ts = self._current_run(worker_ident, key, run)
        if ts is None or ts in ts.processing_on.seceded:
            return
        self.unconfirmed.pop(ts, None)
        ws = ts.processing_on
        ws.seceded.add(ts)
        self._count_out(ws, ts)
        self._refresh_capacity(ws)
        self._settle()

    def task_accepted(self, worker_ident: bytes, key: str, run: int) -> None:
        """A worker runs a task a client sent it straight, in ``run``, and has
        not reported on it yet: it is not to be placed again (see sweep_direct)."""
        if self._park(worker_ident, key, run, "task_accepted", (key, run)):
            return
        ts = self._current_run(worker_ident, key, run)
        if ts is not None:
            self.unconfirmed.pop(ts, None)

    def task_refused(self, worker_ident: bytes, key: str, run: int) -> None:
        """A worker will not run a task a client sent it straight (see
        worker_state.WorkerState.run_direct): it is placed as any other."""
        if self._park(worker_ident, key, run, "task_refused", (key, run)):
            return
        ts = self._current_run(worker_ident, key, run)
        if ts is not None:
            ws = ts.processing_on
            self._take_back(ts)
            self._try_ready(ts)
            self._check_retired(ws)
            self._settle()

    def _park(self, worker_ident: bytes, key: str, run: int | None, method: str,
              args: tuple) -> bool:
        """Keep a worker's report on a direct run the center has not heard of
        from its client yet (the two travel apart); True if kept. The client's
        submit plays it back (see submit); sweep_direct drops it if none comes."""
        ts = self.tasks.get(key)
        if ts is not None and ts.direct_run == run:
            return False
        if self.released_direct and (key, run) in self.released_direct:
            # A run released before its worker reported on it (the client let
            # the key go): the worker was told to drop it, and a later run of
            # the key may be on its way there. Not parked, for the sweep would
            # tell the worker to drop the key again, whichever run it holds then.
            if method != "task_accepted":  # (its last report)
                del self.released_direct[(key, run)]
            return True
        self.parked.setdefault(key, []).append((self._generation, worker_ident, method, args))
        return True

    def sweep_direct(self) -> None:
        """Called every few seconds: a direct task its worker has not confirmed
        since the sweep before last probably never reached it (the worker
        restarted, say); the worker is asked to refuse it (drop-direct, at
        each sweep until it answers), and the task is placed again when it
        does. Not before: had the worker run it, its client may hold the
        result. Reports parked as long are for submits that never came, and
        the results they announced are released."""
        self._generation += 1
        old = self._generation - 1
        for released, generation in list(self.released_direct.items()):
            if generation < old:  # (its report went elsewhere: the worker died, say)
                del self.released_direct[released]
        for ts, generation in self.unconfirmed.items():
            if generation < old and ts.processing_on is not None:
                logger.warning("task %r, sent straight to worker %s, was not confirmed by "
                               "it; asking it to refuse it", ts.key, ts.processing_on.address)
                self.outbox.add(ts.processing_on.ident, "drop-direct", "tasks",
                                {"key": ts.key, "run": ts.run})
        for key, reports in list(self.parked.items()):
            kept = []
            for report in reports:
                generation, ident, method, _ = report
                if generation >= old:
                    kept.append(report)
                    continue
                ws, ts = self.workers.get(ident), self.tasks.get(key)
                if method == "task_finished" and ws is not None and \
                        (ts is None or ws not in ts.who_has):
                    self.outbox.add(ident, "release-keys", "keys", key)
            if kept:
                self.parked[key] = kept
            else:
                del self.parked[key]
        self._settle()

    def missing_data(self, worker_ident: bytes, key: str, missing: Iterable[str],
                     run: int | None = None, tried: Iterable[str] | None = None) -> None:
        """A worker could not fetch ``missing`` inputs of ``key`` from the holders
        it asked, ``tried`` (addresses; None: every holder). Those lose their
        copies; a copy made elsewhere since is kept, and the task placed again."""
        ts = self._current_run(worker_ident, key, run)
        if ts is None:
            return
        self._unassign(ts)
        self._recall_early(ts)
        self._set_state(ts, WAITING)
        for dep_key in missing:
            dep = self.tasks.get(dep_key)
            if dep is None or dep not in ts.dependencies:
                continue
            for holder in list(dep.who_has):  # none of them could give it
                if tried is None or holder.address in tried:
                    self.outbox.add(holder.ident, "release-keys", "keys", dep.key)
                    self._remove_holder(dep, holder)
            if not dep.who_has and dep.state == MEMORY:
                self._set_state(dep, RELEASED)
                self._recompute(dep)
        self._try_ready(ts)
        self._settle()

    def _takes_result(self, ts: TaskState | None) -> bool:
        """Whether a result this center did not ask for (a worker computed it
        while the center was away) is taken for ``ts``: if it is still wanted
        and not done. (A key already in memory keeps its value: a second run of
        an impure task would differ.)"""
        return ts is not None and ts.state not in (ERRED, MEMORY) and self._is_wanted(ts)

    def _take_result(self, ts: TaskState, ws: WorkerRecord, nbytes: int,
                     value: list | None = None) -> None:
        """``ws`` holds ``ts``'s result: pending work on it stops, it is done."""
        if ts.state == PROCESSING:  # (a ready one leaves the queue in _finish)
            self._stop_pending_work(ts)
        self._add_holder(ts, ws, nbytes)
        self.expected.pop(ts.key, None)
        self._finish(ts, value)

    def _assigned_here(self, run: int | None) -> bool:
        """Whether this center assigned ``run`` (to a task it may have forgotten)."""
        return run is not None and self._first_run <= run < self._next_run

    def _current_run(self, worker_ident: bytes, key: str, run: int | None) -> TaskState | None:
        """The task a worker's report is about, if it is running there in that
        run (None: the current run); else None, and the report is stale."""
        ts = self.tasks.get(key)
        ws = self.workers.get(worker_ident)
        if ts is None or ws is None or ts.processing_on is not ws or \
                (run is not None and run != ts.run):
            return None
        return ts

    # ------------------------------------------------------------------ transitions

    def _set_state(self, ts: TaskState, state: str) -> None:
        """The one place a task changes state: refuses a change TRANSITIONS
        does not list; keeps ``waiters`` in step."""
        step = FLIGHT_STEP.get((ts.state, state))
        if step is None:
            raise IllegalTransition(ts.key, ts.state, state)
        ts.state = state
        if step:
            if step < 0:
                for dep in ts.dependencies:
                    if ts in dep.waiters:  # (then a set of its own)
                        dep.waiters.remove(ts)  # type: ignore[attr-defined]
                    self._maybe_unwanted.append(dep)
            else:
                for dep in ts.dependencies:
                    dep.waiters = _with(dep.waiters, ts)

    def _recompute(self, root: TaskState) -> None:
        """Bring a wanted, released task and its released inputs back to memory."""
        stack, revived = [root], []
        while stack:
            ts = stack.pop()
            if ts.state != RELEASED or ts.key in self.expected:
                continue  # (an expected key comes back with its worker)
            if ts.payload is None:  # scattered data: there is nothing to rerun
                self._err(ts, _pickled_error(FutureLostError(
                    f"the data of {ts.key!r} was lost with the worker that held it")))
                continue
            self._set_state(ts, WAITING)
            revived.append(ts)
            stack.extend(dep for dep in ts.dependencies if dep.state == RELEASED)
        for ts in revived:
            self._try_ready(ts)

    def _try_ready(self, ts: TaskState) -> None:
        """A waiting task: note which inputs it still waits for; ready if none."""
        if ts.state != WAITING:
            return
        waiting_on = []
        for dep in ts.dependencies:
            if dep.state == ERRED:
                ts.waiting_on = _NO_TASKS
                self._err(ts, dep.exception)
                return
            if dep.state != MEMORY:
                waiting_on.append(dep)
        ts.waiting_on = set(waiting_on) if waiting_on else _NO_TASKS
        if not waiting_on:
            self._set_state(ts, READY)
            self._push_ready(ts)
        else:
            self._maybe_send_early(ts)

    def _maybe_send_early(self, ts: TaskState) -> None:
        """Send a waiting task ahead to the worker computing all it still waits for
        (its other inputs already there), which starts it as soon as they are done,
        without a round trip through the center: a chain runs at the worker's pace."""
        ws = None
        for dep in ts.waiting_on:
            if dep.state != PROCESSING or (ws is not None and dep.processing_on is not ws):
                return
            ws = dep.processing_on
        if ws not in self.with_room or not all(
                ws in dep.who_has for dep in ts.dependencies if dep not in ts.waiting_on):
            return
        if (ts.restrictions is not None or ts.resources) and not self._may_run(ts, ws):
            return
        self._assign(ts, ws)

    def _recall_early(self, ts: TaskState) -> None:
        """``ts`` no longer runs where it was sent: take back the tasks sent ahead to
        wait for it there (and those waiting for them)."""
        stack = [ts]
        while stack:
            dep = stack.pop()
            for dependent in list(dep.waiters):
                if dependent.state == PROCESSING and dep in dependent.waiting_on:
                    self._take_back(dependent)
                    stack.append(dependent)
        # (each recalled task waits again, and is placed anew once its inputs are)

    def _finish(self, ts: TaskState, value: list | None = None) -> None:
        """``ts`` has just come into memory: tell its clients (with its pickled
        ``value`` when the worker sent it along), wake its dependents."""
        if ts.state == READY:  # e.g. being recomputed when a holder came back
            self._remove_ready(ts)
        self._set_state(ts, MEMORY)
        ts.suspicious = 0
        ts.waiting_on = _NO_TASKS
        item = {"key": ts.key, "who_has": [ws.address for ws in ts.who_has],
                "nbytes": ts.nbytes}
        answered = ts.answered  # (only for the direct run: a later one is news)
        if answered is not None and not _is_direct(ts):
            answered = None
        for client in ts.who_wants:
            if client is answered:
                continue  # (it has the result, from the worker)
            if value:
                self._tell(client, "key-finished", dict(item), value)
            else:
                self._tell(client, "key-finished", item)
        for dependent in ts.waiters:
            waiting_on = dependent.waiting_on
            if ts in waiting_on:  # (then a set of its own)
                waiting_on.remove(ts)  # type: ignore[attr-defined]
                if not waiting_on and dependent.state == WAITING:
                    self._set_state(dependent, READY)
                    self._push_ready(dependent)
        self._maybe_unwanted.append(ts)

    def _err(self, root: TaskState, exception: list) -> None:
        """``root`` failed; so does every dependent on its way to memory."""
        stack = [root]
        while stack:
            ts = stack.pop()
            if ts.state == ERRED:
                continue
            self._stop_pending_work(ts)
            self._set_state(ts, ERRED)
            ts.exception = exception
            ts.waiting_on = _NO_TASKS
            for client in ts.who_wants:
                self._tell(client, "key-erred", {"key": ts.key}, exception)
            stack.extend(d for d in ts.dependents if d.state in IN_FLIGHT)
            self._maybe_unwanted.append(ts)

    def _stop_pending_work(self, ts: TaskState) -> None:
        """Take ``ts`` off the ready queue, or off its worker (which drops it)."""
        if ts.state == READY:
            self._remove_ready(ts)
        if ts.processing_on is not None:
            self.outbox.add(ts.processing_on.ident, "release-keys", "keys", ts.key)
            if _is_direct(ts):  # (its reports may still come: see _park)
                self.released_direct[(ts.key, ts.run)] = self._generation
            self._unassign(ts)
            self._recall_early(ts)  # tasks sent ahead to wait for it there

    def _tell(self, client: ClientRecord, op: str, item: Any, frames: list | None = None,
              list_field: str = "tasks") -> None:
        """Queue news of a key for ``client`` (see ClientRecord.seen)."""
        self.outbox.add(client.ident, op, list_field, item, frames, seen=client.seen)

    def _want(self, ts: TaskState, client: ClientRecord) -> None:
        """``client`` holds a future for ``ts``: tell it what it missed."""
        if client in ts.who_wants:
            return
        ts.who_wants.add(client)
        client.wants.add(ts)
        if ts.state == MEMORY:
            self._tell(client, "key-finished", {
                "key": ts.key, "who_has": [ws.address for ws in ts.who_has],
                "nbytes": ts.nbytes})
        elif ts.state == ERRED:
            self._tell(client, "key-erred", {"key": ts.key}, ts.exception)
        elif ts.state == RELEASED:
            self._recompute(ts)

    @staticmethod
    def _is_wanted(ts: TaskState) -> bool:
        return bool(ts.who_wants or ts.waiters)

    def _collect_garbage(self) -> None:
        """Release tasks nobody wants; forget those nothing refers to any more.

        A worklist rather than recursion, because releasing the end of a long
        chain releases the whole chain.
        """
        stack = self._maybe_unwanted
        left = -1 if self.collect_limit is None else self.collect_limit  # (-1: no end)
        while stack and left:  # (what is left waits for the next event)
            left -= 1
            ts = stack.pop()
            if ts.who_wants or ts.waiters or self.tasks.get(ts.key) is not ts:
                continue
            self._release(ts)

    def _release(self, ts: TaskState) -> None:
        """Release ``ts``, which nobody wants: its work stops, its holders drop
        it, and it is forgotten unless a dependent refers to it (its inputs
        may then be unwanted in turn)."""
        self._stop_pending_work(ts)
        for ws in list(ts.who_has):
            self.outbox.add(ws.ident, "release-keys", "keys", ts.key)
            self._remove_holder(ts, ws)
        if ts.state != RELEASED:
            self._set_state(ts, RELEASED)
            ts.exception = None
            ts.waiting_on = _NO_TASKS
        if not ts.dependents:
            del self.tasks[ts.key]
            for dep in ts.dependencies:
                if ts in dep.dependents:  # (then a set of its own)
                    dep.dependents.remove(ts)  # type: ignore[attr-defined]
                self._maybe_unwanted.append(dep)
            ts.dependencies = []

    @property
    def garbage_pending(self) -> bool:
        """Tasks wait to be released or forgotten (see ``collect_limit``)."""
        return bool(self._maybe_unwanted)

    def collect_garbage(self) -> None:
        """Release and forget more of what earlier events let go of."""
        self._settle()

    def compact(self) -> None:
        """Make the tables of an empty graph anew: emptied dicts and sets keep
        the size they grew to."""
        if not self.tasks:
            self.tasks = {}
            self.ready = []
            self._unready = set()
            self.affine = 0
            for client in self.clients.values():
                client.wants = set()
            for ws in self.workers.values():
                ws.processing, ws.has_what, ws.ready_here = set(), set(), []

    def _settle(self) -> None:
        """After every event: drop what is unwanted, then fill free slots."""
        self._collect_garbage()
        self._dispatch()

    # ------------------------------------------------------------------ placement

    def _add_holder(self, ts: TaskState, ws: WorkerRecord, nbytes: int) -> None:
        nbytes = min(max(nbytes, 0), MAX_NBYTES)  # a peer's figure: keep sums encodable
        ts.nbytes = nbytes
        if ws not in ts.who_has:
            ts.who_has.add(ws)
            ws.has_what.add(ts)
            ws.nbytes += nbytes

    def _remove_holder(self, ts: TaskState, ws: WorkerRecord) -> None:
        ts.who_has.discard(ws)
        if ts in ws.has_what:
            ws.has_what.discard(ts)
            ws.nbytes -= ts.nbytes
        if ts in ws.moving:  # released meanwhile: nothing left to hand on
            ws.moving.discard(ts)
            self._check_retired(ws)

    def _unassign(self, ts: TaskState) -> None:
        ws = ts.processing_on
        ts.processing_on = None
        if self.unconfirmed:
            self.unconfirmed.pop(ts, None)
        ws.processing.discard(ts)
        if ts in ws.seceded:
            ws.seceded.discard(ts)
            self._refresh_capacity(ws)
        else:
            self._count_out(ws, ts)
        if ts.resources:
            for name, amount in ts.resources.items():
                ws.used_resources[name] = ws.used_resources.get(name, 0.0) - amount
        if self._has_room(ws) and self._takes_tasks(ws):
            self.with_room.add(ws)

    def _takes_tasks(self, ws: WorkerRecord) -> bool:
        return ws.ident in self.workers and not ws.retiring and not ws.paused

    def _refresh_capacity(self, ws: WorkerRecord) -> None:
        """How many tasks ``ws`` may always hold: its threads, ``extra_queue``
        more, and its seceded tasks (which hold no thread)."""
        ws.capacity = ws.nthreads + self.extra_queue + len(ws.seceded)
        if self._has_room(ws) and self._takes_tasks(ws):
            self.with_room.add(ws)
        else:
            self.with_room.discard(ws)

    def _has_room(self, ws: WorkerRecord) -> bool:
        """Whether ``ws`` may be sent one more task: below its capacity, or,
        beyond it, while the work it holds is expected to last less than a
        round trip per thread (short tasks keep it busy only if many are
        queued), up to MAX_AHEAD_PER_THREAD.

        Expected durations are per task group, so a map of long tasks after
        many short ones is not sent ahead by the dozen, where a worker that
        turns out slower keeps it while the others idle.
        """
        count = len(ws.processing)
        if count < ws.capacity:
            return True
        return count < ws.capacity + MAX_AHEAD_PER_THREAD * ws.nthreads and \
            self._queued_work(ws) < ROUND_TRIP * ws.nthreads

    def _queued_work(self, ws: WorkerRecord) -> float:
        """Seconds the tasks ``ws`` holds are expected to take, by the latest
        figures of their groups."""
        durations = self.durations
        return sum(count * durations.get(group, ROUND_TRIP)
                   for group, count in ws.queued.items())

    @staticmethod
    def _count_out(ws: WorkerRecord, ts: TaskState) -> None:
        left = ws.queued[ts.group] - 1
        if left:
            ws.queued[ts.group] = left
        else:
            del ws.queued[ts.group]

    def _push_ready(self, ts: TaskState) -> None:
        if self._unready:  # (ts may be among them: out first, then in anew)
            self._purge_ready()
        ws = ts.affinity
        if ws is not None and self._takes_tasks(ws):
            heapq.heappush(ws.ready_here, (ts.priority, ts))
            self.affine += 1
        else:
            ts.affinity = None
            heapq.heappush(self.ready, (ts.priority, ts))

    def _remove_ready(self, ts: TaskState) -> None:
        """Take ready ``ts`` out of its heap, with every other taken out before
        the heaps are next used (_purge_ready): a heap is rebuilt rather than
        kept with tombstones, and a rebuild for each task made a release of
        20,000 ready tasks take 34 s."""
        self._unready.add(ts)

    def _purge_ready(self) -> None:
        gone, self._unready = self._unready, set()
        for ws in {ts.affinity for ts in gone}:  # (the heaps they are in now)
            heap = self.ready if ws is None else ws.ready_here
            size = len(heap)
            heap[:] = [entry for entry in heap if entry[1] not in gone]
            heapq.heapify(heap)
            if ws is not None:
                self.affine -= size - len(heap)
        for ts in gone:
            ts.affinity = None

    def _pop_affine(self, ws: WorkerRecord) -> TaskState:
        ts = heapq.heappop(ws.ready_here)[1]
        self.affine -= 1
        ts.affinity = None
        return ts

    def _split_largest_block(self, thief: WorkerRecord) -> None:
        """``thief`` has room but no block left: it takes the back half of the
        largest block (at least one task) as its own.

        The back, because the owner runs its block from the front: each keeps
        a contiguous run of the map, and neighbours stay together. (Taking the
        owner's next task instead, turn about, split nearly every pair.)
        """
        largest = max(self.workers.values(), key=lambda w: len(w.ready_here))
        entries = sorted(largest.ready_here)
        keep = len(entries) // 2
        largest.ready_here = entries[:keep]  # (sorted: still a heap)
        thief.ready_here = taken = entries[keep:]
        for _, ts in taken:
            ts.affinity = thief

    def _stop_sending_to(self, ws: WorkerRecord) -> None:
        """``ws`` takes no tasks for now: its block waits for any worker."""
        self.with_room.discard(ws)
        for entry in ws.ready_here:
            entry[1].affinity = None
            heapq.heappush(self.ready, entry)
        self.affine -= len(ws.ready_here)
        ws.ready_here = []

    def _dispatch(self) -> None:
        """Send ready tasks, best first, to workers that have room.

        A task no worker with room may run (restricted to busy workers, or
        needing resources in use) waits aside without blocking the others.
        """
        if self._unready:
            self._purge_ready()
        ready, with_room = self.ready, self.with_room
        waiting_aside = []
        while with_room:
            own = None  # the worker with room whose block holds the best task
            if self.affine:
                for ws in with_room:
                    heap = ws.ready_here
                    if heap and (own is None or heap[0] < own.ready_here[0]):
                        own = ws
            if ready and (own is None or ready[0] < own.ready_here[0]):
                entry = heapq.heappop(ready)
                ws = self._choose_worker(entry[1])
                if ws is None:
                    waiting_aside.append(entry)
                else:
                    self._assign(entry[1], ws)
            elif own is not None:
                self._assign(self._pop_affine(own), own)
            elif self.affine:  # room only on workers done with their blocks
                self._split_largest_block(next(iter(with_room)))
            else:
                break
        for entry in waiting_aside:
            heapq.heappush(ready, entry)

    def _choose_worker(self, ts: TaskState) -> WorkerRecord | None:
        """The worker with room where ``ts`` would start soonest, or None.

        Start time is the bytes of inputs it lacks over the bandwidth, plus its
        queued work; so inputs already on a worker pull the task there. Ties go
        to the worker holding fewer MiB, which spreads data out; within a MiB,
        to the same worker each time, which is awake already.
        """
        candidates = self.with_room
        if ts.restrictions is not None or ts.resources:
            candidates = [ws for ws in candidates if self._may_run(ts, ws)]
            if ts.loose and ts.restrictions is not None:
                preferred = [ws for ws in candidates
                             if ws.address in ts.restrictions or ws.name in ts.restrictions]
                candidates = preferred or candidates
        best, best_cost = None, (0.0, 0)
        for ws in candidates:
            cost = self._queued_work(ws) / ws.nthreads
            for dep in ts.dependencies:
                if ws not in dep.who_has:
                    cost += dep.nbytes / BANDWIDTH
            held = ws.nbytes >> 20
            if best is None or (cost, held) < best_cost:
                best, best_cost = ws, (cost, held)
        return best

    @staticmethod
    def _may_run(ts: TaskState, ws: WorkerRecord) -> bool:
        """Whether ``ws`` satisfies the task's worker restrictions and resources now."""
        if ts.restrictions is not None and not ts.loose and \
                ws.address not in ts.restrictions and ws.name not in ts.restrictions:
            return False
        if ts.resources:
            for name, amount in ts.resources.items():
                if ws.used_resources.get(name, 0.0) + amount > ws.resources.get(name, 0.0):
                    return False
        return True

    def _assign(self, ts: TaskState, ws: WorkerRecord) -> None:
        self._occupy(ts, ws)
        deps = {dep.key: [w.address for w in dep.who_has] for dep in ts.dependencies}
        ts.run = self._next_run
        self._next_run += 1
        item = {"key": ts.key, "deps": deps, "priority": -ts.priority[0], "run": ts.run}
        if ts.who_wants:  # a client waits for it: a small result comes back inline
            item["inline"] = True
        self.outbox.add(ws.ident, "compute", "tasks", item, ts.payload)
        for dependent in ts.waiters:  # the next links of a chain may follow it there
            if dependent.state == WAITING and ts in dependent.waiting_on:
                self._maybe_send_early(dependent)

    def _occupy(self, ts: TaskState, ws: WorkerRecord) -> None:
        """``ts`` is processing on ``ws`` from now: count it there."""
        self._set_state(ts, PROCESSING)
        ts.processing_on = ws
        ws.processing.add(ts)
        ws.queued[ts.group] = ws.queued.get(ts.group, 0) + 1
        if ts.resources:
            for name, amount in ts.resources.items():
                ws.used_resources[name] = ws.used_resources.get(name, 0.0) + amount
        if not self._has_room(ws):
            self.with_room.discard(ws)

    # ------------------------------------------------------------------ reports

    def info(self) -> dict:
        """A summary for ``Executor.scheduler_info()``."""
        counts: dict[str, int] = defaultdict(int)
        for ts in self.tasks.values():
            counts[ts.state] += 1
        workers = {
            ws.address: {
                "name": ws.name, "nthreads": ws.nthreads, "memory": min(ws.nbytes, 2**62),
                "memory_limit": ws.memory_limit, "resources": ws.resources,
                "executing": min(len(ws.processing), ws.nthreads),
                "queued": max(0, len(ws.processing) - ws.nthreads),
                "keys": len(ws.has_what),
                "paused": ws.paused,
            }
            for ws in self.workers.values()
        }
        return {"workers": workers, "tasks": dict(counts)}

