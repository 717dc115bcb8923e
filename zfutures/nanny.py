"""The nanny: runs a machine's worker processes and keeps their number up.

``zfut-worker`` is a nanny unless told ``--no-nanny``. It starts each worker
as a child process (the same command, ``--no-nanny``), and when one dies
(killed, crashed, or restarted by the nanny for going over its memory
limit) it tells the center at once, so the dead worker's tasks are
rescheduled without waiting for heartbeats to time out, then starts a
fresh one.
"""
from __future__ import annotations

import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import zmq

from . import protocol
from .addressing import configure
from .logs import RateLimitedLog
from .loop import Waker, send
from .memory_thresholds import MemoryThresholds
from .messages import RegisterNanny, WorkerDied
from .processes import stop_processes, worker_environment
from .spill_store import remove_leftovers
from .units import format_bytes

logger = logging.getLogger(__name__)
dropped = RateLimitedLog(logger)

#: How often the nanny looks at its workers, in seconds.
CHECK_INTERVAL = 0.2
#: Restarts of one worker within this many seconds are spaced out, so a
#: worker that cannot start does not spin.
RESTART_WINDOW = 10.0

_SERVING = re.compile(r"serving at (tcp://\S+)")


class _Child:
    """One worker process and what the nanny knows of it."""

    def __init__(self, name: str | None):
        self.name = name
        self.process: subprocess.Popen | None = None
        self.address: str | None = None
        self.started = 0.0
        self.restarts: list[float] = []
        self.restart_at: float | None = None  # when a dead worker is due to be replaced


class Nanny:
    """Keep ``nworkers`` worker processes running for the center at ``center_address``.

    ``worker_args`` are the options each worker gets (its center address
    excepted); ``memory_limit`` (bytes, 0 for none) is per worker: above
    ``terminate`` of it (a share; None: never), the worker is restarted.
    A worker that dies leaves no spill files: those it made in ``spill_dir``
    (None: the system's temporary directory) are removed. ``env`` adds to the
    workers' environment; with ``echo`` the workers' output is passed on to ours.

    ``zfut-worker`` runs one in its own process; a local cluster runs one on
    a thread of the user's program (:meth:`run` there, :meth:`stop` to end).
    """

    def __init__(self, center_address: str, worker_args: list[str], nworkers: int = 1,
                 name: str | None = None, memory_limit: int = 0, restart: bool = True,
                 security: Any = None, env: dict[str, str] | None = None, echo: bool = True,
                 terminate: float | None = MemoryThresholds().terminate,
                 spill_dir: str | None = None):
        self.center_address = center_address
        self.worker_args = worker_args
        self.env = env or {}
        self.echo = echo
        self.memory_limit = memory_limit
        # (the worker's own memory manager spills and pauses below this)
        self.terminate_above = int(terminate * memory_limit) if terminate else 0
        self.spill_dir = spill_dir
        self.restart = restart
        self.children = [_Child(f"{name}-{i}" if name and nworkers > 1 else name)
                         for i in range(nworkers)]
        # stop() may come from a signal handler, on the thread that waits in
        # run(): a flag and a pipe, as a threading.Event would deadlock there
        # (its set() takes the lock its wait() may be holding).
        self._stopping = False
        self._waker = Waker()
        self._context = zmq.Context()
        self._center = configure(self._context.socket(zmq.DEALER), security)
        self._center.setsockopt(zmq.ROUTING_ID, b"n-" + uuid.uuid4().hex.encode())

    def run(self) -> None:
        """Supervise until :meth:`stop`; then stop every worker."""
        self._center.connect(self.center_address)
        try:
            for child in self.children:
                self._start(child)
            while not self._wait(CHECK_INTERVAL):
                for child in self.children:
                    self._check(child)
                if not self.restart and all(c.process is None or c.process.poll() is not None
                                            for c in self.children):
                    break
        finally:
            self._stop_children()
            self._center.close(linger=0)
            self._context.term()
            self._waker.close()

    def stop(self) -> None:
        """Ask :meth:`run` to end; safe from signal handlers."""
        self._stopping = True
        self._waker.wake()

    def _wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for :meth:`stop`; whether it came."""
        if not self._stopping:
            select.select([self._waker.read_fd], [], [], timeout)
            self._waker.drain()
        return self._stopping

    def _start(self, child: _Child) -> None:
        args = [sys.executable, "-m", "zfutures", "worker", self.center_address,
                *self.worker_args, "--no-nanny"]
        if child.name:
            args += ["--name", child.name]
        env = dict(worker_environment(os.getpid()), **self.env)
        child.process = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                         env=env, text=True)
        child.address = None
        child.started = time.monotonic()
        threading.Thread(target=self._read_output, args=(child, child.process), daemon=True,
                         name="zfutures-nanny-read").start()

    def _read_output(self, child: _Child, process: subprocess.Popen) -> None:
        """Learn the worker's address from its first line; pass its output on."""
        stdout = process.stdout
        assert stdout is not None  # (started with stdout=PIPE)
        for line in stdout:
            match = _SERVING.search(line)
            if match and child.process is process:
                child.address = match.group(1)
            if self.echo:
                sys.stdout.write(line)
                sys.stdout.flush()
        stdout.close()

    def _check(self, child: _Child) -> None:
        process = child.process
        if process is None:  # (not started yet)
            return
        if child.restart_at is not None:  # dead, and reported: waiting to restart
            if time.monotonic() >= child.restart_at and not self._stopping:
                child.restart_at = None
                child.restarts.append(time.monotonic())
                self._start(child)
            return
        if process.poll() is None:
            if self.terminate_above and self._rss(process.pid) > self.terminate_above:
                logger.warning("worker %s uses more than %s, %.0f%% of its memory limit; "
                               "restarting it", child.address or process.pid,
                               format_bytes(self.terminate_above),
                               100 * self.terminate_above / self.memory_limit)
                process.kill()
                process.wait(10)
            else:
                return
        logger.warning("worker %s exited with status %s", child.address or process.pid,
                       process.returncode)
        remove_leftovers(self.spill_dir, process.pid)
        if child.address:
            send(self._center, protocol.encode_message(RegisterNanny(protocol.PROTOCOL_VERSION)),
                 dropped, "a report")
            send(self._center, protocol.encode_message(WorkerDied(child.address)),
                 dropped, "a report")
        if not self.restart or self._stopping:
            return
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW]
        # A worker that keeps dying right after it starts is restarted after a
        # pause, so it does not spin; the other workers are watched meanwhile.
        if len(child.restarts) >= 3 and now - child.started < RESTART_WINDOW:
            child.restart_at = now + RESTART_WINDOW / 2
        else:
            child.restarts.append(now)
            self._start(child)

    @staticmethod
    def _rss(pid: int) -> int:
        import psutil

        try:
            return psutil.Process(pid).memory_info().rss
        except psutil.Error:
            return 0

    def _stop_children(self) -> None:
        # Leaving workers first hand their keys on: give them time to.
        processes = [c.process for c in self.children if c.process]
        stop_processes(processes, timeout=15.0)
        for process in processes:  # (one killed after the timeout left its files)
            remove_leftovers(self.spill_dir, process.pid)
