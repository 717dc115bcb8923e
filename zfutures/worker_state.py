"""A worker's task bookkeeping as a state machine with no I/O.

The center sends tasks (``compute``); a task whose inputs are held by other
workers first fetches them, batched per peer, straight from those peers; then
it waits for a free thread, runs, and its result stays here in :attr:`data`
until the center releases it. The worker's shell feeds events in and carries
out what this class asks for:

- :attr:`to_center`: ``(op, item, frames)`` reports for the center;
- :attr:`to_execute`: :class:`Task` objects to hand to a task thread, with
  their inputs already in :attr:`data`;
- :attr:`to_fetch`: ``(request id, peer address, keys)`` data requests;
- :attr:`to_clients`: ``(client, key, run, nbytes, frames)`` small results of
  tasks a client sent straight here (:meth:`WorkerState.run_direct`), for
  the data server to send back to that client.

A task here goes ``fetching`` (inputs missing) → ``ready`` (waits for a
thread) → ``executing`` → done (reported and removed); between the first two
it goes ``behind`` while an earlier run of its key, released but of another
call, still holds a thread (see :meth:`WorkerState.compute`). Time comes in as
an argument, so fetch timeouts are tested without sleeping.
"""
from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

FETCHING, BEHIND, READY, EXECUTING = "fetching", "behind", "ready", "executing"

#: Short tasks are handed to the task threads a few at a time, up to about this
#: many seconds of work per thread (at most MAX_HANDED_AHEAD tasks), so a
#: thread runs them back to back and their results go out in one message,
#: rather than one thread handoff and one message per task.
HAND_AHEAD_TIME = 0.002
MAX_HANDED_AHEAD = 8

#: While the task threads have more work, and tasks take less than this many
#: seconds, completions may wait as long (or until HOLD_MAX of them) to go to
#: the center in one message: a map of short tasks then costs the center, and
#: the worker, one message per few tasks instead of one per task. Longer tasks
#: gain nothing from it, and their dependents would start later.
HOLD_REPORTS = 0.001
HOLD_MAX = 64

#: Completions of direct tasks whose clients had their results from here
#: (``answered``) may wait this long, worker idle or not: their clients need
#: nothing more from the center, and the center hears of them in one message
#: every few round trips instead of one each. Woken for each, the center
#: competes with the client and the worker for the CPUs just when the
#: result is on its way. Dependents sent here ahead do not wait for it
#: (report_now), and any other report ends the wait.
HOLD_ANSWERED = 0.01

#: How long (seconds) a worker refuses a direct run the center gave up on, in
#: case the client's message comes after all (see WorkerState.drop_direct).
DROPPED_DIRECT_KEPT = 60.0

#: Shares of the memory limit: above the first a worker starts no new task
#: (the center sends them elsewhere); below the second it resumes. Above the
#: limit itself, its nanny restarts it.
PAUSE_AT, RESUME_AT = 0.8, 0.7


class Task:
    """A task this worker was asked to compute."""

    __slots__ = ("key", "deps", "priority", "payload", "state", "missing", "order", "send_result",
                 "run", "direct", "reply_to")

    def __init__(self, key: str, deps: dict[str, list[str]], priority: int, payload: list,
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


def same_call(payload: list, other: list) -> bool:
    """Whether two tasks' payloads are the same pickled call, byte for byte."""
    return len(payload) == len(other) and \
        all(memoryview(a) == memoryview(b) for a, b in zip(payload, other))


class _Fetch:
    """One input being fetched: the holders not tried yet, those tried, and
    who waits for it."""

    __slots__ = ("key", "holders", "tried", "waiting_tasks", "request")

    def __init__(self, key: str, holders: list[str]):
        self.key = key
        self.holders = holders
        self.tried: list[str] = []
        self.waiting_tasks: set[str] = set()
        self.request: int | None = None


class WorkerState:
    """The data and the tasks of one worker.

    >>> w = WorkerState("tcp://127.0.0.1:9001", nthreads=1)
    >>> w.compute("y", {"x": ["tcp://127.0.0.1:9002"]}, 0, [b"..."], now=0.0)
    >>> w.to_fetch
    [(1, 'tcp://127.0.0.1:9002', ['x'])]
    """

    def __init__(self, address: str, nthreads: int, fetch_timeout: float = 10.0,
                 memory_limit: int = 0, retire_timeout: float = 10.0):
        self.address = address
        self.nthreads = nthreads
        self.fetch_timeout = fetch_timeout
        self.memory_limit = memory_limit  # bytes; 0: none (see memory_measured)
        self.retire_timeout = retire_timeout  # (see leave)
        self.data: dict[str, Any] = {}
        self.nbytes: dict[str, int] = {}
        self.tasks: dict[str, Task] = {}
        self.ready: list[Task] = []
        self.executing: set[str] = set()  # handed to a task thread (running, or next)
        self.task_duration = 0.01  # a moving average, seconds
        self.seceded: set[str] = set()  # running, but gave their thread slot back
        # Released while running: the thread stays busy, the result will be dropped
        # (unless the center asks for the same call of the key before it comes).
        # At most one run of a key is on a thread: this one, if here.
        self.released_running: dict[str, Task] = {}
        self.fetches: dict[str, _Fetch] = {}
        # Tasks sent ahead, waiting for inputs being computed here: input -> tasks.
        self.local_waiters: dict[str, set[str]] = {}
        self.requests: dict[int, tuple[str, list[str], float]] = {}  # id -> peer, keys, deadline
        self.to_center: list[tuple[str, dict, list]] = []
        self.to_execute: list[Task] = []
        self.to_fetch: list[tuple[int, str, list[str]]] = []
        self.to_clients: list[tuple[bytes, str, int, int, list]] = []
        # Direct tasks the center has not heard about from us yet: key -> run
        # (see check_timeouts).
        self.unannounced: dict[str, int] = {}
        self.paused = False  # short of memory: start no new task
        self.closing = False  # leaving: take no task from a client (see run_direct)
        # Direct runs the center gave up waiting for (see drop_direct):
        # key -> (run, when), kept DROPPED_DIRECT_KEPT seconds.
        self.dropped_direct: dict[str, tuple[int, float]] = {}
        # A finished task had dependents sent ahead to wait here: the center
        # should hear at once, to send the links after them.
        self.report_now = False
        # Reports held back a moment to go in one message (see take_reports),
        # since when, and until when at the latest (None: none held).
        self.held: list[tuple[str, dict, list]] = []
        self._held_since: float | None = None
        self.held_until: float | None = None
        self.retire_deadline: float | None = None  # asked the center to take our keys
        self._order = itertools.count()
        self._request_ids = itertools.count(1)

    # ------------------------------------------------------------------ events

    def compute(self, key: str, deps: dict[str, list[str]], priority: int, payload: list,
                now: float, send_result: bool = False, run: int = 0) -> None:
        """The center asks for ``key``; its inputs are on the workers in ``deps``.

        ``run`` names this assignment: the reports on it carry it back, so the
        center can tell them from those of an earlier run of the same key.

        A run of ``key`` released while it runs answers this assignment if
        it is the same call (``payload``): a key a client let go of and asked
        for again. A key the client chose may name another call this time;
        this one then waits ``behind`` the old run until its thread lets go
        of the key (a key's reports name no thread), and the old result is
        dropped.
        """
        if key in self.data:  # already here (computed before a reconnect): just say so
            self.to_center.append(("task-finished", {"key": key, "nbytes": self.nbytes[key],
                                                     "run": run}, []))
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
            task.send_result = task.send_result or send_result
            if key in self.seceded:  # the center counts it against our threads else
                self.to_center.append(("task-seceded", {"key": key, "run": run}, []))
            return
        task = self.tasks[key] = Task(key, deps, priority, payload, next(self._order), send_result,
                                      run)
        plan: dict[str, list[str]] = {}
        for dep, holders in deps.items():
            if dep in self.data:
                continue
            task.missing.add(dep)
            if dep in self.tasks:  # computed here soon: no need to fetch it
                self.local_waiters.setdefault(dep, set()).add(key)
                continue
            fetch = self.fetches.get(dep)
            if fetch is None:
                fetch = self.fetches[dep] = _Fetch(
                    dep, [h for h in holders if h != self.address])
                if self.address in holders:  # the center thinks we hold it: we do not
                    fetch.tried.append(self.address)
                fetch.waiting_tasks.add(key)
                self._plan_fetch(fetch, plan)
            else:
                fetch.waiting_tasks.add(key)
        self._send_requests(plan, now)
        if key in self.tasks and not task.missing:  # not given up for want of an input
            self._make_ready(task)
        self._start_tasks()

    def run_direct(self, key: str, payload: list, run: int, client: bytes,
                   now: float) -> None:
        """``client`` sent ``key``, a task without inputs, straight here, in a
        ``run`` of its own; its small result goes back to it (:attr:`to_clients`)
        as well as to the center, whose reports say the run is direct.

        The client told the center too; which of the two hears first is open,
        and the center sorts that out (see Scheduler._park). What this worker
        runs, the center counts as the task's run (and the client may take
        the result at once), so the decision is made here: the task is
        refused, and the center places it itself, unless it can start now
        (no thread busy or owed, not paused, not leaving), and unless the key
        is here already (the center may have told us to drop that copy, in a
        message still on its way, which cannot be told from one about this
        run), or a released run of another call of it still runs here (see
        compute), or the center gave up on this run (see drop_direct).
        """
        dropped = self.dropped_direct.get(key)
        released = self.released_running.get(key)
        if key in self.tasks or key in self.data or self.paused or self.closing or \
                self.ready or len(self.executing) >= self.nthreads or \
                (dropped is not None and dropped[0] == run) or \
                (released is not None and not same_call(released.payload, payload)):
            self.to_center.append(("task-refused", {"key": key, "run": run}, []))
            return
        task = self.released_running.pop(key, None)
        if task is None:
            task = Task(key, {}, 0, payload, next(self._order), True, run)
            self._make_ready(task)
        self.tasks[key] = task
        task.run, task.direct, task.send_result, task.reply_to = run, True, True, (client, run)
        self.unannounced[key] = run
        if key in self.seceded:
            self.to_center.append(("task-seceded", {"key": key, "run": run, "direct": True},
                                   []))
        self._start_tasks()

    def drop_direct(self, key: str, run: int, now: float) -> None:
        """The center has not heard of direct ``run`` of ``key`` for seconds.

        If the run came here, its reports are on their way (or its task-accepted
        at the next check_timeouts). If it did not, it is refused now and
        should it come later: the center then places the task itself, and no
        client gets a result from a run the center does not count.
        """
        task = self.tasks.get(key)
        if (task is not None and task.run == run) or key in self.data:
            return
        self.dropped_direct[key] = (run, now)
        self.to_center.append(("task-refused", {"key": key, "run": run}, []))

    def data_received(self, request_id: int, values: dict[str, Any], nbytes: dict[str, int],
                      now: float) -> None:
        """A peer answered request ``request_id`` with ``values``."""
        request = self.requests.pop(request_id, None)
        if request is None:  # timed out earlier; keep the data if still useful
            keys = list(values)
        else:
            keys = request[1]
        plan: dict[str, list[str]] = {}
        for key in keys:
            fetch = self.fetches.get(key)
            if fetch is None or (request is not None and fetch.request != request_id):
                if fetch is not None and key in values:
                    self._store_fetched(fetch, key, values[key], nbytes[key])
                continue
            if key in values:
                self._store_fetched(fetch, key, values[key], nbytes[key])
            else:  # the peer no longer has it: try the next holder
                self._plan_fetch(fetch, plan)
        self._send_requests(plan, now)
        self._start_tasks()

    def extend_request(self, request_id: int, until: float) -> None:
        """A peer answered ``request_id`` and its data is still to be read
        from that peer's memory: wait for it until ``until``."""
        request = self.requests.get(request_id)
        if request is not None and request[2] < until:
            self.requests[request_id] = (request[0], request[1], until)

    def peer_left(self, address: str, now: float) -> None:
        """The worker at ``address`` left the cluster or died: what was asked
        of it is asked of the next holder now (or reported missing), rather
        than after the fetch timeout, and it is asked nothing more."""
        for fetch in self.fetches.values():
            if address in fetch.holders:
                fetch.holders.remove(address)
        plan: dict[str, list[str]] = {}
        for request_id, (peer, _, _) in list(self.requests.items()):
            if peer == address:
                self._abandon(request_id, plan)
        self._send_requests(plan, now)

    def input_failed(self, key: str, error: list) -> None:
        """Input ``key`` can never arrive (its value cannot be pickled): the tasks
        that need it fail with ``error`` (pickled exception frames)."""
        fetch = self.fetches.get(key)
        if fetch is not None:
            for task in self._give_up(fetch):
                self.to_center.append(("task-erred", {"key": task.key, "run": task.run},
                                       list(error)))

    def check_timeouts(self, now: float) -> None:
        """Give up on requests past their deadline and ask other holders; tell
        the center of direct tasks still running (it places again those it
        does not hear of: see Scheduler.sweep_direct)."""
        for key, run in self.unannounced.items():
            task = self.tasks.get(key)
            if task is not None and task.run == run and task.direct:
                self.to_center.append(("task-accepted", {"key": key, "run": run}, []))
        self.unannounced.clear()
        for key, (_, when) in list(self.dropped_direct.items()):
            if now - when > DROPPED_DIRECT_KEPT:
                del self.dropped_direct[key]
        plan: dict[str, list[str]] = {}
        for request_id, (peer, keys, deadline) in list(self.requests.items()):
            if deadline > now:
                continue
            logger.warning("no answer from %s for %d keys within %.1fs; trying other holders",
                           peer, len(keys), self.fetch_timeout)
            self._abandon(request_id, plan)
        self._send_requests(plan, now)

    def task_done(self, key: str, value: Any = None, nbytes: int = 0,
                  duration: float = 0.0, error: list | None = None,
                  pickled: list | None = None) -> None:
        """A task thread finished ``key``, with a value or a pickled ``error``
        (and the value ``pickled`` too, when it is small and a client waits)."""
        self.executing.discard(key)
        self.seceded.discard(key)
        if error is None:
            self.task_duration = 0.9 * self.task_duration + 0.1 * duration
        if self._released_run_ended(key):  # an unwanted result
            self._start_tasks()
            return
        task = self.tasks.pop(key, None)
        waiters = self.local_waiters.pop(key, ())
        if task is not None:  # (None: given up meanwhile)
            report = {"key": key, "run": task.run}
            if task.direct:
                report["direct"] = True
            if error is None:
                self.data[key] = value
                self.nbytes[key] = nbytes
                if task.reply_to is not None and pickled:
                    client, client_run = task.reply_to
                    self.to_clients.append((client, key, client_run, nbytes, pickled))
                    pickled = None  # (its client has it; any other fetches it from here)
                    report["answered"] = True
                report["nbytes"], report["duration"] = nbytes, duration
                self.to_center.append(("task-finished", report, pickled or []))
                if waiters:
                    self.report_now = True
                for waiter_key in waiters:  # sent ahead for this very input
                    waiter = self.tasks.get(waiter_key)
                    if waiter is not None and key in waiter.missing:
                        waiter.missing.discard(key)
                        if not waiter.missing and waiter.state == FETCHING:
                            self._make_ready(waiter)
            else:
                self.to_center.append(("task-erred", report, error))
                # (the center errs or takes back the tasks that waited for it)
        self._start_tasks()

    def release(self, keys: list[str]) -> None:
        """The center no longer needs ``keys`` here: drop data and pending work."""
        for key in keys:
            self.data.pop(key, None)
            self.nbytes.pop(key, None)
            task = self.tasks.get(key)
            if task is None:
                continue
            del self.tasks[key]
            if task.state == EXECUTING:  # its result will be dropped on arrival
                self.released_running[key] = task
            if task.state == READY:
                self.ready.remove(task)
                heapq.heapify(self.ready)
            for dep in task.missing:
                waiting_here = self.local_waiters.get(dep)
                if waiting_here is not None:
                    waiting_here.discard(key)
                fetch = self.fetches.get(dep)
                if fetch is not None:
                    fetch.waiting_tasks.discard(key)
                    if not fetch.waiting_tasks:
                        del self.fetches[dep]

    def acquire(self, key: str, holders: list[str], now: float) -> None:
        """Copy ``key`` here from ``holders`` (a worker that leaves hands it on)."""
        if key in self.data:
            self.to_center.append(("keys-added", {"key": key, "nbytes": self.nbytes[key]}, []))
            return
        if key in self.fetches:
            return
        fetch = self.fetches[key] = _Fetch(key, [h for h in holders if h != self.address])
        plan: dict[str, list[str]] = {}
        self._plan_fetch(fetch, plan)
        self._send_requests(plan, now)

    def task_skipped(self, key: str) -> None:
        """A task thread did not start ``key``, released while it waited in line."""
        self.executing.discard(key)
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
        self.ready.clear()
        self.fetches.clear()
        self.requests.clear()
        self.local_waiters.clear()

    def secede(self, key: str) -> int | None:
        """Task ``key`` waits on other tasks: its slot goes to the next ready task.
        Returns the run to tell the center of, or None if it need not hear."""
        if key not in self.executing:
            return None
        self.executing.discard(key)
        self.seceded.add(key)
        self._start_tasks()
        if key in self.released_running:  # (a later run of the key, if any, is not it)
            return None
        task = self.tasks.get(key)
        return None if task is None else task.run

    def add_data(self, key: str, value: Any, nbytes: int) -> None:
        """Data put here directly (scattered, or moved from a leaving worker)."""
        self.data[key] = value
        self.nbytes[key] = nbytes

    # ------------------------------------------------------------------ policies

    def report_hold(self, held: Sequence[tuple[str, dict, list]]) -> float:
        """How long the reports in ``to_center``, with those ``held`` back
        already, may wait (from the first held) to go in one message: 0.0 if
        they go now.

        Only completions wait: those of direct tasks whose clients have their
        results HOLD_ANSWERED; those of other short tasks HOLD_REPORTS, and
        only while a task thread has more to run. A worker with nothing else
        to run, or whose finished task has dependents waiting here (the
        center sends the next links of a chain when it hears), reports at once.
        """
        reports = self.to_center
        if self.report_now or len(held) + len(reports) >= HOLD_MAX or \
                not all(op == "task-finished" for op, _, _ in reports):
            return 0.0
        if all(item.get("answered") for _, item, _ in itertools.chain(held, reports)):
            return HOLD_ANSWERED
        if self.executing and self.task_duration < HOLD_REPORTS:
            return HOLD_REPORTS
        return 0.0

    def take_reports(self, now: float) -> list[tuple[str, dict, list]]:
        """The reports to send the center now, those held back first: none
        while they may still wait (until :attr:`held_until`; see
        :meth:`report_hold`). A worker that is leaving holds nothing back."""
        since = now if self._held_since is None else self._held_since
        until = since + (0.0 if self.closing else self.report_hold(self.held))
        if now < until:
            self.held.extend(self.to_center)
            self.to_center.clear()
            self._held_since, self.held_until = since, until
            return []
        reports, self.to_center = self.to_center, []
        if self.held:
            reports, self.held = self.held + reports, []
            self._held_since = self.held_until = None
        self.report_now = False
        return reports

    def take_loop_run(self, loop_free: bool) -> Task | None:
        """The task of :attr:`to_execute` to run on the worker's loop thread
        rather than hand to a task thread, taken off the list; or None.

        That is the last one, when a client waits for it on each hop (it sent
        the task straight here) and no task thread is busy or about to be: a
        handoff between threads costs tens of microseconds where the wakeup
        crosses CPUs. ``loop_free`` is the shell's part: the loop thread has
        no other task set aside, is not stopping, and no task waits in line
        for a task thread.
        """
        task = self.to_execute[-1]
        if task.reply_to is None or not loop_free or \
                len(self.executing) - len(self.to_execute) >= self.nthreads:
            return None
        return self.to_execute.pop()

    def memory_high(self, rss: int) -> bool:
        """Whether ``rss`` bytes are past the mark where this worker pauses
        (memory the process could give back first should not count)."""
        return bool(self.memory_limit) and rss > PAUSE_AT * self.memory_limit

    def memory_measured(self, rss: int) -> None:
        """The process holds ``rss`` bytes: above PAUSE_AT of the memory limit
        the worker starts no new task, and tells the center (which sends them
        elsewhere); below RESUME_AT it resumes. In between it stays as it
        was, so that it does not flip at every check."""
        if not self.memory_limit:
            return
        if not self.paused and rss > PAUSE_AT * self.memory_limit:
            logger.warning("worker %s uses %d MB, over %d%% of its memory limit: it starts "
                           "no new task until memory falls", self.address, rss // 2**20,
                           100 * PAUSE_AT)
        elif self.paused and rss < RESUME_AT * self.memory_limit:
            logger.warning("worker %s memory fell to %d MB: taking tasks again",
                           self.address, rss // 2**20)
        else:
            return
        self.set_paused(not self.paused)
        self.to_center.append(("paused", {"paused": self.paused}, []))

    def set_paused(self, paused: bool) -> None:
        """Start no new task (``paused``), or start them again."""
        self.paused = paused
        self._start_tasks()

    def leave(self, now: float, registered: bool) -> bool:
        """The worker wants to leave (:attr:`closing`): whether it may stop now.

        It may at once if it holds no key, or is not ``registered`` with a
        center to hand them to. Else it asks the center to copy the keys only
        it holds to other workers (``retire``; the center answers
        ``retired``), and stops anyway ``retire_timeout`` seconds later.
        """
        if self.retire_deadline is None:
            if not (registered and self.data):
                return True
            logger.info("worker %s retiring: handing its keys on", self.address)
            self.retire_deadline = now + self.retire_timeout
            self.to_center.append(("retire", {}, []))
            return False
        if now > self.retire_deadline:
            logger.warning("worker %s: the center did not take its keys within %.0fs; "
                           "leaving anyway", self.address, self.retire_timeout)
            return True
        return False

    # ------------------------------------------------------------------ internals

    def _abandon(self, request_id: int, plan: dict[str, list[str]]) -> None:
        """Stop waiting for request ``request_id``: plan its keys from the next
        holders (those still fetched for it, not since asked elsewhere)."""
        for key in self.requests.pop(request_id)[1]:
            fetch = self.fetches.get(key)
            if fetch is not None and fetch.request == request_id:
                self._plan_fetch(fetch, plan)

    def _plan_fetch(self, fetch: _Fetch, plan: dict[str, list[str]]) -> None:
        if fetch.holders:
            holder = fetch.holders.pop(0)
            fetch.tried.append(holder)
            plan.setdefault(holder, []).append(fetch.key)
            return
        # No holder left to try: the tasks that need it go back to the center,
        # saying which holders failed (others may have a copy by now).
        for task in self._give_up(fetch):
            self.to_center.append(("missing-data", {"key": task.key, "missing": [fetch.key],
                                                    "run": task.run,
                                                    "tried": list(fetch.tried)}, []))

    def _give_up(self, fetch: _Fetch) -> list[Task]:
        """Stop fetching an input; drop the tasks waiting for it (they no longer
        wait for their other inputs either) and return them."""
        del self.fetches[fetch.key]
        dropped = []
        for task_key in fetch.waiting_tasks:
            task = self.tasks.pop(task_key, None)
            if task is None:
                continue
            dropped.append(task)
            for other in task.missing - {fetch.key}:
                other_fetch = self.fetches.get(other)
                if other_fetch is not None:
                    other_fetch.waiting_tasks.discard(task_key)
                    if not other_fetch.waiting_tasks and other_fetch.request is None:
                        del self.fetches[other]
        return dropped

    def _send_requests(self, plan: dict[str, list[str]], now: float) -> None:
        for peer, keys in plan.items():
            # A fetch planned in this same event may be gone already: its only
            # task was given up for want of another input (see _give_up).
            keys = [key for key in keys if key in self.fetches]
            if not keys:
                continue
            request_id = next(self._request_ids)
            self.requests[request_id] = (peer, keys, now + self.fetch_timeout)
            for key in keys:
                self.fetches[key].request = request_id
            self.to_fetch.append((request_id, peer, keys))

    def _store_fetched(self, fetch: _Fetch, key: str, value: Any, nbytes: int) -> None:
        del self.fetches[key]
        self.data[key] = value
        self.nbytes[key] = nbytes
        # The center tracks every copy: for locality, and so it can release this one.
        self.to_center.append(("keys-added", {"key": key, "nbytes": nbytes}, []))
        for task_key in fetch.waiting_tasks:
            task = self.tasks.get(task_key)
            if task is not None:
                task.missing.discard(key)
                if not task.missing and task.state == FETCHING:
                    self._make_ready(task)

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
        while self.ready and len(self.executing) < limit and not self.paused:
            task = heapq.heappop(self.ready)
            task.state = EXECUTING
            self.executing.add(task.key)
            self.to_execute.append(task)

    def inputs_of(self, task: Task) -> dict[str, Any]:
        """The values of a task's inputs, to pass along with it to its thread."""
        data = self.data
        return {dep: data[dep] for dep in task.deps}
