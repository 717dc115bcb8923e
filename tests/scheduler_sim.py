"""Drive the center's Scheduler one event at a time: no sockets, threads or sleeps.

The helpers every scheduler test shares (tests/test_scheduler*.py, and
others that drive a Scheduler). Every message the scheduler queues is checked
against the wire protocol on the way out (see :meth:`Sim.take`), so a test
that reads the outbox also checks that the center would send well-formed
messages. Events go in, and messages come out, as the classes of
zfutures.messages; a test reads their fields as attributes.
"""
from __future__ import annotations

import pickle

from zfutures import protocol
from zfutures.messages import DoneItem, FailedItem, KeyAdded, TaskItem, op_of
from zfutures.scheduler import MAX_ITEMS_PER_MESSAGE, Scheduler

C1, C2 = b"client-1", b"client-2"
W1, W2, W3 = b"w1", b"w2", b"w3"

MB = 1_000_000


def addr(ident: bytes) -> str:
    return f"tcp://{ident.decode()}:9000"


def task(key: str, *deps: str, priority: int = 0, **options) -> tuple[TaskItem, list]:
    """A submit item and its payload, as a client would send them; ``options``
    are more fields of the item (retries, workers, direct_run, ...)."""
    return TaskItem(key, list(deps), priority, nframes=1, **options), \
        [f"payload of {key}".encode()]


def error_frames(exc: BaseException) -> list:
    """Exception frames as a worker sends them: opaque to the center."""
    return [pickle.dumps((exc, "remote traceback text"), protocol=5)]


def exception_in(frames: list) -> BaseException:
    exc, _text = pickle.loads(frames[0])
    return exc


class Sent:
    """The messages of one ``outbox.take()``, indexed by recipient and op."""

    def __init__(self, messages: list):
        self.messages = messages
        self._by = {}  # (ident, op) -> (message, frames)
        last_size = {}  # items in the last message of each (ident, op)
        for ident, msg, frames in messages:
            op = op_of(msg)
            listed = bool(msg) and isinstance(msg[0], list)  # (its items come first)
            size = len(msg[0]) if listed else 0
            if (ident, op) in self._by:  # only past a full one: seen as one
                assert last_size[(ident, op)] == MAX_ITEMS_PER_MESSAGE, \
                    f"two {op!r} messages to {ident!r}: not batched"
                before, before_frames = self._by[(ident, op)]
                msg = type(msg)(before[0] + msg[0], *msg[1:])
                frames = before_frames + frames
            last_size[(ident, op)] = size
            self._by[(ident, op)] = (msg, frames)

    def ops(self, ident: bytes) -> set[str]:
        return {op for i, op in self._by if i == ident}

    def message(self, op: str, ident: bytes):
        """The ``op`` message to ``ident`` (those past a full one joined), or None."""
        return self._by.get((ident, op), (None, []))[0]

    def items(self, op: str, ident: bytes) -> list:
        return getattr(self.message(op, ident), "tasks", [])

    def keys(self, op: str, ident: bytes) -> list[str]:
        """Keys of a ``release-keys`` message, or of the items of a batched one."""
        msg = self.message(op, ident)
        if hasattr(msg, "keys"):
            return list(msg.keys)
        return [item.key for item in getattr(msg, "tasks", [])]

    def frames(self, op: str, ident: bytes) -> dict[str, list]:
        """key -> its frames, for ops whose items own frames."""
        msg, frames = self._by.get((ident, op), (None, []))
        return {item.key: f for item, f in protocol.unpack_items(
            getattr(msg, "tasks", []), frames)}

    def computes(self) -> dict[bytes, list[str]]:
        return {ident: [item.key for item in msg.tasks]
                for (ident, op), (msg, _) in self._by.items() if op == "compute"}

    def computed_keys(self) -> list[str]:
        return [key for keys in self.computes().values() for key in keys]


class Sim:
    """A Scheduler plus helpers that speak its events and read its outbox."""

    def __init__(self, clients=(C1,), **kwargs):
        self.s = Scheduler(**kwargs)
        for client in clients:
            self.s.add_client(client, client.decode())

    def worker(self, ident: bytes, nthreads: int = 1, keys=()) -> None:
        self.s.add_worker(ident, addr(ident), ident.decode(), nthreads, keys=list(keys))

    def submit(self, *tasks: tuple[TaskItem, list], client: bytes = C1) -> None:
        items, frames = [], []
        for item, payload in tasks:
            items.append(item if item.nframes == len(payload)
                         else item._replace(nframes=len(payload)))
            frames.extend(payload)
        self.s.submit(client, items, frames)

    def finish(self, key: str, worker: bytes | None = None, nbytes: int = 8,
               **report) -> None:
        """The worker running ``key`` (or ``worker``) finished its current run;
        ``report``: more fields of its DoneItem (duration, start, thread)."""
        if worker is None:
            worker = self.s.tasks[key].processing_on.ident
        self.s.task_finished(worker, DoneItem(key, nbytes, self.s.tasks[key].run, **report))

    def err(self, key: str, exc: BaseException, **report) -> list:
        """The worker running ``key`` reports that its current run raised
        ``exc``; ``report``: more fields of its FailedItem."""
        frames = error_frames(exc)
        ts = self.s.tasks[key]
        self.s.task_erred(ts.processing_on.ident,
                          FailedItem(key, ts.run, len(frames), **report), frames)
        return frames

    def recount(self) -> dict[str, dict[str, int]]:
        """The tasks by group and state, counted anew (states with none left
        out): what an Observer's counts must equal."""
        counts: dict[str, dict[str, int]] = {}
        for ts in self.s.tasks.values():
            group = counts.setdefault(ts.group, {})
            group[ts.state] = group.get(ts.state, 0) + 1
        return counts

    def observed(self) -> dict[str, dict[str, int]]:
        """The Observer's counts, as :meth:`recount` lays them out."""
        observer = self.s.observer
        assert observer is not None
        return {name: {state: n for state, n in group.counts.items() if n}
                for name, group in observer.groups.items()
                if any(group.counts.values())}

    def state(self, key: str) -> str:
        return self.s.tasks[key].state

    def on(self, key: str) -> bytes | None:
        ws = self.s.tasks[key].processing_on
        return None if ws is None else ws.ident

    def on_and_other(self, key: str) -> tuple[bytes, bytes]:
        """The worker processing ``key``, and the other one of W1 and W2."""
        on = self.on(key)
        return on, W2 if on == W1 else W1

    def finish_and_copy(self, key: str, nbytes: int = 8) -> tuple[bytes, bytes]:
        """``key`` finishes on one of W1 and W2 and is copied to the other:
        (its worker, the other)."""
        holder, other = self.on_and_other(key)
        self.finish(key, nbytes=nbytes)
        self.s.keys_added(other, KeyAdded(key, nbytes))
        return holder, other

    def take(self) -> Sent:
        """Take the outbox, checking every message against the wire protocol."""
        messages = self.s.outbox.take()
        for _ident, msg, frames in messages:
            decoded, payload = protocol.decode_message(protocol.encode_message(msg, frames))
            assert type(decoded) is type(msg) and decoded == msg, (decoded, msg)
            items = getattr(msg, "tasks", None)
            if items:
                assert [type(item) for item in decoded.tasks] == [type(item) for item in items]
            if items and "nframes" in items[0]._fields:
                protocol.unpack_items(items, payload)  # checks the counts
            else:
                assert not frames, f"{op_of(msg)!r} carries frames no item accounts for"
        return Sent(messages)


def chain(n: int) -> list[tuple[TaskItem, list]]:
    """t0 <- t1 <- ... <- t(n-1), each task depending on the one before."""
    return [task(f"t{i}", *([f"t{i - 1}"] if i else [])) for i in range(n)]


def run_sent(sent: Sent, worker: bytes, key: str) -> int:
    """The run id of ``key``'s compute message to ``worker``."""
    (run,) = [item.run for item in sent.items("compute", worker) if item.key == key]
    return run
