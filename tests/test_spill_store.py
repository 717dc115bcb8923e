"""The spill store: frames to disk and back, compression when it pays, disk trouble."""
from __future__ import annotations

import contextlib
import errno
import gc
import os
import pickle
import subprocess
import tempfile
import threading
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pytest

from zfutures import serialize
from zfutures.spill_store import CHUNK, COMPRESS_MIN, SpillError, SpillStore

MB = 1024 * 1024


@pytest.fixture
def store(tmp_path) -> Iterator[SpillStore]:
    with SpillStore(str(tmp_path)) as s:
        yield s


def random_floats(nbytes: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(nbytes // 8)


def files(store: SpillStore) -> list[str]:
    return os.listdir(store.directory)


def round_trip(store: SpillStore, key: str, value: object) -> object:
    store.write(key, serialize.dumps(value))
    return serialize.loads(store.read(key))


# --- round trips ------------------------------------------------------------

@pytest.mark.parametrize("value", [
    np.arange(10),                                   # small: inside the pickle stream
    random_floats(3 * MB),                           # one out-of-band buffer
    np.zeros((1000, 1000), order="F"),               # Fortran order, compressed
    np.arange(2_000_000)[::2],                       # not contiguous: copied in-band
    np.zeros(10, dtype=[("a", "i4"), ("b", "f8")]),  # structured
    b"x" * (200 * 1024),                             # big bytes: in the stream
    b"",
    "text ü",
    None,
    {"a": [1, 2, (3, "b")], "arrays": [random_floats(100_000, i) for i in range(3)],
     "nested": {"zeros": np.zeros(200_000), "bytes": os.urandom(70_000)}},
], ids=lambda v: type(v).__name__)
def test_round_trip_gives_equal_values(store, value):
    back = round_trip(store, "k", value)
    if isinstance(value, dict):
        assert back.keys() == value.keys()
        assert back["a"] == value["a"]
        for x, y in zip(back["arrays"], value["arrays"]):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(back["nested"]["zeros"], value["nested"]["zeros"])
        assert back["nested"]["bytes"] == value["nested"]["bytes"]
    elif isinstance(value, np.ndarray):
        assert back.dtype == value.dtype and back.shape == value.shape
        if value.ndim > 1:  # the order survives
            assert back.flags.f_contiguous == value.flags.f_contiguous
        np.testing.assert_array_equal(back, value)
    else:
        assert back == value


@pytest.mark.parametrize("length", [0, 1, COMPRESS_MIN - 1, COMPRESS_MIN, CHUNK - 1, CHUNK,
                                    CHUNK + 1, 2 * CHUNK + 12345])
@pytest.mark.parametrize("kind", ["zeros", "random", "half"])
def test_frames_come_back_byte_identical(store, length, kind):
    """Lengths at the edges of compression and of chunks, compressible or not, and
    half of each (the random chunks are stored as they are, the zero ones compressed)."""
    data = bytearray(length)
    if kind == "random":
        data[:] = os.urandom(length)
    elif kind == "half":
        data[length // 2:] = os.urandom(length - length // 2)
    frames = [b"stream", memoryview(data), pickle.PickleBuffer(bytes(data)), bytearray(data)]
    store.write("k", frames)
    back = store.read("k")
    assert [bytes(f) for f in back] == [bytes(f) for f in frames]


def test_frames_read_back_are_writable_memory():
    with SpillStore() as store:
        a = round_trip(store, "a", random_floats(MB))
        assert isinstance(a, np.ndarray) and a.flags.writeable
        a[0] = 1.0  # not a view of something read-only


def test_a_100_MB_array_round_trip_holds_no_second_copy(store):
    """Written from the array's own memory; read into one buffer per frame."""
    value = random_floats(100 * MB)
    tracemalloc.start()
    try:
        frames = serialize.dumps(value)
        store.write("big", frames)
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        del frames
        back = serialize.loads(store.read("big"))
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert write_peak < 2 * MB, write_peak
    assert read_peak < 100 * MB + 2 * MB, read_peak
    assert back.tobytes() == value.tobytes()


def test_a_100_MB_array_of_zeros_compresses_one_chunk_at_a_time(store):
    value = np.zeros(100 * MB // 8)
    tracemalloc.start()
    try:
        store.write("zeros", serialize.dumps(value))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < CHUNK + MB, peak
    assert not serialize.loads(store.read("zeros")).any()


# --- compression ------------------------------------------------------------

def test_zeros_are_compressed_random_floats_are_not(store):
    store.write("zeros", serialize.dumps(np.zeros(10 * MB // 8)))
    store.write("random", serialize.dumps(random_floats(10 * MB)))
    assert store.nbytes_of("zeros") < 0.01 * 10 * MB
    assert 10 * MB <= store.nbytes_of("random") < 10 * MB + 1024  # as is, plus headers
    sizes = sorted(os.path.getsize(os.path.join(store.directory, f)) for f in files(store))
    assert sizes == sorted([store.nbytes_of("zeros"), store.nbytes_of("random")])
    assert store.nbytes == sum(sizes)


def test_small_frames_are_not_compressed(store):
    store.write("k", [bytes(COMPRESS_MIN - 1)])
    assert store.nbytes_of("k") >= COMPRESS_MIN - 1


# --- the mapping ------------------------------------------------------------

def test_a_key_is_written_once(store):
    store.write("k", [b"first"])
    with pytest.raises(KeyError, match="written once"):
        store.write("k", [b"second"])
    assert [bytes(f) for f in store.read("k")] == [b"first"]
    assert len(files(store)) == 1 and len(store) == 1


def test_remove_deletes_the_file_and_frees_the_key(store):
    nbytes = store.write("k", serialize.dumps(random_floats(MB)))
    assert store.nbytes == nbytes == store.nbytes_of("k")
    store.remove("k")
    assert files(store) == [] and "k" not in store and len(store) == 0 and store.nbytes == 0
    for call in (store.read, store.remove, store.nbytes_of):
        with pytest.raises(KeyError):
            call("k")
    store.write("k", [b"again"])  # once removed, a key may be spilled again
    assert [bytes(f) for f in store.read("k")] == [b"again"]


def test_keys_are_any_strings_files_are_numbers(store):
    keys = ["../../etc/passwd", "a/b", "", "ü" * 300, "x" * 5000, "\x00", ".", "-rf"]
    for i, key in enumerate(keys):
        store.write(key, [str(i).encode()])
    assert sorted(store.keys()) == sorted(keys) == sorted(store)
    assert all(name.isdigit() for name in files(store)) and len(files(store)) == len(keys)
    for i, key in enumerate(keys):
        assert bytes(store.read(key)[0]) == str(i).encode()


def test_nbytes_adds_up(store):
    sizes = [store.write(f"k{i}", serialize.dumps(random_floats(100_000 * i))) for i in range(5)]
    assert store.nbytes == sum(sizes) == sum(store.nbytes_of(k) for k in store.keys())
    store.remove("k3")
    assert store.nbytes == sum(sizes) - sizes[3]


# --- the directory ----------------------------------------------------------

def test_default_directory_is_fresh_under_tmp_and_close_removes_it():
    store = SpillStore()
    assert os.path.dirname(store.directory) == tempfile.gettempdir()
    assert os.path.basename(store.directory).startswith("zfutures-spill-")
    store.write("k", [b"x" * 100])
    store.close()
    assert not os.path.exists(store.directory) and store.closed
    store.close()  # harmless
    with pytest.raises(ValueError, match="closed"):
        store.write("j", [b"x"])
    with pytest.raises(ValueError, match="closed"):
        store.read("k")


def test_a_given_directory_gets_a_subdirectory_of_its_own(tmp_path):
    parent = tmp_path / "not" / "yet"
    a, b = SpillStore(str(parent)), SpillStore(str(parent))
    assert a.directory != b.directory
    assert os.path.dirname(a.directory) == os.path.dirname(b.directory) == str(parent)
    a.write("k", [b"a"])
    b.write("k", [b"b"])  # the same key in two stores: two files
    a.close()
    assert not os.path.exists(a.directory) and bytes(b.read("k")[0]) == b"b"
    b.close()
    assert os.listdir(parent) == []


def test_a_store_never_closed_removes_its_directory_when_collected():
    store = SpillStore()
    store.write("k", [b"x"])
    directory = store.directory
    del store
    gc.collect()
    assert not os.path.exists(directory)


# --- threads ----------------------------------------------------------------

def test_threads_writing_and_reading_different_keys(store):
    def work(t: int) -> None:
        for i in range(30):
            key = f"{t}-{i}"
            store.write(key, serialize.dumps(random_floats(80_000, seed=i)))
            assert serialize.loads(store.read(key)).tobytes() == random_floats(80_000, i).tobytes()
            if i % 3 == 0:
                store.remove(key)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert len(store) == 4 * 20 == len(files(store))
    assert store.nbytes == sum(store.nbytes_of(k) for k in store.keys())
    assert store.nbytes == sum(os.path.getsize(os.path.join(store.directory, f))
                               for f in files(store))


def test_two_threads_writing_one_key_one_wins(store):
    barrier = threading.Barrier(2, timeout=10)
    outcomes: list[str] = []

    def write(data: bytes) -> None:
        barrier.wait()
        try:
            store.write("k", [data * MB])
            outcomes.append("written")
        except KeyError:
            outcomes.append("KeyError")

    threads = [threading.Thread(target=write, args=(d,)) for d in (b"a", b"b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert sorted(outcomes) == ["KeyError", "written"]
    assert len(files(store)) == 1 and bytes(store.read("k")[0]) in (b"a" * MB, b"b" * MB)


# --- trouble ----------------------------------------------------------------

def test_a_frame_without_the_buffer_protocol_writes_nothing(store):
    with pytest.raises(TypeError):
        store.write("k", [b"fine", 42])
    assert "k" not in store and files(store) == []
    store.write("k", [b"fine"])  # the key was not taken


def test_a_damaged_file_raises_spill_error(store):
    store.write("cut", serialize.dumps(random_floats(MB)))
    store.write("bad", [b"x" * 100])
    by_number = sorted(files(store), key=int)
    os.truncate(os.path.join(store.directory, by_number[0]), 1000)
    with open(os.path.join(store.directory, by_number[1]), "r+b") as f:
        f.write(b"JUNK")
    with pytest.raises(SpillError, match="truncated"):
        store.read("cut")
    with pytest.raises(SpillError, match="not a spill file"):
        store.read("bad")


@contextlib.contextmanager
def tmpfs(path, options: str) -> Iterator[str]:
    """A tmpfs mounted at ``path`` (tests run as root), unmounted afterwards."""
    path.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        why = f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{why}: CI runs as root and must test disk trouble")
        pytest.skip(f"{why}: the full-disk and read-only tests need root and mount")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_raises_spill_error_and_leaves_no_file(tmp_path):
    with tmpfs(tmp_path / "small", "size=2m") as disk, SpillStore(disk) as store:
        store.write("before", serialize.dumps(random_floats(500_000)))
        nbytes = store.nbytes
        with pytest.raises(SpillError) as caught:
            store.write("too-big", serialize.dumps(random_floats(4 * MB)))
        error = caught.value
        assert isinstance(error, OSError) and error.errno == errno.ENOSPC
        assert store.directory in str(error) and "No space left on device" in str(error)
        assert error.filename == store.directory
        # Nothing of the failed write stays: not its file, its key or its bytes.
        assert len(files(store)) == 1 and "too-big" not in store
        assert len(store) == 1 and store.nbytes == nbytes
        assert serialize.loads(store.read("before")).tobytes() == random_floats(500_000).tobytes()
        # and the room it took is free again
        store.write("after", serialize.dumps(random_floats(500_000, seed=1)))
        assert len(files(store)) == 2


def test_a_directory_that_cannot_be_created_raises_spill_error(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as disk:
        with pytest.raises(SpillError) as caught:
            SpillStore(disk)
        assert caught.value.errno == errno.EROFS
        assert disk in str(caught.value) and "Read-only file system" in str(caught.value)
        with pytest.raises(SpillError, match="Read-only"):
            SpillStore(os.path.join(disk, "sub"))


def test_a_disk_turned_read_only_fails_writes_keeps_reads(tmp_path):
    with tmpfs(tmp_path / "disk", "size=4m") as disk, SpillStore(disk) as store:
        store.write("k", [b"kept"])
        subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
        with pytest.raises(SpillError, match="Read-only file system") as caught:
            store.write("j", [b"lost"])
        assert caught.value.errno == errno.EROFS
        assert "j" not in store and bytes(store.read("k")[0]) == b"kept"
        subprocess.run(["mount", "-o", "remount,rw", disk], check=True)


def test_a_failed_write_leaves_no_file_and_a_usable_store(store, monkeypatch):
    """Without a full disk: the disk takes part of a write, then refuses the rest."""
    store.write("before", [b"kept"])
    writev = os.writev

    def full(fd: int, buffers: list) -> int:
        if len(buffers[0]) > 1000:  # the big frame: half of it fits
            return writev(fd, [memoryview(buffers[0])[:len(buffers[0]) // 2]])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "writev", full)
    with pytest.raises(SpillError, match="No space left on device") as caught:
        store.write("k", serialize.dumps(random_floats(MB)))
    monkeypatch.undo()
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value.__cause__, OSError)
    assert len(files(store)) == 1 and "k" not in store and store.nbytes == store.nbytes_of("before")
    store.write("k", [b"now it fits"])
    assert bytes(store.read("before")[0]) == b"kept"


def test_frames_in_a_reference_cycle_are_collected(store):
    """The views a failed write made of a value, kept by its exception's traceback
    in a reference cycle, are freed by the garbage collector (CPython crashed on a
    PickleBuffer around a memoryview freed this way)."""
    class Cycle:
        pass

    for frame in serialize.dumps(np.zeros(100_000)), memoryview(np.arange(20_000)):
        try:
            store.write("k", [b"x", frame, 42])
        except TypeError as e:
            cycle = Cycle()
            cycle.error, cycle.self = e, cycle
        store.write(str(id(frame)), serialize.dumps(np.zeros(100_000)))
    try:
        store.write(str(id(frame)), [memoryview(np.zeros(10_000))])
    except KeyError as e:
        cycle = Cycle()
        cycle.error, cycle.self = e, cycle
    del cycle
    gc.collect()


def test_the_directories_a_dead_process_left_are_removed_and_no_others(tmp_path):
    from zfutures.spill_store import remove_leftovers

    mine = [tmp_path / "zfutures-spill-4242-ab", tmp_path / "zfutures-spill-4242-cd"]
    others = [tmp_path / "zfutures-spill-42421-ef", tmp_path / "unrelated-4242-"]
    for path in mine + others:
        path.mkdir()
        (path / "0").write_bytes(b"x" * 100)
    assert sorted(remove_leftovers(str(tmp_path), 4242)) == sorted(str(p) for p in mine)
    assert sorted(tmp_path.iterdir()) == sorted(others)
