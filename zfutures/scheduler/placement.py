"""Placement: which worker runs a task, and when it is sent there.

Ready tasks wait at the center in one heap by priority, or, for the tasks
without inputs of a big submit, in per-worker blocks (:meth:`root_blocks`). A
worker is sent tasks while it has room (:meth:`has_room`): its threads, a few
more, and, for short tasks, as many as keep it busy for a round trip. Among
the workers with room, a task goes where it would start soonest
(:meth:`choose_worker`). A waiting task whose inputs are all being computed on
one worker is sent ahead to it (:meth:`send_early`).
"""
from __future__ import annotations

import heapq
import random
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ..messages import Compute, ComputeItem, ReleaseKeys, TaskItem
from .outbox import Outbox
from .records import TaskState, WorkerRecord
from .states import PROCESSING, WAITING

if TYPE_CHECKING:
    from .direct import DirectRuns
    from .graph import TaskGraph

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
#: Inputs of this many bytes or more are "big": a task's message tells the
#: worker their sizes, so that a worker short of memory fetches only what fits
#: (WorkerSpilling.request_inputs). Smaller ones cost it little either way.
BIG_INPUT = 1 << 20
#: The most tasks queued ahead per thread, however short they are.
MAX_AHEAD_PER_THREAD = 50
#: Task groups whose durations are kept, the most recently timed: a key
#: without "-" is a group of its own, so a long-lived center that runs
#: chosen keys would otherwise keep one figure per key it ever ran. A group
#: forgotten counts as ROUND_TRIP again until timed anew.
MAX_GROUPS = 10_000

#: An entry of a ready heap: tuples compare in C, far faster than __lt__.
ReadyEntry = tuple[tuple[int, int], TaskState]


class Placement:
    """The ready queues, the workers' room, and the assignment of tasks to workers.

    Shares the scheduler's ``workers`` and ``tasks`` (read only) and its outbox;
    changes a task's state only through ``graph.set_state``.
    """

    graph: TaskGraph
    direct: DirectRuns

    def __init__(self, tasks: dict[str, TaskState], workers: dict[bytes, WorkerRecord],
                 outbox: Outbox, extra_queue: int):
        self.tasks = tasks
        self.workers = workers
        self.outbox = outbox
        self.extra_queue = extra_queue
        self.ready: list[ReadyEntry] = []  # heap of the ready tasks not in blocks
        self.with_room: set[WorkerRecord] = set()
        self.affine = 0  # ready tasks kept in workers' ready_here heaps
        # Ready tasks to take out of their heaps, all in one pass per heap, before
        # the heaps are next read or pushed to (see remove_ready).
        self._unready: set[TaskState] = set()
        # Task group -> seconds, measured; the MAX_GROUPS timed last (see timed).
        self.durations: OrderedDict[str, float] = OrderedDict()
        # Run ids, from a random start: a worker's report naming a run of this
        # center's is told from one of a run a previous center assigned.
        self.first_run = self.next_run = random.getrandbits(62)

    def connect(self, graph: TaskGraph, direct: DirectRuns) -> None:
        """The graph, which changes a task's state, and the direct runs, whose
        unconfirmed runs end when their task leaves its worker."""
        self.graph = graph
        self.direct = direct

    # ------------------------------------------------------------------ room

    def takes_tasks(self, ws: WorkerRecord) -> bool:
        return ws.ident in self.workers and not ws.retiring and not ws.paused

    def refresh_capacity(self, ws: WorkerRecord) -> None:
        """How many tasks ``ws`` may always hold: its threads, ``extra_queue``
        more, and its seceded tasks (which hold no thread)."""
        ws.capacity = ws.nthreads + self.extra_queue + len(ws.seceded)
        if self.has_room(ws) and self.takes_tasks(ws):
            self.with_room.add(ws)
        else:
            self.with_room.discard(ws)

    def has_room(self, ws: WorkerRecord) -> bool:
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
            self.queued_work(ws) < ROUND_TRIP * ws.nthreads

    def queued_work(self, ws: WorkerRecord) -> float:
        """Seconds the tasks ``ws`` holds are expected to take, by the latest
        figures of their groups."""
        durations = self.durations
        return sum(count * durations.get(group, ROUND_TRIP)
                   for group, count in ws.queued.items())

    def timed(self, group: str, duration: float) -> None:
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

    def seceded(self, ts: TaskState) -> None:
        """``ts`` gave its thread back, waiting on other tasks: its worker may
        take one more, or a task waiting on tasks would deadlock it."""
        ws = ts.processing_on
        assert ws is not None
        ws.seceded.add(ts)
        _count_out(ws, ts)
        self.refresh_capacity(ws)

    def stop_sending_to(self, ws: WorkerRecord) -> None:
        """``ws`` takes no tasks for now: its block waits for any worker."""
        self.with_room.discard(ws)
        for entry in ws.ready_here:
            entry[1].affinity = None
            heapq.heappush(self.ready, entry)
        self.affine -= len(ws.ready_here)
        ws.ready_here = []

    # ------------------------------------------------------------------ ready queues

    def root_blocks(self, items: list[TaskItem]) -> dict[int, WorkerRecord]:
        """Split the new tasks without inputs of one submit into contiguous blocks,
        one per worker, in proportion to its threads: item index -> worker.

        Neighbours in a ``map`` are usually combined later (a tree reduction
        adds x[0] to x[1]); made on the same worker, they are combined there
        without a transfer. A worker that runs out of its block takes the back
        half of the largest other one (see _split_largest_block), so this costs
        no balance. Only for tasks of one priority, with no placement of their
        own, and enough of them for blocks of two.
        """
        if len(items) < 4:  # (the common submit of one task: no workers to list)
            return {}
        slots = [ws for ws in self.workers.values() if self.takes_tasks(ws)
                 for _ in range(ws.nthreads)]
        if len(slots) < 2 or len(items) < 2 * len(slots):
            return {}
        roots = [index for index, item in enumerate(items)
                 if not item.deps and not item.workers
                 and not item.resources and item.key not in self.tasks]
        if len(roots) < 2 * len(slots) or \
                len({items[index].priority for index in roots}) != 1:
            return {}
        return {index: slots[position * len(slots) // len(roots)]
                for position, index in enumerate(roots)}

    def push_ready(self, ts: TaskState) -> None:
        if self._unready:  # (ts may be among them: out first, then in anew)
            self._purge_ready()
        ws = ts.affinity
        if ws is not None and self.takes_tasks(ws):
            heapq.heappush(ws.ready_here, (ts.priority, ts))
            self.affine += 1
        else:
            ts.affinity = None
            heapq.heappush(self.ready, (ts.priority, ts))

    def remove_ready(self, ts: TaskState) -> None:
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

    def compact(self) -> None:
        """The graph is empty: make the ready heaps and the workers' tables of
        tasks anew (emptied sets keep the size they grew to)."""
        self.ready.clear()
        self._unready = set()
        self.affine = 0
        for ws in self.workers.values():
            ws.processing, ws.ready_here = set(), []

    # ------------------------------------------------------------------ sending

    def dispatch(self) -> None:
        """Send ready tasks, best first, to workers that have room.

        A task no worker with room may run (restricted to busy workers, or
        needing resources in use) waits aside without blocking the others.
        """
        if self._unready:
            self._purge_ready()
        ready, with_room = self.ready, self.with_room
        waiting_aside: list[ReadyEntry] = []
        while with_room:
            own = None  # the worker with room whose block holds the best task
            if self.affine:
                for ws in with_room:
                    heap = ws.ready_here
                    if heap and (own is None or heap[0] < own.ready_here[0]):
                        own = ws
            if ready and (own is None or ready[0] < own.ready_here[0]):
                entry = heapq.heappop(ready)
                chosen = self.choose_worker(entry[1])
                if chosen is None:
                    waiting_aside.append(entry)
                else:
                    self.assign(entry[1], chosen)
            elif own is not None:
                self.assign(self._pop_affine(own), own)
            elif self.affine:  # room only on workers done with their blocks
                self._split_largest_block(next(iter(with_room)))
            else:
                break
        for entry in waiting_aside:
            heapq.heappush(ready, entry)

    def choose_worker(self, ts: TaskState) -> WorkerRecord | None:
        """The worker with room where ``ts`` would start soonest, or None.

        Start time is the bytes of inputs it lacks over the bandwidth, plus its
        queued work; so inputs already on a worker pull the task there. Ties go
        to the worker holding fewer MiB, which spreads data out; within a MiB,
        to the same worker each time, which is awake already.
        """
        candidates: Any = self.with_room
        if ts.restrictions is not None or ts.resources:
            candidates = [ws for ws in candidates if may_run(ts, ws)]
            if ts.loose and ts.restrictions is not None:
                preferred = [ws for ws in candidates
                             if ws.address in ts.restrictions or ws.name in ts.restrictions]
                candidates = preferred or candidates
        best, best_cost = None, (0.0, 0)
        for ws in candidates:
            cost = self.queued_work(ws) / ws.nthreads
            for dep in ts.dependencies:
                if ws not in dep.who_has:
                    cost += dep.nbytes / BANDWIDTH
            held = ws.nbytes >> 20
            if best is None or (cost, held) < best_cost:
                best, best_cost = ws, (cost, held)
        return best

    def assign(self, ts: TaskState, ws: WorkerRecord) -> None:
        """Send ``ts`` to ``ws``, in a new run; the next links of a chain may
        follow it there."""
        self.occupy(ts, ws)
        deps = {}
        sizes = None  # (the worker fetches big inputs within its memory: their sizes)
        for dep in ts.dependencies:
            deps[dep.key] = [w.address for w in dep.who_has]
            if dep.nbytes >= BIG_INPUT and ws not in dep.who_has:
                sizes = sizes or {}
                sizes[dep.key] = dep.nbytes
        ts.run = run = self.next_run
        self.next_run += 1
        payload = ts.payload
        # (send_result: a client waits, so a small result comes with the completion)
        self.outbox.add(ws.ident, Compute, ComputeItem(
            ts.key, deps, run, len(payload) if payload is not None else 0, -ts.priority[0],
            bool(ts.who_wants), sizes), payload)
        for dependent in ts.waiters:
            if dependent.state == WAITING and ts in dependent.waiting_on:
                self.send_early(dependent)

    def assigned_here(self, run: int) -> bool:
        """Whether this center assigned ``run`` (to a task it may have forgotten)."""
        return self.first_run <= run < self.next_run

    def occupy(self, ts: TaskState, ws: WorkerRecord) -> None:
        """``ts`` is processing on ``ws`` from now: count it there."""
        self.graph.set_state(ts, PROCESSING)
        ts.processing_on = ws
        ws.processing.add(ts)
        ws.queued[ts.group] = ws.queued.get(ts.group, 0) + 1
        if ts.resources:
            for name, amount in ts.resources.items():
                ws.used_resources[name] = ws.used_resources.get(name, 0.0) + amount
        if not self.has_room(ws):
            self.with_room.discard(ws)

    def unassign(self, ts: TaskState) -> None:
        """``ts`` is no longer processing on its worker: count it out there."""
        ws = ts.processing_on
        assert ws is not None
        ts.processing_on = None
        unconfirmed = self.direct.unconfirmed
        if unconfirmed:
            unconfirmed.pop(ts, None)
        ws.processing.discard(ts)
        if ts in ws.seceded:
            ws.seceded.discard(ts)
            self.refresh_capacity(ws)
        else:
            _count_out(ws, ts)
        if ts.resources:
            for name, amount in ts.resources.items():
                ws.used_resources[name] = ws.used_resources.get(name, 0.0) - amount
        if self.has_room(ws) and self.takes_tasks(ws):
            self.with_room.add(ws)

    def take_back(self, ts: TaskState) -> None:
        """Take ``ts`` off its worker (which drops it): it waits again for its
        inputs (see TaskGraph.wait_again), so it may be ready, sent ahead or
        erred when this returns. Callers unassign the tasks they recall first:
        send_early skips an input that is off its worker."""
        assert ts.processing_on is not None
        self.outbox.add(ts.processing_on.ident, ReleaseKeys, ts.key)
        self.unassign(ts)
        self.graph.wait_again(ts)

    def send_early(self, ts: TaskState) -> None:
        """Send a waiting task ahead to the worker computing all it still waits for
        (its other inputs already there), which starts it as soon as they are done,
        without a round trip through the center: a chain runs at the worker's pace."""
        ws = None
        for dep in ts.waiting_on:
            # (processing on no worker: being taken off its own, see recall_early)
            if dep.state != PROCESSING or dep.processing_on is None or \
                    (ws is not None and dep.processing_on is not ws):
                return
            ws = dep.processing_on
        if ws not in self.with_room or not all(
                ws in dep.who_has for dep in ts.dependencies if dep not in ts.waiting_on):
            return
        assert ws is not None
        if (ts.restrictions is not None or ts.resources) and not may_run(ts, ws):
            return
        self.assign(ts, ws)

    def recall_early(self, ts: TaskState) -> None:
        """``ts`` no longer runs where it was sent: take back the tasks sent ahead to
        wait for it there (and those waiting for them)."""
        stack = [ts]
        while stack:
            dep = stack.pop()
            for dependent in list(dep.waiters):
                if dependent.state == PROCESSING and dep in dependent.waiting_on:
                    self.take_back(dependent)
                    stack.append(dependent)
        # (each recalled task waits again, and is placed anew once its inputs are)


def may_run(ts: TaskState, ws: WorkerRecord) -> bool:
    """Whether ``ws`` satisfies the task's worker restrictions and resources now."""
    if ts.restrictions is not None and not ts.loose and \
            ws.address not in ts.restrictions and ws.name not in ts.restrictions:
        return False
    if ts.resources:
        for name, amount in ts.resources.items():
            if ws.used_resources.get(name, 0.0) + amount > ws.resources.get(name, 0.0):
                return False
    return True


def _count_out(ws: WorkerRecord, ts: TaskState) -> None:
    left = ws.queued[ts.group] - 1
    if left:
        ws.queued[ts.group] = left
    else:
        del ws.queued[ts.group]
