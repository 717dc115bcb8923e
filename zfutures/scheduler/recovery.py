"""Recovery after the center (re)starts: results computed before it, claimed again.

Workers come back holding keys this center never saw, and clients submit those
keys again. Until :meth:`Recovery.end`, such keys wait unclaimed (key ->
holder -> nbytes), and a key a client says is held by a worker that has not
come back yet waits for it (key -> addresses) rather than being recomputed.
Run ids start at a random number per center (see ``Placement.first_run``), so
a report of a run a previous center assigned is told from one of this center's.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ..messages import ReleaseKeys
from ..protocol import Frames
from .outbox import Outbox
from .records import TaskState, WorkerRecord, is_wanted
from .states import ERRED, MEMORY, PROCESSING

if TYPE_CHECKING:
    from .graph import TaskGraph
    from .placement import Placement


class Recovery:
    """Keys brought back by workers and clients after the center (re)started.

    Shares the scheduler's ``tasks``, ``workers_by_address`` and outbox.
    """

    def __init__(self, tasks: dict[str, TaskState], workers_by_address: dict[str, WorkerRecord],
                 outbox: Outbox, graph: TaskGraph, placement: Placement, recovering: bool):
        self.tasks = tasks
        self.workers_by_address = workers_by_address
        self.outbox = outbox
        self.graph = graph
        self.placement = placement
        self.recovering = recovering
        self.unclaimed: dict[str, dict[WorkerRecord, int]] = {}
        self.expected: dict[str, set[str]] = {}

    def worker_joined(self, ws: WorkerRecord, keys: Mapping[str, int]) -> None:
        """``ws`` registered holding ``keys`` (key -> nbytes): each result is
        taken if still wanted, kept for a client to claim during recovery, or
        dropped; keys expected on it that it did not bring are recomputed."""
        for key, nbytes in keys.items():
            ts = self.tasks.get(key)
            if ts is not None and self.takes_result(ts):  # computed meanwhile
                self.take_result(ts, ws, nbytes or ts.nbytes)
            elif ts is None and self.recovering:
                self.keep_unclaimed(key, ws, nbytes)
            else:
                self.outbox.add(ws.ident, ReleaseKeys, key)
        if self.expected:  # keys a client expected here that it did not bring back
            for key, addresses in list(self.expected.items()):
                addresses.discard(ws.address)
                if not addresses:
                    del self.expected[key]
                    self.graph.recompute_if_wanted(self.tasks.get(key))

    def worker_left(self, ws: WorkerRecord) -> None:
        """``ws`` is gone: the keys it brought back are no longer there to claim."""
        if self.unclaimed:
            for key, holders in list(self.unclaimed.items()):
                if holders.pop(ws, None) is not None and not holders:
                    del self.unclaimed[key]

    def end(self) -> None:
        """Recovery is over: release unclaimed keys; recompute what never came back."""
        self.recovering = False
        for key, holders in self.unclaimed.items():
            for ws in holders:
                self.outbox.add(ws.ident, ReleaseKeys, key)
        self.unclaimed.clear()
        expected = list(self.expected)
        self.expected.clear()
        for key in expected:
            self.graph.recompute_if_wanted(self.tasks.get(key))

    def keep_unclaimed(self, key: str, ws: WorkerRecord, nbytes: int) -> None:
        """``ws`` holds the result of ``key``, which this center never saw: it
        waits for a client to submit the key again."""
        self.unclaimed.setdefault(key, {})[ws] = nbytes

    def claim(self, ts: TaskState, holders: Iterable[str]) -> None:
        """During recovery, a client brought back ``ts``, last seen on ``holders``:
        take it from the workers that came back with it, or wait for them."""
        for ws, nbytes in self.unclaimed.pop(ts.key, {}).items():
            self.graph.add_holder(ts, ws, nbytes)
        if ts.who_has:
            self.graph.finish(ts)
            return
        absent = {a for a in holders if a not in self.workers_by_address}
        if absent:
            self.expected[ts.key] = absent

    def takes_result(self, ts: TaskState) -> bool:
        """Whether a result this center did not ask for (a worker computed it
        while the center was away) is taken for ``ts``: if it is still wanted
        and not done. (A key already in memory keeps its value: a second run of
        an impure task would differ.)"""
        return ts.state not in (ERRED, MEMORY) and is_wanted(ts)

    def takes_earlier_run(self, ts: TaskState, run: int, direct: bool) -> bool:
        """Whether a worker's result of ``ts`` in ``run`` comes from a run a
        previous center assigned, which this center never told the worker to
        drop, and is taken as for a key a worker registers with. (Not a direct
        run the center did not count: it may have told the worker to drop that
        one.)"""
        return not direct and not self.placement.assigned_here(run) \
            and self.takes_result(ts)

    def take_result(self, ts: TaskState, ws: WorkerRecord, nbytes: int,
                    value: Frames | None = None) -> None:
        """``ws`` holds ``ts``'s result: pending work on it stops, it is done."""
        if ts.state == PROCESSING:  # (a ready one leaves the queue in finish)
            self.graph.stop_pending_work(ts)
        self.graph.add_holder(ts, ws, nbytes)
        self.expected.pop(ts.key, None)
        self.graph.finish(ts, value)
