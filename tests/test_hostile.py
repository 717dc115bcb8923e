"""Hostile input: garbage, malformed messages, oversized messages and floods.

Real ``zfut-center`` and ``zfut-worker --no-nanny`` processes are fed bytes and
messages that no zfutures peer would send, from raw TCP sockets and raw ZeroMQ
DEALER sockets. Each test then checks that the processes are still up, that a
normal computation still succeeds, and that the drops were logged but
rate-limited. The last tests fuzz the center's message handling in-process
and check the scheduler's invariants after every message.
"""
from __future__ import annotations

import random
import socket
import threading
from typing import Any

import psutil
import pytest
import zmq
from conftest import wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_peer import (
    REGISTER_WORKER,
    CenterUnderTest,
    RawPeer,
    assert_alive,
    connected_executor,
    fetch,
    h,
    lines,
    make,
    raw,
    start_cluster,
    total,
)
from raw_wire import SCHEMAS

from zfutures.center import Center
from zfutures.messages import op_of
from zfutures.protocol import PROTOCOL_VERSION

pytestmark = pytest.mark.timeout(90)


# ----------------------------------------------------------------------------- tasks

def inc(x):
    return x + 1


# ----------------------------------------------------------------------------- helpers

@pytest.fixture
def zctx():
    """A ZeroMQ context for the test's raw sockets; closed (linger 0) at the end."""
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


# ----------------------------------------------------------------------------- raw TCP

def zmtp_greeting(major: int = 3, minor: int = 0, mechanism: bytes = b"NULL",
                  as_server: int = 0) -> bytes:
    """A ZMTP 3 greeting: signature, version, mechanism, as-server, filler (64 bytes)."""
    return (b"\xff" + bytes(8) + b"\x7f" + bytes([major, minor])
            + mechanism.ljust(20, b"\x00") + bytes([as_server]) + bytes(31))


def zmtp_command(name: bytes, body: bytes = b"") -> bytes:
    payload = bytes([len(name)]) + name + body
    return b"\x04" + bytes([len(payload)]) + payload


def zmtp_ready(socket_type: bytes = b"DEALER") -> bytes:
    prop = b"Socket-Type"
    return zmtp_command(b"READY", bytes([len(prop)]) + prop
                        + len(socket_type).to_bytes(4, "big") + socket_type)


HANDSHAKE = zmtp_greeting() + zmtp_ready()
_rng = random.Random(1234)

#: Byte streams no zfutures peer sends, from noise to well-formed ZMTP that
#: carries nonsense. Those ending mid-handshake leave the connection half open.
GARBAGE = {
    "random bytes": _rng.randbytes(4096),
    "an HTTP request": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "a TLS client hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + _rng.randbytes(64),
    "100 kB of zeros": bytes(100_000),
    "100 kB of 0xff": b"\xff" * 100_000,
    "half a greeting": zmtp_greeting()[:20],
    "ZMTP version 99": zmtp_greeting(major=99),
    "an unknown mechanism": zmtp_greeting(mechanism=b"BOGUS"),
    "CURVE against a NULL server": zmtp_greeting(mechanism=b"CURVE"),
    "PLAIN as a server": zmtp_greeting(mechanism=b"PLAIN", as_server=1),
    "a READY of an incompatible socket type": zmtp_greeting() + zmtp_ready(b"PUB"),
    "an unknown command": zmtp_greeting() + zmtp_command(b"LAUNCH", b"now"),
    "a command announcing 2**63 bytes": zmtp_greeting() + b"\x06" + (2**63).to_bytes(8, "big"),
    "a frame announcing 2**62 bytes": HANDSHAKE + b"\x02" + (2**62).to_bytes(8, "big"),
    "a frame announcing 2**64-1 bytes": HANDSHAKE + b"\x02" + b"\xff" * 8,
    "a truncated frame": HANDSHAKE + b"\x00\x10abc",
    "reserved flag bits": HANDSHAKE + b"\xf8\x03abc",
    "frames of non-msgpack": HANDSHAKE + b"\x00\x05hello" + b"\x01\x00\x00\x03abc",
    "ZMTP 1.0 framing": b"\x01\x00\x06\x00hello!" + b"\x05\x00junk",
}


def send_garbage(port: int, repeat: int) -> list[socket.socket]:
    """Send every GARBAGE stream ``repeat`` times; return the connections left open."""
    left_open = []
    for _ in range(repeat):
        for data in GARBAGE.values():
            conn = socket.create_connection(("127.0.0.1", port), timeout=5)
            try:
                conn.sendall(data)
            except OSError:  # the peer may reset the connection mid-stream
                pass
            left_open.append(conn)
        # and connections that open and slam shut with a reset, sending nothing
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()
    return left_open


@pytest.mark.timeout(120)
def test_garbage_on_raw_tcp_leaves_center_and_workers_serving(processes, tmp_path):
    """Non-ZeroMQ bytes, broken ZMTP handshakes and half-open connections on the
    center's port and on both workers' data-server ports: every process stays
    up, and a computation whose data moves between the workers succeeds while
    the half-open connections are still there, and again after they close."""
    center, address, center_log, workers = start_cluster(processes, tmp_path, nworkers=2)
    (w0, a0, _), (w1, a1, _) = workers
    ex = connected_executor(address, 2)
    try:
        assert sorted(ex.nthreads()) == sorted([a0, a1])
        connections = []
        for target in (address, a0, a1):
            connections += send_garbage(port_of(target), repeat=3)
        try:
            assert_alive(center, w0, w1)
            x = ex.submit(make, 1000, workers=[a0])
            y = ex.submit(total, x, workers=[a1])  # x's data moves w0 -> w1
            assert y.result(timeout=30) == sum(range(1000))
            assert ex.who_has(y)[y.key] == [a1] and a0 in ex.who_has(x)[x.key]
        finally:
            for conn in connections:
                conn.close()
        assert_alive(center, w0, w1)
        z = ex.submit(total, ex.submit(make, 10, workers=[a1]), workers=[a0])
        assert z.result(timeout=30) == 45
        assert ex.gather(x) == list(range(1000))
    finally:
        ex.shutdown(wait=False)
    assert_alive(center, w0, w1)
    # failed handshakes are logged, but a few lines at most however many there are
    assert 1 <= len(lines(center_log, "failed the handshake")) <= 3, center_log.read_text()
    assert len(lines(center_log, "WARNING")) <= 10, center_log.read_text()


# ----------------------------------------------------------------------------- center

TASK = {"key": "k", "deps": [], "priority": 0, "nframes": 1}

#: Messages a registered client sends that the center must drop. None is valid.
MALFORMED = {
    "an empty frame": [b""],
    "several empty frames": [b"", b"", b"", b""],
    "bytes that are not msgpack": [b"\xc1\xc1 not msgpack"],
    "truncated msgpack": [h("release", keys=["a", "b"])[:-3]],
    "two msgpack objects": [h("heartbeat") + h("heartbeat")],
    "a 4-billion-element array": [b"\xdd\xff\xff\xff\xff"],
    "deeply nested arrays": [b"\x91" * 5000],
    "a list too short for a header": [raw(["submit", None])],
    "a map": [raw({"op": "release", "keys": ["a"]})],
    "an int": [raw(42)],
    "a string": [raw("submit")],
    "binary": [raw(b"\x00\x01")],
    "nil": [raw(None)],
    "a map with int keys": [raw({1: "submit"})],
    "a map without op": [raw({"tasks": [TASK]}), b"payload"],
    "op that is not a string": [raw([7, None, None])],
    "op that is binary": [raw([b"submit", None, None, []])],
    "an unknown op": [h("launch-missiles")],
    "submit without tasks": [h("submit")],
    "submit with tasks a string": [h("submit", tasks="all")],
    "submit with a task that is not a map": [h("submit", tasks=["k"]), b"payload"],
    "submit with an item missing its key": [h("submit", tasks=[{"deps": [], "priority": 0,
                                                                "nframes": 1}]), b"p"],
    "submit with an int key": [h("submit", tasks=[dict(TASK, key=5)]), b"p"],
    "submit with a float priority": [h("submit", tasks=[dict(TASK, priority=0.5)]), b"p"],
    "submit with a bool nframes": [h("submit", tasks=[dict(TASK, nframes=True)]), b"p"],
    "submit with deps a string": [h("submit", tasks=[dict(TASK, deps="x")]), b"p"],
    "submit with bad resources": [h("submit", tasks=[dict(TASK, resources={"GPU": "1"})]), b"p"],
    "submit announcing more frames than it has": [h("submit", tasks=[dict(TASK, nframes=3)]),
                                                  b"p"],
    "submit announcing fewer frames than it has": [h("submit", tasks=[TASK]), b"p", b"q"],
    "submit with negative nframes": [h("submit", tasks=[dict(TASK, nframes=-1), dict(
        TASK, key="k2", nframes=2)]), b"p"],
    "submit announcing 2**62 frames": [h("submit", tasks=[dict(TASK, nframes=2**62)]), b"p"],
    "release with int keys": [h("release", keys=[1, 2])],
    "who-has with a string id": [h("who-has", id="1", keys=[])],
    "who-has with a bool id": [h("who-has", id=True, keys=[])],
    "scheduler-info without id": [h("scheduler-info")],
    "update-data with a bad item": [h("update-data", items=[{"key": "k", "nbytes": "1",
                                                             "workers": []}])],
    "register-client with a string protocol": [h("register-client", protocol="1", name="x")],
    # "layout" says how payload frames were packed or chunked: lies about it
    "a layout that is not a list": [h("submit", tasks=[TASK], layout="all"), b"p"],
    "a layout of strings": [h("submit", tasks=[TASK], layout=["1"]), b"p"],
    "a layout that cuts past its frame": [h("submit", tasks=[TASK], layout=[5]), b"ab"],
    "a layout with fewer frames than it announces": [
        h("submit", tasks=[dict(TASK, nframes=2)], layout=[1, -100_000]), b"a"],
    "a layout announcing a 2**62-byte frame": [
        h("submit", tasks=[TASK], layout=[-(2**62)]), b"x", b"y"],
    "a layout announcing 512 MB in tiny chunks": [
        h("submit", tasks=[TASK], layout=[-(2**29)]), b"x", b"y", b"z"],
}

#: Valid messages that a client may not send (they are for workers, nannies or
#: the center's own replies), including some that would hurt if obeyed.
FORBIDDEN_FOR_A_CLIENT = {
    "task-finished": [h("task-finished", tasks=[{"key": "k", "nbytes": 1, "run": 1}])],
    "task-erred": [h("task-erred", tasks=[{"key": "k", "nframes": 1, "run": 1}]), b"boom"],
    "keys-added": [h("keys-added", tasks=[{"key": "k", "nbytes": 1}])],
    "missing-data": [h("missing-data", key="k", missing=["j"], run=1)],
    "task-seceded": [h("task-seceded", key="k", run=1)],
    "retire": [h("retire")],
    "unregister": [h("unregister")],
    "paused": [h("paused", paused=True)],
    "register-worker": [h("register-worker", **REGISTER_WORKER)],
    "register-nanny": [h("register-nanny", protocol=PROTOCOL_VERSION)],
    "compute": [h("compute", tasks=[{"key": "k", "deps": {}, "nframes": 0, "run": 1}])],
    "welcome": [h("welcome", protocol=PROTOCOL_VERSION)],
    "key-finished": [h("key-finished", tasks=[{"key": "k", "who_has": [], "nbytes": 1}])],
    "reply": [h("reply", id=1, result=None)],
    "refused": [h("refused", reason="no")],
    "reregister": [h("reregister")],
    "get-data": [h("get-data", id=1, keys=["k"])],
    "put-data": [h("put-data", id=1, items=[])],
    "run": [h("run", id=1)],
}


@pytest.mark.timeout(120)
def test_malformed_messages_to_the_center_are_dropped_and_logged_rate_limited(
        processes, tmp_path, zctx):
    """Each kind of malformed message, and each op a client may not send, 500
    times from a registered client; ops from a peer that has not registered;
    registrations with a wrong protocol version. The center refuses or drops
    them all without changing its state, logs far fewer lines than messages,
    and serves a normal computation after."""
    repeat = 500
    center, address, center_log, [(worker, data_address, _)] = start_cluster(processes, tmp_path)
    ex = connected_executor(address, 1)
    try:
        # wrong protocol versions: refused, with a reason, and not registered
        for op, fields in (("register-client", {"name": "old"}),
                           ("register-worker", dict(REGISTER_WORKER, address="tcp://127.0.0.1:7")),
                           ("register-nanny", {})):
            for version in (PROTOCOL_VERSION + 1, 0, -(2**63), 2**64 - 1):
                peer = RawPeer(zctx, address)
                peer.send(h(op, **dict(fields, protocol=version)))
                header, _ = peer.expect("refused")
                assert f"protocol version {version} " in header.reason
                assert "same zfutures version" in header.reason
                peer.send(h("heartbeat"))  # it is still a stranger to the center
                peer.expect("reregister")
                peer.close()

        client = RawPeer(zctx, address)
        client.register_client()
        sent = 0
        for frames in [*MALFORMED.values(), *FORBIDDEN_FOR_A_CLIENT.values()]:
            for _ in range(repeat):
                client.send(*frames)
                sent += 1
        # a worker-died from a client must not remove the real worker
        client.send(h("worker-died", address=data_address))
        # the center handles one peer's messages in order: once this is answered,
        # all of the above have been handled, and none changed anything
        info = client.request("scheduler-info", 1)
        assert info["tasks"] == {}, "a malformed message created tasks"
        assert list(info["workers"]) == [data_address]
        assert client.request("has-what", 2) == {data_address: []}

        # a peer that never registered: ops that mean "I was registered" are
        # answered with reregister, one each; anything else is dropped
        stranger = RawPeer(zctx, address)
        silent = [[h("worker-died", address=data_address)], [h("unregister")],
                  [h("close-client")], [h("compute", tasks=[])], [h("get-data", id=1, keys=[])],
                  [b"\xc1"], [raw([1, 2])], [h("launch-missiles")]]
        for _ in range(repeat):
            for frames in silent:
                stranger.send(*frames)
                sent += 1
            stranger.send(h("heartbeat"))
            stranger.send(h("submit", tasks=[TASK]), b"p")
            stranger.send(h("task-finished", tasks=[{"key": "k", "nbytes": 1, "run": 1}]))
            sent += 3
        for _ in range(3 * repeat):
            header, _ = stranger.expect("reregister", skip=())
        assert stranger.recv(timeout=0.2) is None, "the stranger got more than reregister"
        info = client.request("scheduler-info", 3)
        assert info["tasks"] == {} and list(info["workers"]) == [data_address]

        assert_alive(center, worker)
        assert ex.submit(inc, 41).result(timeout=30) == 42
        assert ex.gather(ex.map(inc, range(20)), timeout=30) == list(range(1, 21))
        client.send(h("close-client"))
    finally:
        ex.shutdown(wait=False)
    log = lines(center_log)
    warnings = lines(center_log, "WARNING")
    assert sent > 20_000
    assert lines(center_log, "dropped a malformed message"), "the drops were not logged"
    assert lines(center_log, "from a client"), "forbidden ops were not logged"
    assert lines(center_log, "refused a peer"), "refusals were not logged"
    assert lines(center_log, "from a peer that has not registered")
    assert len(warnings) <= 60, f"{len(warnings)} warnings for {sent} messages:\n" + "\n".join(
        warnings)
    assert len(log) <= 100, "\n".join(log)
    assert_alive(center, worker)


# ----------------------------------------------------------------------------- oversized

@pytest.mark.timeout(120)
def test_oversized_messages_are_refused_without_being_held(processes, tmp_path, zctx):
    """A center started with --max-message-size 1000000: 2 MB messages (a big
    payload frame, or a big header) cost their sender its connection, are never
    handled, and do not stay in the center's memory. An Executor refuses an
    oversized submit at the call, saying to scatter; small submits, and a big
    value that is scattered, still work."""
    center, address, _, [(worker, data_address, _)] = start_cluster(
        processes, tmp_path, center_args=("--max-message-size", "1000000"))
    ex = connected_executor(address, 1)
    try:
        assert ex.submit(inc, 1).result(timeout=30) == 2
        rss = psutil.Process(center.pid).memory_info().rss
        big = b"x" * 2_000_000
        for i in range(30):
            peer = RawPeer(zctx, address)
            monitor = peer.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            if i % 2:  # a big payload frame after a valid registration header
                peer.send(h("register-worker", **dict(REGISTER_WORKER, name="OVERSIZED")), big)
            else:  # a big header
                peer.send(h("register-client", protocol=PROTOCOL_VERSION, name="O" * 2_000_000))
            assert monitor.poll(10_000), "the center kept the connection of an oversized message"
            assert peer.recv(timeout=0) is None, "an oversized message was answered"
            peer.socket.disable_monitor()
            monitor.close(linger=0)
            peer.close()
        growth = psutil.Process(center.pid).memory_info().rss - rss
        assert growth < 30 * 2**20, f"the center grew by {growth / 2**20:.0f} MB for 60 MB refused"
        info = ex.scheduler_info()
        assert list(info["workers"]) == [data_address], "an oversized registration was handled"
        assert_alive(center, worker)

        with pytest.raises(ValueError, match="scatter") as raised:
            ex.submit(len, b"x" * 2_000_000)
        assert "--max-message-size" in str(raised.value)
        with pytest.raises(ValueError, match="scatter"):
            ex.map(len, [b"x", b"x" * 2_000_000])
        assert ex.submit(len, b"x" * 1000).result(timeout=30) == 1000
        assert ex.submit(len, b"x" * 400_000).result(timeout=30) == 400_000
        [data] = ex.scatter([b"y" * 2_000_000])  # straight to the worker, not via the center
        assert ex.submit(len, data).result(timeout=30) == 2_000_000
    finally:
        ex.shutdown(wait=False)
    assert_alive(center, worker)


# ----------------------------------------------------------------------------- floods

class PeakRSS:
    """Samples a process's resident memory in a thread; keeps the peak."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.before = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.process.memory_info().rss


SENTINEL_ADDRESS = "tcp://127.0.0.1:9"


def send_sentinel(peer: RawPeer) -> None:
    """Register the flooder as a worker and unregister it: the center logs
    "worker ... left" once it has handled everything the flooder sent before."""
    peer.send(h("register-worker", **dict(REGISTER_WORKER, address=SENTINEL_ADDRESS,
                                          name="sentinel")))
    peer.send(h("unregister"))


def sentinel_handled(center_log) -> bool:
    return bool(lines(center_log, f"worker {SENTINEL_ADDRESS} left"))


class Disconnects:
    """Counts the times a socket's connection was dropped (by either side)."""

    def __init__(self, sock: zmq.Socket):
        self.sock = sock
        self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.count = 0

    def __call__(self) -> int:
        while self.monitor.poll(0):
            self.monitor.recv_multipart()
            self.count += 1
        return self.count

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)


FLOOD_MALFORMED = [b"\xc1", raw([1, 2, 3]), raw(42), h("launch-missiles"), h("submit"),
                   b"", raw({"no": "op"}), h("who-has", id="x", keys=[])]

@pytest.mark.timeout(120)
def test_flood_from_one_peer_keeps_memory_and_log_bounded(processes, tmp_path, zctx):
    """One DEALER that never reads sends 200,000 messages as fast as it can:
    malformed headers, and heartbeats as if it were registered (each answered
    with reregister, which it never reads). The center's memory stays bounded,
    its log stays a few lines long, and it serves a computation right after,
    with the flooder still connected and after it leaves."""
    n = 200_000
    center, address, center_log, [(worker, _, _)] = start_cluster(processes, tmp_path)
    ex = connected_executor(address, 1)
    try:
        assert ex.submit(inc, 1).result(timeout=30) == 2
        rss = PeakRSS(center.pid)
        flooder = RawPeer(zctx, address)
        disconnects = Disconnects(flooder.socket)
        heartbeat = h("heartbeat")
        for i in range(n):
            flooder.send(heartbeat if i % 2 else FLOOD_MALFORMED[(i // 2) % len(FLOOD_MALFORMED)])
        send_sentinel(flooder)
        # (a connection dropped meanwhile loses the messages in flight, the sentinel too)
        wait_for(lambda: sentinel_handled(center_log) or disconnects(), timeout=60,
                 message="the center did not get through the flood")
        print(f"\nflood: sentinel handled {sentinel_handled(center_log)}, "
              f"flooder disconnected {disconnects()} times")
        assert_alive(center, worker)
        assert ex.submit(inc, 2).result(timeout=30) == 3  # (the flooder still connected)
        after = rss.stop()
        disconnects.close()
        flooder.close()
        assert ex.gather(ex.map(inc, range(10)), timeout=30) == list(range(1, 11))
        print(f"\ncenter RSS: {rss.before / 2**20:.1f} MB before the flood, peak "
              f"{rss.peak / 2**20:.1f} MB, {after / 2**20:.1f} MB after")
        assert rss.peak - rss.before < 200 * 2**20, (
            f"the center grew by {(rss.peak - rss.before) / 2**20:.0f} MB")
    finally:
        ex.shutdown(wait=False)
    warnings = lines(center_log, "WARNING")
    assert 1 <= len(warnings) <= 20, "\n".join(warnings)
    assert center_log.stat().st_size < 20_000
    assert_alive(center, worker)


@pytest.mark.timeout(120)
def test_a_peer_that_never_reads_cannot_block_the_center(processes, tmp_path, zctx):
    """A peer sends 250,000 heartbeats without registering and never reads the
    reregister answers, so more answers pile up for it than the center queues
    for one peer (SNDHWM). The center must drop the excess rather than wait for
    room: it keeps answering other peers throughout, serves a computation, and
    survives the flooder leaving."""
    n = 250_000
    center, address, center_log, [(worker, _, _)] = start_cluster(processes, tmp_path)
    ex = connected_executor(address, 1)
    probe = RawPeer(zctx, address)
    probe.register_client("probe")
    request_ids = iter(range(1, 10**9))

    def answers_and_got_through() -> bool:
        """The center still answers another peer; has it handled the flood?"""
        request_id = next(request_ids)
        probe.send(h("scheduler-info", id=request_id))
        reply = probe.recv(timeout=10)
        while reply is not None and op_of(reply[0]) in ("heartbeat", "workers-left"):
            reply = probe.recv(timeout=10)
        assert reply is not None, (
            "the center stopped answering other peers while one that does not read floods it")
        assert op_of(reply[0]) == "reply" and reply[0].id == request_id
        return sentinel_handled(center_log)

    try:
        flooder = RawPeer(zctx, address, rcvhwm=1, rcvbuf=1024)  # reads nothing, queues little
        disconnects = Disconnects(flooder.socket)
        try:
            heartbeat = h("heartbeat")
            pushed_back = False
            for _ in range(n):
                try:
                    flooder.send(heartbeat)
                except zmq.Again:  # the center stopped reading from it: also a bound
                    pushed_back = True
                    break
            if not pushed_back:
                send_sentinel(flooder)
            # (a connection dropped meanwhile loses the messages in flight, the sentinel too)
            wait_for(lambda: answers_and_got_through() or disconnects() or pushed_back,
                     timeout=90, interval=0.2,
                     message="the center did not get through the flood")
            answers_and_got_through()  # (answers other peers, whatever the flooder's fate)
            print(f"\nnever reads: sentinel handled {sentinel_handled(center_log)}, "
                  f"flooder disconnected {disconnects()} times")
            assert_alive(center, worker)
            assert ex.submit(inc, 1).result(timeout=30) == 2
        finally:
            disconnects.close()
            flooder.close()
        probe.request("has-what", 10**9)  # answered after the flooder left
        assert ex.submit(inc, 2).result(timeout=30) == 3
    finally:
        ex.shutdown(wait=False)
    assert_alive(center, worker)
    assert len(lines(center_log, "WARNING")) <= 20


@pytest.mark.timeout(120)
def test_log_lines_stay_short_whatever_a_message_carries(processes, tmp_path, zctx):
    """Drops are logged with details taken from the message, such as an unknown
    op's name. Rate limiting bounds the lines, not their length: a few messages
    that carry megabytes of detail must not put megabytes in the center's or a
    worker's log (a flood would fill the disk ten seconds at a time)."""
    center, address, center_log, [(worker, data_address, worker_log)] = start_cluster(
        processes, tmp_path)
    to_center, to_worker = RawPeer(zctx, address), RawPeer(zctx, data_address)
    for i in range(3):
        op = chr(ord("a") + i) * 4_000_000
        to_center.send(h(op))
        to_center.send(h("get-data", id=1, keys=op))
        to_worker.send(h(op))
        to_worker.send(h("get-data", id=1, keys=op))
    send_sentinel(to_center)
    wait_for(lambda: sentinel_handled(center_log), timeout=30,
             message="the center did not handle the messages")
    fetch(to_worker, 2, ["nothing"])  # handled after the ones above
    assert_alive(center, worker)
    ex = connected_executor(address, 1)
    try:
        assert ex.submit(inc, 1).result(timeout=30) == 2
    finally:
        ex.shutdown(wait=False)
    for log in (center_log, worker_log):
        assert log.stat().st_size < 64 * 1024, (
            f"{log.name} holds {log.stat().st_size} bytes after 6 dropped messages; longest "
            f"line {max(len(line) for line in lines(log))} characters")


# ----------------------------------------------------------------------------- fuzzing

CLIENT, WORKER, NANNY, STRANGER = b"c-fuzz", b"w-fuzz", b"n-fuzz", b"x-stranger"
WORKER_ADDRESS, OTHER_ADDRESS = "tcp://127.0.0.1:1", "tcp://127.0.0.1:2"
KEYS = ["a", "b", "c", "d"]
OPS = sorted(SCHEMAS)


def register_fakes(cut: CenterUnderTest) -> None:
    """A client, a worker (with a GPU) and a nanny; tasks a, b (needs a) and c."""
    cut.send_op(CLIENT, "register-client", protocol=PROTOCOL_VERSION, name="fuzz")
    cut.send_op(WORKER, "register-worker", **dict(
        REGISTER_WORKER, address=WORKER_ADDRESS, nthreads=2, resources={"GPU": 1.0}))
    cut.send_op(NANNY, "register-nanny", protocol=PROTOCOL_VERSION)
    cut.send_op(CLIENT, "submit", b"pa", b"pb", b"pc", tasks=[
        {"key": "a", "deps": [], "priority": 0, "nframes": 1},
        {"key": "b", "deps": ["a"], "priority": 1, "nframes": 1},
        {"key": "c", "deps": [], "priority": 0, "nframes": 1}])


def run_of(cut: CenterUnderTest, key: str) -> int:
    """The run id of ``key``'s latest compute message."""
    return [item.run for _, op, msg in cut.sent if op == "compute"
            for item in msg.tasks if item.key == key][-1]


def check_invariants(center: Center) -> None:
    """What must hold between any two messages, whatever they were."""
    s = center.scheduler
    assert s.workers_by_address == {ws.address: ws for ws in s.workers.values()}
    for ident, ws in s.workers.items():
        assert ws.ident == ident
        peer = center.peers.get(ident)
        assert peer is not None and peer.role == "worker", f"{ws} is not a registered worker"
        for ts in ws.processing:
            assert ts.processing_on is ws and ts.state == "processing", (ts, ws)
            assert s.tasks.get(ts.key) is ts, f"{ws} processes a forgotten {ts}"
        for ts in ws.has_what:
            assert ws in ts.who_has, (ts, ws)
            assert s.tasks.get(ts.key) is ts, f"{ws} holds a forgotten {ts}"
        assert ws.seceded <= ws.processing
    for ident, client in s.clients.items():
        peer = center.peers.get(ident)
        assert peer is not None and peer.role == "client", f"{client} is not a registered client"
        for ts in client.wants:
            assert client in ts.who_wants and s.tasks.get(ts.key) is ts, (client, ts)
    ready = {ts for _, ts in s.placement.ready}
    for key, ts in s.tasks.items():
        assert ts.key == key
        if ts.state == "memory":
            assert ts.who_has, f"{ts} is in memory nowhere"
        if ts.state == "processing":
            ws = ts.processing_on
            assert ws is not None and ts in ws.processing, ts
            assert s.workers.get(ws.ident) is ws, ts
            for dep in ts.waiting_on:  # sent ahead: its inputs are being computed there
                assert dep.state == "processing" and dep.processing_on is ws, (ts, dep)
        else:
            assert ts.processing_on is None, f"{ts} is {ts.state} but processing on a worker"
        assert (ts.state == "ready") == (ts in ready), f"{ts}: in the ready queue {ts in ready}"
        for ws in ts.who_has:
            assert ts in ws.has_what and s.workers.get(ws.ident) is ws, (ts, ws)
        for dep in ts.dependencies:
            assert ts in dep.dependents and s.tasks.get(dep.key) is dep, (ts, dep)
        assert ts.waiting_on <= set(ts.dependencies)
    assert all(ts.state == "ready" for ts in ready)


def check_normal_flow(cut: CenterUnderTest) -> None:
    """A new client and a new worker (with room for every task there is): a task
    is sent to a worker, finishes, and the client is told; whatever came before."""
    key = "final-key"
    cut.send_op(b"c-final", "register-client", protocol=PROTOCOL_VERSION, name="final")
    cut.send_op(b"w-final", "register-worker", **dict(
        REGISTER_WORKER, address="tcp://127.0.0.1:3", name="final", nthreads=64))
    assert b"w-final" in cut.center.scheduler.workers, "a new worker could not register"
    cut.send_op(b"c-final", "submit", b"payload",
                tasks=[{"key": key, "deps": [], "priority": 0, "nframes": 1}])
    ts = cut.center.scheduler.tasks[key]
    assert ts.state == "processing", f"a new task is {ts.state}"
    ws = ts.processing_on
    assert any(ident == ws.ident and op == "compute" and key in [t.key for t in msg.tasks]
               for ident, op, msg in cut.sent), "the task was not sent to its worker"
    cut.send_op(ws.ident, "task-finished", tasks=[{"key": key, "nbytes": 8, "run": ts.run}])
    assert ts.state == "memory" and ts.who_has == {ws}
    assert any(ident == b"c-final" and op == "key-finished" and
               key in [t.key for t in msg.tasks] for ident, op, msg in cut.sent)


texts = st.sampled_from(KEYS + [WORKER_ADDRESS, OTHER_ADDRESS, ""]) | st.text(max_size=4)
ints = st.sampled_from([0, 1, 2, -1, 2**64 - 1, -(2**63)]) | st.integers(-(2**63), 2**64 - 1)
floats = st.floats() | st.sampled_from([float("nan"), float("inf"), -0.0])
junk = (st.none() | st.booleans() | st.binary(max_size=4) | ints | floats | texts
        | st.lists(ints | texts, max_size=2) | st.dictionaries(texts, ints, max_size=2))


def fitting(kind: Any) -> st.SearchStrategy:
    """Values of a schema kind, from the keys, addresses and numbers that matter."""
    if kind is object:
        return junk
    if kind is bool:
        return st.booleans()
    if kind is int:
        return ints
    if kind == (int, float):
        return ints | floats
    if kind is str:
        return texts
    tag = kind[0]
    if tag == "list":
        return st.lists(value(kind[1]), max_size=3)
    if tag == "map":
        inner = kind[1:] if len(kind) > 2 else kind[1]
        return st.dictionaries(texts | st.just("GPU"), value(inner), max_size=2)
    if tag == "items":
        return st.lists(st.fixed_dictionaries(
            {f: value(k) for f, k in kind[1].items() if not f.endswith("?")},
            optional={f[:-1]: value(k) for f, k in kind[1].items() if f.endswith("?")}),
            max_size=3)
    return junk  # a kind this test does not know yet


def value(kind: Any) -> st.SearchStrategy:
    """Mostly values that fit ``kind``; sometimes anything at all."""
    return st.one_of(*[fitting(kind)] * 7, junk)


#: Fields no schema asks for, that some handler may read anyway.
extra_fields = st.fixed_dictionaries({}, optional={
    "duration": floats | ints | junk, "nbytes": value(("list", int)),
    "layout": st.lists(st.integers(-2, 6), max_size=4) | junk, "who_has": value(("list", str)),
    "inline": junk})


#: The ops each fake peer may send: half of the fuzzed messages keep to them.
OWN_OPS = {
    CLIENT: ["register-client", "submit", "release", "update-data", "who-has",
             "scheduler-info", "has-what", "close-client", "heartbeat"],
    WORKER: ["register-worker", "task-finished", "task-erred", "keys-added", "missing-data",
             "task-seceded", "retire", "unregister", "heartbeat", "paused"],
    NANNY: ["register-nanny", "worker-died", "heartbeat"],
    STRANGER: ["register-client", "register-worker", "register-nanny", "heartbeat", "submit"],
}


@st.composite
def messages(draw) -> tuple[bytes, list[bytes]]:
    """(sender, frames after the identity) of one message to the center."""
    sender = draw(st.sampled_from([CLIENT, WORKER, NANNY, STRANGER]))
    shape = draw(st.integers(0, 19))
    if shape == 0:  # not a header at all
        return sender, [draw(st.binary(max_size=16) | st.builds(raw, junk))]
    own = shape % 2 == 1  # its own op, every field there and most of them fitting
    op = draw(st.sampled_from(OWN_OPS[sender] if own else OPS))
    header: dict[str, Any] = {}
    for field, kind in SCHEMAS[op].items():
        name = field.rstrip("?")
        if field.endswith("?") and draw(st.booleans()):
            continue
        if not own and draw(st.integers(0, 29)) == 0:
            continue  # a missing field, now and then
        if name == "protocol":
            header[name] = PROTOCOL_VERSION if own else draw(st.just(PROTOCOL_VERSION) | ints)
        else:
            header[name] = draw(fitting(kind) if own and draw(st.integers(0, 9)) else value(kind))
    if draw(st.booleans()):
        header.update(draw(extra_fields))
    announced = [item.get("nframes") for v in header.values() if isinstance(v, list)
                 for item in v if isinstance(item, dict)]
    count = sum(n for n in announced if type(n) is int)
    if not 0 <= count <= 6 or draw(st.integers(0, 4)) == 0:
        count = draw(st.integers(0, 4))  # frames that may not match what items announce
    payload = [draw(st.binary(max_size=6)) for _ in range(count)]
    return sender, [h(op, **header), *payload]


@settings(max_examples=300, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(recovering=st.booleans(), sequence=st.lists(messages(), min_size=1, max_size=10))
def test_fuzzed_messages_keep_the_schedulers_invariants(recovering, sequence):
    """Random messages from a registered client, worker and nanny and from a
    stranger, fitting their op's schema or not, with any number of payload
    frames: no handler raises, the scheduler's invariants hold after each
    message, and a normal submit -> task-finished -> key-finished still works.
    (Derandomized: the same 300 cases every run, so a failure is never flaky.)"""
    run_fuzz_case(recovering, sequence)


def run_fuzz_case(recovering: bool, sequence: list) -> None:
    cut = CenterUnderTest()
    try:
        register_fakes(cut)
        if not recovering:
            cut.center.scheduler.end_recovery()
        check_invariants(cut.center)
        assert cut.center.scheduler.tasks["a"].state == "processing"
        for sender, frames in sequence:
            cut.handle(sender, *frames)
            assert not cut.errors, f"a handler raised on {frames}:\n{cut.errors[0]}"
            check_invariants(cut.center)
        check_normal_flow(cut)
        check_invariants(cut.center)
        assert not cut.errors, cut.errors[0]
    finally:
        cut.close()


# ----------------------------------------------------------------------------- single messages
# Bugs that the fuzzer or a reading of the handlers turned up, one message (or
# two) each: plain tests, so that each fails the same way every time.

def test_a_task_needing_none_of_a_resource_runs_on_a_worker_without_it():
    """Executor.submit(..., resources={"GPU": 0}) is accepted by the Executor and
    sends resources {"GPU": 0.0}; a worker that declares no GPU satisfies it. The
    task must be sent to that worker, not stranded "processing" (the center
    raised KeyError in _assign, and again on every later release of the task)."""
    cut = CenterUnderTest()
    try:
        cut.send_op(CLIENT, "register-client", protocol=PROTOCOL_VERSION, name="c")
        cut.send_op(WORKER, "register-worker", **dict(REGISTER_WORKER, address=WORKER_ADDRESS))
        cut.send_op(CLIENT, "submit", b"payload", tasks=[
            {"key": "k", "deps": [], "priority": 0, "nframes": 1, "resources": {"GPU": 0.0}}])
        assert not cut.errors, cut.errors[0]
        assert (WORKER, "compute") in [(ident, op) for ident, op, _ in cut.sent]
        cut.send_op(CLIENT, "close-client")
        assert not cut.errors, cut.errors[0]
        assert "k" not in cut.center.scheduler.tasks
    finally:
        cut.close()


def test_a_worker_with_zero_threads_does_not_break_dispatch():
    """A register-worker with nthreads 0 (which zfut-worker never sends, but
    the schema allows) must be refused or ignored: it made every later
    dispatch raise ZeroDivisionError, losing ready tasks from the ready queue."""
    cut = CenterUnderTest()
    try:
        cut.send_op(CLIENT, "register-client", protocol=PROTOCOL_VERSION, name="c")
        cut.send_op(STRANGER, "register-worker", **dict(REGISTER_WORKER, nthreads=0))
        cut.send_op(WORKER, "register-worker", **dict(REGISTER_WORKER, address=WORKER_ADDRESS))
        cut.send_op(CLIENT, "submit", b"payload", tasks=[
            {"key": "k", "deps": [], "priority": 0, "nframes": 1}])
        assert not cut.errors, cut.errors[0]
        ts = cut.center.scheduler.tasks["k"]
        assert ts.state == "processing" and ts.processing_on.nthreads > 0
        check_invariants(cut.center)
    finally:
        cut.close()


def test_a_nan_duration_does_not_poison_the_scheduler():
    """task-finished items carry an optional "duration" that no schema checks.
    A NaN made the task-duration average NaN for good: from then on every new
    worker's registration raised ValueError (after being welcomed), so the
    cluster could never grow again."""
    cut = CenterUnderTest()
    try:
        register_fakes(cut)
        cut.send_op(WORKER, "task-finished", tasks=[
            {"key": "a", "nbytes": 8, "duration": float("nan"), "run": run_of(cut, "a")}])
        cut.send_op(b"w-two", "register-worker", **dict(REGISTER_WORKER, address=OTHER_ADDRESS))
        assert not cut.errors, cut.errors[0]
        assert b"w-two" in cut.center.scheduler.workers
        check_normal_flow(cut)
    finally:
        cut.close()


def test_update_data_for_a_task_being_computed_keeps_the_worker_consistent():
    """An update-data (scatter) naming a key that is processing on a worker put
    it in memory while it stayed in that worker's processing set."""
    cut = CenterUnderTest()
    try:
        register_fakes(cut)
        cut.send_op(CLIENT, "update-data", items=[
            {"key": "c", "nbytes": 8, "workers": [WORKER_ADDRESS]}])
        assert not cut.errors, cut.errors[0]
        check_invariants(cut.center)
    finally:
        cut.close()


def test_a_task_sent_ahead_is_taken_back_when_its_input_comes_from_elsewhere():
    """b (needs a) is sent ahead to the worker computing a. Another worker then
    registers holding a (it computed a before the center gave up on it): the
    center takes a from there and tells the first worker to drop its run of a.
    That worker holds b as waiting for its own run of a, and never fetches it,
    so b must be taken back (or a left to finish there); b stayed "processing"
    on it for good."""
    cut = CenterUnderTest()
    try:
        register_fakes(cut)
        cut.center.scheduler.end_recovery()
        b = cut.center.scheduler.tasks["b"]
        assert b.state == "processing" and b.waiting_on, "b was not sent ahead"
        cut.sent.clear()
        cut.send_op(b"w-two", "register-worker", **dict(
            REGISTER_WORKER, address=OTHER_ADDRESS, keys=["a"], nbytes=[8]))
        assert not cut.errors, cut.errors[0]
        released = {key for ident, op, msg in cut.sent
                    if ident == WORKER and op == "release-keys" for key in msg.keys}
        if "a" in released:
            assert b.processing_on is None or "b" in released, (
                "the worker was told to drop a, but b still waits there for it")
    finally:
        cut.close()


def test_byte_counts_that_add_up_past_msgpack_range_do_not_stop_scheduler_info():
    """task-finished accepts any msgpack int as nbytes; two near 2**64 on one
    worker made its memory total unencodable, so every later scheduler-info
    raised OverflowError in the center and was never answered (and
    Executor.scheduler_info() waits for the answer without a timeout)."""
    cut = CenterUnderTest()
    try:
        register_fakes(cut)
        cut.send_op(WORKER, "task-finished", tasks=[
            {"key": "a", "nbytes": 2**64 - 1, "run": run_of(cut, "a")},
            {"key": "c", "nbytes": 2**64 - 1, "run": run_of(cut, "c")}])
        cut.send_op(CLIENT, "scheduler-info", id=5)
        assert not cut.errors, cut.errors[0]
        assert [msg.id for ident, op, msg in cut.sent if op == "reply"] == [5]
    finally:
        cut.close()
