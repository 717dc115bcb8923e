"""The decisions a worker's shell asks of its state machine, with no I/O.

- when reports go to the center: completions may wait a moment to go many
  to a message (:meth:`WorkerPolicies.take_reports`);
- which task runs on the loop thread rather than a task thread
  (:meth:`WorkerPolicies.take_loop_run`);
- when a worker that leaves may stop (:meth:`WorkerPolicies.leave`).

The shell measures (time, memory, whether its threads are free) and acts on
the answers; each decision is tested through WorkerState, time as an argument.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .messages import DoneItem, Retire

if TYPE_CHECKING:
    from .worker_state import Report, Task

logger = logging.getLogger(__name__)

#: While the task threads have more work, and tasks take less than this many
#: seconds, completions may wait as long (or until HOLD_MAX of them) to go to
#: the center in one message: a map of short tasks then costs the center, and
#: the worker, one message per few tasks instead of one per task. Longer tasks
#: gain nothing from it, and their dependents would start later.
HOLD_REPORTS = 0.001
HOLD_MAX = 64

#: Completions of direct tasks whose clients had their results from here
#: (``answered``) may wait this long, worker idle or not: their clients need
#: nothing more from the center, and the center hears of them in one message
#: every few round trips instead of one each. Woken for each, the center
#: competes with the client and the worker for the CPUs just when the
#: result is on its way. Dependents sent here ahead do not wait for it
#: (report_now), and any other report ends the wait.
HOLD_ANSWERED = 0.01

class WorkerPolicies:
    """The policies of :class:`~zfutures.worker_state.WorkerState`, a mixin
    it is made of: they read its tasks and write its outputs, in a module of
    their own, and are tested through it (tests/test_worker_state.py).
    """

    # What the policies read of the state machine (WorkerState sets them).
    address: str
    nthreads: int
    nbytes: dict[str, int]
    executing: set[str]
    task_duration: float
    to_center: list[Report]
    to_execute: list[Task]
    report_now: bool
    closing: bool
    paused: bool

    def __init__(self, memory_limit: int = 0, retire_timeout: float = 10.0):
        self.memory_limit = memory_limit  # bytes; 0: none (see worker_memory.py)
        self.retire_timeout = retire_timeout  # (see leave)
        # Reports held back a moment to go in one message (see take_reports),
        # since when, and until when at the latest (None: none held).
        self.held: list[Report] = []
        self._held_since: float | None = None
        self.held_until: float | None = None
        self.retire_deadline: float | None = None  # asked the center to take our keys

    if TYPE_CHECKING:
        def _start_tasks(self) -> None:  # (WorkerState's: hand ready tasks to the threads)
            ...

    def report_hold(self, held: Sequence[Report]) -> float:
        """How long the reports in ``to_center``, with those ``held`` back
        already, may wait (from the first held) to go in one message: 0.0 if
        they go now.

        Only completions wait: those of direct tasks whose clients have their
        results HOLD_ANSWERED; those of other short tasks HOLD_REPORTS, and
        only while a task thread has more to run. A worker with nothing else
        to run, or whose finished task has dependents waiting here (the
        center sends the next links of a chain when it hears), reports at once.
        """
        reports = self.to_center
        if self.report_now or len(held) + len(reports) >= HOLD_MAX or \
                not all(type(report) is DoneItem for report, _ in reports):
            return 0.0
        if all(type(report) is DoneItem and report.answered
               for report, _ in itertools.chain(held, reports)):
            return HOLD_ANSWERED
        if self.executing and self.task_duration < HOLD_REPORTS:
            return HOLD_REPORTS
        return 0.0

    def take_reports(self, now: float) -> list[Report]:
        """The reports to send the center now, those held back first: none
        while they may still wait (until :attr:`held_until`; see
        :meth:`report_hold`). A worker that is leaving holds nothing back."""
        since = now if self._held_since is None else self._held_since
        until = since + (0.0 if self.closing else self.report_hold(self.held))
        if now < until:
            self.held.extend(self.to_center)
            self.to_center.clear()
            self._held_since, self.held_until = since, until
            return []
        reports, self.to_center = self.to_center, []
        if self.held:
            reports, self.held = self.held + reports, []
            self._held_since = self.held_until = None
        self.report_now = False
        return reports

    def take_loop_run(self, loop_free: bool) -> Task | None:
        """The task of :attr:`to_execute` to run on the worker's loop thread
        rather than hand to a task thread, taken off the list; or None.

        That is the last one, when a client waits for it on each hop (it sent
        the task straight here) and no task thread is busy or about to be: a
        handoff between threads costs tens of microseconds where the wakeup
        crosses CPUs. ``loop_free`` is the shell's part: the loop thread has
        no other task set aside, is not stopping, and no task waits in line
        for a task thread (see TaskRunner.start_tasks).
        """
        task = self.to_execute[-1]
        if task.reply_to is None or not loop_free or \
                len(self.executing) - len(self.to_execute) >= self.nthreads:
            return None
        return self.to_execute.pop()

    def set_paused(self, paused: bool) -> None:
        """Start no new task (``paused``), or start them again."""
        self.paused = paused
        self._start_tasks()

    def leave(self, now: float, registered: bool) -> bool:
        """The worker wants to leave (:attr:`closing`): whether it may stop now.

        It may at once if it holds no key, or is not ``registered`` with a
        center to hand them to. Else it asks the center to copy the keys only
        it holds to other workers (``retire``; the center answers
        ``retired``), and stops anyway ``retire_timeout`` seconds later.
        """
        if self.retire_deadline is None:
            if not (registered and self.nbytes):
                return True
            logger.info("worker %s retiring: handing its keys on", self.address)
            self.retire_deadline = now + self.retire_timeout
            self.to_center.append((Retire(), []))
            return False
        if now > self.retire_deadline:
            logger.warning("worker %s: the center did not take its keys within %.0fs; "
                           "leaving anyway", self.address, self.retire_timeout)
            return True
        return False
