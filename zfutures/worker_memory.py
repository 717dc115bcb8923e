"""What a worker keeps in memory, what it moves to disk, and when it pauses: decisions, no I/O.

A worker's results live in memory until memory runs short; then the least
recently used move to a :class:`~zfutures.spill_store.SpillStore`, and come
back when a task, a peer or a client needs them. :class:`MemoryManager`
decides; the worker's shell does the writing and reading (off its loop
thread) and tells it when each is done. It has no clock, no thread and no
file: events in, small plans out, tested one event at a time.

A key is in one of these places::

    memory          in WorkerState.data, no file           (may be written)
    memory + file   read back, or kept after its write      (may be dropped: free)
    file            on disk only                            (must be read back)
    writing         in memory, its write in flight          (a file, or not, soon)
    reading         on disk, its read in flight             (in memory soon)

Each value is written once: a key read back keeps its file, so moving it out
of memory again costs no write.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Iterable

from .memory_thresholds import MemoryThresholds, parse_fraction
from .units import format_bytes

__all__ = ["DELETE", "DROP", "KEEP", "MemoryManager", "MemoryThresholds", "Plan",
           "parse_fraction"]

#: What the shell does with a key's file or value (answers of :meth:`MemoryManager.written`,
#: :meth:`~MemoryManager.removed`, :meth:`~MemoryManager.stored`).
DROP = "drop"  # the value may leave memory: its file holds it
KEEP = "keep"  # the value stays in memory (in use); its file is kept too
DELETE = "delete"  # delete the key's file (its value was released)

#: Below the pause mark by this share of the memory limit, a worker with no
#: spill mark to resume at resumes: today's 0.8 / 0.7, so that a worker does
#: not flip at every measurement.
RESUME_GAP = 0.1

class Change(str):
    """A change to log once (see MemoryManager.take_changes): its text, and
    how loud, a ``logging`` level."""

    level: int

    def __new__(cls, text: str, level: int) -> Change:
        change = super().__new__(cls, text)
        change.level = level
        return change


@dataclasses.dataclass
class Plan:
    """What to move out of memory now, least recently used first: ``write``
    these keys (then :meth:`MemoryManager.written`), and ``drop`` these from
    memory at once (they have a file already)."""
    write: list[str] = dataclasses.field(default_factory=list)
    drop: list[str] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.write or self.drop)


class MemoryManager:
    """Where each result of a worker is (memory, disk, in flight), and what to move.

    ``memory_limit`` in bytes; 0: no limit, and no threshold applies (plans are
    empty, the worker never pauses); the bookkeeping still gives ``managed``.

    >>> m = MemoryManager(1000, MemoryThresholds())
    >>> m.stored("a", 400); m.stored("b", 400)
    >>> m.measured(rss=900)                     # managed 800 > target 600
    Plan(write=['a'], drop=[])
    >>> m.written("a", disk_bytes=100), m.managed, m.spilled
    ('drop', 400, 100)
    >>> m.wanted("a"), m.wanted("a")            # one read, not two
    (True, False)
    >>> m.loaded("a"); m.stored("c", 300); m.measured(rss=1200)
    True
    Plan(write=['b'], drop=['a'])
    """

    def __init__(self, memory_limit: int, thresholds: MemoryThresholds | None = None):
        self.memory_limit = memory_limit
        self.thresholds = thresholds or MemoryThresholds()
        #: Every key held, wherever it is: its size in memory. The worker's
        #: record of its keys (WorkerState.nbytes is this dict); only the
        #: manager's events change it.
        self.nbytes: dict[str, int] = {}
        self._total = 0  # their sum, wherever they are
        self._memory: OrderedDict[str, None] = OrderedDict()  # in memory, least recent first
        self._files: dict[str, int] = {}  # key -> bytes its file takes
        self._writing: set[str] = set()
        self._reading: set[str] = set()
        self._touched: set[str] = set()  # used while being written: kept in memory
        # Writes and reads in flight for a value since removed (one set each: a
        # key released and stored again may have an old read and a new write).
        self._stale_writes: set[str] = set()
        self._stale_reads: set[str] = set()
        self._leaving = 0  # bytes of the (not stale) values being written
        self._coming_back = 0  # bytes of the (not stale) values being read back
        self._pins: dict[str, int] = {}
        self._unspillable: set[str] = set()  # values that cannot be pickled: stay in memory
        self.managed = 0  # bytes (nbytes) of results in memory, in flight to disk or not
        self.spilled = 0  # bytes their files take on disk
        self.disk_trouble = False  # a write failed: no more writes; pausing is the way out
        self.paused = False
        self._spilling = False
        self._changes: list[Change] = []
        # The last measure of the process, and the results in memory then
        # (see estimated_rss).
        self._rss_measured = 0
        self._managed_then = 0
        # Below both, nothing is to be decided (see calm): bytes.
        t, limit = self.thresholds, memory_limit
        self._target_bytes = t.target * limit if t.target is not None else float("inf")
        marks = [mark for mark in (t.spill, t.pause) if mark is not None]
        self._first_mark_bytes = min(marks) * limit if marks else float("inf")
        self._spill_bytes = t.spill * limit if t.spill is not None else float("inf")

    # --- events ---------------------------------------------------------

    def stored(self, key: str, nbytes: int) -> str | None:
        """A result arrived in memory (computed, fetched, scattered): DELETE if
        an older value of ``key`` left a file to delete now, else None."""
        action = self.removed(key) if key in self.nbytes else None
        self.nbytes[key] = nbytes
        self._total += nbytes
        self._memory[key] = None
        self.managed += nbytes
        return action

    def used(self, key: str) -> None:
        """``key`` was read: it is the most recently used now."""
        if key in self._memory:
            self._memory.move_to_end(key)
            if key in self._writing:
                self._touched.add(key)

    def pin(self, key: str) -> None:
        """``key`` is in use (a running task's input, a value being served, a
        read lease): never moved out of memory until as many :meth:`unpin`.
        Pins are counted apart from where the key is, as each user unpins."""
        self._pins[key] = self._pins.get(key, 0) + 1
        self.used(key)

    def unpin(self, key: str) -> None:
        count = self._pins.pop(key)  # KeyError: unpinned more often than pinned (a bug)
        if count > 1:
            self._pins[key] = count - 1

    def pin_all(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.pin(key)

    def unpin_all(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.unpin(key)

    def removed(self, key: str) -> str | None:
        """``key`` was released: DELETE if the shell must delete its file now
        (a read of it in flight may fail or finish: :meth:`loaded` then says
        to discard it); None otherwise. A write in flight is let finish, and
        :meth:`written` answers DELETE then."""
        nbytes = self.nbytes.pop(key, None)
        if nbytes is None:
            return None
        self._total -= nbytes
        if key in self._memory:
            del self._memory[key]
            self.managed -= nbytes
        if key in self._writing and key not in self._stale_writes:
            self._stale_writes.add(key)
            self._leaving -= nbytes
        if key in self._reading and key not in self._stale_reads:
            self._stale_reads.add(key)
            self._coming_back -= nbytes
        self._touched.discard(key)
        self._unspillable.discard(key)
        if key in self._files:
            self.spilled -= self._files.pop(key)
            return DELETE
        return None

    def written(self, key: str, disk_bytes: int) -> str:
        """The write of ``key`` finished, its file takes ``disk_bytes``.

        DROP: the value may leave memory. KEEP: it stays, as it was pinned or
        used since the write was planned (dropping a value in use frees
        nothing, and one used just now is likely used again); its file is
        kept, so moving it out later costs no write. DELETE: the key was
        released meanwhile; delete the file.
        """
        self._writing.discard(key)
        if key in self._stale_writes:
            self._stale_writes.discard(key)
            return DELETE
        self._leaving -= self.nbytes[key]
        self._files[key] = disk_bytes
        self.spilled += disk_bytes
        if key in self._pins or key in self._touched:
            self._touched.discard(key)
            return KEEP
        del self._memory[key]
        self.managed -= self.nbytes[key]
        return DROP

    def write_failed(self, key: str, error: object) -> None:
        """The write of ``key`` failed (disk full, directory gone): the value
        stays in memory, nothing is lost, and no more writes are planned (a
        full disk stays full: no retry loop). :meth:`should_pause` pauses the
        worker lower from now on. Said once in :meth:`take_changes`."""
        self._write_ended(key)
        if not self.disk_trouble:
            self.disk_trouble = True
            pause_at = self._pause_marks()[0]
            self._changes.append(Change(
                f"cannot spill to disk ({error}): spilling stopped; " + (
                    f"the worker pauses at {pause_at:.0%} of its memory limit" if pause_at
                    else "no pause mark is set"), logging.ERROR))

    def cannot_spill(self, key: str) -> None:
        """The value of ``key`` cannot be written (it cannot be pickled): it
        stays in memory, and is never planned again. No fault of the disk."""
        if self._write_ended(key):
            self._unspillable.add(key)

    def wanted(self, key: str) -> bool:
        """A task or a server needs ``key``: True if the shell must read it back
        first (on disk only, and no read of it in flight already)."""
        if key not in self._files or key in self._memory or key in self._reading:
            return False
        self._reading.add(key)
        self._coming_back += self.nbytes[key]
        return True

    def loaded(self, key: str) -> bool:
        """The read of ``key`` finished: True to put the value in memory (the
        most recently used, its file kept); False to discard it (released)."""
        if not self._read_ended(key):
            return False
        self._memory[key] = None
        self.managed += self.nbytes[key]
        return True

    def read_failed(self, key: str, error: object) -> bool:
        """The read of ``key`` failed. True: the key is lost (its file is
        unreadable): the shell forgets it, and the center recomputes it or
        finds another copy. False: it was released meanwhile (the failure
        may be its file's deletion), and nothing is lost."""
        if not self._read_ended(key):
            return False
        self._changes.append(Change(f"cannot read {key!r} back from disk: {error}",
                                    logging.ERROR))
        return True

    def _write_ended(self, key: str) -> bool:
        """A write of ``key`` ended without a file: whether it was of the value
        held now (not of one released since)."""
        if key not in self._writing:
            return False  # (never planned: nothing to undo)
        self._writing.discard(key)
        self._touched.discard(key)
        if key in self._stale_writes:
            self._stale_writes.discard(key)
            return False
        self._leaving -= self.nbytes[key]
        return True

    def _read_ended(self, key: str) -> bool:
        """A read of ``key`` ended: whether it was of the value held now (not
        of one released since, whose file may be gone)."""
        if key not in self._reading:
            return False  # (never asked for: nothing to take)
        self._reading.discard(key)
        if key in self._stale_reads:
            self._stale_reads.discard(key)
            return False
        self._coming_back -= self.nbytes[key]
        return True

    # --- decisions ------------------------------------------------------

    def measured(self, rss: int, reserve: int = 0) -> Plan:
        """The process holds ``rss`` bytes: which keys to move out of memory now.

        While results in memory exceed ``target`` of the limit, or the process
        exceeds ``spill``, the least recently used go, until results would be
        under ``target`` and the process under ``spill`` (the values being
        written count as gone). The ``spill`` rule stops at ``spill``, not at
        ``target`` as dask's does: the results' own rule already brings them
        to ``target``, and writing more than needed is spilling too early.
        Pinned keys and keys in flight never go; one bigger than the whole
        target goes all the same (it cannot fit anyway).

        ``reserve``: bytes to make room for besides (a task about to start,
        and the result it is expected to make): the process is kept under
        ``spill`` with them counted in.
        """
        plan = Plan()
        self._rss_measured, self._managed_then = rss, self.managed
        limit, t = self.memory_limit, self.thresholds
        if not limit or (t.target is None and t.spill is None):
            return plan
        leaving = self._leaving
        managed, process = self.managed - leaving, rss - leaving + reserve
        target, spill = self._target_bytes, self._spill_bytes  # (inf: off)
        if managed <= target and process <= spill and not self._spilling:
            return plan  # (the common case, checked at every result: no scan)
        pins, writing, files = self._pins, self._writing, self._files
        for key in self._memory:  # least recently used first
            if managed <= target and process <= spill:
                break
            if key in pins or key in writing or key in self._unspillable:
                continue
            if key in files:
                plan.drop.append(key)  # a clean copy: drops for free
            elif not self.disk_trouble:
                plan.write.append(key)
            else:
                continue
            managed -= self.nbytes[key]
            process -= self.nbytes[key]
        for key in plan.drop:
            del self._memory[key]
            self.managed -= self.nbytes[key]
        writing.update(plan.write)
        nbytes = self.nbytes
        self._leaving += sum(nbytes[key] for key in plan.write)
        # Spilling, for the log, lasts from the first write until every result
        # would fit in memory again (released, not merely written): one line
        # each way for a run of writes, not a pair per result.
        spilling = bool(plan or self._writing) or self._spilling and not (
            self._total <= target and self._total <= spill and rss <= spill)
        if spilling != self._spilling:
            self._spilling = spilling
            self._changes.append(Change(
                f"{'started' if spilling else 'stopped'} spilling: {_mb(self.managed)} of "
                f"results in memory, {_mb(self.spilled)} on disk, process {_mb(rss)}",
                logging.INFO))
        return plan

    def calm(self, rss: int) -> bool:
        """Whether nothing is to be decided at ``rss``: results under the
        target, the process under every mark, nothing in flight to disk, not
        spilling, not paused. A worker checks this at every result; a few
        comparisons, so that small tasks pay next to nothing for spilling."""
        return self.managed <= self._target_bytes and rss <= self._first_mark_bytes and \
            not (self._writing or self._spilling or self.paused)

    def estimated_rss(self) -> int:
        """The process's memory now, as estimated between measures: the last
        one, plus the results that came into memory since, less those that
        left. A result made by a task may count twice until the next measure
        (in the measure as the task's allocation, and as a result): the
        estimate errs on the side of spilling and pausing a moment early."""
        return max(0, self._rss_measured + self.managed - self._managed_then)

    def should_pause(self, rss: int) -> bool:
        """Whether the worker should be paused (start no new task) at ``rss``.

        It pauses above ``pause`` and resumes below ``spill``: memory that
        spilling keeps under ``spill`` lets it resume on its own, and the gap
        keeps it from flipping. With no spill mark below ``pause``, it resumes
        RESUME_GAP lower. After disk trouble, spilling cannot hold memory
        down: it pauses where it would have spilled, and resumes RESUME_GAP
        below that, as memory frees (results released).

        The results being written count as gone: their writes will bring
        memory down, and until they land no task starts anyway
        (:meth:`holding`). A pause is for memory that spilling cannot bring
        down, and the center is told of it; a worker spilling big results
        does not flip at each one.
        """
        pause_at, resume_at = self._pause_marks()
        if not self.memory_limit or pause_at <= 0:
            return False
        leaving = self._leaving
        share = (rss - leaving) / self.memory_limit
        if share > pause_at if not self.paused else share < resume_at:
            self.paused = not self.paused
            writing = f" ({_mb(leaving)} of it on its way to disk)" if leaving else ""
            # (a pause is a warning: the center sends the worker's tasks elsewhere)
            self._changes.append(Change(
                f"{'paused' if self.paused else 'resumed'}: process {_mb(rss)}{writing}, "
                f"{share:.0%} of its memory limit" + (" without it" if leaving else ""),
                logging.WARNING if self.paused else logging.INFO))
        return self.paused

    def high(self, rss: int) -> bool:
        """Whether ``rss`` is past the first mark that moves results out or
        pauses (memory the process could give back should not count: the shell
        gives it back first)."""
        t = self.thresholds
        marks = [m for m in (t.spill, t.pause) if m is not None]
        return bool(self.memory_limit and marks) and rss > min(marks) * self.memory_limit

    def room(self, coming: int = 0) -> int | None:
        """Bytes that may still come into memory (inputs fetched from peers
        or read back from disk, tasks' results) before the process is over
        the first of the spill and pause marks, as estimated: what is being
        read back and ``coming`` (other bytes on their way: inputs asked of
        peers, results read back for them) count as come, and the results
        being written as still here (they are, until their writes land).
        None: no limit to keep (as many as come).

        A worker with a limit takes in big data one piece at a time near its
        marks: each of fetching, reading back and starting a task waits for
        room (see WorkerSpilling), except when nothing at all is on its way,
        so that it always gets on."""
        if self._first_mark_bytes == float("inf") or not self.memory_limit:
            return None
        return int(self._first_mark_bytes - self.estimated_rss() - self._coming_back
                   - coming)

    def on_its_way(self, coming: int = 0) -> bool:
        """Whether memory will change without a new task or transfer: writes to
        disk or reads back under way, or ``coming`` bytes on their way."""
        return bool(coming or self._writing or self._reading)

    def holding(self, coming: int = 0) -> bool:
        """Whether to start no task until what is on its way lands (see
        :meth:`room`): a task started with no room would pile its memory onto
        theirs. Not a pause: the center is not told, as it lasts a
        transfer's time."""
        if not self.on_its_way(coming):
            return False
        room = self.room(coming)
        return room is not None and room <= 0

    def should_terminate(self, rss: int) -> bool:
        """The nanny's rule: restart the worker above ``terminate`` only."""
        term = self.thresholds.terminate
        return bool(self.memory_limit) and term is not None and rss > term * self.memory_limit

    # --- readings -------------------------------------------------------

    def take_changes(self) -> list[Change]:
        """What changed since last asked, to log once each: spilling started or
        stopped, paused or resumed, disk trouble."""
        changes, self._changes = self._changes, []
        return changes

    def counts(self) -> dict[str, int]:
        """How many keys: in memory, with a file, being written, being read, pinned."""
        return {"memory": len(self._memory), "disk": len(self._files),
                "writing": len(self._writing), "reading": len(self._reading),
                "pinned": len(self._pins)}

    def in_memory(self, key: str) -> bool:
        return key in self._memory

    def on_disk(self, key: str) -> bool:
        return key in self._files

    # --- helpers --------------------------------------------------------

    def _pause_marks(self) -> tuple[float, float]:
        """(pause above, resume below) as shares of the limit; 0 if off."""
        t = self.thresholds
        pause = t.pause or 0.0
        if self.disk_trouble and t.spill is not None:
            pause = t.spill
        if t.spill is not None and t.spill < pause and not self.disk_trouble:
            return pause, t.spill
        return pause, max(pause - RESUME_GAP, 0.0)


def _mb(nbytes: int) -> str:
    return format_bytes(nbytes)
