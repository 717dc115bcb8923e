"""What the center knows of each task, worker and client: records only, no policy."""
from __future__ import annotations

import pickle
from collections.abc import Set as AbstractSet

from ..protocol import Frames
from .states import RELEASED

# Frames: opaque, as they came (bytes or zmq frames): a task's pickled call,
# its pickled result or error. The center never unpickles them.

#: The shared starting value of a task's dependents, waiting_on and waiters:
#: most tasks never have any, and an empty set costs 216 bytes, three per task
#: (a third of the center's memory per task). :func:`with_task` replaces it
#: with a set of the task's own when the first member comes.
NO_TASKS: frozenset[TaskState] = frozenset()


def with_task(tasks: AbstractSet[TaskState], ts: TaskState) -> set[TaskState]:
    """``tasks`` (a set, or NO_TASKS) with ``ts`` added; assign it back."""
    if tasks is NO_TASKS:
        return {ts}
    tasks.add(ts)  # type: ignore[attr-defined]
    return tasks  # type: ignore[return-value]


class TaskState:
    """Everything the center knows about one key."""

    __slots__ = (
        "key", "state", "payload", "priority", "dependencies", "dependents",
        "waiting_on", "waiters", "who_wants", "who_has", "processing_on", "nbytes",
        "exception", "retries", "suspicious", "restrictions", "loose",
        "resources", "affinity", "group", "run", "direct_run", "answered",
    )

    def __init__(self, key: str, payload: Frames | None, priority: tuple[int, int],
                 retries: int = 0):
        self.key = key
        self.state = RELEASED
        self.payload = payload            # opaque frames; None for scattered data
        self.priority = priority          # (-user priority, submission order)
        self.dependencies: list[TaskState] = []
        # (the next three start as the shared NO_TASKS: assign, never mutate it)
        self.dependents: AbstractSet[TaskState] = NO_TASKS
        self.waiting_on: AbstractSet[TaskState] = NO_TASKS  # dependencies not in memory yet
        self.waiters: AbstractSet[TaskState] = NO_TASKS     # dependents on their way to memory
        self.who_wants: set[ClientRecord] = set()
        self.who_has: set[WorkerRecord] = set()
        self.processing_on: WorkerRecord | None = None
        self.nbytes = 0
        self.exception: Frames | None = None  # pickled exception frames, when erred
        self.retries = retries
        self.suspicious = 0               # workers that died while running it
        self.restrictions: frozenset[str] | None = None  # worker addresses or names
        self.loose = False                # restrictions are only a preference
        self.resources: dict[str, float] | None = None  # needed while processing
        self.affinity: WorkerRecord | None = None  # ready, kept for this worker
        self.group = key.rpartition("-")[0] or key  # tasks timed together
        # The id of its latest assignment to a worker: reports name the run they
        # are about, so a report of an earlier run is never taken for this one.
        self.run = 0
        # The run its client chose, sending it straight to a worker (see
        # DirectRuns.runs_direct); None if it did not. The client, if it has
        # that run's result already (it need not hear of it).
        self.direct_run: int | None = None
        self.answered: ClientRecord | None = None

    def __repr__(self) -> str:
        return f"<Task {self.key!r} {self.state}>"

    def __lt__(self, other: TaskState) -> bool:  # for the ready heap
        return self.priority < other.priority


def is_direct(ts: TaskState) -> bool:
    """Whether ``ts`` runs in the run a client chose, sending it straight to
    its worker (see DirectRuns.runs_direct)."""
    return ts.direct_run is not None and ts.run == ts.direct_run


def is_wanted(ts: TaskState) -> bool:
    """Whether a client holds a future for ``ts`` or a dependent waits for it:
    a task nobody wants is released."""
    return bool(ts.who_wants or ts.waiters)


def pickled_error(exc: BaseException) -> Frames:
    """Frames of an error made by the center itself (never user payload), as
    a worker sends those of a task that raised."""
    return [pickle.dumps((exc, ""), protocol=5)]


class WorkerRecord:
    """A worker as the center sees it."""

    __slots__ = ("ident", "address", "name", "nthreads", "memory_limit", "resources",
                 "used_resources", "processing", "seceded", "has_what", "nbytes", "capacity",
                 "retiring", "moving", "paused", "ready_here", "queued", "rss", "cpu",
                 "managed_reported", "spilled")

    def __init__(self, ident: bytes, address: str, name: str, nthreads: int,
                 memory_limit: int = 0, resources: dict[str, float] | None = None,
                 capacity: int = 2):
        self.ident = ident
        self.address = address
        self.name = name
        self.nthreads = nthreads
        self.memory_limit = memory_limit
        self.resources = resources or {}
        self.used_resources = dict.fromkeys(self.resources, 0.0)
        self.processing: set[TaskState] = set()
        self.seceded: set[TaskState] = set()  # processing, but not holding a thread
        self.retiring = False                  # leaving: takes no tasks, hands its keys on
        self.paused = False                    # short of memory: takes no tasks for now
        self.moving: set[TaskState] = set()    # its keys still being copied elsewhere
        self.has_what: set[TaskState] = set()
        self.nbytes = 0
        self.capacity = capacity          # tasks it may always hold (running + queued)
        self.queued: dict[str, int] = {}  # task group -> its tasks here (not seceded)
        self.ready_here: list[tuple[tuple[int, int], TaskState]] = []  # heap: its block of roots
        # Its process's memory (bytes) and CPU (percent of one core), as its
        # last heartbeat said: for watchers (see observe.py)
        self.rss = 0
        self.cpu = 0.0
        # ... and the bytes of its results in memory (None: it never said)
        # and on disk: which of its results are where only it knows (see
        # observe.managed_bytes)
        self.managed_reported: int | None = None
        self.spilled = 0

    def __repr__(self) -> str:
        return f"<Worker {self.address} processing={len(self.processing)}>"


class ClientRecord:
    """A connected client and the keys it holds futures for."""

    __slots__ = ("ident", "name", "wants", "seen")

    def __init__(self, ident: bytes, name: str):
        self.ident = ident
        self.name = name
        self.wants: set[TaskState] = set()
        # The ``seq`` of its last submit the center handled. News of a key is
        # stamped with it: a client that let a key go and submitted it again
        # takes only news stamped with that later submit or after (what was
        # on its way about the earlier one is stale).
        self.seen = 0

    def __repr__(self) -> str:
        return f"<Client {self.name} wants={len(self.wants)}>"
