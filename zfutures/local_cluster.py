"""A cluster on this machine: a center and workers as child processes.

They are the same programs a user starts by hand (``zfut-center``, and the
workers of ``zfut-worker``), run as ``python -m zfutures``, so a local cluster
tests the real thing. The workers' nanny runs on a thread of this program
rather than in a process of its own: the workers start at once, beside the
center, instead of after one more interpreter has started. Every process
started here is stopped by :meth:`LocalCluster.close`, at interpreter exit
too; and each child watches its parent, so even a parent killed with SIGKILL
leaves nothing behind.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from .errors import ConnectionError
from .messages import SchedulerInfo
from .nanny import Nanny
from .processes import PARENT_PID_ENV, read_matching_line, stop_processes, total_memory
from .units import parse_memory

logger = logging.getLogger(__name__)

_LISTENING = re.compile(r"zfut-center listening at (tcp://\S+)")


class LocalCluster:
    """A center and ``n_workers`` worker processes bound to 127.0.0.1.

    >>> cluster = LocalCluster(n_workers=2)    # doctest: +SKIP
    >>> cluster.address                         # doctest: +SKIP
    'tcp://127.0.0.1:41235'
    >>> cluster.close()                         # doctest: +SKIP
    """

    def __init__(self, n_workers: int | None = None, threads_per_worker: int = 1,
                 timeout: float = 10, allowed_failures: int = 3,
                 heartbeat_interval: float | None = None, worker_timeout: float | None = None,
                 security: Any = None, memory_limit: int | float | str | None = None):
        self.n_workers = n_workers or os.cpu_count() or 1
        self.threads_per_worker = threads_per_worker
        self.processes: list[subprocess.Popen] = []  # the center
        self.nanny: Nanny | None = None
        self._nanny_thread: threading.Thread | None = None
        self.address = ""
        self._closed = False
        self._security = security
        center_args = ["--allowed-failures", str(allowed_failures)]
        # Per worker: by default an equal share of this machine's memory;
        # checked here, before any process starts.
        self._memory_limit = total_memory() // self.n_workers if memory_limit is None \
            else parse_memory(memory_limit, total_memory())
        worker_args = ["--nthreads", str(threads_per_worker), "--host", "127.0.0.1",
                       "--memory-limit", str(self._memory_limit), "--log-level", "warning"]
        if security is not None:  # the same keys for everyone on this machine
            center_args += ["--keys", str(security.directory)]
            worker_args += ["--keys", str(security.directory)]
        if heartbeat_interval is not None:
            center_args += ["--heartbeat-interval", str(heartbeat_interval)]
            worker_args += ["--heartbeat-interval", str(heartbeat_interval)]
        if worker_timeout is not None:
            center_args += ["--worker-timeout", str(worker_timeout)]
        try:
            # The center and the workers start side by side (workers keep trying
            # until the center is up), on a port picked here; should another
            # process take that port in between, the center fails to bind and
            # we try another.
            for attempt in range(3):
                port = _free_port()
                # Warnings only: a local cluster's routine logs would clutter the
                # user's own output.
                # Its dashboard on any free port: several local clusters (a
                # notebook's, a test suite's) run side by side on one machine.
                center = self._start(["center", "--host", "127.0.0.1", "--port", str(port),
                                      "--dashboard-address", "127.0.0.1:0",
                                      "--log-level", "warning", *center_args],
                                     stdout=subprocess.PIPE)
                # One nanny runs the workers and replaces any that die.
                self._start_nanny(f"tcp://127.0.0.1:{port}", worker_args)
                listening = read_matching_line(center, _LISTENING, timeout)
                if listening:
                    self.address = listening.group(1)
                    break
                try:  # its output ended first: it is exiting (it could not bind, say)
                    status: int | None = center.wait(1)
                except subprocess.TimeoutExpired:
                    status = None
                if status is None or attempt == 2:
                    raise ConnectionError(f"the local center did not start within {timeout}s "
                                          f"(exit status {status})")
                self._stop_nanny(timeout)
                stop_processes([center])
                self.processes.clear()
            if center.stdout is not None:
                center.stdout.close()
        except BaseException:
            self.close()
            raise

    def _start(self, args: list[str], stdout: Any) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=_import_path(),
                   **{PARENT_PID_ENV: str(os.getpid())})
        process = subprocess.Popen([sys.executable, "-m", "zfutures", *args], stdout=stdout,
                                   stdin=subprocess.DEVNULL, env=env, text=True)
        self.processes.append(process)
        return process

    def _start_nanny(self, center_address: str, worker_args: list[str]) -> None:
        self.nanny = Nanny(center_address, worker_args, self.n_workers,
                           name="local" if self.n_workers > 1 else "local-0",
                           memory_limit=self._memory_limit,
                           security=self._security, env={"PYTHONPATH": _import_path()},
                           echo=False)
        self._nanny_thread = threading.Thread(target=self.nanny.run, daemon=True,
                                              name="zfutures-local-nanny")
        self._nanny_thread.start()

    def _stop_nanny(self, timeout: float) -> None:
        """Stop the workers (SIGTERM, then SIGKILL) and the nanny's thread."""
        if self.nanny is None:
            return
        self.nanny.stop()
        # The nanny gives leaving workers time to hand their keys on, then kills.
        if self._nanny_thread is not None:
            self._nanny_thread.join(timeout + 20)
        self.nanny = self._nanny_thread = None

    def wait_for_workers(self, client_io: Any, timeout: float) -> None:
        """Block until every worker has registered with the center."""
        deadline = time.monotonic() + timeout
        while True:
            workers = client_io.request(SchedulerInfo, timeout)["workers"]
            if len(workers) >= self.n_workers:
                return
            dead: list[subprocess.Popen[str] | None] = [
                p for p in self.processes if p.poll() is not None]
            if self._nanny_thread is None or not self._nanny_thread.is_alive():
                dead.append(None)  # the nanny itself failed
            if dead or time.monotonic() > deadline:
                why = f"{len(dead)} exited" if dead else f"not all up after {timeout}s"
                raise ConnectionError(f"local cluster: {len(workers)} of {self.n_workers} "
                                      f"workers registered ({why})")
            time.sleep(0.005)  # polling the center: registration has no event to wait on

    def close(self, timeout: float = 5.0) -> None:
        """Stop every process (SIGTERM, then SIGKILL after ``timeout``)."""
        if self._closed:
            return
        self._closed = True
        # Workers first, while the center is there to let them go at once (their
        # keys were released with the client), then the center.
        self._stop_nanny(timeout)
        stop_processes(self.processes, timeout)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _import_path() -> str:
    """PYTHONPATH for the children: what this program can import (its own
    modules, a notebook's folder), so functions defined there unpickle there."""
    return os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
