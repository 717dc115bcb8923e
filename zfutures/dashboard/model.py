"""What the dashboard knows of the cluster: the center's "events", applied.

Sans-I/O: :meth:`Model.apply` takes an :class:`~zfutures.messages.Events`
and the local clock, and every buffer is bounded, so a dashboard left open
through a run of millions of tasks holds a few megabytes at most. The pages,
the server-sent events, the JSON and the Prometheus collector all read from
here; nothing here talks to a socket.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from ..messages import Events, GroupCounts, TaskRun, Transfer, WorkerStats

#: The task stream's window: what the page draws, in seconds.
WINDOW = 60.0
#: At most this many runs and transfers kept (a 60 s window of a fast run can
#: hold more: at ~80 bytes a run, 20,000 is under 2 MB; the page cannot draw
#: more bars than its pixels anyway).
MAX_RUNS = 20_000
MAX_TRANSFERS = 5_000
#: Each worker's latest runs, for its own page.
RUNS_PER_WORKER = 100
#: A group whose tasks are all forgotten (every count zero) is dropped after
#: this long unchanged: a long-lived cluster runs many short-lived groups.
IDLE_GROUP = 600.0

#: The states a task group's counts are kept by, in GroupCounts' order.
STATES = ("waiting", "ready", "processing", "memory", "erred", "released")


@dataclass
class Group:
    """A task group's latest counts, with when they last changed."""

    counts: GroupCounts
    #: the model's version when it changed (for deltas), and the local clock then
    version: int
    changed: float


@dataclass
class Model:
    """The latest state of the cluster as the center told it, and the recent
    task stream."""

    groups: dict[str, Group] = field(default_factory=dict)
    workers: dict[str, WorkerStats] = field(default_factory=dict)
    runs: deque[TaskRun] = field(default_factory=lambda: deque(maxlen=MAX_RUNS))
    transfers: deque[Transfer] = field(default_factory=lambda: deque(maxlen=MAX_TRANSFERS))
    worker_runs: dict[str, deque[TaskRun]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    #: the center's clock in its latest events (0 before any)
    time: float = 0.0
    #: bumped by every apply; a group changed at version v is news to a reader at < v
    version: int = 0
    #: how many runs and transfers were ever appended: a reader's cursor
    runs_seen: int = 0
    transfers_seen: int = 0
    #: bumped by clear: a reader of deltas from before starts again from a snapshot
    epoch: int = 0

    def apply(self, events: Events, now: float) -> None:
        """Take in one "events" message; ``now`` is the local monotonic clock."""
        self.version += 1
        self.time = events.time
        for counts in events.groups:
            self.groups[counts.group] = Group(counts, self.version, now)
        self.workers = {w.address: w for w in events.workers}
        for gone in self.worker_runs.keys() - self.workers.keys():
            del self.worker_runs[gone]
        for run in events.runs:
            self.runs.append(run)
            per_worker = self.worker_runs.get(run.worker)
            if per_worker is None:
                per_worker = self.worker_runs[run.worker] = deque(maxlen=RUNS_PER_WORKER)
            per_worker.append(run)
        self.runs_seen += len(events.runs)
        self.transfers.extend(events.transfers)
        self.transfers_seen += len(events.transfers)
        self.counters.update(events.counters)
        self._expire(now)

    def clear(self) -> None:
        """Forget everything: the center restarted, and will tell it all again."""
        self.groups.clear()
        self.workers.clear()
        self.worker_runs.clear()
        self.runs.clear()
        self.transfers.clear()
        self.counters.clear()
        self.version += 1
        self.epoch += 1

    def _expire(self, now: float) -> None:
        # Runs carry the workers' clocks, which may differ from the center's by
        # a little; the window is measured on the center's.
        horizon = self.time - WINDOW
        while self.runs and self.runs[0].stop < horizon:
            self.runs.popleft()
        while self.transfers and self.transfers[0].stop < horizon:
            self.transfers.popleft()
        idle = [name for name, g in self.groups.items()
                if now - g.changed > IDLE_GROUP and not any(g.counts[1:7])]
        for name in idle:
            del self.groups[name]

    # ------------------------------------------------------------------ readings

    def tasks(self) -> dict[str, int]:
        """Tasks by state, over all groups."""
        totals = dict.fromkeys(STATES, 0)
        for g in self.groups.values():
            for state in STATES:
                totals[state] += getattr(g.counts, state)
        return totals

    def finished(self) -> tuple[int, int]:
        """Runs that finished and runs that failed, since the center started
        (the center's counters; the sum over the groups if it sends none)."""
        if "finished" in self.counters:
            return self.counters["finished"], self.counters.get("failed", 0)
        return (sum(g.counts.finished for g in self.groups.values()),
                sum(g.counts.failed for g in self.groups.values()))

    def state(self) -> dict[str, Any]:
        """The numbers of /metrics as one JSON-able dict (see /api/v1/state)."""
        finished, failed = self.finished()
        return {
            "time": self.time,
            "tasks": self.tasks(),
            "groups": {name: group_dict(g.counts) for name, g in sorted(self.groups.items())},
            "workers": {a: w._asdict() for a, w in sorted(self.workers.items())},
            "counters": dict(self.counters),
            "finished": finished,
            "failed": failed,
        }

    def snapshot(self) -> tuple[dict[str, Any], Cursor]:
        """Everything the live page draws, and the cursor for :meth:`delta`."""
        return self._message("snapshot", list(self.groups.values()), list(self.runs),
                             list(self.transfers)), self._cursor()

    def delta(self, cursor: Cursor) -> tuple[dict[str, Any], Cursor]:
        """What changed since ``cursor``: the groups changed, the runs and
        transfers added (those already dropped from the buffers are lost to
        a slow reader), every worker and counter; or a whole snapshot again
        if the model was cleared since (a restarted center)."""
        if cursor.epoch != self.epoch:
            return self.snapshot()
        groups = [g for g in self.groups.values() if g.version > cursor.version]
        runs = _tail(self.runs, self.runs_seen - cursor.runs)
        transfers = _tail(self.transfers, self.transfers_seen - cursor.transfers)
        message = self._message("delta", groups, runs, transfers)
        # A group dropped as idle is no news: the page drops it too when it is all zero.
        return message, self._cursor()

    def _cursor(self) -> Cursor:
        return Cursor(self.version, self.runs_seen, self.transfers_seen, self.epoch)

    def _message(self, kind: str, groups: list[Group], runs: list[TaskRun],
                 transfers: list[Transfer]) -> dict[str, Any]:
        return {
            "kind": kind,
            "time": self.time,
            "groups": {g.counts.group: group_dict(g.counts) for g in groups},
            "workers": [w._asdict() for _, w in sorted(self.workers.items())],
            # Compact rows: a snapshot can hold 20,000 runs.
            "runs": [[r.key, r.worker, r.thread, r.start, r.stop, r.ok] for r in runs],
            "transfers": [[t.key, t.source, t.target, t.nbytes, t.start, t.stop]
                          for t in transfers],
            "counters": dict(self.counters),
        }


@dataclass(frozen=True)
class Cursor:
    """Where a reader of deltas is: the model's version and the runs and
    transfers it has seen."""

    version: int
    runs: int
    transfers: int
    epoch: int


def group_dict(counts: GroupCounts) -> dict[str, Any]:
    """A group's counts without its name."""
    d = counts._asdict()
    del d["group"]
    return d


def _tail(buffer: deque[Any], n: int) -> list[Any]:
    if n <= 0:
        return []
    tail = list(islice(reversed(buffer), n))
    tail.reverse()
    return tail
