"""What a worker's departure, pause or retirement does to its tasks and keys.

A worker that dies takes its tasks and its data with it: the tasks it was
probably running are suspected of killing it (and err with
:class:`~zfutures.errors.KilledWorker` after ``allowed_failures`` deaths),
the rest of its queue goes elsewhere, and the keys only it held are computed
again if still wanted. A paused worker keeps what it runs and gives back what
it queued. A retiring worker gives back its queue and has the keys only it
holds copied to workers that stay before it is told it may go.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import errors
from ..messages import Acquire, AcquireItem, KeyFinished, ResultItem, Retired, WorkersLeft
from .outbox import Outbox
from .records import (
    ClientRecord,
    TaskState,
    WorkerRecord,
    is_direct,
    is_wanted,
    pickled_error,
)
from .states import MEMORY, PROCESSING, READY, RELEASED, WAITING

if TYPE_CHECKING:
    from .graph import TaskGraph
    from .placement import Placement


def tell_if_retired(ws: WorkerRecord, outbox: Outbox) -> None:
    """Tell a retiring worker it may go, once none of its keys is still being
    copied and it runs no task a client sent it straight."""
    if ws.retiring and not ws.moving and not any(is_direct(ts) for ts in ws.processing):
        outbox.send(ws.ident, Retired)


def probably_running(ws: WorkerRecord) -> tuple[list[TaskState], set[TaskState]]:
    """``ws``'s tasks by priority, and those it is probably running: a worker
    starts its tasks in priority order as they arrive, so the first that could
    start (not waiting for inputs), one per thread, plus seceded ones."""
    by_order = sorted(ws.processing, key=lambda t: t.priority)
    startable = [ts for ts in by_order if not ts.waiting_on]
    return by_order, set(startable[:ws.nthreads]) | ws.seceded


class WorkerLifecycle:
    """A worker's tasks and keys as it dies, pauses or retires.

    Shares the scheduler's ``workers``, ``clients`` and outbox.
    """

    def __init__(self, workers: dict[bytes, WorkerRecord], clients: dict[bytes, ClientRecord],
                 outbox: Outbox, graph: TaskGraph, placement: Placement,
                 allowed_failures: int):
        self.workers = workers
        self.clients = clients
        self.outbox = outbox
        self.graph = graph
        self.placement = placement
        self.allowed_failures = allowed_failures

    # ------------------------------------------------------------------ dead

    def left(self, ws: WorkerRecord, announce: bool) -> None:
        """``ws`` is gone (no longer among the workers): its tasks go elsewhere,
        and the keys only it held are lost. ``announce``: every peer hears of
        it (calls to it fail at once; fetches from it go elsewhere)."""
        self.placement.stop_sending_to(ws)
        if announce:
            for ident in [*self.clients, *self.workers]:
                self.outbox.add(ident, WorkersLeft, ws.address)
        for other in self.workers.values():
            if other.moving:  # it may have been copying their keys: plan anew
                self.hand_on(other)
        self._reschedule(ws)
        self._lose_keys(ws)

    def _reschedule(self, ws: WorkerRecord) -> None:
        """Only the tasks ``ws`` was probably running are suspected of killing
        it; the rest of its queue is innocent and just goes elsewhere."""
        graph = self.graph
        by_order, running = probably_running(ws)
        for ts in by_order:
            if ts.processing_on is not ws:  # erred meanwhile, with an input it waited for
                continue
            self.placement.unassign(ts)
            if ts in running:
                ts.suspicious += 1
                if ts.suspicious >= self.allowed_failures:
                    graph.err(ts, pickled_error(errors.KilledWorker(
                        f"task {ts.key!r} was running on {ts.suspicious} workers that died, "
                        f"the last one {ws.address}")))
                    continue
            graph.wait_again(ts)

    def _lose_keys(self, ws: WorkerRecord) -> None:
        """The keys ``ws`` held: those held nowhere else are lost, and computed
        again if wanted; clients fetch the others from the holders that remain."""
        graph = self.graph
        lost = []
        for ts in ws.has_what:
            ts.who_has.discard(ws)
            if not ts.who_has and ts.state == MEMORY:
                graph.set_state(ts, RELEASED)
                lost.append(ts)
            elif ts.state == MEMORY and ts.who_wants:
                item = ResultItem(ts.key, [w.address for w in ts.who_has], ts.nbytes)
                for client in ts.who_wants:
                    graph.tell(client, KeyFinished, item)
        ws.has_what.clear()
        for ts in lost:
            if is_wanted(ts):
                graph.recompute(ts)
        # Dependents that were waiting for lost keys wait again. Those sent
        # elsewhere are fetching a lost key from the dead worker, and would
        # wait out their fetch timeout (then report it missing): they come
        # back, to wait for it like the others.
        again: dict[TaskState, None] = {}  # (once each, however many inputs it lost)
        for ts in lost:
            for dependent in ts.dependents:
                if dependent.state == PROCESSING and ts not in dependent.waiting_on:
                    again[dependent] = None
                elif dependent.state in (WAITING, READY):
                    again[dependent] = None
        for dependent in again:
            if dependent.state == PROCESSING:
                self.placement.take_back(dependent)
                self.placement.recall_early(dependent)
            elif dependent.state in (WAITING, READY):
                graph.wait_again(dependent)

    # ------------------------------------------------------------------ paused

    def paused(self, ws: WorkerRecord, paused: bool) -> None:
        """``ws``'s memory crossed its high mark (``paused``) or fell back.

        A paused worker finishes what it runs but starts nothing new; the tasks
        queued on it go back to be placed elsewhere (not a direct run: the
        worker runs it or refuses it).
        """
        ws.paused = paused
        if not paused:
            self.placement.refresh_capacity(ws)
            return
        self.placement.stop_sending_to(ws)
        by_order, running = probably_running(ws)
        for ts in by_order:
            if ts not in running and ts.processing_on is ws and not is_direct(ts):
                self.placement.take_back(ts)

    # ------------------------------------------------------------------ retiring

    def retire(self, ws: WorkerRecord) -> None:
        """``ws`` wants to leave: its tasks go elsewhere, and the keys only it
        holds are copied to other workers first, so nothing needs recomputing.
        Direct runs stay: the worker runs them or refuses them, and hands their
        results on as they come."""
        ws.retiring = True
        self.placement.stop_sending_to(ws)
        for ts in sorted(ws.processing, key=lambda t: t.priority):
            if ts.processing_on is ws and not is_direct(ts):  # (else erred meanwhile)
                self.placement.take_back(ts)
        self.hand_on(ws)

    def hand_on(self, ws: WorkerRecord) -> None:
        """Have workers that stay copy the wanted keys only ``ws`` holds; tell
        ``ws`` it may go once none is left to copy (or no worker stays)."""
        ws.moving.clear()
        targets = self.staying()
        for ts in ws.has_what:
            self.hand_on_key(ws, ts, targets)
        tell_if_retired(ws, self.outbox)

    def staying(self) -> list[WorkerRecord]:
        """The workers not retiring: those that may take keys on."""
        return [w for w in self.workers.values() if not w.retiring]

    def hand_on_key(self, ws: WorkerRecord, ts: TaskState,
                    targets: list[WorkerRecord]) -> None:
        """Have one of ``targets`` copy ``ts`` from retiring ``ws``, if wanted
        and only there."""
        if ts.who_has != {ws} or not is_wanted(ts):
            return
        if targets:
            target = min(targets, key=lambda w: w.nbytes)
            target.nbytes += ts.nbytes  # counted now, so the next key goes elsewhere
            self.outbox.add(target.ident, Acquire, AcquireItem(ts.key, [ws.address]))
            ws.moving.add(ts)

    def finished_while_retiring(self, ws: WorkerRecord, ts: TaskState) -> None:
        """Retiring ``ws`` finished ``ts`` (a direct run it kept): its result
        is handed on too, and ``ws`` may go once that is done."""
        self.hand_on_key(ws, ts, self.staying())
        tell_if_retired(ws, self.outbox)

    def copied(self, ts: TaskState) -> None:
        """A worker holds a copy of ``ts`` now: a retiring holder need not wait
        for it to be copied any more."""
        for holder in ts.who_has:
            if ts in holder.moving:
                holder.moving.discard(ts)
                tell_if_retired(holder, self.outbox)

