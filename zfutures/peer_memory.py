"""Large buffers between processes of one machine: read from the holder's memory.

A data server normally sends a result's buffers as ZeroMQ frames: the
holder's kernel copies them into a socket, the reader's kernel out of it.
Between processes of the same machine the reader can instead copy them
straight out of the holder's memory with ``process_vm_readv(2)``: one copy
instead of two, nothing on the holder's side, and exactly one copy on the
reader's (the buffer the value then lives in).

The exchange rides on ``get-data`` and its ``data`` reply (messages.py):

1. The reader's request carries its ``machine`` and its ``token``
   (:func:`data_request`).
2. A holder on the same machine, network namespace and pid namespace
   (:func:`may_offer`) answers each buffer of at least :data:`READ_FROM`
   bytes with ``[position, address, size]`` in the item's ``remote`` list
   instead of a frame (:func:`split_frames`), and keeps the value alive under
   a lease (:class:`Leases`). The reply carries the lease, the holder's pid,
   and the address of its copy of the reader's token (:func:`holder_proof`).
3. The reader copies the buffers (:func:`unpack_data`, :func:`read_buffers`)
   on a thread of its own (:class:`Reader`), so that its poll loop keeps
   serving peers and heartbeating meanwhile, then sends ``data-read`` with
   the lease so the holder lets go. It reads nothing from a process that does
   not hold its token at that address, before and after the copy (the pid is
   the holder's, and was for the whole copy), nor more bytes than the machine
   has memory.
4. If the read fails, the reader requests the same keys again, as frames;
   if the kernel refused it (another user, a container without ptrace
   rights), it stops asking for reads for good (:func:`disable`).

A lease also ends by itself, in case the reader died: after
:data:`LEASE_SECONDS`, plus a second for every :data:`SLOWEST_READ` bytes
offered. A reader starts a read only for a request younger than
:data:`READ_WITHIN`, far less, and uses what it read only if the read ended
less than LEASE_SECONDS after it sent the request: the holder granted the
lease after that, on the same clock (the machine token says so), so the
memory was still held for the whole copy, whatever stalled the reader.

Set ``ZFUTURES_DIRECT_READS=0`` to keep every transfer on sockets.
"""
from __future__ import annotations

import ctypes
import errno as errno_module
import itertools
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ProtocolError
from .logs import RateLimitedLog
from .messages import Data, GetData, OfferedItem
from .protocol import Frames, unpack_items

logger = logging.getLogger(__name__)
dropped = RateLimitedLog(logger)

#: Buffers at least this big are offered for reading; smaller ones travel as
#: frames, which cost less than the extra ``data-read`` message.
READ_FROM = 1024 * 1024

#: A holder keeps a value it offered at least this long unless the reader
#: says it is done; and a reader reads only for requests it sent less than
#: READ_WITHIN ago. The gap is the time a read may take.
LEASE_SECONDS = 60.0
READ_WITHIN = 20.0
#: Bytes per second a read is assumed to go at least (memory faulted in for
#: the first time on a virtual machine: about 300 MB/s seen here).
SLOWEST_READ = 50e6

#: ``process_vm_readv`` takes at most this many buffers per call (IOV_MAX).
_MAX_IOVECS = 1024

#: A read of at least twice this many bytes is split into parts of at least
#: this size, copied side by side on up to READ_THREADS threads (no more than
#: the CPUs): one thread copies about 6 GB/s here, two 8.5 GB/s.
READ_PART = 8 * 1024 * 1024
READ_THREADS = 4
#: Seconds a part's thread may take beyond the part's own SLOWEST_READ time.
_PART_SLACK = 10.0

#: Bytes read from peers by this process (for tests and diagnostics).
stats = {"reads": 0, "bytes": 0}


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _load_process_vm_readv() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).process_vm_readv
    except (AttributeError, OSError):
        return None
    iovecs = ctypes.POINTER(_IoVec)
    function.argtypes = [ctypes.c_int, iovecs, ctypes.c_ulong, iovecs, ctypes.c_ulong,
                         ctypes.c_ulong]
    function.restype = ctypes.c_ssize_t
    return function  # (a ctypes call: the GIL is released while it copies)


def _machine_token() -> str | None:
    """Same token, same kernel and the same pid and network namespaces: pids
    mean the same process and the data server's address the same server."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        pid_ns = os.stat("/proc/self/ns/pid").st_ino
        net_ns = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return None
    return f"{boot}/{pid_ns}/{net_ns}"


_process_vm_readv = _load_process_vm_readv()
_machine = _machine_token() if _process_vm_readv is not None else None
_enabled = _machine is not None and os.environ.get("ZFUTURES_DIRECT_READS", "1") != "0"
#: This process's token as a reader: a holder keeps a copy, and the reply says
#: where, so that the reader can check that the pid it names is the holder's.
_token = os.urandom(16).hex()


def enabled() -> bool:
    """Whether this process asks holders on its machine for direct reads."""
    return _enabled


def disable(reason: str) -> None:
    """Stop asking for direct reads (the kernel refused one): sockets from now on."""
    global _enabled
    if _enabled:
        logger.warning("reading peers' memory failed (%s); moving data over sockets "
                       "from now on", reason)
    _enabled = False


def data_request(request_id: int, keys: list[str]) -> GetData:
    """The ``get-data`` request ``request_id`` for ``keys``, asking to be
    offered direct reads if this process makes them."""
    if _enabled:
        return GetData(request_id, keys, _machine, _token)
    return GetData(request_id, keys)


def may_offer(request: GetData) -> bool:
    """Whether the sender of a ``get-data`` request can read this process's memory."""
    token = request.token
    return _machine is not None and request.machine == _machine and \
        token is not None and len(token) == len(_token)


def holder_proof(request: GetData, kept: list) -> int:
    """For a reply that offers reads (``proof``): the address of this
    process's copy of the reader's token (in a ``request`` :func:`may_offer`
    said yes to), which joins ``kept`` (the lease's values) to stay there
    until the read."""
    assert request.token is not None  # (see may_offer)
    copy = request.token.encode()
    kept.append(copy)
    return buffer_address(copy)


def buffer_address(buffer: Any) -> int:
    """The address of a contiguous buffer's first byte (writable or not)."""
    import numpy  # loaded already wherever buffers this big are pickled

    return numpy.frombuffer(buffer, dtype=numpy.uint8).ctypes.data


def split_frames(frames: list) -> tuple[list, list[list[int]]]:
    """A value's frames: ``(those to send, [[position, address, size], ...] of
    those left to read)``. The caller keeps ``frames`` alive until the read."""
    sent, remote = [], []
    for position, frame in enumerate(frames):
        if type(frame) is memoryview and frame.nbytes >= READ_FROM and frame.contiguous:
            remote.append([position, buffer_address(frame), frame.nbytes])
        else:
            sent.append(frame)
    return sent, remote


class Leases:
    """Values a data server offered for reading, kept alive until read.

    >>> leases = Leases()
    >>> lease = leases.grant(b"reader", [b"a value's frames"], now=0.0)
    >>> leases.end(lease, b"someone else"); len(leases)
    1
    >>> leases.end(lease, b"reader"); len(leases)
    0
    """

    def __init__(self, duration: float = LEASE_SECONDS):
        self.duration = duration
        self._held: dict[int, tuple[bytes, list, float]] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._held)

    def grant(self, reader: bytes, values: list, now: float, reading: float = 0.0) -> int:
        """Keep ``values`` alive for ``reader`` (its socket identity), for the
        lease's duration plus ``reading`` seconds (see :func:`read_time`); the
        lease id."""
        lease = next(self._ids)
        self._held[lease] = (reader, values, now + self.duration + reading)
        return lease

    def end(self, lease: int, reader: bytes) -> bool:
        """The reader is done: whether that ended the lease. Only the reader
        a lease was granted to may end it."""
        held = self._held.get(lease)
        if held is not None and held[0] == reader:
            del self._held[lease]
            return True
        return False

    def expire(self, now: float) -> list[int]:
        """End the leases past their time (readers that died); which."""
        old = [lease for lease, (_, _, until) in self._held.items() if until <= now]
        for lease in old:
            del self._held[lease]
        return old


def read_time(items: list[OfferedItem]) -> float:
    """Seconds a read of what a reply's items leave in the holder's memory
    (their ``remote`` lists) may take, at the slowest: of no more than the
    machine's memory, whatever a malformed reply says."""
    nbytes = sum(entry[2] for item in items if item.remote for entry in item.remote
                 if len(entry) == 3)  # (the others are refused when read: unpack_data)
    return min(nbytes, machine_memory()) / SLOWEST_READ


class Reader:
    """A thread that reads offered buffers, one reply after another.

    ``read(reply, frames, sent, done)`` queues a ``data`` reply to a request sent at
    ``sent`` (time.monotonic); ``done(outcome)`` then gets the unpacked items,
    or the exception (ReadFailed, ProtocolError), or ``None`` if the request
    was too old to read or the read ended too late to trust (see the module
    docstring); :func:`after_read` says what to do with it. ``done`` runs on
    the reader's thread: hand it to the poll loop from there.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def read(self, reply: Data, frames: Frames, sent: float,
             done: Callable[[Any], None]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="zfutures-peer-reads")
            self._thread.start()
        self._queue.put((reply, frames, sent, done))

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread after the read in progress (waiting up to ``timeout``)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            reply, frames, sent, done = job
            del job
            outcome: Any = None
            try:
                if time.monotonic() - sent <= READ_WITHIN:
                    outcome = unpack_data(reply, frames)
                    if time.monotonic() - sent >= LEASE_SECONDS:
                        outcome = None  # the lease may have ended during the copy
            except Exception as e:  # ReadFailed, ProtocolError: the loop decides
                outcome = e
            done(outcome)
            del reply, frames, outcome


def after_read(outcome: Any) -> str:
    """What a poll loop does with a :class:`Reader` outcome: ``"take"`` the
    items, ask ``"again"`` for the same keys as frames, or ``"drop"`` a reply
    that did not add up (logged)."""
    if isinstance(outcome, list):
        return "take"
    if isinstance(outcome, ReadFailed):
        if outcome.permanent:
            disable(str(outcome))
    elif isinstance(outcome, Exception):
        dropped.warning("dropped a malformed message", str(outcome))
        return "drop"
    return "again"


class ReadFailed(Exception):
    """The holder's memory could not be read. ``permanent``: the kernel refuses
    this process such reads (and will again), rather than this one failing."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


#: errnos of a kernel that refuses reads of other processes' memory.
_REFUSED = (errno_module.EPERM, errno_module.EACCES, errno_module.ENOSYS)


def read_buffers(pid: int, spans: Sequence[tuple[int, int]]) -> list:
    """Copy ``(address, size)`` spans out of process ``pid``: fresh writable buffers.

    Raises ReadFailed if the kernel refuses or the memory is not there.
    """
    import numpy

    if _process_vm_readv is None:
        raise ReadFailed("process_vm_readv is not available", permanent=True)
    try:
        buffers = [numpy.empty(size, dtype=numpy.uint8) for _, size in spans]
    except MemoryError as e:
        raise ReadFailed(f"no memory for {sum(s for _, s in spans)} bytes") from e
    pending = [(buffer.ctypes.data, address, size)
               for buffer, (address, size) in zip(buffers, spans) if size]
    total = sum(size for _, _, size in pending)
    parts = _split(pending, min(READ_THREADS, os.cpu_count() or 1, total // READ_PART))
    failures: list[Exception] = []

    def copy(part: list, buffers: list) -> None:
        # ``buffers``: what the part writes into stays alive while it runs,
        # even if the read gave up on it (a part past its time, below).
        try:
            _copy(pid, part)
        except Exception as e:  # ReadFailed, or anything else: the read fails
            failures.append(e)

    threads = []
    try:
        for part in parts[1:]:
            thread = threading.Thread(target=copy, args=(part, buffers), daemon=True,
                                      name="zfutures-read")
            try:
                thread.start()
            except RuntimeError:  # no thread to be had: this one copies that part too
                copy(part, buffers)
                continue
            threads.append(thread)
        copy(parts[0], buffers)
    finally:  # (also when this thread failed: no part is left behind unawaited)
        deadline = time.monotonic() + _PART_SLACK + total / SLOWEST_READ
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                failures.append(ReadFailed(f"process {pid}: a part of a read did not end"))
    if failures:
        failure = failures[0]
        if isinstance(failure, ReadFailed):
            raise failure
        raise ReadFailed(f"process {pid}: {type(failure).__name__}: {failure}") from failure
    stats["bytes"] += total
    stats["reads"] += 1
    return buffers


def _split(spans: list[tuple[int, int, int]], parts: int) -> list[list[tuple[int, int, int]]]:
    """``(here, there, size)`` spans cut into ``parts`` runs of about equal bytes."""
    if parts <= 1:
        return [spans]
    total = sum(size for _, _, size in spans)
    share = -(-total // parts)
    runs: list[list[tuple[int, int, int]]] = [[]]
    room = share
    for here, there, size in spans:
        while size:
            if not room:
                runs.append([])
                room = share
            take = min(size, room)
            runs[-1].append((here, there, take))
            here, there, size, room = here + take, there + take, size - take, room - take
    return runs


def _copy(pid: int, pending: list[tuple[int, int, int]]) -> None:
    """Copy ``(here, there, size)`` spans from process ``pid``'s memory into ours.

    One (local, remote) pair of iovecs per span; a call may stop short, so
    carry on from where it stopped.
    """
    while pending:
        batch = pending[:_MAX_IOVECS]
        # (ctypes makes each (address, size) pair an _IoVec; mypy knows no such conversion)
        local = (_IoVec * len(batch))(*[(here, size) for here, _, size in batch])  # type: ignore[misc]
        remote = (_IoVec * len(batch))(*[(there, size) for _, there, size in batch])  # type: ignore[misc]
        copied = _process_vm_readv(pid, local, len(batch), remote, len(batch), 0)
        if copied <= 0:
            errno = ctypes.get_errno()
            raise ReadFailed(f"process {pid}: {os.strerror(errno) if errno else 'no bytes'}",
                             permanent=errno in _REFUSED)
        rest = []
        for here, there, size in batch:  # drop what was copied, keep the remainder
            if copied >= size:
                copied -= size
            else:
                rest.append((here + copied, there + copied, size - copied))
                copied = 0
        pending = rest + pending[_MAX_IOVECS:]


def unpack_data(reply: Data, frames: Sequence[Any], read: Any = None
                ) -> list[tuple[OfferedItem, Frames]]:
    """``(item, its value frames)`` for each item then each error item of a
    ``data`` reply, the buffers it left in the holder's memory read here
    (an item's ``remote`` list then in position order).

    Raises ProtocolError if the reply does not add up, ReadFailed if the
    buffers cannot be read. ``read`` is :func:`read_buffers` unless given.
    """
    unpacked = list(unpack_items(reply.items + (reply.errors or []), frames))
    if not any(item.remote for item, _ in unpacked):
        return unpacked
    pid, proof = reply.pid, reply.proof
    if reply.lease is None or pid is None:
        raise ProtocolError("remote buffers without a lease")
    if not 0 < pid < 2**31:
        raise ProtocolError(f"remote buffers in process {pid}")
    if proof is None or not 0 < proof < 2**64:
        raise ProtocolError("remote buffers without the address of the holder's proof")
    spans: list[tuple[int, int]] = []
    for index, (item, sent) in enumerate(unpacked):
        remote = item.remote
        if not remote:
            continue
        total = item.nframes + len(remote)
        if any(len(entry) != 3 for entry in remote) or \
                len({entry[0] for entry in remote}) != len(remote) or \
                not all(0 <= p < total and address > 0 and size >= 0
                        for p, address, size in remote):
            raise ProtocolError(f"malformed remote buffers for {item.key!r}")
        remote = sorted(remote)  # filled in position order below
        unpacked[index] = (item._replace(remote=remote), sent)
        spans.extend((address, size) for _, address, size in remote)
    total, most = sum(size for _, size in spans), machine_memory()
    if total > most:  # (no value a holder here can have: allocate nothing, ask for frames)
        message = f"an offer to read {total} bytes from process {pid}, more than this " \
            f"machine's memory ({most} bytes)"
        dropped.warning("refused to read a holder's memory", message)
        raise ReadFailed(message)
    _check_holder(pid, proof)
    buffers = iter((read or read_buffers)(pid, spans))
    _check_holder(pid, proof)  # (the same process all along: its pid was not reused)
    result = []
    for item, sent in unpacked:
        if item.remote:
            sent = list(sent)
            for position, _, _ in item.remote:  # ascending: each lands at its place
                sent.insert(position, next(buffers))
        result.append((item, sent))
    return result


def _check_holder(pid: int, proof: int) -> None:
    """Raise ReadFailed unless process ``pid`` holds this reader's token at
    ``proof``: only the holder that answered has it there."""
    expected = _token.encode()
    copy = ctypes.create_string_buffer(len(expected))
    _copy(pid, [(ctypes.addressof(copy), proof, len(expected))])
    if copy.raw != expected:
        dropped.warning("refused to read memory of a process other than the holder's",
                        f"process {pid} holds no token at {proof:#x}")
        raise ReadFailed(f"process {pid} is not the holder that offered the read")


_machine_bytes: int | None = None


def machine_memory() -> int:
    """Bytes of memory and swap this machine has: no holder on it can offer more."""
    global _machine_bytes
    if _machine_bytes is None:
        try:
            with open("/proc/meminfo") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            _machine_bytes = sum(int(fields[name].split()[0]) * 1024
                                 for name in ("MemTotal", "SwapTotal"))
        except (OSError, KeyError, ValueError):
            _machine_bytes = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return _machine_bytes
