"""A watcher of a real center: what the dashboard hears (messages.Events).

A raw client registers as the dashboard would, watches with the task stream,
and reads the events while an Executor runs tasks on two workers.
"""
from __future__ import annotations

import contextlib
import time

import pytest
import zmq
from conftest import read_line
from raw_peer import RawPeer, connected_executor, h, make, total

from zfutures.messages import Events
from zfutures.protocol import PROTOCOL_VERSION

N = 200
NTHREADS = 2


def start(processes, tmp_path) -> tuple[str, list[str]]:
    """A center and two workers of NTHREADS threads: (address, workers' addresses)."""
    with open(tmp_path / "center.log", "w") as f:
        # (no dashboard: the tests' watchers are the only ones)
        _, address = processes.center("--no-dashboard", stderr=f)
    workers = []
    for i in range(2):
        with open(tmp_path / f"worker{i}.log", "w") as f:
            worker = processes.worker(address, "--no-nanny", "--name", f"w{i}",
                                      "--nthreads", str(NTHREADS), stderr=f)
        workers.append(read_line(worker, r"serving at (tcp://\S+) for").group(1))
    return address, workers


class Watcher:
    """A raw client that watches, and what it heard, merged as a dashboard would."""

    def __init__(self, context: zmq.Context, address: str, stream: bool = True):
        self.peer = RawPeer(context, address)
        self.peer.send(h("register-client", protocol=PROTOCOL_VERSION,
                         name="zfutures-dashboard"))
        welcome, _ = self.peer.expect("welcome")
        assert welcome.dashboard is None  # (this center was started without one)
        self.peer.send(h("watch", stream=stream))
        self.groups: dict[str, tuple] = {}
        self.workers: dict[str, tuple] = {}
        self.runs: list = []
        self.transfers: list = []
        self.counters: dict[str, int] = {}
        self.received: list[Events] = []

    def read(self, timeout: float = 0.5) -> None:
        """Take the events that came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.peer.recv(left)
            if message is None:
                return
            events = message[0]
            if type(events) is not Events:
                continue
            self.received.append(events)
            self.groups.update((g.group, g) for g in events.groups)
            self.workers = {w.address: w for w in events.workers}
            self.runs += events.runs
            self.transfers += events.transfers
            self.counters = events.counters

    def until(self, condition, timeout: float = 20, message: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, message or "the events never said so"
            self.read(0.2)

    def close(self) -> None:
        self.peer.close()


@pytest.mark.timeout(120)
def test_a_watcher_hears_counts_runs_transfers_and_workers(processes, tmp_path):
    address, (w0, w1) = start(processes, tmp_path)
    with contextlib.ExitStack() as stack:
        context = zmq.Context()
        stack.callback(context.term)
        ex = connected_executor(address, 2)
        stack.callback(ex.shutdown)
        watcher = Watcher(context, address)
        stack.callback(watcher.close)
        watcher.until(lambda: len(watcher.workers) == 2)  # (the first events: all of it)
        futures = ex.map(make, range(N))
        assert [len(x) for x in ex.gather(futures)] == list(range(N))
        source = ex.submit(make, 10_000, key="source-1", workers=[w0])
        sink = ex.submit(total, source, key="sink-1", workers=[w1])
        assert sink.result(timeout=30) == sum(range(10_000))

        def done() -> bool:
            g = watcher.groups.get("make")
            return g is not None and g.memory == N and g.finished == N \
                and len(watcher.runs) >= N + 2 and bool(watcher.transfers)

        watcher.until(done, message="the events never showed every task done")
        g = watcher.groups["make"]
        assert (g.waiting, g.ready, g.processing, g.erred, g.failed) == (0, 0, 0, 0, 0)
        assert g.seconds >= 0
        assert {"source", "sink"} <= set(watcher.groups)
        runs = {run.key: run for run in watcher.runs}
        assert len(runs) == len(watcher.runs)  # each run once
        assert set(runs) >= {f.key for f in futures} | {"source-1", "sink-1"}
        for run in watcher.runs:
            assert run.worker in (w0, w1) and 0 <= run.thread < NTHREADS
            assert run.start <= run.stop and run.ok
        assert runs["source-1"].worker == w0 and runs["sink-1"].worker == w1
        (transfer,) = [t for t in watcher.transfers if t.key == "source-1"]
        assert (transfer.source, transfer.target) == (w0, w1)
        assert transfer.nbytes > 10_000 and transfer.start <= transfer.stop
        assert watcher.counters["transfer_bytes"] >= transfer.nbytes
        assert watcher.counters["tasks"] >= N + 2 and watcher.counters["messages"] > 0

        def heartbeats_heard() -> bool:
            return all(w.memory > 0 for w in watcher.workers.values())

        watcher.until(heartbeats_heard)
        for w in watcher.workers.values():
            assert w.cpu >= 0 and w.nthreads == NTHREADS and w.silent < 5
            assert w.memory_limit >= 0 and w.managed >= 0
        assert sum(w.keys for w in watcher.workers.values()) >= N

        # released: the counts go down with the tasks the center forgets
        del futures, source, sink
        watcher.until(lambda: watcher.groups["make"].memory == 0
                      and watcher.groups["make"].released == 0)

        # quiet: an events at least once a second still, with the workers
        before = len(watcher.received)
        watcher.read(2.5)
        assert len(watcher.received) - before >= 2

        watcher.peer.send(h("unwatch"))
        watcher.read(0.5)  # (what was on its way)
        before = len(watcher.received)
        watcher.read(1.5)
        assert len(watcher.received) == before


@pytest.mark.timeout(120)
def test_a_watcher_that_reads_nothing_never_holds_the_center_up(processes, tmp_path):
    address, _ = start(processes, tmp_path)
    with contextlib.ExitStack() as stack:
        context = zmq.Context()
        stack.callback(context.term)
        ex = connected_executor(address, 2)
        stack.callback(ex.shutdown)
        # a watcher that never reads: its messages queue, or are dropped
        deaf = RawPeer(context, address, rcvhwm=1, rcvbuf=4096)
        stack.callback(deaf.close)
        deaf.send(h("register-client", protocol=PROTOCOL_VERSION, name="zfutures-dashboard"))
        deaf.send(h("watch", stream=True))
        # (and without the stream, a watcher that does read)
        watcher = Watcher(context, address, stream=False)
        stack.callback(watcher.close)
        for _ in range(3):
            futures = ex.map(make, range(N), pure=False)
            assert len(ex.gather(futures)) == N
        watcher.until(lambda: watcher.groups.get("make") is not None
                      and watcher.groups["make"].finished == 3 * N)
        assert watcher.runs == [] and watcher.transfers == []  # (not asked for)
        # and the center answers still, a watcher reading nothing all along
        assert len(ex.scheduler_info()["workers"]) == 2


def test_the_center_describes_a_key_and_gives_its_dashboard_link_to_clients():
    from raw_peer import CenterUnderTest

    under = CenterUnderTest()
    try:
        center = under.center
        center.dashboard_link = "http://127.0.0.1:8788/status?token=t"
        under.send_op(b"c", "register-client", protocol=PROTOCOL_VERSION, name="me")
        (welcome,) = [msg for _, op, msg in under.sent if op == "welcome"]
        assert welcome.dashboard == center.dashboard_link
        under.send_op(b"c", "scheduler-info", id=1)
        under.send_op(b"c", "describe-key", id=2, key="nope")
        replies = {msg.id: msg.result for _, op, msg in under.sent if op == "reply"}
        assert replies[1]["dashboard"] == center.dashboard_link and replies[2] is None
        under.send_op(b"w", "watch", stream=True)  # (not a client: dropped)
        assert center.watchers == {}
        under.send_op(b"c", "watch", stream=False)
        assert center.watchers == {b"c": False} and center.scheduler.observer is not None
        under.send_op(b"c", "close-client")  # a watcher that goes stops watching
        assert center.watchers == {} and center.scheduler.observer is None
        assert center.messages == 6
    finally:
        under.close()
