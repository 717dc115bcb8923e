"""Every message zfutures peers send each other, one small class per op.

This module is where field names live: the cores build these classes and read
their attributes, and :mod:`zfutures.protocol` packs and checks them from the
classes' own annotations. A message is a ``NamedTuple``: it costs no more to
build than a tuple, and it travels as a msgpack array, its fields in the order
below (see protocol.py). A field with a default may be left out by a sender;
a new field is added at the end, with a default, so that a message from an
older peer still reads.

Ops that come in bursts carry a list of items (``tasks``, ``keys``, ``items``),
each item a small class of its own, so that many tasks, results or releases
travel in one message. An item that owns payload frames says how many in its
``nframes``; its frames follow the header in item order.

Annotations are written as every supported Python evaluates them
(``Optional[int]``, not ``int | None``): protocol.py reads them at import.

>>> Release(keys=["x"])
Release(keys=['x'])
>>> op_of(Release(keys=["x"]))
'release'
"""
from typing import Any, Callable, NamedTuple, Optional, TypeVar

#: The class of every op, by the name that travels on the wire.
MESSAGES: dict[str, type] = {}
#: The name of every message class, on the wire.
OP_NAMES: dict[type, str] = {}

_M = TypeVar("_M", bound=type)


def message(op: str) -> Callable[[_M], _M]:
    """Register the class below as the message of ``op``."""
    def register(cls: _M) -> _M:
        MESSAGES[op] = cls
        OP_NAMES[cls] = op
        return cls
    return register


def op_of(msg: Any) -> str:
    """The op name of a message instance."""
    return OP_NAMES[type(msg)]


# ---------------------------------------------------------------- items

class TaskItem(NamedTuple):
    """A task a client submits: its key, the keys it takes, and its options."""

    key: str
    deps: list[str]
    priority: int
    nframes: int = 0
    retries: int = 0
    #: restrictions: only these workers (by address), unless allow_other_workers
    workers: Optional[list[str]] = None
    allow_other_workers: bool = False
    resources: Optional[dict[str, float]] = None
    #: in a submit after a center restart: the workers the client last knew
    #: held this key's result
    who_has: Optional[list[str]] = None
    #: the worker the client sent this task straight to, in its run
    #: ``direct_run`` (see "run-task")
    direct_worker: Optional[str] = None
    direct_run: Optional[int] = None
    #: the client chose the key: tell it once the center counts that run
    direct_ack: bool = False
    #: the client has that run's result already: no key-finished for it
    direct_answered: bool = False


class ScatteredItem(NamedTuple):
    """Data a client put on workers itself, told to the center."""

    key: str
    nbytes: int
    workers: list[str]


class ComputeItem(NamedTuple):
    """A task the center hands a worker: where each of its inputs is held."""

    key: str
    #: input key -> the addresses of the workers that hold it
    deps: dict[str, list[str]]
    #: the id of this assignment, which the worker's reports on the task carry
    #: back (a report of an earlier run of the same key is then told apart)
    run: int
    nframes: int = 0
    #: a larger number runs first (the client's priority)
    priority: int = 0
    #: a client waits for it: a small result goes with the report
    send_result: bool = False
    #: the sizes (bytes) of the big inputs held elsewhere, so that a worker
    #: short of memory fetches no more than fits (None: none is big)
    sizes: Optional[dict[str, int]] = None


class DoneItem(NamedTuple):
    """A task a worker finished; its small result may ride along (nframes)."""

    key: str
    nbytes: int
    run: int
    nframes: int = 0
    #: the run is one a client chose, sending the task straight to the worker
    direct: bool = False
    #: ... and that client had the result straight from the worker too
    answered: bool = False
    #: seconds it ran
    duration: Optional[float] = None
    #: when it started, by the worker's wall clock (time.time()), and the
    #: worker's thread that ran it, numbered from 0 (for the task stream)
    start: Optional[float] = None
    thread: Optional[int] = None


class FailedItem(NamedTuple):
    """A task that raised on a worker; its frames are the pickled exception."""

    key: str
    run: int
    nframes: int = 0
    direct: bool = False
    #: as for DoneItem: when it started, how long it ran, and on which thread
    start: Optional[float] = None
    duration: Optional[float] = None
    thread: Optional[int] = None


class KeyAdded(NamedTuple):
    """A key a worker now holds, fetched or copied there rather than computed."""

    key: str
    nbytes: int
    #: the worker it came from, and when the transfer started and ended
    #: (the receiver's wall clock): the dashboard draws it
    source: Optional[str] = None
    start: Optional[float] = None
    stop: Optional[float] = None


class AcquireItem(NamedTuple):
    """A key a worker should copy from one of ``holders`` (one retiring)."""

    key: str
    holders: list[str]


class DropItem(NamedTuple):
    """A direct run the center did not hear of in time (see "drop-direct")."""

    key: str
    run: int


class ResultItem(NamedTuple):
    """A key that finished, told to the clients that want it."""

    key: str
    who_has: list[str]
    nbytes: int
    nframes: int = 0


class ErredItem(NamedTuple):
    """A key that failed for good; its frames are the pickled exception."""

    key: str
    nframes: int = 0


class DataItem(NamedTuple):
    """A value a client puts on a worker: its frames follow."""

    key: str
    nframes: int = 0


class OfferedItem(NamedTuple):
    """A value a data server sends back."""

    key: str
    nframes: int = 0
    nbytes: int = 0
    #: to a reader on the holder's machine: buffers left to read from the
    #: holder's memory, [position among the value's frames, address, size]
    #: each (see peer_memory.py)
    remote: Optional[list[list[int]]] = None


class GroupCounts(NamedTuple):
    """A task group's tasks by state, and its totals so far (see "events")."""

    group: str
    waiting: int
    ready: int
    processing: int
    memory: int
    erred: int
    released: int
    #: runs that finished, runs that raised, and the seconds the finished ran,
    #: since the center started (they only grow)
    finished: int
    failed: int
    seconds: float


class WorkerStats(NamedTuple):
    """One worker as the center last heard of it (see "events")."""

    address: str
    name: str
    nthreads: int
    #: the process's memory (its own report), the bytes of results it holds
    #: in memory and on disk (see scheduler.observe.managed_bytes), and its
    #: limit (0: none)
    memory: int
    managed: int
    spilled: int
    memory_limit: int
    #: percent of one core its process used lately
    cpu: float
    executing: int
    queued: int
    keys: int
    paused: bool
    #: seconds since the center last heard from it
    silent: float


class TaskRun(NamedTuple):
    """One run of a task on a worker thread: a bar of the task stream."""

    key: str
    worker: str
    thread: int
    #: the worker's wall clock
    start: float
    stop: float
    ok: bool


class Transfer(NamedTuple):
    """A key copied from one worker to another, for a task of the receiver's."""

    key: str
    source: str
    target: str
    nbytes: int
    start: float
    stop: float


# ---------------------------------------------------------------- client -> center

@message("register-client")
class RegisterClient(NamedTuple):
    protocol: int
    name: str


@message("submit")
class Submit(NamedTuple):
    tasks: list[TaskItem]
    #: numbers the client's submits; news of their keys carries the last one
    #: the center had handled (seen), so a client that let a key go and
    #: submitted it again tells news of the earlier submit from the later
    seq: Optional[int] = None


@message("release")
class Release(NamedTuple):
    keys: list[str]


@message("update-data")
class UpdateData(NamedTuple):
    items: list[ScatteredItem]
    #: numbered with the submits: news of these keys told before is of earlier copies
    seq: Optional[int] = None


@message("who-has")
class WhoHas(NamedTuple):
    id: int
    keys: list[str]


@message("scheduler-info")
class SchedulerInfo(NamedTuple):
    id: int


@message("has-what")
class HasWhat(NamedTuple):
    id: int


@message("close-client")
class CloseClient(NamedTuple):
    pass


@message("watch")
class Watch(NamedTuple):
    """Send me "events" once per tick from now on, with every task run and
    transfer too if ``stream`` (the task stream costs the center more: ask
    only while someone looks). Watch again to change ``stream``."""

    stream: bool = False


@message("unwatch")
class Unwatch(NamedTuple):
    """No more "events" for me."""


@message("describe-key")
class DescribeKey(NamedTuple):
    """What the center knows of one key, for the dashboard's page of it: a
    "reply" with a dict (None if the center does not know the key)."""

    id: int
    key: str


# ---------------------------------------------------------------- worker -> center

@message("register-worker")
class RegisterWorker(NamedTuple):
    protocol: int
    address: str
    name: str
    nthreads: int
    memory_limit: int
    resources: dict[str, float]
    #: keys it holds already (from an earlier center), and their sizes
    keys: list[str]
    nbytes: Optional[list[int]] = None


@message("task-finished")
class TaskFinished(NamedTuple):
    tasks: list[DoneItem]


@message("task-erred")
class TaskErred(NamedTuple):
    tasks: list[FailedItem]


@message("keys-added")
class KeysAdded(NamedTuple):
    tasks: list[KeyAdded]


@message("missing-data")
class MissingData(NamedTuple):
    key: str
    missing: list[str]
    run: int
    #: the holders the worker asked in vain (others may hold a copy)
    tried: Optional[list[str]] = None


@message("task-seceded")
class TaskSeceded(NamedTuple):
    key: str
    run: int
    direct: bool = False


@message("task-accepted")
class TaskAccepted(NamedTuple):
    """A task a client sent straight here is running (see "run-task")."""

    key: str
    run: int


@message("task-refused")
class TaskRefused(NamedTuple):
    """... or will not run: it could not start at once, or holds the key
    already, or the center gave up on that run (see WorkerState.run_direct)."""

    key: str
    run: int


@message("retire")
class Retire(NamedTuple):
    pass


@message("unregister")
class Unregister(NamedTuple):
    pass


@message("paused")
class Paused(NamedTuple):
    paused: bool


@message("sync")
class Sync(NamedTuple):
    """A client put data here while these keys were here already: answer
    once what was said of them before is on its way (see worker_scatter.py)."""

    keys: list[str]


# ---------------------------------------------------------------- nanny -> center

@message("register-nanny")
class RegisterNanny(NamedTuple):
    protocol: int


@message("worker-died")
class WorkerDied(NamedTuple):
    address: str


# ---------------------------------------------------------------- center -> worker

@message("welcome")
class Welcome(NamedTuple):
    protocol: int
    max_message_size: Optional[int] = None
    #: the center's own address, as it bound it (to a client)
    address: Optional[str] = None
    #: the link to its dashboard's /status page, if it has one (to a client)
    dashboard: Optional[str] = None


@message("compute")
class Compute(NamedTuple):
    tasks: list[ComputeItem]


@message("release-keys")
class ReleaseKeys(NamedTuple):
    keys: list[str]


@message("acquire")
class Acquire(NamedTuple):
    tasks: list[AcquireItem]


@message("synced")
class Synced(NamedTuple):
    """The answer to "sync", after what came before it."""

    keys: list[str]


@message("retired")
class Retired(NamedTuple):
    pass


@message("drop-direct")
class DropDirect(NamedTuple):
    """The center has not heard of these direct runs for seconds: refuse each
    that never came (see WorkerState.drop_direct)."""

    tasks: list[DropItem]


# ---------------------------------------------------------------- center -> client

@message("key-finished")
class KeyFinished(NamedTuple):
    tasks: list[ResultItem]
    #: the last submit the center had handled (see Submit.seq)
    seen: Optional[int] = None


@message("key-erred")
class KeyErred(NamedTuple):
    tasks: list[ErredItem]
    seen: Optional[int] = None


@message("reply")
class Reply(NamedTuple):
    id: int
    result: Any


@message("events")
class Events(NamedTuple):
    """What changed at the center since the last "events", to a watcher.

    Counts are whole values, not increments: a watcher that missed a
    message (a slow one, whose messages the center dropped) is right again
    with the next. ``runs`` and ``transfers`` come only to a watcher that
    asked for the stream, and each only once.
    """

    #: the center's wall clock (time.time()) when sent
    time: float
    #: the task groups whose counts changed (a group is a key up to its last "-")
    groups: list[GroupCounts]
    #: every worker, as the center last heard of it
    workers: list[WorkerStats]
    runs: list[TaskRun]
    transfers: list[Transfer]
    #: the center's own totals since it started: "messages" handled,
    #: "transfer_bytes" moved between workers, "tasks" submitted, task runs
    #: "finished" and "failed" (over every group, even those long gone)
    counters: dict[str, int]


@message("direct-accepted")
class DirectAccepted(NamedTuple):
    """The center counts these keys' direct runs as theirs; sent when the
    submit asked (direct_ack)."""

    keys: list[str]
    seen: Optional[int] = None


@message("workers-left")
class WorkersLeft(NamedTuple):
    """Workers that left or died: calls waiting on them fail at once."""

    addresses: list[str]


@message("refused")
class Refused(NamedTuple):
    reason: str


@message("reregister")
class Reregister(NamedTuple):
    """To a peer the center does not know (it restarted, or gave up on the
    peer): register again, bringing back your keys and tasks."""


@message("closing")
class Closing(NamedTuple):
    """The center is going (see Center._say_closing)."""


# ---------------------------------------------------------------- both ways

@message("heartbeat")
class Heartbeat(NamedTuple):
    #: from a worker: its process's memory (bytes) and CPU (percent of one
    #: core) lately, for the dashboard
    memory: Optional[int] = None
    cpu: Optional[float] = None
    #: from a worker: the bytes of the results it holds in memory, and of
    #: those it spilled to disk (see worker_memory.py); the center counts a
    #: worker's results itself, but only the worker knows which are on disk
    managed: Optional[int] = None
    spilled: Optional[int] = None


# ---------------------------------------------------------------- data server

@message("get-data")
class GetData(NamedTuple):
    id: int
    keys: list[str]
    #: the requester may read the holder's memory if it runs on this machine
    machine: Optional[str] = None
    #: the bytes its holder keeps a copy of, to prove who it is (see peer_memory.py)
    token: Optional[str] = None


@message("data")
class Data(NamedTuple):
    id: int
    items: list[OfferedItem]
    missing: list[str]
    #: results that could not be pickled to leave their worker
    errors: Optional[list[OfferedItem]] = None
    #: items with remote buffers are read from process pid's memory, and
    #: "data-read" with the lease says when that is done
    lease: Optional[int] = None
    pid: Optional[int] = None
    #: where in that memory the holder keeps its copy of the reader's token
    proof: Optional[int] = None


@message("data-read")
class DataRead(NamedTuple):
    lease: int


@message("put-data")
class PutData(NamedTuple):
    id: int
    items: list[DataItem]


@message("data-stored")
class DataStored(NamedTuple):
    id: int
    nbytes: dict[str, int]
    #: keys whose data did not load here, each with why (nothing stored)
    failed: Optional[dict[str, str]] = None


@message("run")
class Run(NamedTuple):
    id: int


@message("run-result")
class RunResult(NamedTuple):
    id: int
    ok: bool


@message("get-logs")
class GetLogs(NamedTuple):
    """A worker's recent log lines, for the dashboard's page of it: answered
    with "logs" (only read; nothing runs)."""

    id: int


@message("logs")
class Logs(NamedTuple):
    id: int
    #: oldest first, formatted as the worker's log prints them
    lines: list[str]


@message("run-task")
class RunTask(NamedTuple):
    """A lone task without inputs, sent by a client straight to a worker in a
    run of its own choosing (told to the center in its submit: direct_worker,
    direct_run); the worker sends a small result straight back."""

    key: str
    run: int


@message("direct-result")
class DirectResult(NamedTuple):
    key: str
    run: int
    nbytes: int
