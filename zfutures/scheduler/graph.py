"""The task graph: tasks, their links, and how each moves between states.

A task is *wanted* while a client holds a future for it or a dependent still
waits for it; a task that is not wanted is released, and a released task that
no dependent refers to is forgotten. Releasing is a worklist, bounded per
event by ``collect_limit`` (see :meth:`TaskGraph.collect_garbage`).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import FutureLostError
from ..messages import ErredItem, KeyErred, KeyFinished, ReleaseKeys, ResultItem, Synced, TaskItem
from ..protocol import Frames, same_call
from .outbox import Outbox
from .records import (
    NO_TASKS,
    ClientRecord,
    TaskState,
    WorkerRecord,
    is_direct,
    is_wanted,
    pickled_error,
    with_task,
)
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
from .workers import tell_if_retired

if TYPE_CHECKING:
    from .direct import DirectRuns
    from .observe import Observer
    from .placement import Placement
    from .recovery import Recovery

#: Sizes reported by workers are capped here (a petabyte), so that sums of
#: them always fit in a message.
MAX_NBYTES = 2**50


class TaskGraph:
    """The tasks by key, their states, who holds their data, and who wants them.

    Shares the scheduler's ``tasks``, ``workers_by_address`` and outbox.
    Placing, sending and taking tasks back is :class:`~.placement.Placement`'s;
    the graph asks it to.
    """

    placement: Placement
    direct: DirectRuns
    recovery: Recovery

    def __init__(self, tasks: dict[str, TaskState],
                 workers_by_address: dict[str, WorkerRecord], outbox: Outbox,
                 collect_limit: int | None = None):
        self.tasks = tasks
        self.workers_by_address = workers_by_address
        self.outbox = outbox
        self.collect_limit = collect_limit
        self.maybe_unwanted: list[TaskState] = []  # to release, if nobody wants them
        self.observer: Observer | None = None  # while someone watches (see observe.py)
        self._order = itertools.count()  # submission order, after priority

    def connect(self, placement: Placement, direct: DirectRuns, recovery: Recovery) -> None:
        """The parts the graph asks to place, count and recover its tasks."""
        self.placement = placement
        self.direct = direct
        self.recovery = recovery

    def set_state(self, ts: TaskState, state: str) -> None:
        """The one place a task changes state: refuses a change TRANSITIONS
        does not list; keeps ``waiters`` in step."""
        try:
            step = FLIGHT_STEP[ts.state][state]
        except KeyError:
            raise IllegalTransition(ts.key, ts.state, state) from None
        if self.observer is not None:
            self.observer.moved(ts, ts.state, state)
        ts.state = state
        if step:
            if step < 0:
                for dep in ts.dependencies:
                    if ts in dep.waiters:  # (then a set of its own)
                        dep.waiters.remove(ts)  # type: ignore[attr-defined]
                    self.maybe_unwanted.append(dep)
            else:
                for dep in ts.dependencies:
                    dep.waiters = with_task(dep.waiters, ts)

    # ------------------------------------------------------------------ new tasks

    def submitted(self, client: ClientRecord, item: TaskItem, payload: Frames,
                  affinity: WorkerRecord | None = None) -> None:
        """``client`` submitted ``item`` (as in the ``submit`` message) with its
        ``payload``: a new task, linked to its inputs (erred at once if the
        center does not know one), or one more client of the same call.
        ``affinity``: the worker whose block it waits in when ready."""
        key = item.key
        ts = self.tasks.get(key)
        if ts is not None and not is_wanted(ts) and payload and \
                ts.payload is not None and not same_call(payload, ts.payload):
            # Let go of and not collected yet (see collect_limit), and now the
            # key the caller chose names another call: released first, as it
            # would have been, so that the new call gets its own value, not
            # the old call's. (The same call again keeps the task and its value.)
            self.release(ts)
            ts = self.tasks.get(key)
            if ts is not None and payload:  # (kept for its dependents: released)
                ts.payload = payload
        if ts is not None:  # the same pure call again: one task, one more client
            if ts.payload is None and payload:
                ts.payload = payload
            if ts.direct_run is None:  # (see DirectRuns.runs_direct)
                ts.direct_run = item.direct_run
            self.want(ts, client)
            return
        ts = self.tasks[key] = TaskState(
            key, payload, (-item.priority, next(self._order)), item.retries)
        if self.observer is not None:
            self.observer.added(ts)
        if item.workers:
            ts.restrictions = frozenset(item.workers)
            ts.loose = item.allow_other_workers
        if item.resources:
            ts.resources = item.resources
        ts.affinity = affinity
        missing = None
        for dep_key in item.deps:
            dep = self.tasks.get(dep_key)
            if dep is None:
                missing = dep_key
                continue
            ts.dependencies.append(dep)
            dep.dependents = with_task(dep.dependents, ts)
        recovery = self.recovery
        if missing is not None:
            self.err(ts, pickled_error(FutureLostError(
                f"task {key!r} depends on {missing!r}, which the center does not know "
                "(released, or lost in a restart)")))
        elif recovery.recovering and (recovery.unclaimed or item.who_has):
            # (every center starts out recovering; most submits claim nothing)
            recovery.claim(ts, item.who_has or ())
        if item.direct_run is not None and self.direct.runs_direct(ts, item, client):
            return
        self.want(ts, client)

    def scattered(self, client: ClientRecord, key: str, nbytes: int,
                  addresses: list[str]) -> None:
        """``client`` put the data of ``key`` on the workers at ``addresses``
        itself: the task is in memory there (a new one, without payload, if
        there was none), and any work towards it stops. During recovery
        ``addresses`` may name workers that have not come back yet."""
        ts = self.tasks.get(key)
        if ts is None:
            ts = self.tasks[key] = TaskState(key, None, (0, next(self._order)))
            if self.observer is not None:
                self.observer.added(ts)
        workers_by_address = self.workers_by_address
        holders = [workers_by_address[a] for a in addresses if a in workers_by_address]
        if holders and ts.state in (READY, PROCESSING):  # the data is here: no need
            self.stop_pending_work(ts)
        for ws in holders:
            self.add_holder(ts, ws, nbytes)
        if self.recovery.recovering and ts.state != MEMORY:
            self.recovery.claim(ts, addresses)
        if ts.state != MEMORY and ts.who_has:
            self.finish(ts)
        self.want(ts, client)

    # ------------------------------------------------------------------ clients

    def tell(self, client: ClientRecord, cls: type, item: ResultItem | ErredItem | str,
             frames: Frames | None = None) -> None:
        """Queue news of a key for ``client``, in a ``cls`` message (see
        ClientRecord.seen)."""
        self.outbox.add(client.ident, cls, item, frames, client.seen)

    def want(self, ts: TaskState, client: ClientRecord) -> None:
        """``client`` holds a future for ``ts``: tell it what it missed."""
        if client in ts.who_wants:
            return
        ts.who_wants.add(client)
        client.wants.add(ts)
        if ts.state == MEMORY:
            self.tell(client, KeyFinished, ResultItem(
                ts.key, [ws.address for ws in ts.who_has], ts.nbytes))
        elif ts.state == ERRED:
            self.tell(client, KeyErred, erred_item(ts.key, ts.exception), ts.exception)
        elif ts.state == RELEASED:
            self.recompute(ts)

    # ------------------------------------------------------------------ towards memory

    def recompute(self, root: TaskState) -> None:
        """Bring a wanted, released task and its released inputs back to memory."""
        expected = self.recovery.expected
        stack = [root]
        while stack:
            ts = stack.pop()
            if ts.state != RELEASED or ts.key in expected:
                continue  # (an expected key comes back with its worker)
            if ts.payload is None:  # scattered data: there is nothing to rerun
                self.err(ts, pickled_error(FutureLostError(
                    f"the data of {ts.key!r} was lost with the worker that held it")))
                continue
            self.wait_again(ts)
            stack.extend(dep for dep in ts.dependencies if dep.state == RELEASED)

    def recompute_if_wanted(self, ts: TaskState | None) -> None:
        if ts is not None and ts.state == RELEASED and is_wanted(ts):
            self.recompute(ts)

    def wait_again(self, ts: TaskState) -> None:
        """``ts`` goes back to waiting for its inputs: wanted again after its
        release, taken off its worker (see Placement.take_back), or, ready or
        waiting, one of its inputs was lost. Which inputs it waits for is
        counted anew: with one erred it errs, with none left it is ready at
        once, and with all being computed on one worker it may be sent ahead
        there."""
        if ts.state == READY:
            self.placement.remove_ready(ts)
        if ts.state != WAITING:
            self.set_state(ts, WAITING)
        waiting_on = []
        for dep in ts.dependencies:
            if dep.state == ERRED:
                ts.waiting_on = NO_TASKS
                self.err(ts, dep.exception)
                return
            if dep.state != MEMORY:
                waiting_on.append(dep)
        ts.waiting_on = set(waiting_on) if waiting_on else NO_TASKS
        if not waiting_on:
            self.set_state(ts, READY)
            self.placement.push_ready(ts)
        else:
            self.placement.send_early(ts)

    def finish(self, ts: TaskState, value: Frames | None = None) -> None:
        """``ts`` has just come into memory: tell its clients (with its pickled
        ``value`` when the worker sent it along), wake its dependents."""
        if ts.state == READY:  # e.g. being recomputed when a holder came back
            self.placement.remove_ready(ts)
        self.set_state(ts, MEMORY)
        ts.suspicious = 0
        ts.waiting_on = NO_TASKS
        if ts.who_wants:
            if not value:
                value = None
            # (one item for every client: the outbox copies the frames, never the item)
            item = ResultItem(ts.key, [ws.address for ws in ts.who_has], ts.nbytes,
                              len(value) if value is not None else 0)
            answered = ts.answered  # (only for the direct run: a later one is news)
            if answered is not None and not is_direct(ts):
                answered = None
            for client in ts.who_wants:
                if client is answered:
                    continue  # (it has the result, from the worker)
                self.outbox.add(client.ident, KeyFinished, item, value, client.seen)
        for dependent in ts.waiters:
            waiting_on = dependent.waiting_on
            if ts in waiting_on:  # (then a set of its own)
                waiting_on.remove(ts)  # type: ignore[attr-defined]
                if not waiting_on and dependent.state == WAITING:
                    self.set_state(dependent, READY)
                    self.placement.push_ready(dependent)
        self.maybe_unwanted.append(ts)

    def err(self, root: TaskState, exception: Frames | None) -> None:
        """``root`` failed; so does every dependent on its way to memory."""
        stack = [root]
        while stack:
            ts = stack.pop()
            if ts.state == ERRED:
                continue
            self.stop_pending_work(ts)
            self.set_state(ts, ERRED)
            ts.exception = exception
            ts.waiting_on = NO_TASKS
            if ts.who_wants:
                item = erred_item(ts.key, exception)
                for client in ts.who_wants:
                    self.tell(client, KeyErred, item, exception)
            stack.extend(d for d in ts.dependents if d.state in IN_FLIGHT)
            self.maybe_unwanted.append(ts)

    def retry_or_err(self, ts: TaskState, exception: Frames) -> None:
        """``ts``, taken off its worker, raised: run it again if it has retries
        left, else it errs."""
        if ts.retries > 0:
            ts.retries -= 1
            self.placement.recall_early(ts)
            self.wait_again(ts)
        else:
            self.err(ts, exception)

    def stop_pending_work(self, ts: TaskState) -> None:
        """Take ``ts`` off the ready queue, or off its worker (which drops it)."""
        if ts.state == READY:
            self.placement.remove_ready(ts)
        ws = ts.processing_on
        if ws is not None:
            self.outbox.add(ws.ident, ReleaseKeys, ts.key)
            if is_direct(ts):  # (its reports may still come: see DirectRuns.hold_early)
                self.direct.released(ts)
            self.placement.unassign(ts)
            self.placement.recall_early(ts)  # tasks sent ahead to wait for it there

    def inputs_missing(self, ts: TaskState, missing: Iterable[str],
                       tried: Iterable[str] | None) -> None:
        """``ts``, taken off its worker, could not fetch the ``missing`` inputs
        from the holders ``tried`` (None: every holder): those lose their
        copies, and an input left nowhere is computed again; ``ts`` waits."""
        self.placement.recall_early(ts)
        lost = []
        for dep_key in missing:
            dep = self.tasks.get(dep_key)
            if dep is None or dep not in ts.dependencies:
                continue
            for holder in list(dep.who_has):  # none of them could give it
                if tried is None or holder.address in tried:
                    self.outbox.add(holder.ident, ReleaseKeys, dep.key)
                    self.remove_holder(dep, holder)
            if not dep.who_has and dep.state == MEMORY:
                self.set_state(dep, RELEASED)
                lost.append(dep)
        self.wait_again(ts)  # (for the lost inputs too, then brought back)
        for dep in lost:
            self.recompute(dep)

    # ------------------------------------------------------------------ holders

    def add_holder(self, ts: TaskState, ws: WorkerRecord, nbytes: int) -> None:
        nbytes = min(max(nbytes, 0), MAX_NBYTES)  # a peer's figure: keep sums encodable
        ts.nbytes = nbytes
        if ws not in ts.who_has:
            ts.who_has.add(ws)
            ws.has_what.add(ts)
            ws.nbytes += nbytes

    def remove_holder(self, ts: TaskState, ws: WorkerRecord) -> None:
        ts.who_has.discard(ws)
        if ts in ws.has_what:
            ws.has_what.discard(ts)
            ws.nbytes -= ts.nbytes
        if ts in ws.moving:  # released meanwhile: nothing left to hand on
            ws.moving.discard(ts)
            tell_if_retired(ws, self.outbox)

    # ------------------------------------------------------------------ letting go

    def compact(self) -> None:
        """The graph is empty: make its tables anew (emptied dicts and sets
        keep the size they grew to), the workers' tables of keys held too."""
        self.tasks.clear()  # (frees the table: the parts share this dict)
        for ws in self.workers_by_address.values():
            ws.has_what = set()

    def collect_garbage(self) -> None:
        """Release tasks nobody wants; forget those nothing refers to any more.

        A worklist rather than recursion, because releasing the end of a long
        chain releases the whole chain.
        """
        stack = self.maybe_unwanted
        left = -1 if self.collect_limit is None else self.collect_limit  # (-1: no end)
        while stack and left:  # (what is left waits for the next event)
            left -= 1
            ts = stack.pop()
            if ts.who_wants or ts.waiters or self.tasks.get(ts.key) is not ts:
                continue
            self.release(ts)

    def sync(self, worker_ident: bytes, keys: Iterable[str]) -> None:
        """Answer a worker's ``sync`` of ``keys`` (``synced``): a client put
        data on it while it held them already, and that data waits for this
        answer (see worker_scatter.py). The outbox keeps what a recipient
        hears of a key in order, so a release of the worker's old copy, sent
        before, reaches it first, and the new copy is not dropped with it.

        A key let go of whose release still waits its turn (see
        collect_limit) is released now: its release-keys, queued later,
        would drop the new copy.
        """
        tasks = self.tasks
        for key in keys:
            ts = tasks.get(key)
            if ts is not None and not is_wanted(ts):
                self.release(ts)
            self.outbox.add(worker_ident, Synced, key)

    def release(self, ts: TaskState) -> None:
        """Release ``ts``, which nobody wants: its work stops, its holders drop
        it, and it is forgotten unless a dependent refers to it (its inputs
        may then be unwanted in turn)."""
        self.stop_pending_work(ts)
        for ws in list(ts.who_has):
            self.outbox.add(ws.ident, ReleaseKeys, ts.key)
            self.remove_holder(ts, ws)
        if ts.state != RELEASED:
            self.set_state(ts, RELEASED)
            ts.exception = None
            ts.waiting_on = NO_TASKS
        if not ts.dependents:
            del self.tasks[ts.key]
            if self.observer is not None:
                self.observer.forgotten(ts)
            for dep in ts.dependencies:
                if ts in dep.dependents:  # (then a set of its own)
                    dep.dependents.remove(ts)  # type: ignore[attr-defined]
                self.maybe_unwanted.append(dep)
            ts.dependencies = []


def erred_item(key: str, exception: Frames | None) -> ErredItem:
    """The news that ``key`` failed with ``exception`` (its pickled frames)."""
    return ErredItem(key, len(exception) if exception is not None else 0)
