"""Direct runs: a client's lone task, sent straight to a worker as well as here.

The client picks the worker and a run id of its own, sends the task to the
worker and tells the center in its submit (``direct_worker``, ``direct_run``).
The two messages travel apart, so the worker's reports on the run may come
before the submit: they are held as :class:`EarlyReport` records and handled
when the submit comes. The worker confirms the run with its first report
(``task-accepted`` at the latest), or refuses it; one never confirmed is
asked to be refused (``drop-direct``) at the sweeps (:meth:`DirectRuns.sweep`,
every few seconds), and placed as any other task once it is.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple, Union

from ..messages import (
    DirectAccepted,
    DoneItem,
    DropDirect,
    DropItem,
    FailedItem,
    ReleaseKeys,
    TaskAccepted,
    TaskItem,
    TaskRefused,
    TaskSeceded,
)
from ..protocol import Frames
from .outbox import Outbox
from .records import ClientRecord, TaskState, WorkerRecord
from .states import RELEASED

if TYPE_CHECKING:
    from .graph import TaskGraph
    from .placement import Placement

logger = logging.getLogger(__name__)


#: A worker's report on a direct run, as it came: each names the run's key and run.
Report = Union[DoneItem, FailedItem, TaskSeceded, TaskAccepted, TaskRefused]


class EarlyReport(NamedTuple):
    """A worker's report on a direct run that came before its client's submit."""

    worker: bytes
    report: Report
    #: what came with it: the pickled result (DoneItem) or error (FailedItem)
    frames: Frames | None = None


class DirectRuns:
    """The direct runs not confirmed yet, the reports that came early, and
    the runs released before their worker reported on them.

    All three age by sweeps (``generation``): see :meth:`sweep`.
    """

    def __init__(self, tasks: dict[str, TaskState], workers: dict[bytes, WorkerRecord],
                 workers_by_address: dict[str, WorkerRecord], outbox: Outbox,
                 graph: TaskGraph, placement: Placement):
        self.tasks = tasks
        self.workers = workers
        self.workers_by_address = workers_by_address
        self.outbox = outbox
        self.graph = graph
        self.placement = placement
        # Task -> the generation it was counted in, until its worker confirms it.
        self.unconfirmed: dict[TaskState, int] = {}
        # Key -> [(generation, report)]: reports that came before the submit.
        self.early: dict[str, list[tuple[int, EarlyReport]]] = {}
        # (key, run) -> generation: direct runs released before their worker
        # reported on them (see hold_early).
        self.released_runs: dict[tuple[str, int], int] = {}
        self.generation = 0

    def runs_direct(self, ts: TaskState, item: TaskItem, client: ClientRecord) -> bool:
        """The client sent new ``ts`` straight to a worker too (``direct_worker``),
        in a run of its own (``direct_run``): count it as processing there, in
        that run, without sending it; True if so. The worker confirms it with
        its first report (see sweep), or refuses it.

        The worker decides whether it runs the task
        (worker_state.WorkerState.run_direct), and the client may take its
        result at once: so a run on a worker the center knows is counted
        whatever the center thinks of that worker (paused, retiring, busy), and
        is placed again only if the worker refuses it or dies. If the worker
        left, or the key is no longer new, the task is placed as usual, and the
        worker drops any copy; a report of the direct run is stale. A client
        that chose the key itself takes the result only once told
        ``direct-accepted`` (``direct_ack``).
        """
        run = ts.direct_run = item.direct_run
        if run is None or ts.state != RELEASED or ts.dependencies or \
                ts.restrictions is not None or ts.resources:
            return False
        ws = self.workers_by_address.get(item.direct_worker or "")
        if ws is None:
            return False
        ts.who_wants.add(client)
        client.wants.add(ts)
        self.placement.occupy(ts, ws)
        ts.run = run
        if item.direct_answered:
            ts.answered = client
        self.unconfirmed[ts] = self.generation
        if item.direct_ack:
            self.graph.tell(client, DirectAccepted, ts.key)
        return True

    def submitted(self, key: str, run: int) -> bool:
        """Whether the center heard of the direct run ``run`` of ``key`` from
        its client: a report on it is handled now, else held (hold_early)."""
        ts = self.tasks.get(key)
        return ts is not None and ts.direct_run == run

    def hold_early(self, report: EarlyReport) -> None:
        """Keep a worker's report on a direct run the center has not heard of
        from its client yet (the two travel apart), for the submit to handle
        (take_early); the sweeps drop it if none comes.

        A report of a run released before its worker reported on it (the
        client let the key go) is dropped instead: the worker was told to drop
        the run, and a later run of the key may be on its way there. Held, the
        sweep would tell the worker to drop the key again, whichever run it
        holds then.
        """
        key = report.report.key
        released = (key, report.report.run)
        if self.released_runs and released in self.released_runs:
            if not isinstance(report.report, TaskAccepted):  # (its last report)
                del self.released_runs[released]
            return
        self.early.setdefault(key, []).append((self.generation, report))

    def take_early(self, key: str) -> list[EarlyReport]:
        """The reports on ``key``'s direct run held for its submit, which came."""
        return [report for _, report in self.early.pop(key, ())]

    def confirmed(self, ts: TaskState) -> None:
        """The worker reported on ``ts``'s run: it has the task."""
        self.unconfirmed.pop(ts, None)

    def released(self, ts: TaskState) -> None:
        """``ts``'s direct run was taken off its worker before the worker
        reported on it: its reports may still come (see hold_early)."""
        self.released_runs[(ts.key, ts.run)] = self.generation

    def sweep(self) -> None:
        """Called every few seconds: a direct task its worker has not confirmed
        since the sweep before last probably never reached it (the worker
        restarted, say); the worker is asked to refuse it (drop-direct, at
        each sweep until it answers), and the task is placed again when it
        does. Not before: had the worker run it, its client may hold the
        result. Reports held as long are for submits that never came, and
        the results they announced are released."""
        self.generation += 1
        old = self.generation - 1
        for released, generation in list(self.released_runs.items()):
            if generation < old:  # (its report went elsewhere: the worker died, say)
                del self.released_runs[released]
        for ts, generation in self.unconfirmed.items():
            ws = ts.processing_on
            if generation < old and ws is not None:
                logger.warning("task %r, sent straight to worker %s, was not confirmed by "
                               "it; asking it to refuse it", ts.key, ws.address)
                self.outbox.add(ws.ident, DropDirect, DropItem(ts.key, ts.run))
        for key, reports in list(self.early.items()):
            kept = []
            for generation, report in reports:
                if generation >= old:
                    kept.append((generation, report))
                    continue
                holder, task = self.workers.get(report.worker), self.tasks.get(key)
                if isinstance(report.report, DoneItem) and holder is not None and \
                        (task is None or holder not in task.who_has):
                    self.outbox.add(report.worker, ReleaseKeys, key)
            if kept:
                self.early[key] = kept
            else:
                del self.early[key]
