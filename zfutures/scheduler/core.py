"""The center's scheduler: every event the center's shell passes in.

Every public method of :class:`Scheduler` takes one event (a client submitted
tasks, a worker finished one, a worker was lost, ...) and queues the messages
it causes in an :class:`~.outbox.Outbox`; the center's shell sends them after
each burst of events, so messages to the same peer are batched. Nothing here
touches a socket, a clock or a thread, so every path can be tested directly.

The methods here read an event and decide which part handles it; the
decisions live in those parts: the graph of tasks and their states
(:mod:`.graph`), where and when a task runs (:mod:`.placement`), the tasks
clients send straight to workers (:mod:`.direct`), the keys brought back
after a restart (:mod:`.recovery`), and what a worker's death, pause or
retirement does to its tasks and keys (:mod:`.workers`).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from ..messages import (
    DoneItem,
    FailedItem,
    KeyAdded,
    MissingData,
    ReleaseKeys,
    ScatteredItem,
    TaskAccepted,
    TaskItem,
    TaskRefused,
    TaskSeceded,
)
from ..protocol import Frames
from .direct import DirectRuns, EarlyReport
from .graph import MAX_NBYTES, TaskGraph
from .observe import MAX_REPORTED_BYTES, Observer, RunTotals, managed_bytes, plausible_seconds
from .outbox import Outbox
from .placement import Placement
from .records import ClientRecord, TaskState, WorkerRecord
from .recovery import Recovery
from .states import MEMORY
from .workers import WorkerLifecycle, tell_if_retired

#: A key's description names at most this many of its dependents (a key
#: that thousands of tasks take is described in a message of keys, not MBs).
MAX_DESCRIBED_DEPENDENTS = 100


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
        are short (see placement.ROUND_TRIP). The rest waits here, where a
        worker that joins later can take it.
    recovering
        This center may be the restart of one that died: keys that workers
        bring back wait for clients to claim them until :meth:`end_recovery`.
    collect_limit
        The most tasks one event looks at to release or forget (None: all).
        The rest waits for :meth:`collect_garbage`, which the center calls
        between its turns, so that a client letting go of 300,000 keys at once
        (1.4 s of work) does not keep it from its heartbeats meanwhile. A task
        that waits so is wanted again as usual, and then stays.

    >>> s = Scheduler()
    >>> s.add_worker(b"w1", "tcp://127.0.0.1:9000", "w1", nthreads=1)
    >>> s.add_client(b"c1", "me")
    >>> s.submit(b"c1", [TaskItem(key="x", deps=[], priority=0, nframes=1)], [b"..."])
    >>> s.tasks["x"].state
    'processing'
    """

    def __init__(self, allowed_failures: int = 3, extra_queue: int = 2,
                 recovering: bool = False, collect_limit: int | None = None):
        # The tables every part shares: never replaced, only changed.
        self.tasks: dict[str, TaskState] = {}
        self.workers: dict[bytes, WorkerRecord] = {}
        self.workers_by_address: dict[str, WorkerRecord] = {}
        self.clients: dict[bytes, ClientRecord] = {}
        self.outbox = Outbox()
        self.graph = graph = TaskGraph(self.tasks, self.workers_by_address, self.outbox,
                                           collect_limit)
        self.placement = placement = Placement(self.tasks, self.workers, self.outbox,
                                               extra_queue)
        self.direct = direct = DirectRuns(self.tasks, self.workers, self.workers_by_address,
                                          self.outbox, graph, placement)
        self.recovery = recovery = Recovery(self.tasks, self.workers_by_address, self.outbox,
                                            graph, placement, recovering)
        self.lifecycle = WorkerLifecycle(self.workers, self.clients, self.outbox, graph,
                                         placement, allowed_failures)
        graph.connect(placement, direct, recovery)
        placement.connect(graph, direct)
        # Totals since the center started, for watchers (see Events.counters):
        # tasks submitted, and bytes copied between workers.
        self.submitted_tasks = 0
        self.transfer_bytes = 0
        self.run_totals = RunTotals()  # per task group, always counted

    # ------------------------------------------------------------------ watchers

    @property
    def observer(self) -> Observer | None:
        """What watchers are told (see observe.py); None while nobody watches."""
        return self.graph.observer

    def watch(self, stream: bool = False) -> None:
        """Someone watches from now on (the center counts its watchers): task
        groups and workers are observed; task runs and transfers too if
        ``stream`` (some watcher wants them)."""
        observer = self.graph.observer
        if observer is None:
            self.graph.observer = Observer(self.tasks.values(), stream, self.run_totals)
        else:
            observer.set_stream(stream)

    def unwatch(self) -> None:
        """Nobody watches any more: nothing is observed but the run totals."""
        self.graph.observer = None

    def worker_heartbeat(self, worker_ident: bytes, memory: int | None,
                         cpu: float | None, managed: int | None = None,
                         spilled: int | None = None) -> None:
        """A worker's heartbeat said how much memory (bytes) and CPU (percent
        of one core) its process uses, and how many bytes of its results are
        in memory (``managed``) and on disk (``spilled``). A value left out
        (None) or out of range leaves the last one heard."""
        ws = self.workers.get(worker_ident)
        if ws is None:
            return
        # (their types are checked as the message is read: only ranges here)
        if memory is not None and memory >= 0:
            ws.rss = min(memory, MAX_REPORTED_BYTES)
        if cpu is not None and 0.0 <= cpu < 1e9:
            ws.cpu = float(cpu)
        if managed is not None and managed >= 0:
            ws.managed_reported = min(managed, MAX_REPORTED_BYTES)
        if spilled is not None and spilled >= 0:
            ws.spilled = min(spilled, MAX_REPORTED_BYTES)

    @property
    def recovering(self) -> bool:
        """Keys workers bring back still wait for their clients (see end_recovery)."""
        return self.recovery.recovering

    @property
    def garbage_pending(self) -> bool:
        """Tasks wait to be released or forgotten (see ``collect_limit``)."""
        return bool(self.graph.maybe_unwanted)

    def _settle(self) -> None:
        """After every event: drop what is unwanted, then fill free slots."""
        self.graph.collect_garbage()
        self.placement.dispatch()

    # ------------------------------------------------------------------ peers

    def add_client(self, ident: bytes, name: str) -> None:
        if ident not in self.clients:  # a reconnect with the same identity keeps its keys
            self.clients[ident] = ClientRecord(ident, name)

    def remove_client(self, ident: bytes) -> None:
        """A client closed or vanished: it no longer wants any of its keys."""
        client = self.clients.pop(ident, None)
        if client is not None:
            unwanted = self.graph.maybe_unwanted
            for ts in client.wants:
                ts.who_wants.discard(client)
                unwanted.append(ts)
            client.wants.clear()
        self._settle()

    def add_worker(self, ident: bytes, address: str, name: str, nthreads: int,
                   memory_limit: int = 0, resources: dict[str, float] | None = None,
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
        self.placement.refresh_capacity(ws)
        self.workers[ident] = ws
        self.workers_by_address[address] = ws
        self.placement.with_room.add(ws)
        if not isinstance(keys, Mapping):
            keys = dict.fromkeys(keys, 0)
        self.recovery.worker_joined(ws, keys)
        self._settle()

    def end_recovery(self) -> None:
        """Recovery is over: release unclaimed keys; recompute what never came back."""
        self.recovery.end()
        self._settle()

    def remove_worker(self, ident: bytes, replaced: bool = False) -> None:
        """A worker left or died: reschedule its tasks, recompute its lost keys.
        ``replaced``: it registers again at the same address, this instant."""
        ws = self.workers.pop(ident, None)
        if ws is None:
            return
        del self.workers_by_address[ws.address]
        self.recovery.worker_left(ws)
        self.lifecycle.left(ws, announce=not replaced)
        self._settle()

    def retire_worker(self, worker_ident: bytes) -> None:
        """A worker wants to leave: it is told ``retired`` when it may go (see
        WorkerLifecycle.retire)."""
        ws = self.workers.get(worker_ident)
        if ws is None or ws.retiring:
            return
        self.lifecycle.retire(ws)
        self._settle()

    def worker_paused(self, worker_ident: bytes, paused: bool) -> None:
        """A worker's memory crossed its high mark (``paused``) or fell back."""
        ws = self.workers.get(worker_ident)
        if ws is None or ws.paused == paused:
            return
        self.lifecycle.paused(ws, paused)
        self._settle()

    # ------------------------------------------------------------------ clients' events

    def submit(self, client_ident: bytes, items: list[TaskItem], frames: Frames,
               seq: int | None = None) -> None:
        """A client submitted tasks: the ``items`` of a ``submit`` message, and
        their frames; its ``seq`` the news of them carries back (see
        ClientRecord.seen)."""
        client = self.clients[client_ident]
        if seq is not None:
            client.seen = seq
        self.submitted_tasks += len(items)
        blocks = self.placement.root_blocks(items)
        submitted = self.graph.submitted
        start = 0
        for index, item in enumerate(items):
            end = start + item.nframes
            submitted(client, item, frames[start:end], blocks.get(index))
            start = end
        if self.direct.early:  # the worker's reports on direct tasks came first
            for item in items:
                if item.direct_run is not None:
                    for report in self.direct.take_early(item.key):
                        self._handle_early(report)
        self._settle()

    def _handle_early(self, early: EarlyReport) -> None:
        """A worker's report on a direct run that came before its submit."""
        worker, report, frames = early
        if isinstance(report, DoneItem):
            self.task_finished(worker, report, frames)
        elif isinstance(report, FailedItem):
            self.task_erred(worker, report, frames or [])
        elif isinstance(report, TaskSeceded):
            self.task_seceded(worker, report)
        elif isinstance(report, TaskAccepted):
            self.task_accepted(worker, report)
        else:
            self.task_refused(worker, report)

    def release(self, client_ident: bytes, keys: Iterable[str]) -> None:
        """A client dropped its last future for each of ``keys``."""
        client = self.clients.get(client_ident)
        if client is None:
            return
        unwanted = self.graph.maybe_unwanted
        for key in keys:
            ts = self.tasks.get(key)
            if ts is not None and ts in client.wants:
                client.wants.discard(ts)
                ts.who_wants.discard(client)
                unwanted.append(ts)
        self._settle()

    def update_data(self, client_ident: bytes, items: list[ScatteredItem],
                    seq: int | None = None) -> None:
        """A client put data on workers itself (scatter): the ``items`` of an
        ``update-data`` message numbered ``seq`` with its submits (see
        ClientRecord.seen).

        During recovery it may also name workers that have not come back yet.
        """
        client = self.clients.get(client_ident)
        if client is None:
            return
        if seq is not None:
            client.seen = seq
        for item in items:
            self.graph.scattered(client, item.key, item.nbytes, item.workers)
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

    def task_finished(self, worker_ident: bytes, item: DoneItem,
                      value: Frames | None = None) -> None:
        """A worker computed ``item.key`` and holds its result of ``item.nbytes``.

        ``value``: the pickled result, when small and sent along for the
        clients waiting for it (see ``send_result`` in Placement.assign).
        ``item.run``: the run id of the compute message the worker answers.
        Only a report of the task's current run on that worker counts: an
        earlier run's report may come after the center told the worker to drop
        the key, so that data may be gone. ``item.direct``: a run a client
        chose (see DirectRuns).
        """
        key, run = item.key, item.run
        if item.direct and not self.direct.submitted(key, run):
            self.direct.hold_early(EarlyReport(worker_ident, item, value))
            return
        ws = self.workers.get(worker_ident)
        if ws is None:
            return
        ts = self.tasks.get(key)
        recovery = self.recovery
        if ts is None and recovery.recovering and not self.placement.assigned_here(run):
            # submitted to the center before this one: a client may claim it
            recovery.keep_unclaimed(key, ws, item.nbytes)
            return
        if ts is None or ts.processing_on is not ws:
            if ts is not None and recovery.takes_earlier_run(ts, run, item.direct):
                recovery.take_result(ts, ws, item.nbytes, value)
                self._settle()
            elif ts is None or ws not in ts.who_has:
                # Forgotten, failed, taken back, or run by a worker the center
                # gave up on and done elsewhere since: the worker drops its copy.
                self.outbox.add(ws.ident, ReleaseKeys, key)
            return
        if run != ts.run:
            # An earlier run here, released since and assigned again: the worker
            # reports the current run too (see worker_state.WorkerState.compute).
            return
        if recovery.expected:
            recovery.expected.pop(key, None)
        duration = plausible_seconds(item.duration)
        if duration is not None:
            self.placement.timed(ts.group, duration)
        self.run_totals.ran(ts.group, True, duration)
        if self.graph.observer is not None:
            self.graph.observer.ran(ts, ws, True, item.start, duration, item.thread)
        self.placement.unassign(ts)
        self.graph.add_holder(ts, ws, item.nbytes)
        if ts.state != MEMORY:
            self.graph.finish(ts, value)
        if ws.retiring:  # a direct run it finished: hand its result on too
            self.lifecycle.finished_while_retiring(ws, ts)
        self._settle()

    def keys_added(self, worker_ident: bytes, item: KeyAdded) -> None:
        """A worker fetched a copy of ``item.key`` for a task of its own."""
        ws = self.workers.get(worker_ident)
        if ws is None:
            return
        source = item.source
        if source is not None:  # (else it was here already: no copy)
            nbytes = min(max(item.nbytes, 0), MAX_NBYTES)
            self.transfer_bytes += nbytes
            observer = self.graph.observer
            if observer is not None and item.start is not None and item.stop is not None:
                observer.transferred(item.key, source, ws, nbytes, item.start, item.stop)
        ts = self.tasks.get(item.key)
        if ts is None or ts.state != MEMORY:
            self.outbox.add(ws.ident, ReleaseKeys, item.key)
        else:
            self.graph.add_holder(ts, ws, item.nbytes)
            self.lifecycle.copied(ts)

    def task_erred(self, worker_ident: bytes, item: FailedItem, exception: Frames) -> None:
        """A task raised on a worker; ``exception`` is the pickled error, opaque here.
        (``item.run`` and ``item.direct``: as for :meth:`task_finished`.)"""
        if item.direct and not self.direct.submitted(item.key, item.run):
            self.direct.hold_early(EarlyReport(worker_ident, item, exception))
            return
        ts = self._current_run(worker_ident, item.key, item.run)
        if ts is None:
            return
        ws = ts.processing_on
        assert ws is not None
        self.run_totals.ran(ts.group, False, None)
        if self.graph.observer is not None:
            self.graph.observer.ran(ts, ws, False, item.start, plausible_seconds(item.duration),
                                    item.thread)
        self.placement.unassign(ts)
        self.graph.retry_or_err(ts, exception)
        tell_if_retired(ws, self.outbox)  # (a direct run may have kept it)
        self._settle()

    def task_seceded(self, worker_ident: bytes, report: TaskSeceded) -> None:
        """A running task waits on other tasks and gave its thread back: the worker
        may take one more task, or a task waiting on tasks would deadlock it."""
        if report.direct and not self.direct.submitted(report.key, report.run):
            self.direct.hold_early(EarlyReport(worker_ident, report))
            return
        ts = self._current_run(worker_ident, report.key, report.run)
        if ts is None or ts in self.workers[worker_ident].seceded:
            return
        self.direct.confirmed(ts)
        self.placement.seceded(ts)
        self._settle()

    def task_accepted(self, worker_ident: bytes, report: TaskAccepted) -> None:
        """A worker runs a task a client sent it straight, in ``report.run``, and
        has not reported on it yet: it is not to be placed again (see sweep_direct)."""
        if not self.direct.submitted(report.key, report.run):
            self.direct.hold_early(EarlyReport(worker_ident, report))
            return
        ts = self._current_run(worker_ident, report.key, report.run)
        if ts is not None:
            self.direct.confirmed(ts)

    def task_refused(self, worker_ident: bytes, report: TaskRefused) -> None:
        """A worker will not run a task a client sent it straight (see
        worker_state.WorkerState.run_direct): it is placed as any other."""
        if not self.direct.submitted(report.key, report.run):
            self.direct.hold_early(EarlyReport(worker_ident, report))
            return
        ts = self._current_run(worker_ident, report.key, report.run)
        if ts is not None:
            ws = ts.processing_on
            assert ws is not None
            self.placement.take_back(ts)
            tell_if_retired(ws, self.outbox)
            self._settle()

    def sweep_direct(self) -> None:
        """Called every few seconds: direct runs never confirmed are asked to be
        refused, and early reports whose submit never came are dropped (see
        DirectRuns.sweep)."""
        self.direct.sweep()
        self._settle()

    def sync(self, worker_ident: bytes, keys: Iterable[str]) -> None:
        """A client put data on a worker that held ``keys`` already: it waits
        for this answer, which must come after any word sent to it of them
        before, a release of its old copies (see TaskGraph.sync)."""
        self.graph.sync(worker_ident, keys)
        self._settle()

    def missing_data(self, worker_ident: bytes, report: MissingData) -> None:
        """A worker could not fetch the ``missing`` inputs of ``key`` from the
        holders it asked, ``tried`` (addresses; None: every holder). Those lose
        their copies; a copy made elsewhere since is kept, and the task placed
        again."""
        ts = self._current_run(worker_ident, report.key, report.run)
        if ts is None:
            return
        self.placement.unassign(ts)
        self.graph.inputs_missing(ts, report.missing, report.tried)
        self._settle()

    def _current_run(self, worker_ident: bytes, key: str, run: int) -> TaskState | None:
        """The task a worker's report is about, if it is running there in that
        run; else None, and the report is stale."""
        ts = self.tasks.get(key)
        ws = self.workers.get(worker_ident)
        if ts is None or ws is None or ts.processing_on is not ws or run != ts.run:
            return None
        return ts

    # ------------------------------------------------------------------ upkeep

    def collect_garbage(self) -> None:
        """Release and forget more of what earlier events let go of."""
        self._settle()

    def compact(self) -> None:
        """Make the tables of an empty graph anew: emptied dicts and sets keep
        the size they grew to. Each part makes its own anew; the clients'
        are the scheduler's."""
        if not self.tasks:
            self.graph.compact()
            self.placement.compact()
            for client in self.clients.values():
                client.wants = set()

    def describe_key(self, key: str) -> dict[str, Any] | None:
        """What the center knows of ``key``, for the dashboard's page of it
        (see messages.DescribeKey); None if it does not know the key."""
        ts = self.tasks.get(key)
        if ts is None:
            return None
        dependents: list[str] = []
        for dependent in ts.dependents:
            if len(dependents) == MAX_DESCRIBED_DEPENDENTS:
                break
            dependents.append(dependent.key)
        return {
            "key": ts.key, "state": ts.state, "group": ts.group, "priority": -ts.priority[0],
            "nbytes": ts.nbytes, "who_has": [ws.address for ws in ts.who_has],
            "processing_on": ts.processing_on.address if ts.processing_on else None,
            "waiting_on": [dep.key for dep in ts.waiting_on],
            "dependencies": [dep.key for dep in ts.dependencies],
            "dependents": dependents, "clients": len(ts.who_wants), "retries": ts.retries,
            "error": [bytes(f) for f in ts.exception] if ts.exception is not None else None,
        }

    def info(self) -> dict[str, Any]:
        """A summary for ``Executor.scheduler_info()``."""
        counts: dict[str, int] = defaultdict(int)
        for ts in self.tasks.values():
            counts[ts.state] += 1
        workers = {
            ws.address: {
                # the process (as its last heartbeat said), and the results
                # it holds in memory and on disk (see managed_bytes)
                "name": ws.name, "nthreads": ws.nthreads, "memory": ws.rss,
                "managed": managed_bytes(ws), "spilled": ws.spilled,
                "memory_limit": ws.memory_limit, "resources": ws.resources,
                "executing": min(len(ws.processing), ws.nthreads),
                "queued": max(0, len(ws.processing) - ws.nthreads),
                "keys": len(ws.has_what),
                "paused": ws.paused,
            }
            for ws in self.workers.values()
        }
        return {"workers": workers, "tasks": dict(counts)}

