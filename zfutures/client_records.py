"""What the client knows of each key it holds futures for, and what they see.

A :class:`KeyRecord` per key: its status, the futures of it and how many
refer to it, where its value is, how it was submitted (to send it again to
a center that restarted), and, while its task went straight to a worker,
that run (:class:`DirectRun`). Its methods are the one place a key's
futures are completed. The client's core (:mod:`zfutures.client_state`)
decides when.

A key's life here::

    submit ──▶ pending ──(key-finished, or a worker's direct answer)──▶ finished
                  │                                                      │
                  └──(key-erred)──▶ erred ◀──(key-erred: data lost)──────┘

and it is forgotten (released at the center) when its last future goes.
"""
from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from . import serialize
from .errors import FutureLostError
from .future import Future
from .messages import TaskItem
from .protocol import Frames
from .remote_errors import remote_exception

PENDING, FINISHED, ERRED = "pending", "finished", "erred"

#: A key's list of future references is pruned of dead ones when it holds
#: more than twice its live count and this many: a long-lived future of a
#: finished key, beside which a loop makes and drops other futures of the
#: same key, would otherwise grow it by one reference per call.
PRUNE_SLACK = 16

#: A message for a peer or from one: an instance of a class of
#: :mod:`zfutures.messages` (they share no base class but ``tuple``).
Message = Any


class DirectRun:
    """A task sent straight to a worker, whose answer is awaited (see
    :mod:`zfutures.client_direct`)."""

    __slots__ = ("address", "run", "trusted", "early")

    def __init__(self, address: str, run: int, trusted: bool):
        self.address = address
        self.run = run
        # Whether its answer may complete the futures: at once if the executor
        # made the key (the center counts every run the worker does not
        # refuse, see DirectRuns.runs_direct in scheduler/direct.py); for a
        # key the caller chose, once the center says it counts this run
        # (direct-accepted): the center may hold that key already, from
        # another run.
        self.trusted = trusted
        self.early: tuple[int, Frames] | None = None  # (nbytes, frames) come before trust


class KeyRecord:
    """What this client knows of one key it holds futures for."""

    __slots__ = ("key", "refs", "futures", "held", "status", "who_has", "error", "eager",
                 "nbytes", "submitted", "deps", "scattered", "direct", "since")

    def __init__(self, key: str):
        self.key = key
        self.eager = False  # fetch the value as soon as it exists, then release the key
        self.nbytes = 0
        # What to send a center that restarted: the submit item and its payload
        # frames (None for keys this client did not submit), the inputs' records
        # while it is pending (their own submissions may be needed again), and
        # whether it is data this client scattered.
        self.submitted: tuple[TaskItem, Frames] | None = None
        self.deps: list[KeyRecord] | None = None
        self.scattered = False
        self.refs = 0
        self.futures: list[weakref.ref[Future]] = []
        # Futures kept alive until done, for their callbacks; None when there
        # are none (most keys: a list each costs the garbage collector too).
        self.held: list[Future] | None = None
        self.status = PENDING
        self.who_has: Sequence[str] = ()
        # An erred key's pickled exception. Each future gets an exception of
        # its own, loaded from it: one raised to a caller carries a traceback
        # whose frames may hold the caller's futures, which a record kept
        # here would then keep alive, and with them the key.
        self.error: Frames | None = None
        # While its task, sent straight to a worker, may answer us directly.
        self.direct: DirectRun | None = None
        # The seq of the submit that made it (see Outbox.flush_all): the
        # center's news of the key stamped earlier is of a submit we let go of.
        self.since = 0

    def __repr__(self) -> str:
        return f"<KeyRecord {self.key} {self.status} refs={self.refs}>"

    # ------------------------------------------------------------------ futures

    def add_future(self, future: Future) -> None:
        """One more future refers to the key; it sees what the key has come to."""
        self.refs += 1
        self.futures.append(weakref.ref(future))
        if self.status == FINISHED:
            future._set_remote()
        elif self.status == ERRED:
            fail_future(future, self.exception())

    def drop_future(self) -> bool:
        """One future fewer refers to the key: True if that was the last."""
        self.refs -= 1
        if self.refs <= 0:
            return True
        if len(self.futures) > 2 * self.refs + PRUNE_SLACK:
            self.live_futures()
        return False

    def hold(self, future: Future) -> None:
        """Keep ``future`` alive until the key is done (it has callbacks to run)."""
        if self.held is None:
            self.held = []
        self.held.append(future)

    def live_futures(self) -> list[Future]:
        alive = [f for f in (ref() for ref in self.futures) if f is not None]
        if len(alive) != len(self.futures):
            self.futures = [weakref.ref(f) for f in alive]
        return alive

    # ------------------------------------------------------------------ outcomes

    def complete(self, frames: Frames | None, error: BaseException | None = None,
                 detach: bool = False) -> None:
        """Complete the futures with the key's pickled value (or ``error``); a
        value that fails to load fails them, as result() would. ``detach``:
        they refer to the key no more (their values are all they need)."""
        value = None
        if error is None:
            value, error = load_value(frames or [])
        for future in self.live_futures():
            if detach:
                future._executor = None
            if error is None:
                future._set_value(value)
            else:
                future._set_error(error)

    def on_the_cluster(self) -> None:
        """The futures are done; the value stays on its workers until asked for."""
        for future in self.live_futures():
            future._set_remote()

    def err(self, error: Frames) -> None:
        """The key erred with the pickled exception ``error``: so do its futures."""
        self.status = ERRED
        self.deps = None
        self.direct = None
        self.error = error
        for future in self.live_futures():
            fail_future(future, self.exception())
        self.held = None

    def exception(self) -> BaseException:
        """A new copy of an erred key's exception."""
        assert self.error is not None, "only an erred key has an exception"
        return remote_exception(self.error)

    def fail_pending(self, error: BaseException, cancel: bool) -> None:
        """No answer will come: the futures of a pending key fail with
        ``error``, or with ``cancel`` are cancelled (but those a PoolExecutor
        counts as started, which ran)."""
        if self.status != PENDING:
            return
        for future in self.live_futures():
            if cancel and not future.running():
                future._set_cancelled()
            else:
                future._set_error(error)


def record(keys: dict[str, KeyRecord], key: str) -> KeyRecord:
    """The record of ``key``, made if new."""
    info = keys.get(key)
    if info is None:
        info = keys[key] = KeyRecord(key)
    return info


def end_unsent(future: Future, error: BaseException) -> None:
    """A future made after no more answers come: cancelled, or failed with
    ``error`` if a PoolExecutor counts it as started (it would not see a
    cancellation)."""
    if future.running():
        future._set_error(error)
    else:
        future._set_cancelled()


def fail_future(future: Future, exception: BaseException) -> None:
    """Fail ``future``; one whose data is gone for good is marked lost."""
    if isinstance(exception, FutureLostError):
        future._set_lost(exception)
    else:
        future._set_error(exception)


def load_values(frames_by_key: dict[str, Any], skip_failed: bool) -> dict[str, Any]:
    """Unpickle the values of a fetch ({key: frames}): a value that fails to
    load raises its error, or is left out with ``skip_failed``, as is a key
    the fetch could not have (its error in place of frames)."""
    values = {}
    for key, frames in frames_by_key.items():
        if isinstance(frames, BaseException):  # (only with skip_failed)
            continue
        value, error = load_value(frames)
        if error is not None:
            if skip_failed:
                continue
            raise error
        values[key] = value
    return values


def load_value(frames: Frames) -> tuple[Any, BaseException | None]:
    """Unpickle a value: (value, None), or (None, the error) if that raised.

    Any exception counts, ``SystemExit`` and ``KeyboardInterrupt`` raised by
    the value's own unpickling too: they fail that value alone, never the
    thread that loads it.
    """
    try:
        return serialize.loads(frames), None
    except BaseException as e:  # noqa: BLE001 (see the docstring)
        if isinstance(e, Exception):
            return None, e
        return None, RuntimeError(f"loading a result raised {e!r}")
