"""A worker's task bookkeeping as a state machine with no I/O.

The center sends tasks (``compute``); a task whose inputs are held by other
workers first fetches them, batched per peer, straight from those peers; then
it waits for a free thread, runs, and its result stays here in :attr:`data`
until the center releases it. The worker's shell feeds events in and carries
out what this class asks for:

- :attr:`to_center`: ``(report, frames)`` for the center: a report is an
  item of a batched op (:class:`~zfutures.messages.DoneItem`,
  :class:`~zfutures.messages.FailedItem`, :class:`~zfutures.messages.KeyAdded`,
  which the shell gathers into one ``task-finished``, ``task-erred`` or
  ``keys-added``), or a message of its own (``TaskSeceded``, ``MissingData``,
  ...); ``frames`` are its payload (a result, an exception), none for most;
- :attr:`to_execute`: :class:`Task` objects to hand to a task thread, with
  their inputs already in :attr:`data`;
- :attr:`to_fetch`: ``(request id, peer address, keys)`` data requests;
- :attr:`to_clients`: ``(client, DirectResult, frames)``, the small results
  of tasks a client sent straight here (:meth:`WorkerState.run_direct`), for
  the data server to send back to that client;
- :attr:`stored`: ``(client, DataStored)`` answers to the data clients put
  here (:meth:`WorkerState.put_data`), for the data server to send.

Which peer is asked for which input, and when, is planned by
:class:`~zfutures.worker_fetch.Fetches`; when reports go, which task runs on
the loop thread, when to pause for memory and when a leaving worker may
stop, by its base class :class:`~zfutures.worker_policy.WorkerPolicies`;
when data clients put here is stored, by
:class:`~zfutures.worker_scatter.Scatters`.

A task here goes ``fetching`` (inputs missing) → ``ready`` (waits for a
thread) → ``executing`` → done (reported and removed); between the first two
it goes ``behind`` while an earlier run of its key, released but of another
call, still holds a thread (see :meth:`WorkerState.compute`), and between the
last two ``loading`` while inputs it found on disk are read back (see
worker_spilling.py). Time comes in as
an argument, so fetch timeouts are tested without sleeping.
"""
from __future__ import annotations

import heapq
import itertools
from typing import Any, Union

from .memory_thresholds import MemoryThresholds
from .messages import (
    AcquireItem,
    ComputeItem,
    DataStored,
    DirectResult,
    DoneItem,
    DropItem,
    FailedItem,
    KeyAdded,
    MissingData,
    Paused,
    Retire,
    RunTask,
    Sync,
    TaskAccepted,
    TaskRefused,
    TaskSeceded,
)
from .protocol import Frames, same_call
from .worker_fetch import Fetch, Fetches, Request
from .worker_policy import WorkerPolicies
from .worker_scatter import Put, Scatters, Values
from .worker_spilling import WorkerSpilling

FETCHING, BEHIND, READY, LOADING, EXECUTING = "fetching", "behind", "ready", "loading", "executing"

#: A report for the center, and its payload frames: an item the shell
#: batches with others of its class, or a message sent as it is.
Report = tuple[Union[DoneItem, FailedItem, KeyAdded, TaskSeceded, TaskAccepted, TaskRefused,
                     MissingData, Sync, Paused, Retire], Frames]

#: Short tasks are handed to the task threads a few at a time, up to about this
#: many seconds of work per thread (at most MAX_HANDED_AHEAD tasks), so a
#: thread runs them back to back and their results go out in one message,
#: rather than one thread handoff and one message per task.
HAND_AHEAD_TIME = 0.002
MAX_HANDED_AHEAD = 8

#: Tasks whose inputs are on disk, and may not be read back yet, looked at
#: per event at most: the rest of the queue waits for the next.
MAX_SET_ASIDE = 16

#: How long (seconds) a worker refuses a direct run the center gave up on, in
#: case the client's message comes after all (see WorkerState.drop_direct).
DROPPED_DIRECT_KEPT = 60.0



class Task:
    """A task this worker was asked to compute."""

    __slots__ = ("key", "deps", "priority", "payload", "state", "missing", "order", "send_result",
                 "run", "direct", "reply_to")

    def __init__(self, key: str, deps: dict[str, list[str]], priority: int, payload: Frames,
                 order: int, send_result: bool = False, run: int = 0):
        self.key = key
        self.deps = deps          # input key -> addresses of workers holding it
        self.priority = priority
        self.payload = payload    # opaque frames: the pickled call
        self.state = FETCHING
        self.missing: set[str] = set()
        self.order = order
        self.send_result = send_result  # a client waits: send a small result along
        self.run = run            # the center's id for this assignment; reports carry it
        self.direct = False       # run is a client's id: it sent the task straight here
        self.reply_to: tuple[bytes, int] | None = None  # (client, its run): answer it too

    def __lt__(self, other: Task) -> bool:  # for the ready heap: priority, then order
        return (-self.priority, self.order) < (-other.priority, other.order)

    def __repr__(self) -> str:
        return f"<Task {self.key!r} {self.state}>"


class WorkerState(WorkerPolicies, WorkerSpilling):
    """The data and the tasks of one worker.

    >>> w = WorkerState("tcp://127.0.0.1:9001", nthreads=1)
    >>> w.compute(ComputeItem("y", {"x": ["tcp://127.0.0.1:9002"]}, run=1), [b"..."], now=0.0)
    >>> w.to_fetch
    [(1, 'tcp://127.0.0.1:9002', ['x'])]
    """

    def __init__(self, address: str, nthreads: int, fetch_timeout: float = 10.0,
                 memory_limit: int = 0, retire_timeout: float = 10.0,
                 memory_thresholds: MemoryThresholds | None = None):
        WorkerPolicies.__init__(self, memory_limit, retire_timeout)
        WorkerSpilling.__init__(self, memory_limit, memory_thresholds)  # data, nbytes
        self.address = address
        self.nthreads = nthreads
        self.tasks: dict[str, Task] = {}
        self.ready: list[Task] = []
        self.executing: set[str] = set()  # handed to a task thread (running, or next)
        self.task_duration = 0.01  # a moving average, seconds
        self.seceded: set[str] = set()  # running, but gave their thread slot back
        # Released while running: the thread stays busy, the result will be dropped
        # (unless the center asks for the same call of the key before it comes).
        # At most one run of a key is on a thread: this one, if here.
        self.released_running: dict[str, Task] = {}
        # Inputs fetched from peers, and the requests out for them.
        self.fetching = Fetches(address, fetch_timeout, self._fetch_exhausted)
        # Tasks sent ahead, waiting for inputs being computed here: input -> tasks.
        self.local_waiters: dict[str, set[str]] = {}
        self.to_center: list[Report] = []
        self.to_execute: list[Task] = []
        self.to_fetch: list[Request] = []
        self.to_clients: list[tuple[bytes, DirectResult, Frames]] = []
        # Data clients put here that waits for the center (see put_data).
        self.scatters = Scatters()
        self.stored: list[tuple[bytes, DataStored]] = []
        # Direct tasks the center has not heard about from us yet: key -> run
        # (see check_timeouts).
        self.unannounced: dict[str, int] = {}
        self.paused = False  # short of memory: start no new task
        self.closing = False  # leaving: take no task from a client, hold no report back
        # Direct runs the center gave up waiting for (see drop_direct):
        # key -> (run, when), kept DROPPED_DIRECT_KEPT seconds.
        self.dropped_direct: dict[str, tuple[int, float]] = {}
        # A finished task had dependents sent ahead to wait here: the center
        # should hear at once, to send the links after them.
        self.report_now = False
        # Wall clock minus this state's clock (``now``): transfers are
        # reported in wall-clock time, as task runs are (the shell sets it).
        self.wall_offset = 0.0
        self._order = itertools.count()

    # ------------------------------------------------------------------ events

    def compute(self, item: ComputeItem, payload: Frames, now: float) -> None:
        """The center asks for ``item.key``, the call ``payload``; its inputs
        are on the workers in ``item.deps``.

        ``item.run`` names this assignment: the reports on it carry it back, so
        the center can tell them from those of an earlier run of the same key.

        A run of ``key`` released while it runs answers this assignment if
        it is the same call (``payload``): a key a client let go of and asked
        for again. A key the client chose may name another call this time;
        this one then waits ``behind`` the old run until its thread lets go
        of the key (a key's reports name no thread), and the old result is
        dropped.
        """
        key, run = item.key, item.run
        if key in self.nbytes:  # already here (computed before a reconnect): just say so
            self.to_center.append((DoneItem(key, self.nbytes[key], run), []))
            return
        task = self.tasks.get(key)
        if task is not None and not same_call(task.payload, payload):
            # Another call of a key still here from an assignment the center
            # gave up on (its release may be on its way, behind this message):
            # that run is released now, and this one waits behind it.
            self.release([key])
            task = None
        released = self.released_running.get(key)
        if task is None and released is not None and same_call(released.payload, payload):
            task = self.tasks[key] = self.released_running.pop(key)  # still running
        if task is not None:  # adopt the run under way: it answers this assignment
            task.run = run
            task.direct = False
            task.send_result = task.send_result or item.send_result
            if key in self.seceded:  # the center counts it against our threads else
                self.to_center.append((TaskSeceded(key, run), []))
            return
        deps = item.deps
        task = self.tasks[key] = Task(key, deps, item.priority, payload, next(self._order),
                                      item.send_result, run)
        held = self.nbytes  # (in memory or on disk: read back as the task starts)
        sizes = item.sizes or {}
        for dep, holders in deps.items():
            if dep in held:
                continue
            task.missing.add(dep)
            if dep in self.tasks:  # computed here soon: no need to fetch it
                self.local_waiters.setdefault(dep, set()).add(key)
                continue
            self.fetching.want(dep, holders, key, sizes.get(dep, 0))
        if deps:  # (most tasks have none: no call for them)
            self.to_fetch += self.request_inputs(now)
        if key in self.tasks and not task.missing:  # not given up for want of an input
            self._make_ready(task)
        self._start_tasks()

    def run_direct(self, request: RunTask, payload: Frames, client: bytes, now: float) -> None:
        """``client`` sent ``request.key``, a task without inputs (the call
        ``payload``), straight here, in a ``request.run`` of its own; its
        small result goes back to it (:attr:`to_clients`)
        as well as to the center, whose reports say the run is direct.

        The client told the center too; which of the two hears first is open,
        and the center sorts that out (see DirectRuns.hold_early in
        scheduler/direct.py). What this worker runs, the center counts as the
        task's run (and the client may take the result at once), so the
        decision is made here: the task is
        refused, and the center places it itself, unless it can start now
        (no thread busy or owed, not paused, not leaving), and unless the key
        is here already (the center may have told us to drop that copy, in a
        message still on its way, which cannot be told from one about this
        run), or a released run of another call of it still runs here (see
        compute), or the center gave up on this run (see drop_direct).
        """
        key, run = request.key, request.run
        dropped = self.dropped_direct.get(key)
        released = self.released_running.get(key)
        if key in self.tasks or key in self.nbytes or self.paused or self.closing or \
                self.ready or len(self.executing) >= self.nthreads or \
                (dropped is not None and dropped[0] == run) or \
                (released is not None and not same_call(released.payload, payload)):
            self.to_center.append((TaskRefused(key, run), []))
            return
        task = self.released_running.pop(key, None)
        if task is None:
            task = Task(key, {}, 0, payload, next(self._order), True, run)
            self._make_ready(task)
        self.tasks[key] = task
        task.run, task.direct, task.send_result, task.reply_to = run, True, True, (client, run)
        self.unannounced[key] = run
        if key in self.seceded:
            self.to_center.append((TaskSeceded(key, run, direct=True), []))
        self._start_tasks()

    def drop_direct(self, item: DropItem, now: float) -> None:
        """The center has not heard of direct run ``item.run`` of ``item.key``
        for seconds.

        If the run came here, its reports are on their way (or its task-accepted
        at the next check_timeouts). If it did not, it is refused now and
        should it come later: the center then places the task itself, and no
        client gets a result from a run the center does not count.
        """
        key, run = item.key, item.run
        task = self.tasks.get(key)
        if (task is not None and task.run == run) or key in self.nbytes:
            return
        self.dropped_direct[key] = (run, now)
        self.to_center.append((TaskRefused(key, run), []))

    def data_received(self, request_id: int, values: dict[str, Any], nbytes: dict[str, int],
                      now: float) -> None:
        """A peer answered request ``request_id`` with ``values`` (what it
        did not send is asked of other holders: see Fetches.received)."""
        request = self.fetching.requests.get(request_id)
        source, start, stop = None, None, now + self.wall_offset
        if request is not None:  # (else it came after its timeout: from whom is unknown)
            source, start = request[0], request[3] + self.wall_offset
        for fetch in self.fetching.received(request_id, values):
            key = fetch.key
            self._keep(key, values[key], nbytes[key])
            # The center tracks every copy: for locality, and so it can release
            # this one; and it shows the transfer to watchers.
            self.to_center.append((KeyAdded(key, nbytes[key], source, start, stop), []))
            for task_key in fetch.waiting_tasks:
                task = self.tasks.get(task_key)
                if task is not None:
                    task.missing.discard(key)
                    if not task.missing and task.state == FETCHING:
                        self._make_ready(task)
        self.to_fetch += self.request_inputs(now)
        self._start_tasks()

    def extend_request(self, request_id: int, until: float) -> None:
        """A peer answered ``request_id`` and its data is still to be read
        from that peer's memory: wait for it until ``until``."""
        self.fetching.extend(request_id, until)

    def peer_left(self, address: str, now: float) -> None:
        """The worker at ``address`` left the cluster or died: what was asked
        of it is asked of the next holder now (or reported missing), rather
        than after the fetch timeout, and it is asked nothing more."""
        self.fetching.peer_left(address)
        self.to_fetch += self.request_inputs(now)
        self._start_tasks()  # (inputs asked of it were on their way: room)

    def input_failed(self, key: str, error: Frames) -> None:
        """Input ``key`` can never arrive (its value cannot be pickled): the tasks
        that need it fail with ``error`` (pickled exception frames)."""
        fetch = self.fetching.cancel(key)
        if fetch is not None:
            for task in self._give_up(fetch):
                self.to_center.append((FailedItem(task.key, task.run, len(error)), list(error)))

    def check_timeouts(self, now: float) -> None:
        """Give up on requests past their deadline and ask other holders; tell
        the center of direct tasks still running (it places again those it
        does not hear of: see Scheduler.sweep_direct)."""
        for key, run in self.unannounced.items():
            task = self.tasks.get(key)
            if task is not None and task.run == run and task.direct:
                self.to_center.append((TaskAccepted(key, run), []))
        self.unannounced.clear()
        for key, (_, when) in list(self.dropped_direct.items()):
            if now - when > DROPPED_DIRECT_KEPT:
                del self.dropped_direct[key]
        self.fetching.expire(now)
        self.to_fetch += self.request_inputs(now)
        self._start_tasks()  # (inputs given up on were on their way: room)

    def task_done(self, key: str, value: Any = None, nbytes: int = 0,
                  duration: float = 0.0, error: Frames | None = None,
                  pickled: Frames | None = None, start: float | None = None,
                  thread: int | None = None) -> None:
        """A task thread finished ``key``, with a value or a pickled ``error``
        (and the value ``pickled`` too, when it is small and a client waits);
        it started at ``start`` (wall clock) on the worker's ``thread``
        (numbered from 0), for the center's task stream."""
        self.executing.discard(key)
        self.seceded.discard(key)
        self._ended(key)
        if error is None:
            self.task_duration = 0.9 * self.task_duration + 0.1 * duration
        if self._released_run_ended(key):  # an unwanted result
            self._start_tasks()
            return
        task = self.tasks.pop(key, None)
        waiters = self.local_waiters.pop(key, ())
        if task is not None:  # (None: given up meanwhile)
            if error is None:
                self._keep(key, value, nbytes)
                frames, answered = pickled or [], False
                if task.reply_to is not None and frames:
                    client, client_run = task.reply_to
                    self.to_clients.append((client, DirectResult(key, client_run, nbytes), frames))
                    frames, answered = [], True  # (its client has it; others fetch it here)
                self.to_center.append((DoneItem(key, nbytes, task.run, len(frames), task.direct,
                                                answered, duration, start, thread), frames))
                if waiters:
                    self.report_now = True
                for waiter_key in waiters:  # sent ahead for this very input
                    waiter = self.tasks.get(waiter_key)
                    if waiter is not None and key in waiter.missing:
                        waiter.missing.discard(key)
                        if not waiter.missing and waiter.state == FETCHING:
                            self._make_ready(waiter)
            else:
                self.to_center.append((FailedItem(key, task.run, len(error), task.direct,
                                                  start, duration, thread), error))
                # (the center errs or takes back the tasks that waited for it)
        self._start_tasks()

    def release(self, keys: list[str]) -> None:
        """The center no longer needs ``keys`` here: drop data and pending work."""
        for key in keys:
            self._forget(key)
            task = self.tasks.get(key)
            if task is None:
                continue
            del self.tasks[key]
            if key in self.loading:
                self._stop_loading(task)
            if task.state == EXECUTING:  # its result will be dropped on arrival
                self.released_running[key] = task
            if task.state == READY:
                self.ready.remove(task)
                heapq.heapify(self.ready)
                self._inputs_done(key)  # (pinned if read back from disk for it)
            for dep in task.missing:
                waiting_here = self.local_waiters.get(dep)
                if waiting_here is not None:
                    waiting_here.discard(key)
            self.fetching.unwant(task.missing, key)

    def acquire(self, item: AcquireItem, now: float) -> None:
        """Copy ``item.key`` here from ``item.holders`` (a worker that leaves
        hands it on)."""
        key = item.key
        if key in self.nbytes:
            self.to_center.append((KeyAdded(key, self.nbytes[key]), []))
            return
        self.fetching.want(key, item.holders)
        self.to_fetch += self.request_inputs(now)

    def task_skipped(self, key: str) -> None:
        """A task thread did not start ``key``, released while it waited in line."""
        self.executing.discard(key)
        self._ended(key)
        self._released_run_ended(key)
        self._start_tasks()

    def forget_queue(self) -> None:
        """The center lost track of this worker's tasks (it restarted, or gave up
        on us), and will send again those still wanted: drop the tasks that have
        not started. Running ones finish and report; the center takes their
        results if someone still wants them."""
        for key, task in list(self.tasks.items()):
            if task.state != EXECUTING:
                del self.tasks[key]
                if task.state == READY:
                    self._inputs_done(key)  # (pinned if read back from disk for it)
        self.ready.clear()
        self.fetching.clear()
        self.local_waiters.clear()
        self._forget_loading()
        # What the center said before can no longer come: the puts that wait are stored.
        for put in self.scatters.take_waiting():
            self._store(put)

    def secede(self, key: str) -> None:
        """Task ``key`` waits on other tasks: its slot goes to the next ready
        task, and the center hears that the run holds no thread of ours (it
        would count it against our threads else)."""
        if key not in self.executing:
            return
        self.executing.discard(key)
        self.seceded.add(key)
        if self._expecting:  # (it waits on others: they may need the room)
            self._reserved -= self._expecting.pop(key, 0)
        self._start_tasks()
        task = self.tasks.get(key)
        # (a released run tells nothing: a later run of the key, if any, is not it)
        if task is not None and key not in self.released_running:
            self.to_center.append((TaskSeceded(key, task.run, task.direct), []))

    def put_data(self, client: bytes, request_id: int, values: Values,
                 failed: dict[str, str]) -> None:
        """``client`` scatters ``values`` here (key -> (value, nbytes)) in its
        request ``request_id``; ``failed``: keys whose values did not load, and
        why. The answer goes to :attr:`stored`, at once, or for keys held here
        already once the center answers their ``sync`` (see worker_scatter.py)."""
        put = Put(client, request_id, values, failed)
        held = self.scatters.put(put, self.nbytes)
        if held:
            self.to_center.append((Sync(held), []))
        else:
            self._store(put)

    def synced(self, keys: list[str]) -> None:
        """The center answered a sync of ``keys``: data that waited for it is
        stored (see put_data)."""
        for put in self.scatters.synced(keys):
            self._store(put)

    # ------------------------------------------------------------------ internals

    def _fetch_exhausted(self, fetch: Fetch) -> None:
        """No holder of an input is left to ask: the tasks that need it go back
        to the center, saying which holders failed (others may have a copy by now)."""
        for task in self._give_up(fetch):
            self.to_center.append((MissingData(task.key, [fetch.key], task.run,
                                               list(fetch.tried)), []))

    def _give_up(self, fetch: Fetch) -> list[Task]:
        """An input is fetched no more: drop the tasks waiting for it and return
        them. They wait for their other inputs no more either; those already
        asked for still come, should the center send the tasks here again."""
        dropped = []
        for task_key in fetch.waiting_tasks:
            task = self.tasks.pop(task_key, None)
            if task is not None:
                dropped.append(task)
                self.fetching.unwant(task.missing, task_key, keep_asked=True)
        return dropped

    def _store(self, put: Put) -> None:
        """Store the data a client put here, and answer it."""
        for key, (value, size) in put.values.items():
            self._keep(key, value, size)
        self.stored.append((put.client, DataStored(
            put.request_id, {key: size for key, (_, size) in put.values.items()},
            put.failed or None)))

    def _make_ready(self, task: Task) -> None:
        if task.key in self.released_running:  # another call's run still has the key
            task.state = BEHIND
            return
        task.state = READY
        heapq.heappush(self.ready, task)

    def _released_run_ended(self, key: str) -> bool:
        """A thread is done with ``key`` (ran it or skipped it): if that was a
        released run, the task behind it, if any, may start. Whether it was."""
        if self.released_running.pop(key, None) is None:
            return False
        behind = self.tasks.get(key)
        if behind is None:
            self.local_waiters.pop(key, None)  # (what waited here for it was released too)
        elif behind.state == BEHIND:
            self._make_ready(behind)
        return True

    def _start_tasks(self) -> None:
        ahead = min(MAX_HANDED_AHEAD, int(HAND_AHEAD_TIME / max(self.task_duration, 1e-9)))
        limit = self.nthreads * (1 + ahead)
        later: list[Task] = []  # (inputs on disk, and no room to read them back yet)
        while self.ready and len(self.executing) < limit and not self.paused:
            if self._holding():  # (until what is on its way lands: see WorkerSpilling)
                break
            task = heapq.heappop(self.ready)
            if task.deps and any(dep not in self.data for dep in task.deps) and \
                    not self._may_load(task):
                later.append(task)
                if len(later) >= MAX_SET_ASIDE:  # (no rescan of a long queue per event)
                    break
                continue
            if not self.inputs_ready(task):
                task.state = LOADING  # (inputs from disk, or gone: see WorkerSpilling)
                continue
            if self.memory.memory_limit:
                need = self._room_to_run(task)
                if need is None:
                    later.append(task)  # (its inputs stay pinned: it goes next)
                    break
                if need:
                    self._started(task, need)
            task.state = EXECUTING
            self.executing.add(task.key)
            self.to_execute.append(task)
        for task in later:
            heapq.heappush(self.ready, task)

    def inputs_of(self, task: Task) -> dict[str, Any]:
        """The values of a task's inputs, to pass along with it to its thread."""
        data = self.data
        return {dep: data[dep] for dep in task.deps}
