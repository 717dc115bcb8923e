"""Keys: only holders of an allowed key submit, register or fetch; the wire is encrypted."""
from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import threading
from operator import add

import numpy as np
import pytest
import zmq
from conftest import command, free_port, wait_for

import zfutures
from zfutures import Executor, Security, protocol
from zfutures.messages import Data, GetData
from zfutures.security import SecurityError

pytestmark = pytest.mark.timeout(60)

MARKER = "payload-marker-4f1c9a"


def inc(x):
    return x + 1


def keygen(directory) -> str:
    out = subprocess.run([command("zfut-keygen"), str(directory)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return str(directory)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return keygen(tmp_path_factory.mktemp("keys") / "cluster")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory, keys):
    """A client key pair of another cluster, next to our center's public key."""
    other = keygen(tmp_path_factory.mktemp("other") / "cluster")
    directory = tmp_path_factory.mktemp("stranger")
    shutil.copy(os.path.join(keys, "center.key"), directory)
    shutil.copy(os.path.join(other, "client.key"), directory)
    shutil.copy(os.path.join(other, "client.key_secret"), directory)
    return str(directory)


def secured_cluster(processes, keys, tmp_path, nworkers: int = 2):
    log = open(tmp_path / "center.log", "w")
    center, address = processes.center("--keys", keys, stderr=log)
    processes.worker(address, "--keys", keys, "--nworkers", str(nworkers), "--name", "w")
    return address, tmp_path / "center.log"


def test_keygen_writes_the_keys_and_never_overwrites_them(tmp_path):
    directory = tmp_path / "keys"
    keygen(directory)
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["allowed", "center.key", "center.key_secret", "client.key",
                     "client.key_secret"]
    assert os.listdir(directory / "allowed") == ["client.key"]
    assert (directory / "allowed" / "client.key").read_bytes() == \
        (directory / "client.key").read_bytes()
    for secret in ("center.key_secret", "client.key_secret"):
        assert stat.S_IMODE((directory / secret).stat().st_mode) == 0o600
    before = (directory / "center.key_secret").read_bytes()
    again = subprocess.run([command("zfut-keygen"), str(directory)], capture_output=True,
                           text=True, timeout=30)
    assert again.returncode != 0 and "never overwritten" in again.stderr
    assert (directory / "center.key_secret").read_bytes() == before
    security = Security(directory)
    assert security.center_public and security.client_secret and security.center_secret


def test_a_secured_cluster_works_as_before(processes, keys, tmp_path):
    address, _ = secured_cluster(processes, keys, tmp_path)
    with Executor(address, security=keys, timeout=10) as ex:
        wait_for(lambda: len(ex.nthreads()) == 2, message="workers did not register")
        assert ex.gather(ex.map(inc, range(20))) == list(range(1, 21))
        # Data moves between workers' data servers, over CURVE too.
        xs = ex.map(np.full, [1000] * 8, range(8), pure=False)
        zfutures.wait(xs, timeout=20)
        assert len({w for ws in ex.who_has(xs).values() for w in ws}) == 2
        while len(xs) > 1:
            xs = [ex.submit(add, xs[i], xs[i + 1]) for i in range(0, len(xs), 2)]
        assert np.array_equal(xs[0].result(timeout=20), np.full(1000, 28))
        data = ex.scatter(np.arange(10))
        assert ex.submit(np.sum, data).result(timeout=10) == 45


def test_a_client_without_keys_cannot_connect_and_the_center_logs_it(processes, keys,
                                                                      tmp_path):
    address, log = secured_cluster(processes, keys, tmp_path, nworkers=1)
    with pytest.raises(zfutures.ConnectionError):
        Executor(address, timeout=2)
    wait_for(lambda: "failed the handshake" in log.read_text(), timeout=10,
             message="the center did not log the refused connection")
    # The monitor event is decoded: one of the handshake failures it watches.
    events = {int(n) for n in re.findall(r"event (\d+), value", log.read_text())}
    failures = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    assert events and events <= set(failures), events


def test_a_client_whose_key_is_not_allowed_is_refused_and_logged(processes, keys, stranger,
                                                                 tmp_path):
    address, log = secured_cluster(processes, keys, tmp_path, nworkers=1)
    with pytest.raises(zfutures.ConnectionError):
        Executor(address, security=stranger, timeout=2)
    wait_for(lambda: "not in the allow list" in log.read_text(), timeout=10,
             message="the center did not log the refused key")
    # Adding its public key to the allow list admits it, without a restart.
    shutil.copy(os.path.join(stranger, "client.key"),
                os.path.join(keys, "allowed", "stranger.key"))
    try:
        with Executor(address, security=stranger, timeout=10) as ex:
            assert ex.submit(inc, 1).result(timeout=20) == 2
    finally:
        os.remove(os.path.join(keys, "allowed", "stranger.key"))


def test_a_worker_whose_key_is_not_allowed_cannot_register(processes, keys, tmp_path):
    log = open(tmp_path / "center.log", "w")
    center, address = processes.center("--keys", keys, stderr=log)
    # It holds the servers' key pair, but its own client key is not allowed.
    rogue = tmp_path / "rogue"
    keygen(rogue)
    for name in ("center.key", "center.key_secret"):
        shutil.copy(os.path.join(keys, name), rogue / name)
    processes.worker(address, "--keys", str(rogue), "--name", "rogue")
    wait_for(lambda: "not in the allow list" in (tmp_path / "center.log").read_text(),
             timeout=15, message="the center did not log the refused worker")
    with Executor(address, security=keys, timeout=10) as ex:
        assert ex.nthreads() == {}
        processes.worker(address, "--keys", keys, "--name", "trusted")
        wait_for(lambda: len(ex.nthreads()) == 1, message="the trusted worker did not join")
        assert ex.submit(inc, 1).result(timeout=20) == 2
        assert list(ex.scheduler_info()["workers"].values())[0]["name"] == "trusted"


def ask_for_data(context, address: str, security, key: str):
    """Send get-data to a worker's data server; its reply, or None after 2 s."""
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    if security is not None:
        security.connecting(sock)
    sock.connect(address)
    sock.send_multipart(protocol.encode_message(GetData(1, [key])))
    try:
        if sock.poll(2000):
            return protocol.decode_message(sock.recv_multipart())[0]
        return None
    finally:
        sock.close()


def test_a_data_server_serves_only_allowed_keys(processes, keys, stranger, tmp_path):
    address, _ = secured_cluster(processes, keys, tmp_path, nworkers=1)
    with Executor(address, security=keys, timeout=10) as ex:
        wait_for(lambda: len(ex.nthreads()) == 1, message="the worker did not register")
        data = ex.scatter(np.arange(10))
        (holder,) = ex.who_has([data])[data.key]
        context = zmq.Context()
        try:
            assert ask_for_data(context, holder, None, data.key) is None
            assert ask_for_data(context, holder, Security(stranger), data.key) is None
            reply = ask_for_data(context, holder, Security(keys), data.key)
            assert type(reply) is Data and reply.items[0].key == data.key
        finally:
            context.term()


class Recorder:
    """A TCP relay from a local port to ``target`` that keeps every byte it relays."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.captured = bytearray()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                chunk = source.recv(65536)
                if not chunk:
                    break
                with self.lock:
                    self.captured += chunk
                sink.sendall(chunk)
            except OSError:
                break
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()


def bytes_on_the_wire(processes, *keys_args: str, security=None) -> bytes:
    """What a client and the center exchange while running one task with MARKER."""
    port = free_port()
    processes.start(command("zfut-center"), "--port", str(port), *keys_args)
    wait_for(lambda: _listening(port), message="the center did not start")
    processes.worker(f"tcp://127.0.0.1:{port}", *keys_args)
    recorder = Recorder(port)
    try:
        with Executor(f"127.0.0.1:{recorder.port}", security=security, timeout=10) as ex:
            assert ex.submit(str.upper, MARKER).result(timeout=20) == MARKER.upper()
    finally:
        recorder.close()
    with recorder.lock:
        return bytes(recorder.captured)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_wire_carries_no_payload_in_clear_with_keys(processes, keys):
    plain = bytes_on_the_wire(processes)
    assert MARKER.encode() in plain  # the relay sees payloads when there are no keys...
    secured = bytes_on_the_wire(processes, "--keys", keys, security=keys)
    assert len(secured) > 1000
    assert MARKER.encode() not in secured  # ...and none with them
    assert b"submit" in plain and b"submit" not in secured  # nor even the headers


def test_bad_security_arguments_raise_at_the_call(tmp_path):
    with pytest.raises(TypeError, match="key directory"):
        Executor("127.0.0.1:1", security=42)
    with pytest.raises(SecurityError, match="zfut-keygen"):
        Executor("127.0.0.1:1", security=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SecurityError, match="center.key"):
        Executor("127.0.0.1:1", security=str(tmp_path / "empty"))


def test_keys_come_from_the_environment_too(processes, keys, tmp_path, monkeypatch):
    monkeypatch.setenv("ZFUTURES_KEYS", keys)
    center, address = processes.center()  # no --keys: it reads ZFUTURES_KEYS
    processes.worker(address)
    with Executor(address, timeout=10) as ex:
        wait_for(lambda: len(ex.nthreads()) == 1, message="the worker did not register")
        assert ex.submit(inc, 1).result(timeout=20) == 2
    monkeypatch.delenv("ZFUTURES_KEYS")
    with pytest.raises(zfutures.ConnectionError):
        Executor(address, timeout=2)


def test_a_local_cluster_takes_the_keys_too(keys):
    with Executor(n_workers=1, security=keys) as ex:
        assert ex.submit(inc, 1).result(timeout=20) == 2
        for args in [process.args for process in ex.cluster.processes] + \
                [ex.cluster.nanny.worker_args]:  # the center's and the workers'
            assert args[args.index("--keys") + 1] == keys
