"""The center's scheduler: the task graph as a state machine with no I/O.

Modules:

- :mod:`.states`: a task's states and the table of legal changes between them;
- :mod:`.records`: what the center knows of each task, worker and client;
- :mod:`.outbox`: messages queued for the shell, merged per recipient and op;
- :mod:`.core`: :class:`Scheduler`, every event the shell passes in.
"""
from .core import (
    BANDWIDTH,
    MAX_AHEAD_PER_THREAD,
    MAX_GROUPS,
    MAX_NBYTES,
    ROUND_TRIP,
    Scheduler,
)
from .outbox import MAX_ITEMS_PER_MESSAGE, Outbox
from .records import ClientRecord, TaskState, WorkerRecord
from .states import (
    ERRED,
    IN_FLIGHT,
    MEMORY,
    PROCESSING,
    READY,
    RELEASED,
    TRANSITIONS,
    WAITING,
    IllegalTransition,
)

__all__ = [
    "BANDWIDTH", "ERRED", "IN_FLIGHT", "MAX_AHEAD_PER_THREAD", "MAX_GROUPS",
    "MAX_ITEMS_PER_MESSAGE", "MAX_NBYTES", "MEMORY", "PROCESSING", "READY", "RELEASED",
    "ROUND_TRIP", "TRANSITIONS", "WAITING", "ClientRecord", "IllegalTransition", "Outbox",
    "Scheduler", "TaskState", "WorkerRecord",
]
