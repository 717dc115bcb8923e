"""The center's scheduler: the task graph as a state machine with no I/O.

:class:`Scheduler` takes the center's events one at a time and queues the
messages they cause in its :class:`Outbox`. Each decision lives in one module:

- :mod:`.states`: a task's states, and the table of legal changes between them;
- :mod:`.records`: what the center knows of each task, worker and client;
- :mod:`.outbox`: messages queued for the shell, merged per recipient and op;
- :mod:`.graph`: tasks and their links, towards memory or error, and released
  when nobody wants them;
- :mod:`.placement`: the ready queues, each worker's room, which worker runs a
  task, and the tasks sent ahead of their inputs;
- :mod:`.direct`: the tasks clients send straight to a worker;
- :mod:`.recovery`: keys brought back after the center restarts;
- :mod:`.workers`: what a worker's death, pause or retirement does to its
  tasks and keys;
- :mod:`.core`: :class:`Scheduler`, each event read and handed to those parts.
"""
from .core import Scheduler
from .graph import MAX_NBYTES
from .outbox import MAX_ITEMS_PER_MESSAGE, Outbox
from .placement import BANDWIDTH, MAX_AHEAD_PER_THREAD, MAX_GROUPS, ROUND_TRIP
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
