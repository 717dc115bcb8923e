"""Where a worker's results are, memory or disk, as its tasks need them: no I/O.

:class:`~zfutures.worker_memory.MemoryManager` decides what moves to disk and
when the worker pauses; :class:`WorkerSpilling`, a part of
:class:`~zfutures.worker_state.WorkerState`, carries its decisions out on the
state machine's records and asks the shell for the disk work, in
:attr:`WorkerSpilling.to_spill`:

- ``(WRITE, key, value)``: write the value to the spill store, then call
  :meth:`~WorkerSpilling.spill_written` (or :meth:`~WorkerSpilling.spill_write_failed`);
- ``(READ, key, None)``: read it back, then :meth:`~WorkerSpilling.spill_loaded`
  (or :meth:`~WorkerSpilling.spill_read_failed`);
- ``(DELETE, key, None)``: delete its file.

The shell does them off its loop thread, writes and deletes in the order
asked. A key held here is in :attr:`nbytes` (the manager's record) wherever
it is, and in :attr:`data` while it is in memory. A task starts only with
every input in memory, pinned there until it ends (see
:meth:`WorkerSpilling.inputs_ready`); a task whose inputs are on disk waits
for them to be read back, its inputs pinned meanwhile.

Near the memory marks, big data comes in one piece at a time, each once
there is room for it (:meth:`WorkerSpilling._admit`): inputs asked of peers
(:meth:`WorkerSpilling.request_inputs`), inputs read back, and the result a
task is expected to make (:meth:`WorkerSpilling._room_to_run`); answers read
back from disk for other workers go first (:meth:`WorkerSpilling.may_serve`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

from .memory_thresholds import MemoryThresholds
from .messages import MissingData, Paused
from .worker_memory import DELETE, DROP, MemoryManager, Plan

if TYPE_CHECKING:
    from .worker_fetch import Fetches, Request
    from .worker_state import Report, Task

WRITE, READ = "write", "read"

#: A result of this share of the memory limit or more is worth a measure of
#: the process as it comes in (see WorkerSpilling._memory_changed), and its
#: size is remembered for its group (see WorkerSpilling._expected_result).
BIG_RESULT = 0.01

#: Seconds a request for results on disk waits for room at most (see
#: WorkerSpilling.may_serve): tasks give way to it meanwhile, so room
#: comes as the running ones end; past this, it is read back all the same,
#: before the asker gives up on this worker (the fetch timeout, 10 s).
SERVE_WAIT = 6.0

#: The task groups whose big result sizes are remembered, the latest.
BIG_GROUPS = 1000


def group_of(key: str) -> str:
    """A task's group, as the center names it: its key up to the last "-"."""
    return key.rpartition("-")[0] or key

#: A disk operation for the shell: (WRITE | READ | DELETE, key, value or None).
SpillOp = tuple[str, str, Optional[Any]]


class WorkerSpilling:
    """The memory side of :class:`~zfutures.worker_state.WorkerState`, a
    mixin it is made of; tested through it (tests/test_worker_spilling.py)."""

    # What this part reads of the state machine (WorkerState sets them).
    address: str
    nthreads: int
    tasks: dict[str, Task]
    to_center: list[Report]
    paused: bool

    fetching: Fetches
    executing: set[str]  # (handed to task threads)

    if TYPE_CHECKING:
        def _make_ready(self, task: Task) -> None: ...
        def set_paused(self, paused: bool) -> None: ...
        def _start_tasks(self) -> None: ...

    def __init__(self, memory_limit: int = 0, thresholds: MemoryThresholds | None = None):
        self.memory = MemoryManager(memory_limit, thresholds)
        self.data: dict[str, Any] = {}  # the results in memory
        #: Every key held here, in memory or on disk: its size (bytes in memory).
        self.nbytes = self.memory.nbytes
        self.to_spill: list[SpillOp] = []
        # Keys being read back -> the tasks that wait for them.
        self.disk_waiters: dict[str, set[str]] = {}
        # Tasks whose inputs are being read back, to start once they are in.
        self.loading: set[str] = set()
        # Tasks running or loading -> the inputs they pinned in memory.
        self.pinned_inputs: dict[str, list[str]] = {}
        # Bytes the data server read back from disk for answers and holds, and
        # those requests waiting for room ask for (see serving_changed).
        self.serving = 0
        self.serve_waiting = 0
        # Task group -> the size of its last big result (see _expected_result).
        self._big_results: dict[str, int] = {}
        # Running tasks -> the bytes of the results they are expected to make.
        self._expecting: dict[str, int] = {}
        self._reserved = 0
        #: Measures the process's memory now (bytes), if the shell gives it.
        self.measure_rss: Callable[[], int] | None = None

    # --------------------------------------------------------------- records

    def _keep(self, key: str, value: Any, nbytes: int) -> None:
        """A result came into memory: computed, fetched or put here."""
        self.data[key] = value
        memory = self.memory
        if memory.stored(key, nbytes) == DELETE:  # (an older value's file)
            self.to_spill.append((DELETE, key, None))
        if memory.memory_limit:
            big = nbytes >= BIG_RESULT * memory.memory_limit
            if big:
                self._note_size(key, nbytes)
            self._memory_changed(big)

    def _forget(self, key: str) -> None:
        """``key`` is released: its value and its file go."""
        self.data.pop(key, None)
        if self.memory.removed(key) == DELETE:
            self.to_spill.append((DELETE, key, None))

    # --------------------------------------------------------------- task inputs

    def inputs_ready(self, task: Task) -> bool:
        """Whether ``task`` may start now, every input in memory. Its inputs
        are pinned there from now until it ends or is dropped
        (:meth:`_inputs_done`): those read back for it stay until it runs,
        rather than go back to disk while it waits for a thread or another
        read. Those on disk are read back, and the task waits in
        :attr:`loading`."""
        deps = task.deps
        if not deps:
            return True
        key = task.key
        if key not in self.pinned_inputs:
            self.memory.pin_all(deps)
            self.pinned_inputs[key] = list(deps)
        data = self.data
        on_disk = [dep for dep in deps if dep not in data]
        if not on_disk:
            return True
        gone = [dep for dep in on_disk if dep not in self.nbytes]
        if gone:  # released since the task was made ready: the center finds them
            self._inputs_done(key)
            del self.tasks[key]
            self.to_center.append((MissingData(key, gone, task.run, [self.address]), []))
            return False
        self.loading.add(key)
        task.missing.update(on_disk)
        for dep in on_disk:
            self.disk_waiters.setdefault(dep, set()).add(key)
            if self.memory.wanted(dep):
                self.to_spill.append((READ, dep, None))
        return False

    def _inputs_done(self, key: str) -> None:
        """The run of ``key`` ended, or it waits no more: its inputs may
        leave memory again."""
        inputs = self.pinned_inputs.pop(key, None)
        if inputs is not None:
            self.memory.unpin_all(inputs)

    def _stop_loading(self, task: Task) -> None:
        """``task`` waits for reads no more (released, or given up)."""
        self.loading.discard(task.key)
        self._inputs_done(task.key)
        for dep in task.missing:
            waiters = self.disk_waiters.get(dep)
            if waiters is not None:
                waiters.discard(task.key)

    def _forget_loading(self) -> None:
        """The tasks that wait for reads are dropped (see WorkerState.forget_queue);
        reads under way still bring their keys into memory."""
        for key in self.loading:
            self._inputs_done(key)
        self.loading.clear()
        self.disk_waiters.clear()

    # --------------------------------------------------------------- the shell's reports

    def memory_measured(self, rss: int) -> None:
        """The process holds ``rss`` bytes (measured now and then by the shell)."""
        self._carry_out(self.memory.measured(rss), rss)

    def spill_written(self, key: str, disk_bytes: int) -> None:
        """The write of ``key`` to disk finished; its file takes ``disk_bytes``."""
        action = self.memory.written(key, disk_bytes)
        if action == DROP:
            self.data.pop(key, None)
        elif action == DELETE:
            self.to_spill.append((DELETE, key, None))
        self._check_pause(self.memory.estimated_rss())
        self._start_tasks()  # (they may wait for writes to land: MemoryManager.holding)

    def spill_write_failed(self, key: str, error: object, disk: bool = True) -> None:
        """The write of ``key`` failed: the disk's fault (``disk``), or the
        value's (it cannot be pickled: it stays in memory for good)."""
        if disk:
            self.memory.write_failed(key, error)
        else:
            self.memory.cannot_spill(key)
        self._check_pause(self.memory.estimated_rss())
        self._start_tasks()  # (they may have waited for this write to land)

    def serving_changed(self, nbytes: int, waiting: int = 0) -> None:
        """The data server holds ``nbytes`` read back from disk for answers,
        and requests for ``waiting`` bytes more on disk wait for room: while
        they take or want the room, no task starts (MemoryManager.holding,
        _room_to_run), as other workers wait for those answers; once they
        are let go of, tasks may."""
        less = nbytes + waiting < self.serving + self.serve_waiting
        self.serving, self.serve_waiting = nbytes, waiting
        if less:
            self._start_tasks()

    def spill_loaded(self, key: str, value: Any) -> None:
        """``key`` was read back: the tasks that waited for it may start."""
        if not self.memory.loaded(key):  # released meanwhile
            self._inputs_lost(key)
            return
        self.data[key] = value
        for task_key in self.disk_waiters.pop(key, ()):
            task = self.tasks.get(task_key)
            if task is not None and task_key in self.loading:
                task.missing.discard(key)
                if not task.missing:
                    self.loading.discard(task_key)
                    self._make_ready(task)
        if self.memory.memory_limit:
            self._memory_changed(self.nbytes[key] >= BIG_RESULT * self.memory.memory_limit)
        self._start_tasks()

    def spill_read_failed(self, key: str, error: object) -> None:
        """``key`` could not be read back: it is lost here."""
        if self.memory.read_failed(key, error):
            self._forget(key)
        self._inputs_lost(key)
        self._start_tasks()

    def _inputs_lost(self, key: str) -> None:
        """``key``, read back for tasks, is not here after all (unreadable, or
        released meanwhile): those tasks go back to the center, which drops
        this copy and makes or finds another."""
        for task_key in self.disk_waiters.pop(key, ()):
            task = self.tasks.get(task_key)
            if task is not None and task_key in self.loading:
                self._stop_loading(task)
                del self.tasks[task_key]
                self.to_center.append((MissingData(task_key, [key], task.run,
                                                   [self.address]), []))

    # --------------------------------------------------------------- decisions

    def request_inputs(self, now: float) -> list[Request]:
        """The requests for inputs to send now: all those planned, or while
        memory is short, those that fit in its room (MemoryManager.room); the
        others wait for a later call (the shell calls again while
        ``fetching.held_back``). With no room, and nothing on its way nor
        running to wait for, results are moved to disk to make room for the
        next input, or, if none can be, it comes all the same (see _admit)."""
        if not self.fetching.held_back:
            return []  # (nothing planned: most tasks' inputs are here already)
        coming = self._coming()
        room = self.memory.room(coming)
        if room is None:
            return self.fetching.make_requests(now)
        if self.paused:
            room = 0
        first = self.fetching.next_size()
        one = first is not None and first > room and not self.paused and self._admit(first)
        return self.fetching.make_requests(now, max(room, 0), at_least_one=one)

    def _admit(self, size: int) -> bool:
        """Whether ``size`` bytes may come into memory now (an input fetched or
        read back, a task's result): if they fit in the room left. If not,
        the worker waits for what is on its way or running to land, or, with
        nothing to wait for, moves results to disk to make room and waits for
        those writes; with nothing it may move, they come all the same, so
        that a worker short of memory still gets on, one piece at a time."""
        memory = self.memory
        coming = self._coming()
        room = memory.room(coming)
        if room is None or size <= room:
            return True
        if self._waiting_on_something(coming):
            return False
        rss = memory.estimated_rss()
        plan = memory.measured(rss, reserve=size + coming)
        self._carry_out(plan, rss)
        return not plan.write

    def _coming(self) -> int:
        """Bytes on their way into memory beyond the manager's own reads:
        inputs asked of peers, results read back for them, and the results
        the running tasks are expected to make (counted twice, in part, once
        they are under way and measured: near the marks, that errs on the
        safe side)."""
        return self.fetching.incoming + self.serving + self._reserved

    def _started(self, task: Task, need: int) -> None:
        """``task`` goes to a thread: the ``need`` bytes of the result it is
        expected to make are reserved until it ends or secedes (see _coming)."""
        self._expecting[task.key] = need
        self._reserved += need

    def _ended(self, key: str) -> None:
        """The run of ``key`` ended: its inputs may leave memory, its
        reservation goes."""
        if self.pinned_inputs:
            self._inputs_done(key)
        if self._expecting:
            self._reserved -= self._expecting.pop(key, 0)

    def _may_load(self, task: Task) -> bool:
        """Whether ``task``, whose inputs are not all in memory, may have them
        read back now (see _admit), at most nthreads tasks at a time."""
        if len(self.loading) >= self.nthreads:
            return False
        return self._admit(sum(self.nbytes.get(dep, 0) for dep in task.deps
                               if dep not in self.data))

    def may_serve(self, nbytes: int, waited: float) -> bool:
        """Whether the data server may read back ``nbytes`` from disk now for a
        peer or a client whose request has waited ``waited`` seconds: if they
        fit in the room left, or nothing at all is on its way and no task
        runs; and after SERVE_WAIT seconds all the same, well before the
        asker gives up on this worker and the center believes its data lost
        (the fetch timeout, 10 s by default)."""
        # (inputs this worker asked for do not count: another worker may be
        # waiting for this answer to answer ours, and answers go first)
        coming = self._coming() - self.fetching.incoming
        room = self.memory.room(coming)
        if room is None or nbytes <= room or waited >= SERVE_WAIT:
            return True
        return not self._waiting_on_something(coming)

    def _waiting_on_something(self, coming: int) -> bool:
        """Whether memory will change without a new task or transfer: a task
        runs, or writes, reads or ``coming`` bytes are on their way."""
        return bool(self.executing) or self.memory.on_its_way(coming)

    def _holding(self) -> bool:
        """Whether no task may start until what is on its way lands."""
        return self.memory.holding(self._coming())

    def _room_to_run(self, task: Task) -> int | None:
        """Whether ``task``, its inputs in memory, may start: None if not yet;
        else the bytes of the result it is expected to make
        (:meth:`_expected_result`), for which there is room (see
        :meth:`_admit`) besides the answers that wait for room (others wait
        for them: they go first). A task expected to add nothing big starts
        (unless the worker holds all tasks: MemoryManager.holding)."""
        need = self._expected_result(task) if task.deps or self._big_results else 0
        if need < BIG_RESULT * self.memory.memory_limit:
            need = 0  # (small: measured as it comes, no reservation)
        if not need and not self.serve_waiting:
            return 0
        return need if self._admit(need + self.serve_waiting) else None

    def _expected_result(self, task: Task) -> int:
        """The bytes ``task`` is expected to add to memory as it runs: as big
        as its biggest input, or as the last big result of its group."""
        nbytes = self.nbytes
        size = max([nbytes.get(dep, 0) for dep in task.deps]) if task.deps else 0
        if self._big_results:
            size = max(size, self._big_results.get(group_of(task.key), 0))
        return size

    def _note_size(self, key: str, nbytes: int) -> None:
        """Remember ``nbytes``, a big result's size, as its group's (see
        _expected_result): of the last BIG_GROUPS groups."""
        group = group_of(key)
        sizes = self._big_results
        sizes.pop(group, None)
        sizes[group] = nbytes
        if len(sizes) > BIG_GROUPS:
            del sizes[next(iter(sizes))]

    def _memory_changed(self, big: bool) -> None:
        """A result came into memory (``big``: of BIG_RESULT of the limit or
        more), on a worker with a memory limit: move some out, or pause, at
        once (the shell measures too seldom to catch a burst of big results).
        By a measure of the process if the result is big and the shell gave
        :attr:`measure_rss`; else by the estimate, as measuring costs more
        than a small task (see MemoryManager.estimated_rss)."""
        memory = self.memory
        measure = self.measure_rss
        rss = measure() if big and measure is not None else memory.estimated_rss()
        if not memory.calm(rss):
            self._carry_out(memory.measured(rss), rss)

    def _carry_out(self, plan: Plan, rss: int) -> None:
        if plan:
            data = self.data
            for key in plan.write:
                self.to_spill.append((WRITE, key, data[key]))
            for key in plan.drop:
                del data[key]
        self._check_pause(rss)

    def _check_pause(self, rss: int) -> None:
        paused = self.memory.should_pause(rss)
        if paused != self.paused:
            self.set_paused(paused)
            self.to_center.append((Paused(paused), []))
