"""What the center tells its watchers (the dashboard): counts, workers, runs.

:class:`Observer` exists only while someone watches (see Scheduler.watch):
without it, each hook in the scheduler is one ``is not None`` check. It
keeps, per task group (a key up to its last "-", ``TaskState.group``), the
tasks in each state and the runs' totals; the task runs and transfers since
the last :meth:`Observer.take` while a watcher asked for the stream; and
what it sent last, so that the next ``events`` carries only the groups that
changed and goes only when something did (or once a second, so that the
workers' silence and memory stay fresh). No I/O, no clock: the center
passes the time in.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from typing import Any

from ..messages import Events, GroupCounts, TaskRun, Transfer, WorkerStats
from .records import TaskState, WorkerRecord
from .states import STATES

#: Seconds between two ``events`` to the watchers at most (the center's tick
#: for them): four a second is smooth enough for a page redrawn twice a second.
EVENTS_INTERVAL = 0.25

#: An ``events`` goes at least this often (seconds) even when nothing
#: changed: the workers' ``silent`` and memory stay fresh.
QUIET_LIMIT = 1.0

#: Task runs and transfers kept between two takes, at most: past these, the
#: oldest go (a watcher draws the last minute; 100,000 runs in a quarter
#: second is more than a center handles).
MAX_RUNS = 100_000
MAX_TRANSFERS = 20_000


#: The most bytes a worker's numbers are taken to be (its memory, its
#: results in memory and on disk): a larger report is read as this, so that
#: every number the center sends of it fits msgpack's 64-bit integers.
MAX_REPORTED_BYTES = 2**62

#: Task groups whose run totals :class:`RunTotals` keeps, at most: keys
#: without a "-" make a group each, and the center may run for months.
MAX_TOTALS = 10_000


def plausible_seconds(duration: float | None) -> float | None:
    """A run's duration as a worker reported it, or None if it makes no
    sense (negative, huge, NaN): checked once, where a report comes in.

    >>> plausible_seconds(0.5), plausible_seconds(-1.0), plausible_seconds(float("nan"))
    (0.5, None, None)
    """
    return duration if duration is not None and 0.0 <= duration < 1e9 else None


class RunTotals:
    """Runs finished and failed, and the seconds the finished ran, per task
    group, since the center started: always counted (a dashboard started
    late, or a watcher that came back, still reads the whole totals, as
    Prometheus counters must). Past MAX_TOTALS groups, the one that ran
    least recently is dropped (to a reader, a counter reset).

    >>> totals = RunTotals()
    >>> totals.ran("inc", True, 0.5); totals.ran("inc", False, None)
    >>> totals.of("inc")
    (1, 1, 0.5)
    """

    def __init__(self) -> None:
        self.groups: OrderedDict[str, list[float]] = OrderedDict()  # [finished, failed, seconds]
        #: over all groups, never dropped: what a counter of the cluster reads
        self.finished = 0
        self.failed = 0

    def ran(self, group: str, ok: bool, duration: float | None) -> None:
        """A run of a task of ``group`` ended, ``ok`` or raising, after
        ``duration`` seconds (None if unknown; see plausible_seconds)."""
        groups = self.groups
        totals = groups.get(group)
        if totals is None:
            totals = groups[group] = [0, 0, 0.0]
            if len(groups) > MAX_TOTALS:
                groups.popitem(last=False)
        else:
            groups.move_to_end(group)
        if ok:
            totals[0] += 1
            self.finished += 1
            if duration is not None:
                totals[2] += duration
        else:
            totals[1] += 1
            self.failed += 1

    def of(self, group: str) -> tuple[int, int, float]:
        """``(finished, failed, seconds)`` of ``group``."""
        totals = self.groups.get(group)
        return (int(totals[0]), int(totals[1]), totals[2]) if totals is not None else (0, 0, 0.0)


class _Group:
    """One task group's tasks by state."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = dict.fromkeys(STATES, 0)

    def as_message(self, name: str, totals: RunTotals) -> GroupCounts:
        c = self.counts
        return GroupCounts(name, c["waiting"], c["ready"], c["processing"], c["memory"],
                           c["erred"], c["released"], *totals.of(name))


class Observer:
    """Counts of the tasks in ``tasks`` by group and state, from now on kept
    in step by the scheduler's hooks; runs and transfers recorded if
    ``stream``.

    >>> from zfutures.scheduler.records import TaskState
    >>> ts = TaskState("inc-1", None, (0, 0))
    >>> o = Observer({"inc-1": ts}.values(), stream=False)
    >>> [(g.group, g.released) for g in o.take(100.0, [], {}).groups]
    [('inc', 1)]
    """

    def __init__(self, tasks: Iterable[TaskState], stream: bool = False,
                 totals: RunTotals | None = None):
        self.totals = totals if totals is not None else RunTotals()
        self.groups: dict[str, _Group] = {}
        self.changed: set[str] = set()
        self.runs: deque[TaskRun] = deque(maxlen=MAX_RUNS)
        self.transfers: deque[Transfer] = deque(maxlen=MAX_TRANSFERS)
        self.stream = stream
        self._last_sent: float | None = None
        self._last_workers: list[tuple[Any, ...]] = []  # what was sent, less their silence
        for ts in tasks:
            self._group(ts.group).counts[ts.state] += 1
        self.changed.update(self.groups)

    def _group(self, name: str) -> _Group:
        group = self.groups.get(name)
        if group is None:
            group = self.groups[name] = _Group()
        return group

    def set_stream(self, stream: bool) -> None:
        """Record runs and transfers (a watcher wants the stream) or not."""
        self.stream = stream
        if not stream:
            self.runs.clear()
            self.transfers.clear()

    # ------------------------------------------------------------------ hooks

    def moved(self, ts: TaskState, old: str, new: str) -> None:
        """``ts`` went from state ``old`` to ``new``."""
        counts = self._group(ts.group).counts
        counts[old] -= 1
        counts[new] += 1
        self.changed.add(ts.group)

    def added(self, ts: TaskState) -> None:
        """A new task (it starts released)."""
        self._group(ts.group).counts[ts.state] += 1
        self.changed.add(ts.group)

    def forgotten(self, ts: TaskState) -> None:
        """The center forgot ``ts`` (it leaves in its state, released)."""
        self._group(ts.group).counts[ts.state] -= 1
        self.changed.add(ts.group)

    def ran(self, ts: TaskState, ws: WorkerRecord, ok: bool, start: float | None,
            duration: float | None, thread: int | None) -> None:
        """A run of ``ts`` on ``ws`` ended, ``ok`` or raising (counted in the
        totals already); the worker's clock and thread, as it reported them
        (None from a worker that did not say, or nonsense: not drawn)."""
        self.changed.add(ts.group)
        if self.stream and start is not None and duration is not None and thread is not None:
            self.runs.append(TaskRun(ts.key, ws.address, thread, start, start + duration, ok))

    def transferred(self, key: str, source: str, ws: WorkerRecord, nbytes: int,
                    start: float, stop: float) -> None:
        """``ws`` copied ``key`` (``nbytes``) from the worker at ``source``."""
        if self.stream:
            self.transfers.append(Transfer(key, source, ws.address, nbytes, start, stop))

    # ------------------------------------------------------------------ output

    def all_groups(self) -> list[GroupCounts]:
        """Every group's counts, those with no task left but run totals too:
        for a watcher that just came."""
        totals, groups = self.totals, self.groups
        ran_only = [name for name in totals.groups if name not in groups]
        return [group.as_message(name, totals) for name, group in groups.items()] + \
            [_Group().as_message(name, totals) for name in ran_only]

    def take(self, now: float, workers: Iterable[WorkerRecord], silent: Mapping[bytes, float],
             counters: dict[str, int] | None = None,
             force: bool = False) -> Events | None:
        """The ``events`` to send now (the center's wall clock), or None if
        nothing changed and the last went less than QUIET_LIMIT ago (unless
        ``force``). ``silent``: seconds since the center heard from each worker
        (by ident); ``counters``: the center's totals."""
        stats = [worker_stats(ws, silent.get(ws.ident, 0.0)) for ws in workers]
        # (silence grows all the time: it alone is no change)
        seen = [s[:-1] for s in stats]
        same_workers = seen == self._last_workers
        quiet = self._last_sent is not None and now - self._last_sent < QUIET_LIMIT
        if quiet and not force and same_workers and not self.changed and not self.runs \
                and not self.transfers:
            return None
        groups = self.groups
        changed = []
        for name in self.changed:
            group = groups.get(name)
            if group is not None:
                changed.append(group.as_message(name, self.totals))
                if not any(group.counts.values()):
                    # No task of it left: said once with its zeros, then
                    # forgotten here (its run totals stay in RunTotals).
                    del groups[name]
        self.changed = set()
        runs, transfers = list(self.runs), list(self.transfers)
        self.runs.clear()
        self.transfers.clear()
        self._last_sent = now
        self._last_workers = seen
        return Events(now, changed, stats, runs, transfers, counters or {})


def worker_stats(ws: WorkerRecord, silent: float) -> WorkerStats:
    """``ws`` as a watcher sees it (``silent``: seconds since it was heard)."""
    processing = len(ws.processing)  # (counted as Scheduler.info does)
    return WorkerStats(
        ws.address, ws.name, ws.nthreads, ws.rss, managed_bytes(ws), ws.spilled,
        ws.memory_limit, ws.cpu, min(processing, ws.nthreads),
        max(0, processing - ws.nthreads), len(ws.has_what), ws.paused, silent)


def managed_bytes(ws: WorkerRecord) -> int:
    """The bytes of ``ws``'s results in its memory, for Scheduler.info and
    the watchers alike.

    While the worker has nothing on disk, that is the center's own count
    of the results it holds (``ws.nbytes``): exact, and current with the
    last result. Once it spilled some, only the worker knows which are
    still in memory: its own report, as of its last heartbeat. (A worker
    that reports bytes on disk but never its managed bytes is counted by
    the center, disk and all.)

    >>> ws = WorkerRecord(b"w", "tcp://127.0.0.1:9000", "w", nthreads=1)
    >>> ws.nbytes, ws.managed_reported = 300, 250   # (a heartbeat of a moment ago)
    >>> managed_bytes(ws)
    300
    >>> ws.spilled, ws.managed_reported = 200, 100
    >>> managed_bytes(ws)
    100
    """
    if ws.spilled and ws.managed_reported is not None:
        return ws.managed_reported
    return min(max(ws.nbytes, 0), MAX_REPORTED_BYTES)
