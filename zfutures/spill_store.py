"""Results kept on disk: one file per key, written once, read back byte-identical.

A worker keeps its results in memory until it runs short, then moves some of
them here. :class:`SpillStore` stores what :func:`zfutures.serialize.dumps`
makes of a value, its frames::

    [pickle stream, buffer, buffer, ...]

and gives the same frames back, so ``serialize.loads(store.read(key))`` is
the value. It holds no policy (what to spill, when): that is the worker's.

A spill file, in order::

    header      magic b"ZFS1", number of frames       (_HEADER)
    frame table per frame: length, bytes stored, codec (_FRAME)
    frames      each frame's bytes, one after the other

A frame stored with ``LZ4`` is a run of chunks of ``CHUNK`` bytes (the last
one shorter), each a chunk header (_CHUNK: bytes stored, codec) then the
chunk, compressed or, where compressing did not shrink it, as it is. Chunks
bound the memory a write or read needs beyond the value to one chunk, where
compressing a whole frame would need a second buffer of up to its size.

Writes copy nothing: the frames' own memory goes to ``os.writev``. Reads
allocate each frame once and read into it. No file is synced: a spill file
is worth nothing once its worker is gone, so a crash loses nothing that a
sync would have saved.
"""
from __future__ import annotations

import errno
import io
import itertools
import os
import pickle
import shutil
import struct
import tempfile
import threading
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import lz4.block  # type: ignore[import-untyped]  # lz4 ships no type information

#: Frames smaller than this are stored as they are: compressing them saves
#: little disk and costs a call each. Equal to serialize.OUT_OF_BAND_THRESHOLD,
#: so in practice every out-of-band buffer is considered, and the pickle stream
#: only when big.
COMPRESS_MIN = 64 * 1024

#: A frame is compressed only if its sample shrinks below this fraction: lz4
#: on random float64 gives 1.004 (the sample grows), on zeros 0.004. Below 0.9,
#: the disk and read time saved outweigh the compression time.
COMPRESS_RATIO = 0.9

#: The sample judged: SAMPLES slices of SAMPLE_SIZE bytes, spread over the
#: frame, so that a frame whose start differs from the rest (a header, padding)
#: is not judged on its start alone.
SAMPLES = 4
SAMPLE_SIZE = 16 * 1024

#: Bytes per compressed chunk. 4 MiB: lz4 runs at its full speed (about 8 GB/s
#: on zeros, 0.8 GB/s on random floats on a 2-core test machine) and a write
#: or read holds one chunk at most beyond the value.
CHUNK = 4 * 1024 * 1024

#: Codecs, in the frame table and in each chunk's header.
RAW = 0
LZ4 = 1

_MAGIC = b"ZFS1"
_HEADER = struct.Struct("<4sI")  # magic, number of frames
_FRAME = struct.Struct("<QQB")  # length, bytes stored, codec
_CHUNK = struct.Struct("<IB")  # bytes stored, codec

#: os.writev takes at most this many buffers a call (Linux's IOV_MAX).
_IOV_MAX = 1024

_PREFIX = "zfutures-spill-"


class SpillError(OSError):
    """The spill directory could not be created, written or read.

    ``errno`` is the cause's (``errno.ENOSPC`` for a full disk) and
    ``filename`` the spill directory; the message names both.
    """

    def __init__(self, message: str, cause: OSError | None, directory: str | None):
        super().__init__(message)
        self.errno = cause.errno if cause is not None else None
        self.strerror = cause.strerror if cause is not None else None
        self.filename = directory

    def __str__(self) -> str:
        # OSError's own would be "[Errno 28] No space left on device: 'dir'",
        # leaving out the key and what the store was doing.
        return str(self.args[0])


def _why(error: OSError) -> str:
    """An OSError's cause in words, with its errno's name: "No space left
    on device (ENOSPC)"."""
    name = errno.errorcode.get(error.errno or 0)
    reason = error.strerror or str(error)
    return f"{reason} ({name})" if name else reason


class SpillStore:
    """Values' frames on disk, one file per key, in a directory of their own.

    Parameters
    ----------
    directory : str, optional
        Where to make the store's own directory (created if missing). By
        default the system's temporary directory. Either way the store works
        in a fresh subdirectory, ``zfutures-spill-*``, that :meth:`close`
        removes, as does the interpreter's exit for a store never closed.

    Raises
    ------
    SpillError
        The directory cannot be created.

    Notes
    -----
    The store's own records (which keys, their sizes, ``nbytes``) are kept
    under a lock, so any thread may call any method. What the lock does not
    cover is the files: a key is written by one thread, and read only once
    its :meth:`write` has returned (until then it is not in the store: ``in``
    is false, :meth:`read` raises KeyError). A read may overlap the key's
    :meth:`remove`: it either gets the frames or raises KeyError. The worker's
    use fits this: one thread writes and reads its files, others ask ``in``,
    ``nbytes`` and :meth:`keys`.

    Examples
    --------
    >>> from zfutures import serialize
    >>> import numpy as np
    >>> store = SpillStore()
    >>> nbytes = store.write("x", serialize.dumps(np.zeros(1_000_000)))
    >>> nbytes < 100_000          # 8 MB of zeros, compressed
    True
    >>> float(serialize.loads(store.read("x")).sum())
    0.0
    >>> "x" in store, len(store), store.nbytes == nbytes
    (True, 1, True)
    >>> store.remove("x")
    >>> store.close()
    """

    def __init__(self, directory: str | None = None):
        try:
            if directory is not None:
                os.makedirs(directory, exist_ok=True)
            # (named after this process, so that a worker killed before it could
            # remove it is cleaned up after: see remove_leftovers)
            self.directory: str = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-",
                                                   dir=directory)
        except OSError as e:
            where = directory if directory is not None else tempfile.gettempdir()
            raise SpillError(f"cannot create a spill directory in {where}: {_why(e)}",
                             e, where) from e
        # Removes the directory at close() or at exit, whichever comes first;
        # a function of the path alone, so it keeps no reference to the store.
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.directory,
                                           ignore_errors=True)
        self._lock = threading.Lock()
        self._files: dict[str, tuple[str, int]] = {}  # key -> (path, bytes on disk)
        self._writing: set[str] = set()  # keys whose write has begun, not ended
        self._nbytes = 0
        # File names are numbers, whatever the key: any string is a key, none a path.
        self._numbers = itertools.count()

    # --- the mapping ------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._files

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    def keys(self) -> list[str]:
        """The keys stored, as a list (a copy: other threads may change the store)."""
        with self._lock:
            return list(self._files)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    @property
    def nbytes(self) -> int:
        """Bytes on disk for all the keys stored."""
        with self._lock:
            return self._nbytes

    def nbytes_of(self, key: str) -> int:
        """Bytes on disk for ``key``; KeyError if it is not stored."""
        with self._lock:
            return self._files[key][1]

    def __repr__(self) -> str:
        return f"<SpillStore {self.directory}: {len(self)} keys, {self.nbytes} bytes>"

    # --- writing ----------------------------------------------------------

    def write(self, key: str, frames: Sequence[Any]) -> int:
        """Store the frames of a pickled value under ``key``; return the bytes on disk.

        ``frames`` are what :func:`zfutures.serialize.dumps` returns: objects
        with the buffer protocol (bytes, memoryview, PickleBuffer, arrays),
        each contiguous. They are written from their own memory, without a
        copy; frames of ``COMPRESS_MIN`` bytes or more are compressed if a
        sample of theirs compresses well.

        Raises
        ------
        KeyError
            ``key`` is stored already, or being written: a key is written once.
        SpillError
            The disk refused the write (full, read-only, ...). No file is
            left, and the store is as before the call.
        """
        views = [_flat(frame) for frame in frames]
        with self._lock:
            self._check_open()
            if key in self._files or key in self._writing:
                raise KeyError(f"{key!r} is spilled already: a key is written once")
            self._writing.add(key)
            path = os.path.join(self.directory, str(next(self._numbers)))
        try:
            nbytes = self._write_file(path, views)
        except BaseException as e:
            # Whatever stopped the write, no part of the file stays behind.
            try:
                os.unlink(path)
            except OSError:
                pass
            with self._lock:
                self._writing.discard(key)
            if isinstance(e, OSError):
                raise SpillError(f"cannot spill {key!r} to {self.directory}: {_why(e)}",
                                 e, self.directory) from e
            raise
        with self._lock:
            self._writing.discard(key)
            self._files[key] = (path, nbytes)
            self._nbytes += nbytes
        return nbytes

    def _write_file(self, path: str, views: list[memoryview]) -> int:
        """Write ``views`` to a new file at ``path``; return its size."""
        table = []
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                     0o600)
        try:
            # The header and table are written last, in place (pwrite), once the
            # bytes stored per frame are known; their room is kept here.
            offset = _HEADER.size + _FRAME.size * len(views)
            os.lseek(fd, offset, os.SEEK_SET)
            pending: list[Any] = []  # raw frames, gathered into few writev calls
            for view in views:
                if not _pays_to_compress(view):
                    pending.append(view)
                    table.append((view.nbytes, view.nbytes, RAW))
                    offset += view.nbytes
                    continue
                _write_all(fd, pending)
                stored = 0
                for start in range(0, view.nbytes, CHUNK):
                    chunk = view[start:start + CHUNK]
                    packed = lz4.block.compress(chunk, store_size=False)
                    if len(packed) < chunk.nbytes:
                        codec, data = LZ4, packed
                    else:  # this chunk does not compress: keep it as it is
                        codec, data = RAW, chunk
                    # One chunk at a time: never more than one compressed in memory.
                    _write_all(fd, [_CHUNK.pack(len(data), codec), data])
                    stored += _CHUNK.size + len(data)
                table.append((view.nbytes, stored, LZ4))
                offset += stored
            _write_all(fd, pending)
            head = [_HEADER.pack(_MAGIC, len(views))] + [_FRAME.pack(*row) for row in table]
            os.pwrite(fd, b"".join(head), 0)
        finally:
            os.close(fd)
        return offset

    # --- reading ----------------------------------------------------------

    def read(self, key: str) -> list[memoryview]:
        """The frames stored under ``key``, byte-identical to those written.

        Each frame is a memoryview of a bytearray of its own (writable, so
        numpy arrays unpickled from them are writable too).

        Raises
        ------
        KeyError
            ``key`` is not stored (or was removed meanwhile).
        SpillError
            The file could not be read, or is not a spill file.
        """
        with self._lock:
            self._check_open()
            path = self._files[key][0]
        try:
            with open(path, "rb", buffering=0) as file:
                return _read_frames(file)
        except FileNotFoundError:
            raise KeyError(key) from None  # removed since we looked it up
        except OSError as e:
            raise SpillError(f"cannot read {key!r} back from {self.directory}: {_why(e)}",
                             e, self.directory) from e

    # --- removing ---------------------------------------------------------

    def remove(self, key: str) -> None:
        """Forget ``key`` and delete its file; KeyError if it is not stored."""
        with self._lock:
            path, nbytes = self._files.pop(key)
            self._nbytes -= nbytes
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Remove the directory and all its files. Closing twice is harmless."""
        with self._lock:
            self._files.clear()
            self._nbytes = 0
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> SpillStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if not self._finalizer.alive:
            raise ValueError(f"the spill store at {self.directory} is closed")


def remove_leftovers(directory: str | None, pid: int) -> list[str]:
    """Remove the spill directories that process ``pid`` made in ``directory``
    (None: the system's temporary directory) and could not remove itself (it
    was killed); the paths removed. A nanny calls it when a worker dies.

    >>> remove_leftovers(None, 2**22 + 1)  # (no such process ever spilled)
    []
    """
    parent = directory if directory is not None else tempfile.gettempdir()
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    mine = f"{_PREFIX}{pid}-"
    removed = []
    for name in names:
        if name.startswith(mine):
            path = os.path.join(parent, name)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _flat(frame: Any) -> memoryview:
    """``frame``'s bytes as a one-dimensional memoryview of bytes, without a copy.

    Never a PickleBuffer around a memoryview: a view of one, caught in a
    reference cycle (an exception's traceback holding this frame's locals is
    one), crashes CPython's garbage collector (3.11 at least) as it frees them.
    """
    view = memoryview(frame)
    if view.c_contiguous:
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    if not isinstance(frame, memoryview):
        return pickle.PickleBuffer(frame).raw()  # Fortran order: its bytes as they lie
    raise BufferError("a frame must be a C-contiguous buffer (as serialize.dumps makes them)")


def _pays_to_compress(view: memoryview) -> bool:
    """Whether lz4 shrinks a sample of ``view`` below ``COMPRESS_RATIO``."""
    if view.nbytes < COMPRESS_MIN:
        return False
    step = (view.nbytes - SAMPLE_SIZE) // (SAMPLES - 1)
    sample = b"".join(view[i * step:i * step + SAMPLE_SIZE] for i in range(SAMPLES))
    return len(lz4.block.compress(sample, store_size=False)) < COMPRESS_RATIO * len(sample)


def _write_all(fd: int, buffers: list[Any]) -> None:
    """Write every byte of ``buffers`` at ``fd``'s offset, then empty the list.

    os.writev may write less than asked (a signal, the 2 GiB per call Linux
    allows, a disk filling up); the rest is written by further calls, which
    also raise the disk's error if there is one.
    """
    views: list[memoryview] = [memoryview(b) for b in buffers]
    views = [view for view in views if view.nbytes]
    buffers.clear()
    first = 0  # views[first:] are still to write
    while first < len(views):
        written = os.writev(fd, views[first:first + _IOV_MAX])
        while first < len(views) and written >= views[first].nbytes:
            written -= views[first].nbytes
            first += 1
        if written:
            views[first] = views[first][written:]


def _read_frames(file: io.FileIO) -> list[memoryview]:
    magic, count = _HEADER.unpack(_read_exactly(file, _HEADER.size))
    if magic != _MAGIC:
        raise OSError(errno.EIO, f"{file.name} is not a spill file")
    table = list(_FRAME.iter_unpack(_read_exactly(file, _FRAME.size * count)))
    frames = []
    for length, _stored, codec in table:
        frame = memoryview(bytearray(length))
        if codec == RAW:
            _read_into(file, frame)
        else:
            for start in range(0, length, CHUNK):
                part = frame[start:start + CHUNK]
                size, chunk_codec = _CHUNK.unpack(_read_exactly(file, _CHUNK.size))
                if chunk_codec == RAW:
                    _read_into(file, part)
                else:
                    # lz4's Python API cannot decompress into a buffer: one chunk
                    # is made, then copied (about 0.65 GB/s back for zeros here,
                    # where an uncompressed frame reads at about 1.5 GB/s).
                    part[:] = lz4.block.decompress(_read_exactly(file, size),
                                                   uncompressed_size=part.nbytes)
        frames.append(frame)
    return frames


def _read_into(file: io.FileIO, view: memoryview) -> None:
    """Fill ``view`` from ``file``; an OSError if the file ends first."""
    done = 0
    while done < view.nbytes:
        n = file.readinto(view[done:])
        if not n:
            raise OSError(errno.EIO, f"{file.name} ends early: truncated")
        done += n


def _read_exactly(file: io.FileIO, size: int) -> bytearray:
    """``size`` bytes of ``file`` (small reads: headers, compressed chunks)."""
    data = bytearray(size)
    _read_into(file, memoryview(data))
    return data
