"""A worker's data server (worker_data.DataServer): what it answers to whom.

First the server alone, on a ROUTER of its own in this process, each request
handled by hand: ``get-data``, ``put-data``, ``run``, ``run-task``, and the
leases of same-machine reads. Then a real worker process fed malformed
requests from a raw socket.
"""
from __future__ import annotations

import logging
import os
import queue
import time
from typing import Any

import numpy as np
import pytest
import zmq
from raw_peer import (
    RawPeer,
    assert_alive,
    connected_executor,
    decode_reply,
    fetch,
    h,
    lines,
    make,
    raw,
    start_cluster,
    total,
)

from zfutures import peer_memory, protocol, serialize
from zfutures.logs import RateLimitedLog
from zfutures.loop import drain, send_frames
from zfutures.messages import (
    Data,
    DataItem,
    DataRead,
    DataStored,
    DirectResult,
    GetData,
    GetLogs,
    Logs,
    PutData,
    Run,
    RunResult,
    RunTask,
)
from zfutures.remote_errors import remote_exception
from zfutures.worker_data import DataServer
from zfutures.worker_disk import SpillThreads
from zfutures.worker_state import WorkerState

pytestmark = pytest.mark.timeout(90)

class Unpicklable:
    def __reduce__(self):
        raise TypeError("not today")


def fail(message):
    raise ValueError(message)


class Served:
    """A DataServer on a ROUTER of its own, and DEALERs to ask it; the test
    plays the worker's loop (:meth:`serve`)."""

    def __init__(self, context: zmq.Context):
        self.context = context
        self.state = WorkerState("tcp://127.0.0.1:1", nthreads=1)
        self.server = context.socket(zmq.ROUTER)
        self.server.linger = 0
        self.address = f"tcp://127.0.0.1:{self.server.bind_to_random_port('tcp://127.0.0.1')}"
        self.calls: queue.SimpleQueue = queue.SimpleQueue()  # for "the loop thread"
        self.dropped = RateLimitedLog(logging.getLogger("test_data_server"))
        self.data_server = DataServer(self.server, self.state,
                                      lambda fn, *args: self.calls.put((fn, args)), self.dropped)
        self.client = self.dealer()

    def hold(self, key: str, value: Any, nbytes: int) -> None:
        """Have ``key`` held here already: a client put it (its answer is dropped)."""
        self.state.put_data(b"a client", 0, {key: (value, nbytes)}, {})
        self.state.stored.clear()

    def dealer(self) -> zmq.Socket:
        sock = self.context.socket(zmq.DEALER)
        sock.linger = 0
        sock.connect(self.address)
        return sock

    def ask(self, msg: Any, frames: list | tuple = (), via: zmq.Socket | None = None
            ) -> tuple[Any, list] | None:
        """Send a request, serve it, and return the answer (None if none)."""
        via = via or self.client
        send_frames(via, protocol.encode_message(msg, frames))
        self.serve()
        return self.answer(via, timeout=0.5)

    def serve(self, timeout: float = 5) -> None:
        assert self.server.poll(int(1000 * timeout)), "the request did not arrive"
        drain(self.server, self.data_server.on_request, self.dropped)

    def run_calls(self, timeout: float = 5) -> None:
        """Make a call another thread asked the loop for."""
        fn, args = self.calls.get(timeout=timeout)
        fn(*args)

    def answer(self, via: zmq.Socket | None = None, timeout: float = 5
               ) -> tuple[Any, list] | None:
        via = via or self.client
        if not via.poll(int(1000 * timeout)):
            return None
        return protocol.decode_message(via.recv_multipart(copy=False))


@pytest.fixture
def context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def served(context):
    return Served(context)


def values_of(reply: Data, payload: list) -> dict[str, Any]:
    return {item.key: serialize.loads(frames)
            for item, frames in protocol.unpack_items(reply.items, payload)}


# ----------------------------------------------------------------------------- get-data

def test_get_data_answers_the_values_held_and_the_keys_missing_each_once(served):
    served.hold("x", [1, 2, 3], 80)
    served.hold("y", "why", 52)
    reply, payload = served.ask(GetData(5, ["x", "nope", "x", "y", "nope"]))
    assert type(reply) is Data and reply.id == 5
    assert reply.missing == ["nope"] and reply.errors is None
    assert [(item.key, item.nbytes) for item in reply.items] == [("x", 80), ("y", 52)]
    assert values_of(reply, payload) == {"x": [1, 2, 3], "y": "why"}
    # (not asked as a reader on this machine)
    assert (reply.lease, reply.pid, reply.proof) == (None, None, None)
    assert all(item.remote is None for item in reply.items)


def test_a_result_that_cannot_leave_its_worker_is_answered_as_an_error(served):
    served.hold("bad", Unpicklable(), 48)
    served.hold("good", 1, 28)
    reply, payload = served.ask(GetData(1, ["bad", "good"]))
    assert [item.key for item in reply.items] == ["good"]
    [error] = reply.errors
    assert error.key == "bad"
    unpacked = dict((item.key, frames) for item, frames in protocol.unpack_items(
        reply.items + reply.errors, payload))
    exc = remote_exception(unpacked["bad"])
    assert isinstance(exc, TypeError) and "cannot be pickled" in str(exc)
    assert serialize.loads(unpacked["good"]) == 1


# ----------------------------------------------------------------------------- put-data

def test_put_data_stores_the_values_and_answers_their_sizes(served):
    values = {"a": serialize.dumps(np.arange(10)), "b": serialize.dumps("b"),
              "broken": [b"not a pickle"]}
    items = [DataItem(key, len(frames)) for key, frames in values.items()]
    frames = [frame for value_frames in values.values() for frame in value_frames]
    send_frames(served.client, protocol.encode_message(PutData(3, items), frames))
    served.serve()
    (answer,) = served.state.stored  # (the loop's flush sends it)
    served.data_server.send_stored(*answer)
    reply, _ = served.answer()
    assert type(reply) is DataStored and reply.id == 3
    assert set(reply.nbytes) == {"a", "b"} and reply.nbytes["a"] >= 80
    assert set(reply.failed) == {"broken"}
    assert set(served.state.data) == {"a", "b"} and served.state.nbytes == reply.nbytes


# ----------------------------------------------------------------------------- run, run-task

def test_run_calls_a_function_off_the_loop_and_answers_its_result_or_error(served):
    assert served.ask(Run(1), serialize.dumps((sum, ([1, 2, 3],), {}))) is None
    served.run_calls()  # the answer is sent from the loop thread
    reply, payload = served.answer()
    assert reply == RunResult(1, True)
    assert serialize.loads(payload) == 6

    served.ask(Run(2), serialize.dumps((fail, ("no",), {})))
    served.run_calls()
    reply, payload = served.answer()
    assert reply == RunResult(2, False)
    exc = remote_exception(payload)
    assert isinstance(exc, ValueError) and str(exc) == "no"


def test_run_task_hands_a_clients_task_to_the_state_machine(served):
    assert served.ask(RunTask("k", 9), [b"pickled call"]) is None
    (task,) = served.state.to_execute
    assert (task.key, task.run, task.direct, task.send_result) == ("k", 9, True, True)
    ident = task.reply_to[0]
    served.state.task_done("k", 42, 28, 0.001, None, [b"pickled 42"])
    (client, result, frames), = served.state.to_clients
    served.data_server.send_result(client, result, frames)
    reply, payload = served.answer()
    assert reply == DirectResult("k", 9, 28)
    assert [bytes(f) for f in payload] == [b"pickled 42"] and client == ident


# ----------------------------------------------------------------------------- same-machine reads

needs_reads = pytest.mark.skipif(not peer_memory.enabled(),
                                 reason="process_vm_readv is not available here")


@needs_reads
def test_get_logs_answers_the_processs_recent_log_lines_and_keeps_only_the_last(served):
    from zfutures import logs

    logs.keep_recent_lines()
    logs.keep_recent_lines()  # (once per process, however many times)
    assert sum(isinstance(h, logs._RecentLines) for h in logging.getLogger().handlers) == 1
    user = logging.getLogger("a.user.module")
    for i in range(logs.RECENT_LINES + 50):
        user.warning("line %d", i)
    user.warning("x" * (2 * logs.RECENT_LINE_CHARS))  # (a line too long: cut)
    reply, _ = served.ask(GetLogs(7))
    assert isinstance(reply, Logs) and reply.id == 7
    assert len(reply.lines) == logs.RECENT_LINES
    assert reply.lines[-2].endswith(f"a.user.module WARNING line {logs.RECENT_LINES + 49}")
    assert reply.lines[0].endswith("WARNING line 51")
    assert len(reply.lines[-1]) < logs.RECENT_LINE_CHARS + 100


def test_big_buffers_are_offered_to_a_reader_on_this_machine_under_a_lease(served):
    big = np.arange(1_000_000, dtype=np.float64)
    served.hold("big", big, big.nbytes)
    reply, payload = served.ask(peer_memory.data_request(1, ["big"]))
    [item] = reply.items
    assert item.remote and reply.pid == os.getpid() and reply.proof is not None
    assert item.nframes == len(payload)
    assert sum(len(f) for f in payload) < big.nbytes  # the buffer was not sent
    leases = served.data_server.leases
    assert len(leases) == 1
    other = served.dealer()
    served.ask(DataRead(reply.lease), via=other)  # not its lease: kept
    assert len(leases) == 1
    assert served.ask(DataRead(reply.lease)) is None  # its reader: ended
    assert len(leases) == 0


@needs_reads
def test_a_lease_never_ended_expires(served):
    big = np.arange(1_000_000, dtype=np.float64)
    served.hold("big", big, big.nbytes)
    served.ask(peer_memory.data_request(1, ["big"]))
    leases = served.data_server.leases
    assert leases.expire(time.monotonic()) == []
    assert len(leases.expire(time.monotonic() + peer_memory.LEASE_SECONDS + 60)) == 1


def test_a_reader_on_another_machine_gets_the_bytes(served):
    big = np.arange(1_000_000, dtype=np.float64)
    served.hold("big", big, big.nbytes)
    reply, payload = served.ask(GetData(1, ["big"], machine="elsewhere", token="x" * 32))
    assert reply.lease is None and reply.items[0].remote is None
    assert np.array_equal(values_of(reply, payload)["big"], big)


# ----------------------------------------------------------------------------- results on disk

MB = 2**20


@pytest.fixture
def spilling(context, tmp_path):
    """A Served whose worker has a 100 MB limit and spills to ``tmp_path``."""
    served = Served(context)
    served.state = WorkerState("tcp://127.0.0.1:1", nthreads=1, memory_limit=100 * MB)
    served.disk = SpillThreads(str(tmp_path), served.state,
                               lambda fn, *args: served.calls.put((fn, args)))
    served.data_server = DataServer(served.server, served.state,
                                    lambda fn, *args: served.calls.put((fn, args)),
                                    served.dropped, served.disk)
    try:
        yield served
    finally:
        served.disk.close()


def spill(served: Served, key: str, value: np.ndarray) -> None:
    """Put ``key`` on disk, as the worker's loop would once memory ran short."""
    served.hold(key, value, value.nbytes)
    served.state.memory_measured(10**12)  # (far over every mark: everything goes)
    served.disk.submit(served.state.to_spill)
    served.state.to_spill.clear()
    while key in served.state.data:
        served.run_calls()  # spill_written


def test_a_result_on_disk_is_served_from_its_file_and_stays_on_disk(spilling):
    value = np.random.default_rng(1).random(1_000_000)
    spill(spilling, "x", value)
    send_frames(spilling.client, protocol.encode_message(
        GetData(3, ["x"], machine="elsewhere", token="t" * 32)))
    spilling.serve()
    spilling.run_calls()  # the reader thread read the frames: the loop answers
    reply, payload = spilling.answer()
    assert reply.id == 3 and np.array_equal(values_of(reply, payload)["x"], value)
    assert "x" not in spilling.state.data and spilling.state.memory.on_disk("x")


@needs_reads
def test_results_read_back_for_readers_are_held_one_answer_at_a_time_over_the_budget(spilling):
    big = [np.full(3_000_000, float(i)) for i in range(2)]  # 24 MB each: over 10% of 100 MB
    for i, value in enumerate(big):
        spill(spilling, f"big{i}", value)
    first, second = spilling.dealer(), spilling.dealer()
    send_frames(first, protocol.encode_message(peer_memory.data_request(1, ["big0"])))
    spilling.serve()
    spilling.run_calls()
    reply, _ = spilling.answer(first)
    assert reply.lease is not None
    send_frames(second, protocol.encode_message(peer_memory.data_request(2, ["big1"])))
    spilling.serve()
    with pytest.raises(queue.Empty):  # big1 is not read while big0's reader holds it
        spilling.run_calls(timeout=0.5)
    assert spilling.answer(second, timeout=0.1) is None
    send_frames(first, protocol.encode_message(DataRead(reply.lease)))
    spilling.serve()
    spilling.run_calls()
    reply, _ = spilling.answer(second)
    assert reply.id == 2 and [item.key for item in reply.items] == ["big1"]


@needs_reads
def test_a_value_a_reader_on_this_machine_reads_is_not_spilled_under_it(spilling):
    value = np.ones(1_000_000)
    spilling.hold("x", value, value.nbytes)
    reply, _ = spilling.ask(peer_memory.data_request(1, ["x"]))
    assert reply.lease is not None
    spilling.state.memory_measured(10**12)
    assert spilling.state.to_spill == [] and "x" in spilling.state.data
    spilling.ask(DataRead(reply.lease))
    spilling.state.memory_measured(10**12)
    assert [(kind, key) for kind, key, _ in spilling.state.to_spill] == [("write", "x")]


# ----------------------------------------------------------------------------- malformed requests

def answer_of(peer: RawPeer) -> tuple[Any, list]:
    """The next answer a raw peer gets, and its payload."""
    assert peer.socket.poll(10_000), "the data server stopped answering"
    return decode_reply(peer.socket.recv_multipart())


#: Requests to a worker's data server that it must drop without answering.
MALFORMED_DATA_REQUESTS = {
    "an empty frame": [b""],
    "several empty frames": [b"", b"", b""],
    "bytes that are not msgpack": [b"\xc1 not msgpack"],
    "a list": [raw(["get-data", 1, ["k"]])],
    "an int": [raw(7)],
    "a map without op": [raw({"id": 1, "keys": ["k"]})],
    "an unknown op": [h("steal-data", id=1, keys=["k"])],
    "an op it does not serve": [h("submit", tasks=[])],
    "a reply op": [h("data", id=1, items=[], missing=[])],
    "get-data with keys a string": [raw({"op": "get-data", "id": 1, "keys": "k"})],
    "get-data with int keys": [h("get-data", id=1, keys=[1, 2])],
    "get-data with a string id": [h("get-data", id="1", keys=["k"])],
    "get-data with a float id": [h("get-data", id=1.0, keys=["k"])],
    "get-data without keys": [raw({"op": "get-data", "id": 1})],
    "get-data with binary keys": [h("get-data", id=1, keys=[b"k"])],
    "get-data with a machine that is not a string": [h("get-data", id=1, keys=["k"],
                                                       machine=7)],
    "data-read without a lease": [h("data-read")],
    "data-read with a string lease": [h("data-read", lease="1")],
    "data-read for a lease never granted": [h("data-read", lease=12345)],
    "put-data announcing more frames than it has": [
        h("put-data", id=1, items=[{"key": "evil", "nframes": 4}]), b"x"],
    "put-data with negative nframes": [
        h("put-data", id=1, items=[{"key": "evil", "nframes": -1},
                                   {"key": "evil2", "nframes": 2}]), b"x"],
    "put-data with items a map": [raw({"op": "put-data", "id": 1, "items": {"key": "evil"}})],
    "put-data with a layout that cuts past its frame": [
        h("put-data", id=1, items=[{"key": "evil", "nframes": 1}], layout=[5]), b"ab"],
    "put-data with a layout announcing 512 MB in tiny chunks": [
        h("put-data", id=1, items=[{"key": "evil", "nframes": 1}], layout=[-(2**29)]), b"x",
        b"y"],
    "run with a layout that does not match": [h("run", id=1, layout=[3, 3]), b"ab"],
}


@pytest.mark.timeout(120)
def test_malformed_requests_to_a_data_server_leave_it_serving(processes, tmp_path, context):
    """Each kind of malformed request 500 times to a worker's data server: the
    worker stays up, answers nothing to them, stores nothing, logs a few lines,
    and still serves a normal fetch (raw and through the Executor) after."""
    repeat = 500
    center, address, _, [(worker, data_address, worker_log)] = start_cluster(processes, tmp_path)
    ex = connected_executor(address, 1)
    try:
        x = ex.submit(make, 10, workers=[data_address])
        assert x.result(timeout=30) == list(range(10))
        peer = RawPeer(context, data_address)
        reply, payload = fetch(peer, 1, [x.key, "nope"])
        assert reply.missing == ["nope"] and [i.key for i in reply.items] == [x.key]
        assert serialize.loads(payload) == list(range(10))

        sent = 0
        for frames in MALFORMED_DATA_REQUESTS.values():
            for _ in range(repeat):
                peer.send(*frames)
                sent += 1
        # run, or put-data, with a payload that is not a pickle: answered, with a failure
        for i in range(20):
            peer.send(h("run", id=1000 + i), b"not a pickle")
            peer.send(h("put-data", id=2000 + i, items=[{"key": "evil", "nframes": 1}]),
                      b"not a pickle")
        # answered in order: the fetch comes after every request above was handled
        results = []
        while len(results) < 40:
            reply, _ = answer_of(peer)
            assert type(reply) in (RunResult, DataStored), \
                f"an answer to a malformed request: {reply}"
            results.append(reply)
        runs = [r for r in results if type(r) is RunResult]
        assert sorted(r.id for r in runs) == list(range(1000, 1020))
        assert not any(r.ok for r in runs)
        stored = [r for r in results if type(r) is DataStored]
        assert sorted(r.id for r in stored) == list(range(2000, 2020))
        assert all(r.nbytes == {} and "evil" in r.failed for r in stored)
        reply, payload = fetch(peer, 2, [x.key, "evil", "evil2"])
        assert reply.missing == ["evil", "evil2"], "a malformed put-data stored data"
        assert serialize.loads(payload) == list(range(10))
        assert not peer.socket.poll(100), "an answer to a malformed request"

        assert_alive(center, worker)
        assert ex.gather(x, timeout=30) == list(range(10))
        assert ex.submit(total, x).result(timeout=30) == 45
        assert ex.has_what()[data_address] and "evil" not in ex.has_what()[data_address]
    finally:
        ex.shutdown(wait=False)
    warnings = lines(worker_log, "WARNING")
    assert sent >= 9000
    assert lines(worker_log, "dropped a malformed message"), "the drops were not logged"
    assert len(warnings) <= 20, f"{len(warnings)} warnings for {sent} messages:\n" + "\n".join(
        warnings)
    assert_alive(center, worker)
