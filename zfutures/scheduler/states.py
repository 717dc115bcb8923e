"""A task's states at the center, and every change between them, as data.

A task's life::

    waiting ──▶ ready ──▶ processing ──▶ memory ──▶ released ──▶ (forgotten)
       │          │            │  ▲                    │
       │          │            │  └── a worker died ───┘ wanted again: recompute
       └──────────┴────────────┴──▶ erred

- ``waiting``: some dependency is not in memory yet.
- ``ready``: all dependencies are in memory; waits at the center for a slot
  (the tasks without inputs of a big submit wait in per-worker blocks: see
  ``Placement.root_blocks``).
- ``processing``: sent to one worker.
- ``memory``: held by one or more workers (``who_has``).
- ``released``: nobody needs the data any more, but a dependent that still
  exists may need it recomputed (lineage), so the task itself is kept. A new
  task starts here too.
- ``erred``: the task (or one of its dependencies) raised.

The drawing shows the usual paths; :data:`TRANSITIONS` lists every change
the scheduler makes, each with the events that make it, and
``TaskGraph.set_state`` refuses any other with :class:`IllegalTransition`,
before changing anything.

The check is always on, and costs nothing of its own: the same table tells
``set_state`` whether the task enters or leaves flight (see
:data:`FLIGHT_STEP`). An illegal change raises before that task changes;
the center logs it (see Center._handle) and the rest of that event is not
handled.
"""
from __future__ import annotations

WAITING, READY, PROCESSING, MEMORY, RELEASED, ERRED = (
    "waiting", "ready", "processing", "memory", "released", "erred")

STATES = (WAITING, READY, PROCESSING, MEMORY, RELEASED, ERRED)

#: On its way to memory: a dependent in these states counts among its
#: inputs' ``waiters`` (and keeps them wanted).
IN_FLIGHT = frozenset((WAITING, READY, PROCESSING))

#: (from, to) -> the events that make that change; no other change is legal.
TRANSITIONS: dict[tuple[str, str], str] = {
    (RELEASED, WAITING): "wanted: a new task, or one to recompute",
    (RELEASED, PROCESSING): "its client sent it straight to a worker (a direct run)",
    (RELEASED, MEMORY): "a worker holds its result: scattered, or brought back "
                        "after the center restarted",
    (RELEASED, ERRED): "an input the center does not know, or scattered data lost",
    (WAITING, READY): "its last input came into memory",
    (WAITING, PROCESSING): "sent ahead to the worker computing its inputs",
    (WAITING, MEMORY): "a worker holds its result already (scattered, brought back)",
    (WAITING, ERRED): "an input erred",
    (WAITING, RELEASED): "nobody wants it any more",
    (READY, PROCESSING): "placed on a worker with room",
    (READY, WAITING): "an input was lost with its worker",
    (READY, MEMORY): "a worker holds its result already (scattered, brought back)",
    (READY, ERRED): "an input recomputed after a missing-data report erred",
    (READY, RELEASED): "nobody wants it any more",
    (PROCESSING, WAITING): "its worker died, paused, retired or refused it, an "
                           "input went missing, or it raised and is retried",
    (PROCESSING, MEMORY): "its worker finished it (or another holds its result)",
    (PROCESSING, ERRED): "it raised, or killed too many workers, or an input erred",
    (PROCESSING, RELEASED): "nobody wants it any more: its worker drops it",
    (MEMORY, RELEASED): "nobody wants it any more, or its last holder was lost",
    (ERRED, MEMORY): "a client scattered data under its key",
    (ERRED, RELEASED): "nobody wants it any more",
}

LEAVES_FLIGHT, STAYS, ENTERS_FLIGHT = -1, 0, 1

#: from -> {to -> whether the change takes the task out of flight, into it,
#: or neither}: TRANSITIONS as ``set_state`` reads them, with what it must do
#: besides. (Nested by state: two look-ups of strings cost less than one of a
#: tuple made for the purpose.)
FLIGHT_STEP: dict[str, dict[str, int]] = {
    old: {new: (new in IN_FLIGHT) - (old in IN_FLIGHT) for source, new in TRANSITIONS
          if source == old}
    for old in STATES}


class IllegalTransition(RuntimeError):
    """A task was to change state in a way :data:`TRANSITIONS` does not list:
    a bug in the scheduler."""

    def __init__(self, key: str, old: str, new: str):
        super().__init__(f"task {key!r} may not go from {old!r} to {new!r}")
        self.key, self.old, self.new = key, old, new
