"""Child processes: what the local cluster, the nanny and the tests share."""
from __future__ import annotations

import ctypes
import logging
import os
import re
import selectors
import signal
import subprocess
import threading
import time
from typing import Any, Callable

logger = logging.getLogger(__name__)

#: Children exit when the process with this pid is no longer their parent.
PARENT_PID_ENV = "ZFUTURES_PARENT_PID"

#: glibc's malloc asks for transparent huge pages for its large blocks. A
#: worker receives big buffers into blocks libzmq mallocs; faulting them in
#: 2 MiB at a time instead of 4 KiB doubles the rate of a large transfer
#: (numpy already does the same for its own arrays).
#:
#: The mmap threshold is set to glibc's ceiling, 32 MiB, so that arrays up to
#: that size come from heap memory the worker reuses rather than from fresh
#: mappings faulted in page by page and unmapped when freed (setting the trim
#: threshold alone would freeze the mmap threshold at 128 KiB): adding two
#: 8 MB arrays took 2.5-3.8 ms that way here, 0.8 ms from reused memory.
#: The trim threshold keeps up to 128 MiB of freed memory at the top of a
#: heap for the next task instead of returning it and faulting it in again:
#: on this virtual machine, reading 16 MB from a peer into memory just
#: returned took up to 80 ms instead of 3, stalling a whole tree reduction.
#: The worker returns freed memory once idle (see Worker._give_back_memory).
#: Older glibcs ignore all three.
_HUGE_PAGES_TUNABLE = ("glibc.malloc.hugetlb=1:glibc.malloc.trim_threshold=134217728:"
                       "glibc.malloc.mmap_threshold=33554432")


def worker_environment(parent_pid: int) -> dict[str, str]:
    """The environment a worker process starts with."""
    env = dict(os.environ, **{PARENT_PID_ENV: str(parent_pid)})
    tunables = env.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" not in tunables:
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, _HUGE_PAGES_TUNABLE]))
    return env


def _find_malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to ask
        return None


_malloc_trim = _find_malloc_trim()


def release_free_memory() -> None:
    """Ask glibc to give the free memory of its heaps back to the system.

    Freed blocks between live ones stay in the process (and in its RSS) until
    then; this returns their pages, whatever their place in the heap.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


def total_memory() -> int:
    """Bytes of memory this machine has."""
    import psutil  # only when asked: 25 ms of a worker's start otherwise

    return psutil.virtual_memory().total


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def own_rss() -> int:
    """Resident memory of this process, in bytes.

    Read from /proc where there is one: a worker checks it at every heartbeat,
    and needs no psutil for it.
    """
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


def stop_processes(processes: list[subprocess.Popen], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``, for processes we started."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("process %d did not stop on SIGTERM; killing it", process.pid)
            process.kill()
            process.wait(timeout)


def read_matching_line(process: subprocess.Popen, pattern: str | re.Pattern,
                       timeout: float) -> re.Match | None:
    """Read ``process``'s stdout until a line matches ``pattern``; None if it
    ends, or ``timeout`` seconds pass, first."""
    stdout = process.stdout
    if stdout is None:
        raise ValueError("read_matching_line needs a process started with stdout=PIPE")
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        while selector.select(max(0.0, deadline - time.monotonic())):
            line = stdout.readline()
            if not line:
                return None
            match = re.search(pattern, line)
            if match:
                return match
    return None


def die_with_parent(stop: Callable[[], None]) -> None:
    """When started by a parent that set PARENT_PID_ENV (a local cluster, a
    center starting its dashboard), call ``stop`` once that parent is gone;
    a thread of its own looks twice a second."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent:
        return

    def watch() -> None:
        while os.getppid() == int(parent):
            if stopped.wait(0.5):
                return
        stop()

    stopped = threading.Event()
    threading.Thread(target=watch, daemon=True, name="zfutures-parent-watch").start()
