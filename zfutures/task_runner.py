"""Running a worker's tasks: on task threads, or on the loop thread itself.

Task threads take tasks from a queue the loop fills, run user code and hand
each result back through the worker's :meth:`~zfutures.worker.Worker.call_soon`,
so the loop never blocks on a task and keeps heartbeating while tasks run.
Short tasks are handed over a few at a time (see ``HAND_AHEAD_TIME`` in
worker_state.py), and a small result a client waits for is pickled on the
task thread, to be sent with the completion (``SEND_RESULT_LIMIT``).

A lone task a client sent straight here may run on the loop thread itself
(a "loop run": WorkerState.take_loop_run decides): its client waits on each
hop, and a handoff between threads costs tens of microseconds where the
wakeup crosses CPUs. Should it run long, a standby thread takes the loop
over (see ``LOOP_RUN_CHECK``), and the task finishes where it started, as
on a task thread.

A task that waits on futures secedes (context.secede): its thread slot goes
to the next task, and a new task thread takes the slot.

Each run is reported with when it started (wall clock) and its thread's
slot, numbered 0 to nthreads - 1, for the center's task stream: a thread
that takes a seceded thread's slot takes its number too, and a run on the
loop thread counts as slot 0 (it runs only while no task thread works).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from . import context, serialize
from .protocol import Frames
from .remote_errors import pickle_exception
from .worker_state import Task, WorkerState

logger = logging.getLogger(__name__)

#: Results up to this size (bytes, estimated) travel with the task's completion
#: to the clients waiting for them, saving the fetch that would follow.
SEND_RESULT_LIMIT = 16 * 1024

#: How often (seconds) the standby thread looks at a task running on the loop
#: thread: if the same one runs at two looks, it takes the loop over. A task
#: may so hold the loop for up to twice this; heartbeats are far apart.
LOOP_RUN_CHECK = 0.002

#: The standby thread sleeps once no task has run on the loop thread for this
#: long (seconds), so an idle worker does not wake every LOOP_RUN_CHECK.
STANDBY_IDLE = 0.5

#: Functions unpickled before, shared by the task threads (see serialize.loads_task).
_functions: dict[Any, Any] = {}

#: What a task thread hands back: (key, value, nbytes, duration, error frames,
#: pickled value or None, start on the wall clock, thread slot), the
#: arguments of WorkerState.task_done.
Result = tuple[str, Any, int, float, Optional[Frames], Optional[Frames], float, int]

#: The slot of a run on the loop thread (see the module's docstring).
LOOP_SLOT = 0

# User code may raise any BaseException where a worker pickles, unpickles or
# measures a value (a __reduce__ that raises SystemExit): on a task thread it
# would end the thread, on the loop thread the worker. Neither thread is the
# main one, which alone receives KeyboardInterrupt from a signal, so every
# BaseException met there is user code's, and caught as an error of the value.


def run_task(task: Task, inputs: dict[str, Any], slot: int = 0) -> Result:
    """Unpickle and run one task, on thread ``slot``: ``(key, value, nbytes,
    duration, error frames, pickled value or None, start, slot)``."""
    wall = time.time()
    start = time.perf_counter()
    try:
        fn, args, kwargs = serialize.loads_task(task.payload, inputs, _functions)
        value = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: B036 - a task's failure must reach its future
        return (task.key, None, 0, time.perf_counter() - start, pickle_exception(exc), None,
                wall, slot)
    duration = time.perf_counter() - start
    try:
        nbytes = serialize.sizeof(value)
    except BaseException:  # noqa: B036 - user code (see above): size unknown
        nbytes = 0
    pickled = None
    if task.send_result and nbytes <= SEND_RESULT_LIMIT:
        try:
            pickled = serialize.dumps(value)
        except BaseException:  # noqa: B036 - fetched, and its error reported, the usual way
            pickled = None
        # An object can hide big buffers from sizeof: those are fetched from
        # here, never carried through the center.
        if pickled is not None and serialize.frames_nbytes(pickled) > SEND_RESULT_LIMIT:
            pickled = None
    return task.key, value, nbytes, duration, None, pickled, wall, slot


class LoopMoved(Exception):
    """The standby thread took the loop over while this thread ran a task:
    raised out of the loop's turn, so that this thread leaves the loop."""


class TaskRunner:
    """The task threads of a worker, and its runs on the loop thread.

    ``owner`` is what a task sees as its worker (context.enter_task);
    ``call_soon`` has the loop thread call a function; ``serve`` runs the
    worker's loop until it stops or moves, for the standby to call;
    ``closed`` is set once the worker has closed.
    """

    def __init__(self, owner: Any, state: WorkerState, nthreads: int,
                 call_soon: Callable[..., None], serve: Callable[[], None],
                 closed: threading.Event):
        self.owner = owner
        self.state = state
        self.nthreads = nthreads
        self.call_soon = call_soon
        self.serve = serve
        self.closed = closed
        #: Tasks for the task threads, with their inputs; None ends a thread.
        self.work: queue.SimpleQueue[tuple[Task, dict[str, Any]] | None] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self._local = threading.local()  # a task thread's slot
        # Loop runs. The lock orders a run's end with the standby's takeover,
        # and hands the sockets over safely.
        self._lock = threading.Lock()
        self.job: tuple[Task, dict[str, Any]] | None = None  # to run at the end of this turn
        self._runs = 0  # counts them
        self._on_loop = 0  # the one running on the loop thread now, if any
        self._taken_during: set[int] = set()  # ones the standby took the loop over from
        self._off_pool: set[str] = set()  # keys running on a loop thread, or a former one
        self._last_run = 0.0
        self._standby: threading.Thread | None = None
        self._standby_wake = threading.Event()  # set while tasks run on the loop thread

    # ------------------------------------------------------------------ task threads

    def start(self) -> None:
        """Start the task threads."""
        for slot in range(self.nthreads):
            self._start_thread(slot)

    def stop(self) -> None:
        """End each task thread once it is done with its task."""
        for _ in self.threads:
            self.work.put(None)

    def start_tasks(self, stopping: bool) -> None:
        """Start the tasks the state machine handed over (WorkerState.to_execute):
        the one it picks to run on the loop thread is set aside for the end
        of this turn (:meth:`run_set_aside`), unless the loop is ``stopping``;
        the others go to the task threads, with their inputs."""
        state = self.state
        task = state.take_loop_run(not stopping and self.job is None and self.work.empty())
        if task is not None:
            self.job = (task, {})  # (a lone task a client sent has no inputs)
        put, inputs_of = self.work.put, state.inputs_of
        for task in state.to_execute:
            put((task, inputs_of(task)))
        state.to_execute.clear()

    def _start_thread(self, slot: int) -> None:
        thread = threading.Thread(target=self._task_thread, args=(slot,), daemon=True,
                                  name=f"zfutures-task-{len(self.threads)}")
        self.threads.append(thread)
        thread.start()

    def _task_thread(self, slot: int) -> None:
        self._local.slot = slot
        work, task_done, owner = self.work, self.state.task_done, self.owner
        while True:
            job = work.get()
            if job is None:
                return
            task = job[0]
            if task.key in self.state.released_running:  # released before it started
                self.call_soon(self._skipped, job)
                del job, task
                continue
            context.enter_task(owner, task.key)
            result = run_task(job[0], job[1], slot)
            seceded = context.leave_task()
            self.call_soon(task_done, *result)
            # Hold nothing while waiting for the next job: the inputs and the
            # result must go when the center releases them.
            del job, task, result
            if seceded:
                return

    def _skipped(self, job: tuple[Task, dict[str, Any]]) -> None:
        """A task thread did not start a task released while it waited in line."""
        task = job[0]
        if task.key in self.state.released_running:
            self.state.task_skipped(task.key)
        else:  # the center asked for it again meanwhile: run it after all
            self.work.put(job)

    def secede(self, key: str) -> None:
        """Called from the thread running ``key``, which waits on futures."""
        self.call_soon(self._secede, key, key not in self._off_pool,
                       getattr(self._local, "slot", LOOP_SLOT))

    def _secede(self, key: str, on_task_thread: bool = True, slot: int = LOOP_SLOT) -> None:
        self.state.secede(key)  # (its report goes with the loop's next flush)
        if on_task_thread:  # (a task on the loop thread took no task thread)
            self._start_thread(slot)  # takes the slot; the seceded thread ends with its task

    # ------------------------------------------------------------------ loop runs

    def run_set_aside(self, flush: Callable[[], None]) -> None:
        """Run the tasks set aside, on this, the loop thread, calling ``flush``
        after each to send its result at once; or, if the standby took the
        loop over meanwhile, hand the result to the loop as a task thread
        would, and raise LoopMoved for this thread to leave the loop."""
        while self.job is not None:  # (a flush may set the next one aside)
            self._run_on_loop(flush)

    def _run_on_loop(self, flush: Callable[[], None]) -> None:
        job, self.job = self.job, None
        assert job is not None  # (see run_set_aside)
        task, inputs = job
        del job  # (nothing holds the task once it ran: see _task_thread)
        with self._lock:
            self._runs += 1
            self._on_loop = mine = self._runs
            self._off_pool.add(task.key)
            self._last_run = time.monotonic()
            if self._standby is None:  # (the first, or the last took the loop over)
                self._standby = threading.Thread(target=self._watch, daemon=True,
                                                 name="zfutures-standby")
                self._standby.start()
            if not self._standby_wake.is_set():
                self._standby_wake.set()
        context.enter_task(self.owner, task.key)
        result = run_task(task, inputs, LOOP_SLOT)
        context.leave_task()  # (seceded or not, this thread goes on)
        with self._lock:
            self._off_pool.discard(task.key)
            moved = mine in self._taken_during
            if moved:  # (the loop may have run others on its new thread since)
                self._taken_during.discard(mine)
            else:
                self._on_loop = 0
        del task, inputs
        if moved:
            self.call_soon(self.state.task_done, *result)
            raise LoopMoved
        self.state.task_done(*result)
        flush()

    def release_standby(self) -> None:
        """The worker has closed (``closed`` is set): the standby, if any, ends."""
        self._standby_wake.set()

    def _watch(self) -> None:
        """The standby: take the loop over from a task that runs on it too long."""
        seen = 0
        while not self.closed.is_set():
            if not self._standby_wake.wait(1.0) or self.closed.wait(LOOP_RUN_CHECK):
                continue  # (parked: no task ran on the loop thread lately)
            with self._lock:
                running = self._on_loop
                take = running and running == seen
                if take:
                    self._taken_during.add(running)
                    self._on_loop, self._standby = 0, None
                    logger.debug("a task runs long on the loop thread; the standby "
                                 "takes the loop over")
                elif not running and time.monotonic() - self._last_run > STANDBY_IDLE:
                    self._standby_wake.clear()
                seen = running
            if take:
                threading.current_thread().name = "zfutures-loop"
                self.serve()
                return
