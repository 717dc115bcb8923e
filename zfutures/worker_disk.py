"""A worker's disk work, off its loop thread: spill writes, reads back, deletes.

The state machine asks for disk work (WorkerState.to_spill, see
worker_spilling.py); :class:`SpillThreads` does it on two threads of its
own and hands each outcome back to the loop thread through ``call_soon``:

- the **writer** pickles values and writes them to the
  :class:`~zfutures.spill_store.SpillStore`, and deletes files, in the order
  asked (a key's delete never overtakes its write);
- the **reader** reads values back for tasks, and frames for the data server
  (:meth:`SpillThreads.read_frames`: a peer or a client gets a result on disk
  as the file's frames, never unpickled here).

Two threads, not one, so that a read a task waits for does not queue
behind a long run of writes to a slow disk. The loop thread never touches
the disk: a worker busy spilling still answers heartbeats and serves the
keys it holds in memory.

The store, and its directory, are made at the first write, so that a worker
that never spills makes no directory.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from . import serialize
from .protocol import Frames
from .remote_errors import describe
from .spill_store import SpillError, SpillStore
from .worker_memory import DELETE
from .worker_spilling import READ, WRITE, SpillOp

logger = logging.getLogger(__name__)

#: How long (seconds) closing waits for a write or read under way to end,
#: before the directory is removed under it (work still queued is skipped).
CLOSE_WAIT = 2.0

_STOP = object()


class SpillThreads:
    """Carry out a worker's disk work in ``directory`` (None: the system's
    temporary directory; either way the store works in a fresh subdirectory
    of it, removed at :meth:`close`). ``state`` is the WorkerState whose
    ``spill_*`` events get the outcomes, called through ``call_soon`` on the
    loop thread.
    """

    def __init__(self, directory: str | None, state: Any,
                 call_soon: Callable[..., None]):
        self.directory = directory
        self.state = state
        self.call_soon = call_soon
        self.store: SpillStore | None = None
        self._store_error: SpillError | None = None  # the directory cannot be made
        self._writes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._reads: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False

    # ------------------------------------------------------------------ the loop's side

    def submit(self, ops: list[SpillOp]) -> None:
        """Queue the state machine's disk work (it clears its list after)."""
        if self._closed:
            return
        if not self._threads:
            self._start()
        for op in ops:
            (self._reads if op[0] == READ else self._writes).put(op)

    def read_frames(self, keys: list[str],
                    done: Callable[[dict[str, Frames | BaseException]], None]) -> None:
        """Read the frames of ``keys`` on disk; ``done(frames or error, by key)``
        is then called on the reader thread (hand it to the loop from there)."""
        if not self._threads:
            self._start()
        self._reads.put(("frames", keys, done))

    def close(self) -> None:
        """Stop the threads (after the operation under way) and remove the
        spill directory with every file in it."""
        if self._closed:
            return
        self._closed = True
        if self._threads:
            self._writes.put(_STOP)
            self._reads.put(_STOP)
            for thread in self._threads:
                thread.join(CLOSE_WAIT)
        if self.store is not None:
            self.store.close()

    # ------------------------------------------------------------------ the threads

    def _start(self) -> None:
        for name, target in (("writer", self._write_loop), ("reader", self._read_loop)):
            thread = threading.Thread(target=target, daemon=True, name=f"zfutures-spill-{name}")
            self._threads.append(thread)
            thread.start()

    def _open_store(self) -> SpillStore:
        """The store, made at the first write; SpillError if it cannot be."""
        if self.store is None:
            if self._store_error is not None:
                raise self._store_error
            try:
                self.store = SpillStore(self.directory)
            except SpillError as e:
                self._store_error = e
                raise
            logger.info("spilling to %s", self.store.directory)
        return self.store

    def _write_loop(self) -> None:
        while True:
            op = self._writes.get()
            if op is _STOP:
                return
            kind, key, value = op
            del op
            if self._closed:
                continue  # (the worker stops: the directory goes with everything in it)
            if kind == DELETE:
                if self.store is not None:
                    try:
                        self.store.remove(key)
                    except KeyError:
                        pass  # (never written: its write failed)
                    except OSError as e:  # (the file stays; the directory goes at close)
                        logger.warning("cannot delete the spill file of %r: %s", key, e)
                continue
            assert kind == WRITE
            self._write(key, value)
            del value  # (nothing here keeps the value alive once written: see _write)

    def _write(self, key: str, value: Any) -> None:
        state, call_soon = self.state, self.call_soon
        try:
            frames = serialize.dumps(value)
        except BaseException as e:  # noqa: B036 - user code's pickling: the value stays in memory
            logger.warning("the result %r cannot be pickled to spill it; it stays in "
                           "memory: %s", key, describe(e))
            call_soon(state.spill_write_failed, key, e, False)
            return
        try:
            nbytes = self._open_store().write(key, frames)
        except (SpillError, MemoryError) as e:
            call_soon(state.spill_write_failed, key, e)
        except BaseException as e:  # noqa: B036 - user code's buffers (an odd __buffer__)
            call_soon(state.spill_write_failed, key, e, False)
        else:
            call_soon(state.spill_written, key, nbytes)

    def _read_loop(self) -> None:
        while True:
            op = self._reads.get()
            if op is _STOP:
                return
            if self._closed:
                continue
            if op[0] == "frames":
                _, keys, done = op
                del op
                done({key: self._read(key) for key in keys})  # (errors are values)
                continue
            key = op[1]
            del op
            self._load(key)

    def _load(self, key: str) -> None:
        """Read ``key`` back for a task; the loop gets the value, or the error."""
        state, call_soon = self.state, self.call_soon
        frames = self._read(key)
        if isinstance(frames, BaseException):
            call_soon(state.spill_read_failed, key, frames)
            return
        try:
            value = serialize.loads_made_here(frames)
        except BaseException as e:  # noqa: B036 - user code's unpickling
            call_soon(state.spill_read_failed, key, e)
        else:
            call_soon(state.spill_loaded, key, value)

    def _read(self, key: str) -> Frames | BaseException:
        store = self.store
        if store is None:
            return KeyError(key)
        try:
            return list(store.read(key))
        except BaseException as e:  # noqa: B036 - a corrupt file (lz4), no memory, closed: the key's
            return e
