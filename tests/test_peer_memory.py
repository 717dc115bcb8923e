"""Big buffers read straight from a same-machine holder's memory (peer_memory.py).

The pieces are tested on their own (leases, splitting a value's frames,
reading another process's memory, putting a reply back together), then the
whole exchange with real workers: worker to worker, worker to client, with
reads turned off, and with a reader the kernel refuses.
"""
from __future__ import annotations

import gc
import json
import os
import select
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import weakref

import numpy as np
import pytest
from conftest import command, read_line, wait_for

from zfutures import Executor, peer_memory, serialize
from zfutures.context import current_worker
from zfutures.errors import ProtocolError
from zfutures.messages import Data, GetData, OfferedItem
from zfutures.peer_memory import READ_FROM, Leases, ReadFailed

pytestmark = pytest.mark.skipif(not peer_memory.enabled(),
                                reason="process_vm_readv is not available here")

MB = 2**20


# ----------------------------------------------------------------------------- leases

def test_a_lease_ends_only_for_its_reader_or_after_its_time():
    leases = Leases(duration=60)
    values = [object()]
    lease = leases.grant(b"reader", values, now=100.0)
    leases.end(lease, b"another peer")
    leases.end(lease + 1, b"reader")
    assert len(leases) == 1
    assert leases.expire(now=159.9) == [] and len(leases) == 1
    assert len(leases.expire(now=160.0)) == 1 and len(leases) == 0

    lease = leases.grant(b"reader", values, now=200.0)
    leases.end(lease, b"reader")
    assert len(leases) == 0


def test_a_lease_on_more_bytes_lasts_longer():
    # (a read into memory faulted in for the first time can be slow)
    leases = Leases(duration=60)
    reply_items = [OfferedItem("x", remote=[[1, 4096, int(10 * peer_memory.SLOWEST_READ)]])]
    leases.grant(b"reader", [], now=0.0, reading=peer_memory.read_time(reply_items))
    assert leases.expire(now=69.0) == []
    assert len(leases.expire(now=70.0)) == 1


def test_each_lease_has_its_own_id():
    leases = Leases()
    assert len({leases.grant(b"r", [], now=0.0) for _ in range(5)}) == 5


# ----------------------------------------------------------------------------- frames

def offered_reply(value, *, pid: int | None = None) -> tuple[Data, list, list]:
    """A holder's ``data`` reply for ``value`` offered by address, as a worker
    builds it: (reply, frames sent, what it keeps alive: the full frames and
    its copy of the reader's token)."""
    frames = serialize.dumps(value)
    sent, remote = peer_memory.split_frames(frames)
    item = OfferedItem("x", len(sent), 0, remote or None)
    kept = list(frames)
    reply = Data(1, [item], [], lease=7, pid=os.getpid() if pid is None else pid,
                 proof=peer_memory.holder_proof(peer_memory.data_request(1, ["x"]), kept))
    return reply, sent, kept


def with_remote(reply: Data, remote: list) -> Data:
    """``reply`` with its item's remote buffers ``remote`` instead."""
    return reply._replace(items=[reply.items[0]._replace(remote=remote)])


def test_only_big_buffers_are_left_to_read():
    small = np.arange(1000.0)
    big = np.arange(READ_FROM // 8, dtype=np.float64)
    reply, sent, frames = offered_reply({"small": small, "big": big, "text": "t" * 100})
    remote = reply.items[0].remote
    assert [size for _, _, size in remote] == [big.nbytes]
    assert [address for _, address, _ in remote] == [big.ctypes.data]
    assert len(sent) == len(frames) - 2  # the stream travels, the big buffer (and proof) not


def test_a_value_put_back_together_equals_the_original_and_is_writable():
    value = {"a": np.arange(3 * MB // 8, dtype=np.float64),
             "b": np.ones((512, 1024), dtype=np.int32),
             "c": np.arange(10), "label": "x" * 200}
    reply, sent, keep = offered_reply(value)
    assert len(reply.items[0].remote) == 2
    [(item, frames)] = peer_memory.unpack_data(reply, sent)
    assert item.key == "x"
    copy = serialize.loads(frames)
    assert copy["label"] == value["label"]
    for name in "abc":
        np.testing.assert_array_equal(copy[name], value[name])
    assert copy["a"].ctypes.data != value["a"].ctypes.data  # a copy, not the holder's own
    copy["a"][0] = -1.0  # the reader owns a writable buffer
    assert value["a"][0] == 0.0
    del keep


def test_a_reply_without_remote_buffers_is_unpacked_as_sent():
    reply, sent, _ = offered_reply([1, 2, 3])
    assert reply.items[0].remote is None
    [(_, frames)] = peer_memory.unpack_data(reply, sent, read=pytest.fail)
    assert serialize.loads(frames) == [1, 2, 3]


@pytest.mark.parametrize("remote, lease", [
    ([[0, 4096, 10], [0, 8192, 10]], True),  # one position twice
    ([[5, 4096, 10]], True),                  # past the value's frames
    ([[0, 0, 10]], True),                     # a null address
    ([[0, 4096, -1]], True),                  # a negative size
    ([[0, 4096]], True),                      # not a triple
    ([[0, 4096, 10]], False),                 # no lease to end
])
def test_a_reply_whose_remote_buffers_do_not_add_up_is_refused(remote, lease):
    reply = Data(1, [OfferedItem("x", 1, remote=remote)], [])
    if lease:
        reply = reply._replace(lease=1, pid=os.getpid())
    with pytest.raises(ProtocolError):
        peer_memory.unpack_data(reply, [b"stream"], read=pytest.fail)


def test_buffers_come_back_in_position_order_whatever_the_list_order():
    first = np.full(READ_FROM, 1, dtype=np.uint8)
    second = np.full(READ_FROM, 2, dtype=np.uint8)
    remote = [[2, second.ctypes.data, second.nbytes], [1, first.ctypes.data, first.nbytes]]
    reply = Data(1, [OfferedItem("x", 1, remote=remote)], [], lease=1, pid=os.getpid(),
                 proof=peer_memory.holder_proof(peer_memory.data_request(1, ["x"]), kept := []))
    [(item, frames)] = peer_memory.unpack_data(reply, [b"stream"])
    assert item.remote == sorted(remote)
    assert bytes(frames[0]) == b"stream"
    assert frames[1][0] == 1 and frames[2][0] == 2
    del kept


def test_an_offer_of_more_bytes_than_the_machine_has_is_refused_unread(caplog):
    reply, sent, kept = offered_reply(np.zeros(READ_FROM, dtype=np.uint8))
    huge = peer_memory.machine_memory() + 1
    reply.items[0].remote[0][2] = huge
    with pytest.raises(ReadFailed, match="more than this machine's memory") as failed:
        peer_memory.unpack_data(reply, sent, read=pytest.fail)
    assert peer_memory.after_read(failed.value) == "again"  # as frames, at once
    assert f"an offer to read {huge} bytes" in caplog.text
    # (and the time a reader gives such a read is that of the machine's memory)
    most = peer_memory.machine_memory() / peer_memory.SLOWEST_READ
    assert peer_memory.read_time(reply.items) == most
    reply.items[0].remote[0][2] = 2**62
    assert peer_memory.read_time(reply.items) == most
    # a buffer that is not [position, address, size] takes no time, and the
    # read refuses it as malformed
    short = [OfferedItem("k", 1, 0, [[0, 1]])]
    assert peer_memory.read_time(short) == 0
    reply = reply._replace(pid=2**40)  # (no such pid: not even a C int)
    with pytest.raises(ProtocolError):
        peer_memory.unpack_data(reply, sent, read=pytest.fail)


def test_a_reply_that_names_another_process_than_its_holder_is_not_read():
    reply, sent, kept = offered_reply(np.zeros(READ_FROM, dtype=np.uint8))
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        # alive, readable, but not where the token is
        with pytest.raises(ReadFailed) as failed:
            peer_memory.unpack_data(reply._replace(pid=other.pid), sent, read=pytest.fail)
        assert not failed.value.permanent
    finally:
        other.stdin.close()
        other.wait(10)
    reply = reply._replace(proof=reply.proof + 1)  # the holder, but no token there
    with pytest.raises(ReadFailed):
        peer_memory.unpack_data(reply, sent, read=pytest.fail)
    reply = reply._replace(proof=None)  # (a holder that gives none)
    with pytest.raises(ProtocolError):
        peer_memory.unpack_data(reply, sent, read=pytest.fail)


def test_a_holder_that_dies_during_the_read_is_not_trusted(monkeypatch):
    # The token is gone from the holder's memory by the end of the copy: the
    # process that answered may have died, and its pid gone to another.
    reply, sent, kept = offered_reply(np.zeros(READ_FROM, dtype=np.uint8))
    token = kept[-1] = bytearray(kept[-1])
    reply = reply._replace(proof=peer_memory.buffer_address(token))

    def read_and_lose_the_token(pid, spans):
        buffers = peer_memory.read_buffers(pid, spans)
        token[:] = bytes(len(token))
        return buffers

    with pytest.raises(ReadFailed):
        peer_memory.unpack_data(reply, sent, read=read_and_lose_the_token)


# ----------------------------------------------------------------------------- reading

HOLDER = """
import sys, numpy as np
a = np.arange({n}, dtype=np.float64)
print(a.ctypes.data, flush=True)
sys.stdin.read()
"""


def test_reading_another_process_copies_its_bytes():
    n = 5 * MB // 8
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(n=n)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        address = int(holder.stdout.readline())
        before = dict(peer_memory.stats)
        # many spans, more than one call takes (the iovec limit), then one big one
        spans = [(address + 8 * i, 8) for i in range(2500)] + [(address, 8 * n)]
        *pieces, whole = peer_memory.read_buffers(holder.pid, spans)
    finally:
        holder.stdin.close()
        holder.wait(10)
    expected = np.arange(n, dtype=np.float64)
    np.testing.assert_array_equal(whole.view(np.float64), expected)
    assert [piece.view(np.float64)[0] for piece in pieces] == list(expected[:2500])
    assert peer_memory.stats["bytes"] - before["bytes"] == 8 * (n + 2500)


def test_reading_memory_that_is_not_there_fails():
    with pytest.raises(ReadFailed):
        peer_memory.read_buffers(os.getpid(), [(4096, 4096)])


def test_reading_a_process_that_is_gone_fails():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    with pytest.raises(ReadFailed):
        peer_memory.read_buffers(gone.pid, [(4096, 10)])


def test_a_holder_offers_reads_only_to_its_own_machine():
    request = peer_memory.data_request(1, ["x"])
    assert request.machine is not None and request.token is not None
    assert peer_memory.may_offer(request)
    assert not peer_memory.may_offer(GetData(1, ["x"]))
    assert not peer_memory.may_offer(request._replace(token=None))  # no token: no proof
    assert not peer_memory.may_offer(request._replace(machine=request.machine + "x"))
    assert not peer_memory.may_offer(request._replace(token="short"))


def test_a_reader_with_reads_turned_off_asks_for_none(monkeypatch):
    monkeypatch.setattr(peer_memory, "_enabled", False)
    assert peer_memory.data_request(1, ["x"]) == GetData(1, ["x"])


def read_on_thread(reply: Data, frames: list, age: float = 0.0):
    """Run one reply to a request sent ``age`` seconds ago through a Reader;
    (outcome, the thread done ran on)."""
    reader = peer_memory.Reader()
    finished = threading.Event()
    seen = {}

    def done(outcome) -> None:
        seen["outcome"], seen["thread"] = outcome, threading.current_thread()
        finished.set()

    reader.read(reply, frames, time.monotonic() - age, done)
    assert finished.wait(10), "the reader did not finish"
    reader.stop()
    return seen["outcome"], seen["thread"]


def test_the_reader_reads_on_its_own_thread():
    value = np.arange(READ_FROM // 4, dtype=np.float64)
    reply, sent, _ = offered_reply(value)
    outcome, thread = read_on_thread(reply, sent)
    assert thread is not threading.current_thread()
    [(item, frames)] = outcome
    np.testing.assert_array_equal(serialize.loads(frames), value)


def test_the_reader_skips_a_reply_too_old_to_read_and_reports_failures():
    reply, sent, _ = offered_reply(np.zeros(READ_FROM))
    assert read_on_thread(reply, sent, age=peer_memory.READ_WITHIN + 1)[0] is None
    failed = read_on_thread(reply._replace(pid=2**22 + 12345), sent)[0]  # no such process
    assert isinstance(failed, ReadFailed) and not failed.permanent
    assert isinstance(read_on_thread(reply._replace(pid=0), sent)[0], ProtocolError)
    bad = with_remote(reply, [[9, 4096, 1]])  # does not add up
    assert isinstance(read_on_thread(bad, sent)[0], ProtocolError)


def test_a_read_that_ends_after_the_lease_could_have_is_not_used(monkeypatch):
    # (a reader stalled mid-copy: the holder may have reused that memory)
    reply, sent, _ = offered_reply(np.zeros(READ_FROM))
    monkeypatch.setattr(peer_memory, "LEASE_SECONDS", 0.0)
    assert read_on_thread(reply, sent)[0] is None


def test_what_a_loop_does_after_a_read(monkeypatch):
    monkeypatch.setattr(peer_memory, "_enabled", True)
    assert peer_memory.after_read([]) == "take"
    assert peer_memory.after_read(None) == "again"
    assert peer_memory.after_read(ProtocolError("bad")) == "drop"
    assert peer_memory.after_read(ReadFailed("gone")) == "again"
    assert peer_memory.enabled()  # one failed read: the next may work
    assert peer_memory.after_read(ReadFailed("refused", permanent=True)) == "again"
    assert not peer_memory.enabled()  # the kernel refuses: sockets from now on


# ----------------------------------------------------------------------------- workers

def make_array(nbytes: int) -> tuple[np.ndarray, str]:
    return np.arange(nbytes // 8, dtype=np.float64), "made here"


def inspect(pair: tuple[np.ndarray, str]) -> tuple[float, str, int]:
    """On the reader: the value's sum and label, and the bytes read so far."""
    array, label = pair
    return float(array.sum()), label, peer_memory.stats["bytes"]


def leases_held() -> int:
    return len(current_worker().data_server.leases)


def start_workers(processes, address: str, reader_command: tuple[str, ...] = (),
                  reader_log=None) -> tuple[str, str]:
    """Two workers as a user starts them: the holder, then the reader, run by
    ``reader_command`` (zfut-worker unless given); their data addresses."""
    addresses = []
    worker = (command("zfut-worker"),)
    for program, log in ((worker, None), (reader_command or worker, reader_log)):
        started = processes.start(*program, address, "--no-nanny", stderr=log)
        addresses.append(read_line(started, r"serving at (tcp://\S+) for").group(1))
    return addresses[0], addresses[1]


def run_transfer(ex: Executor, holder: str, reader: str) -> tuple[float, str, int]:
    """Make 16 MB on the holder, inspect it on the reader; the holder's leases
    must all end."""
    nbytes = 16 * MB
    x = ex.submit(make_array, nbytes, workers=[holder])
    result = ex.submit(inspect, x, workers=[reader]).result(timeout=30)
    n = nbytes // 8
    assert result[:2] == (n * (n - 1) / 2, "made here")
    wait_for(lambda: ex.submit(leases_held, workers=[holder], pure=False).result(timeout=10) == 0,
             timeout=20, message="the holder kept its lease after the read")
    return result


@pytest.mark.timeout(120)
def test_a_big_result_is_read_from_the_holders_memory(processes):
    _, address = processes.center()
    holder, reader = start_workers(processes, address)
    with Executor(address, timeout=20) as ex:
        wait_for(lambda: len(ex.nthreads()) == 2, timeout=20, message="workers did not join")
        *_, read = run_transfer(ex, holder, reader)
        assert read >= 16 * MB, "the reader did not read the holder's memory"

        # and to the client (this process), which is on the same machine too
        before = peer_memory.stats["bytes"]
        x = ex.submit(make_array, 16 * MB, workers=[holder])
        array, label = x.result(timeout=30)
        np.testing.assert_array_equal(array, np.arange(2 * MB, dtype=np.float64))
        assert peer_memory.stats["bytes"] - before >= 16 * MB
        wait_for(lambda: ex.submit(leases_held, workers=[holder], pure=False).result(10) == 0,
                 timeout=20, message="the holder kept the client's lease")


@pytest.mark.timeout(120)
def test_with_direct_reads_turned_off_data_moves_over_sockets(processes, monkeypatch):
    _, address = processes.center()
    monkeypatch.setenv("ZFUTURES_DIRECT_READS", "0")
    holder, reader = start_workers(processes, address)
    monkeypatch.delenv("ZFUTURES_DIRECT_READS")
    with Executor(address, timeout=20) as ex:
        wait_for(lambda: len(ex.nthreads()) == 2, timeout=20, message="workers did not join")
        *_, read = run_transfer(ex, holder, reader)
        assert read == 0


NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
# What a worker imports, beside the modules of zfutures: the functions of this
# module come to it by reference.
WORKER_IMPORTS = "import zfutures.__main__, zfutures.cli, zfutures.worker, test_peer_memory"


def _link_or_copy(source: str, target: str) -> None:
    """A hard link where the file is readable by anyone (no bytes copied),
    else a copy that is (a link would share the original's mode)."""
    if os.stat(source).st_mode & 0o004:
        try:
            os.link(source, target)
            return
        except OSError:  # another file system, or links refused
            pass
    shutil.copy2(source, target)
    os.chmod(target, os.stat(target).st_mode | 0o444)


def _folder(path: str) -> None:
    os.mkdir(path)
    os.chmod(path, 0o755)  # (whatever the umask)


def _stage_tree(source: str, target: str, skip: tuple[str, ...] = ()) -> None:
    """Copy ``source`` (a file or a folder) to ``target``, readable by anyone."""
    if not os.path.isdir(source):
        _link_or_copy(source, target)
        return
    for folder, subfolders, files in os.walk(source):
        subfolders[:] = [d for d in subfolders if d not in skip]
        here = os.path.normpath(os.path.join(target, os.path.relpath(folder, source)))
        _folder(here)
        for name in files:
            _link_or_copy(os.path.join(folder, name), os.path.join(here, name))


def stage_for_anyone(stage: str) -> str:
    """Put in ``stage`` a copy of the Python running these tests (its program,
    shared library and standard library) with, in its site-packages, the
    modules a worker imports from elsewhere (zfutures, the packages it and this
    module import, this folder's modules); return the copy's program. A user
    other than the one who cloned may not reach the checkout, its virtualenv,
    or even this Python (all inside a mode-0700 home, say); this copy it can."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    lib = os.path.join(stage, "lib")
    site_packages = os.path.join(lib, version, "site-packages")
    for folder in ("bin", "lib"):
        _folder(os.path.join(stage, folder))
    program = os.path.join(stage, "bin", version)
    _stage_tree(os.path.realpath(sys._base_executable), program)
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        name = sysconfig.get_config_var("INSTSONAME")
        _stage_tree(os.path.join(sysconfig.get_config_var("LIBDIR"), name),
                    os.path.join(lib, name))
    # (the copy finds its prefix, stage, by the landmark lib/pythonX.Y/os.py)
    stdlib = os.path.dirname(os.__file__)
    _stage_tree(stdlib, os.path.join(lib, version),
                skip=("site-packages", "dist-packages", "test"))
    _folder(site_packages)
    # Each module a worker imports from outside the standard library comes
    # with the whole of its top-level package; and the shared libraries that
    # wheels keep beside their packages (in DIST.libs) come too.
    listing = subprocess.run(
        [sys.executable, "-c", WORKER_IMPORTS + "; import json, sys; print(json.dumps("
         "[sys.path, [getattr(m, '__file__', None) for m in list(sys.modules.values())]]))"],
        env=dict(os.environ, PYTHONPATH=os.path.dirname(__file__)),
        capture_output=True, text=True, timeout=60, check=True)
    path, files = json.loads(listing.stdout)
    copied = {os.path.realpath(p) for p in (stdlib, os.path.dirname(select.__file__))}
    roots = sorted({p for p in path if os.path.isdir(p) and os.path.realpath(p) not in copied},
                   key=len, reverse=True)  # (a folder on the path inside another: first)
    tops = set()
    for file in filter(None, files):
        for root in roots:
            if file.startswith(root + os.sep):
                top = os.path.relpath(file, root).split(os.sep)[0]
                tops.add((root, top))
                break
    tops |= {(root, name) for root, _ in list(tops) for name in os.listdir(root)
             if name.endswith(".libs")}
    for root, top in tops:
        if not os.path.exists(os.path.join(site_packages, top)):
            _stage_tree(os.path.join(root, top), os.path.join(site_packages, top))
    return program


@pytest.fixture
def worker_as_nobody(processes):
    """The command that runs a worker as nobody, from a copy of what it needs
    in a temporary folder anyone can read (removed after the test, once the
    ``processes`` started from it have stopped); the test is skipped, with
    the reason, where nobody cannot run that copy."""
    stage = tempfile.mkdtemp(prefix="zfutures-nobody-")
    try:
        os.chmod(stage, 0o755)
        program = stage_for_anyone(stage)
        run = (*NOBODY, "env", "-u", "PYTHONPATH",
               f"LD_LIBRARY_PATH={os.path.join(stage, 'lib')}", program)
        probe = subprocess.run([*run, "-c", WORKER_IMPORTS], cwd=stage,
                               capture_output=True, text=True, timeout=60)
        if probe.returncode:
            pytest.skip(f"nobody cannot run a worker from {stage} (under "
                        f"{tempfile.gettempdir()}): {probe.stderr.strip()[-300:]}")
        yield (*run, "-m", "zfutures", "worker")
    finally:
        shutil.rmtree(stage)


@pytest.mark.timeout(120)
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to start a worker as another user")
def test_a_reader_the_kernel_refuses_gets_the_data_over_sockets(processes, tmp_path,
                                                                 worker_as_nobody):
    """A worker running as another user may not read a root worker's memory:
    it gets the value as frames instead, and the holder's lease still ends."""
    _, address = processes.center()
    log = tmp_path / "reader.log"
    with open(log, "w") as f:
        holder, reader = start_workers(processes, address, worker_as_nobody, reader_log=f)
    with Executor(address, timeout=20) as ex:
        wait_for(lambda: len(ex.nthreads()) == 2, timeout=20, message="workers did not join")
        *_, read = run_transfer(ex, holder, reader)
        assert read == 0
        *_, read = run_transfer(ex, holder, reader)  # and again, not asking any more
        assert read == 0
    lines = log.read_text().splitlines()
    refusals = [line for line in lines if "reading peers' memory failed" in line]
    assert len(refusals) == 1, "the reader did not try, or kept trying, to read"
    # it asked again at once, rather than waiting for its request to time out
    assert not [line for line in lines if "no answer from" in line]


@pytest.mark.timeout(120)
def test_a_client_the_kernel_refuses_gets_the_data_over_sockets(processes, monkeypatch):
    _, address = processes.center()
    worker = processes.worker(address, "--no-nanny")
    holder = read_line(worker, r"serving at (tcp://\S+) for").group(1)

    def refuse(pid, spans):
        raise ReadFailed(f"process {pid}: Operation not permitted", permanent=True)

    monkeypatch.setattr(peer_memory, "read_buffers", refuse)
    monkeypatch.setattr(peer_memory, "_enabled", True)
    with Executor(address, timeout=20) as ex:
        x = ex.submit(make_array, 16 * MB, workers=[holder])
        array, label = x.result(timeout=30)
        np.testing.assert_array_equal(array, np.arange(2 * MB, dtype=np.float64))
        assert not peer_memory.enabled()
        wait_for(lambda: ex.submit(leases_held, workers=[holder], pure=False).result(10) == 0,
                 timeout=20, message="the holder kept a lease the client could not read")


def test_a_big_read_is_copied_in_parts_side_by_side(monkeypatch):
    # Parts cut across spans, and spans across parts: every byte lands where
    # it belongs.
    monkeypatch.setattr(peer_memory, "READ_PART", MB)
    monkeypatch.setattr(peer_memory, "READ_THREADS", 3)
    monkeypatch.setattr(peer_memory.os, "cpu_count", lambda: 3)
    started = []
    thread = peer_memory.threading.Thread
    monkeypatch.setattr(peer_memory.threading, "Thread",
                        lambda *a, **k: started.append(k["name"]) or thread(*a, **k))
    n = 5 * MB // 8
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.format(n=n)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        address = int(holder.stdout.readline())
        spans = [(address, 8 * 1000), (address + 8 * 1000, 8 * (n - 1000)), (address, 8 * n)]
        first, rest, whole = peer_memory.read_buffers(holder.pid, spans)
        with pytest.raises(ReadFailed):  # (a part that fails fails the read)
            peer_memory.read_buffers(holder.pid, [(address, 8 * n), (4096, 3 * MB)])
    finally:
        holder.stdin.close()
        holder.wait(10)
    assert started == ["zfutures-read"] * 4  # two reads, the caller's thread and two more
    expected = np.arange(n, dtype=np.float64)
    np.testing.assert_array_equal(whole.view(np.float64), expected)
    np.testing.assert_array_equal(np.concatenate([first, rest]).view(np.float64), expected)


def test_spans_are_cut_into_parts_of_about_equal_bytes():
    spans = [(0, 100, 5), (1000, 2000, 20), (5000, 6000, 1)]
    parts = peer_memory._split(spans, 3)
    assert [sum(size for _, _, size in part) for part in parts] == [9, 9, 8]
    # each byte once, at matching places on both sides
    flat = [(here + i, there + i) for part in parts for here, there, size in part
            for i in range(size)]
    assert flat == [(here + i, there + i) for here, there, size in spans for i in range(size)]
    assert peer_memory._split(spans, 1) == [spans]


# ----------------------------------------------------------------------------- parts that fail

def two_parts(monkeypatch, copy) -> list[weakref.ref]:
    """Reads of 2 KB in two parts, the second on a thread of its own, copied
    by ``copy(part)``; weak references to the buffers the reads allocate."""
    monkeypatch.setattr(peer_memory, "READ_PART", 1024)
    monkeypatch.setattr(peer_memory, "READ_THREADS", 2)
    monkeypatch.setattr(peer_memory.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(peer_memory, "_copy", lambda pid, part: copy(part))
    allocated = []
    empty = np.empty
    monkeypatch.setattr(np, "empty", lambda *a, **k: allocated.append(
        weakref.ref(buffer := empty(*a, **k))) or buffer)
    return allocated


def on_part_thread() -> bool:
    return threading.current_thread().name == "zfutures-read"


def test_a_part_that_fails_in_any_way_fails_the_read(monkeypatch):
    def copy(part):
        if on_part_thread():
            raise ValueError("not a ReadFailed")

    two_parts(monkeypatch, copy)
    with pytest.raises(ReadFailed, match="not a ReadFailed"):
        peer_memory.read_buffers(os.getpid(), [(4096, 2048)])


def test_a_read_that_fails_on_its_own_thread_ends_after_its_other_parts(monkeypatch):
    entered, returned, order = threading.Event(), threading.Event(), []

    def copy(part):
        if on_part_thread():
            entered.set()
            returned.wait(0.2)  # (in vain: the read waits for this part)
            order.append("part ended")
        else:
            assert entered.wait(10)
            raise ValueError("the caller's part fails first")

    two_parts(monkeypatch, copy)
    outcome = []

    def read() -> None:
        try:
            peer_memory.read_buffers(os.getpid(), [(4096, 2048)])
        except Exception as e:
            outcome.append(e)
        order.append("read ended")
        returned.set()

    reading = threading.Thread(target=read)
    reading.start()
    reading.join(10)
    wait_for(lambda: "part ended" in order, timeout=10)
    assert order == ["part ended", "read ended"]
    assert isinstance(outcome[0], ReadFailed)


def test_buffers_a_part_past_its_time_writes_into_live_until_it_ends(monkeypatch):
    go, parts = threading.Event(), []

    def copy(part):
        if on_part_thread():
            parts.append(threading.current_thread())
            assert go.wait(10)

    allocated = two_parts(monkeypatch, copy)
    monkeypatch.setattr(peer_memory, "_PART_SLACK", 0.0)  # no time: the part is late
    with pytest.raises(ReadFailed, match="did not end"):
        peer_memory.read_buffers(os.getpid(), [(4096, 2048)])
    gc.collect()
    assert allocated and all(ref() is not None for ref in allocated)  # the part writes on
    go.set()
    parts[0].join(10)
    gc.collect()
    assert all(ref() is None for ref in allocated)
