"""The dashboard's HTTP server over a model fed by hand, its link to a fake
center, and the process as the center starts it."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import quote

import pytest
import zmq
import zmq.asyncio
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from zfutures import protocol
from zfutures.dashboard import server as dashboard_server
from zfutures.dashboard.center_link import CLIENT_NAME, CenterLink
from zfutures.dashboard.model import Model
from zfutures.dashboard.server import cookie_name, make_app
from zfutures.messages import (
    CloseClient,
    DescribeKey,
    Events,
    GroupCounts,
    Heartbeat,
    Refused,
    RegisterClient,
    Reply,
    Reregister,
    TaskRun,
    Transfer,
    Unwatch,
    Watch,
    Welcome,
    WorkerStats,
)
from zfutures.processes import PARENT_PID_ENV
from zfutures.remote_errors import pickle_exception

W1, W2 = "tcp://127.0.0.1:7001", "tcp://127.0.0.1:7002"
EVIL = "<script>alert(1)</script>"
TOKEN = "s3cret-token"


class FakeLink:
    """The server's view of the center: records stream wishes, answers describe."""

    def __init__(self, answer=None, registered=True, slow=False):
        self.registered = registered
        self.streams: list[bool] = []
        self.answer = answer
        self.slow = slow
        self.asked: list[str] = []

    def want_stream(self, stream):
        self.streams.append(stream)

    def used(self):
        self.uses = getattr(self, "uses", 0) + 1

    async def heard(self, timeout):
        self.waited = timeout

    async def worker_logs(self, address, timeout=5.0):
        self.asked.append(address)
        return ["2026-12-08 one <b>line</b>"]

    async def describe(self, key, timeout=5.0):
        self.asked.append(key)
        if self.slow:
            raise asyncio.TimeoutError
        return self.answer


def fed_model() -> Model:
    model = Model()
    model.apply(Events(
        time=100.0,
        groups=[GroupCounts("inc", 1, 0, 2, 7, 0, 0, 7, 0, 0.7),
                GroupCounts(EVIL, 0, 0, 0, 1, 1, 0, 1, 1, 0.1)],
        workers=[WorkerStats(W1, "one", 2, 50_000_000, 1000, 3_000_000, 10**9, 12.5, 2, 1, 8,
                             False, 0.2),
                 WorkerStats(W2, EVIL, 1, 40_000_000, 0, 0, 0, 0.0, 0, 0, 0, True, 0.1)],
        runs=[TaskRun("inc-1", W1, 0, 99.0, 99.5, True),
              TaskRun(EVIL + "-1", W1, 1, 99.2, 99.4, False)],
        transfers=[Transfer("inc-1", W2, W1, 800, 99.6, 99.7)],
        counters={"messages": 40, "transfer_bytes": 800, "tasks": 10}), now=0.0)
    return model


def with_client(check, model=None, link=None, token=None, local_only=False):
    """Run ``check(client, link)`` against the app on a loopback test server."""
    link = link or FakeLink()

    async def main():
        app = make_app(model or fed_model(), link, token, local_only)
        async with TestClient(TestServer(app)) as client:
            await check(client, link)

    asyncio.run(asyncio.wait_for(main(), 30))


# ---------------------------------------------------------------------- routes

def test_health_and_root_and_status():
    async def check(client, link):
        r = await client.get("/health")
        assert r.status == 200 and await r.text() == "ok"
        assert r.content_type == "text/plain"
        r = await client.get("/?x=1", allow_redirects=False)
        assert r.status == 302 and r.headers["Location"] == "/status?x=1"
        r = await client.get("/status")
        page = await r.text()
        assert r.status == 200 and 'id="task-stream"' in page and 'id="memory"' in page
        assert 'data-spilled="0"' in page and "spilled to disk" in page  # (the chart's legend)
        assert "default-src 'self'" in r.headers["Content-Security-Policy"]
        r = await client.get("/static/taskstream.js")
        assert r.status == 200 and "function drawTaskStream(" in await r.text()
        assert (await client.get("/static/status.js")).status == 200
        assert (await client.get("/static/dashboard.css")).status == 200
        assert (await client.get("/nowhere")).status == 404
    with_client(check)


def test_only_get_and_head():
    async def check(client, link):
        for path in ("/status", "/metrics", "/api/v1/state", "/workers", "/health"):
            r = await client.head(path)
            assert r.status == 200, path
            for method in ("POST", "PUT", "DELETE"):
                r = await client.request(method, path)
                assert r.status == 405, (method, path)
    with_client(check)


def test_metrics_parse_and_count():
    async def check(client, link):
        r = await client.get("/metrics")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        samples = {}
        for family in text_string_to_metric_families(await r.text()):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        assert samples[("zfutures_tasks", (("state", "memory"),))] == 8
        assert samples[("zfutures_tasks", (("state", "processing"),))] == 2
        assert samples[("zfutures_group_tasks", (("group", "inc"), ("state", "memory")))] == 7
        assert samples[("zfutures_tasks_finished_total", ())] == 8
        assert samples[("zfutures_tasks_failed_total", ())] == 1
        assert samples[("zfutures_workers", ())] == 2
        assert samples[("zfutures_threads", ())] == 3
        assert samples[("zfutures_worker_memory_bytes", (("worker", W1),))] == 50_000_000
        assert samples[("zfutures_worker_managed_bytes", (("worker", W1),))] == 1000
        assert samples[("zfutures_worker_spilled_bytes", (("worker", W1),))] == 3_000_000
        assert samples[("zfutures_worker_spilled_bytes", (("worker", W2),))] == 0
        assert samples[("zfutures_worker_memory_limit_bytes", (("worker", W1),))] == 10**9
        assert samples[("zfutures_worker_cpu_percent", (("worker", W1),))] == 12.5
        assert samples[("zfutures_worker_executing", (("worker", W1),))] == 2
        assert samples[("zfutures_worker_queued", (("worker", W1),))] == 1
        assert samples[("zfutures_transfer_bytes_total", ())] == 800
        assert samples[("zfutures_center_messages_total", ())] == 40
    with_client(check)


def test_api_state_is_the_same_numbers():
    async def check(client, link):
        r = await client.get("/api/v1/state")
        state = await r.json()
        assert state["tasks"]["memory"] == 8 and state["finished"] == 8 and state["failed"] == 1
        assert state["groups"]["inc"] == {"waiting": 1, "ready": 0, "processing": 2, "memory": 7,
                                          "erred": 0, "released": 0, "finished": 7, "failed": 0,
                                          "seconds": 0.7}
        assert state["workers"][W1]["cpu"] == 12.5 and state["workers"][W2]["paused"] is True
        assert state["workers"][W1]["managed"] == 1000
        assert (state["workers"][W1]["spilled"], state["workers"][W2]["spilled"]) == (3_000_000, 0)
        assert state["counters"]["transfer_bytes"] == 800 and state["time"] == 100.0
    with_client(check)


def test_pages_list_workers_and_groups_escaped():
    async def check(client, link):
        workers = await (await client.get("/workers")).text()
        assert W1 in workers and f'href="/workers/{quote(W1, safe="")}"' in workers
        # W1's results: 1000 B in memory, then 2.9 MiB on disk
        assert "<th>Managed</th><th>Spilled</th>" in workers
        assert '>1000 B</td><td class="num">2.9 MiB</td>' in workers
        tasks = await (await client.get("/tasks")).text()
        one = await (await client.get(f"/workers/{quote(W1, safe='')}")).text()
        assert "inc-1" in one and "Latest runs (2)" in one
        assert "one &lt;b&gt;line&lt;/b&gt;" in one  # its log lines, asked of it, escaped
        for page in (workers, tasks, one):
            assert EVIL not in page and "&lt;script&gt;" in page
            assert 'href="/tasks"' in page and 'href="/status"' in page
        assert (await client.get(f"/workers/{quote('tcp://nowhere:1', safe='')}")).status == 404
        # (a worker the center does not know is never asked: no connection anywhere)
        assert link.asked == [W1]
    with_client(check)


def test_a_key_page_asks_the_center_and_escapes():
    frames = pickle_exception(ValueError(EVIL))
    answer = {"key": EVIL + "-1", "state": "erred", "group": EVIL, "priority": [0, 1],
              "nbytes": 2048, "who_has": [W1], "processing_on": None, "waiting_on": [],
              "dependencies": ["inc-1"], "dependents": [EVIL + "-2"], "clients": 1,
              "retries": 0, "error": frames}

    async def check(client, link):
        r = await client.get("/task/" + quote(EVIL + "-1", safe=""))
        page = await r.text()
        assert r.status == 200 and link.asked == [EVIL + "-1"]
        assert EVIL not in page and "ValueError: &lt;script&gt;" in page
        assert 'href="/task/inc-1"' in page and "2.0 KiB" in page
    with_client(check, link=FakeLink(answer))


def test_a_key_page_without_the_center():
    async def unknown(client, link):
        page = await (await client.get("/task/x-1")).text()
        assert "does not know" in page
    with_client(unknown, link=FakeLink(None))

    async def slow(client, link):
        assert (await client.get("/task/x-1")).status == 504
    with_client(slow, link=FakeLink(slow=True))

    async def unregistered(client, link):
        assert (await client.get("/task/x-1")).status == 503
    with_client(unregistered, link=FakeLink(registered=False))


# ---------------------------------------------------------------------- token

def test_token_rules():
    async def check(client, link):
        r = await client.get("/status")
        assert r.status == 403 and "link the center printed" in await r.text()
        assert (await client.get("/metrics")).status == 403
        assert (await client.get("/static/status.js")).status == 403
        assert (await client.get("/status?token=wrong")).status == 403
        assert (await client.get("/status", headers={"Authorization": "Bearer wrong"})).status \
            == 403
        assert (await client.get("/health")).status == 200

        assert (await client.get("/metrics",
                                 headers={"Authorization": f"Bearer {TOKEN}"})).status == 200
        r = await client.get(f"/status?token={TOKEN}")
        assert r.status == 200
        cookie = r.headers["Set-Cookie"]
        assert f"{cookie_name(TOKEN)}={TOKEN}" in cookie and "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie and "Path=/" in cookie
        # The client keeps the cookie: the page's own requests need no token.
        assert (await client.get("/static/status.js")).status == 200
        assert (await client.get("/api/v1/state")).status == 200
    with_client(check, token=TOKEN)


def test_token_in_a_cookie_alone():
    async def check(client, link):
        r = await client.get("/workers", headers={"Cookie": f"{cookie_name(TOKEN)}={TOKEN}"})
        assert r.status == 200
        # (another dashboard's cookie on this host name is another cookie)
        other = cookie_name("another token")
        assert other != cookie_name(TOKEN)
        r = await client.get("/workers", headers={"Cookie": f"{other}=another token"})
        assert r.status == 403
    with_client(check, token=TOKEN)


def test_on_loopback_without_a_token_only_loopback_names_are_answered():
    async def check(client, link):
        for host in ("localhost:8788", "127.0.0.1:8788", "[::1]:8788", "LOCALHOST"):
            assert (await client.get("/workers", headers={"Host": host})).status == 200, host
        # a web page that rebound its own name to 127.0.0.1
        r = await client.get("/api/v1/state", headers={"Host": "evil.example:8788"})
        assert r.status == 421
    with_client(check, local_only=True)


def test_pages_that_read_the_cluster_say_they_are_used():
    async def check(client, link):
        for path in ("/workers", "/tasks", "/metrics", "/api/v1/state", "/task/x-1"):
            link.uses = 0
            await client.get(path)
            assert link.uses == 1, path
        link.uses = 0
        await client.get("/health")
        await client.get("/static/status.js")
        assert link.uses == 0
    with_client(check, link=FakeLink(answer=None))


# ---------------------------------------------------------------------- events

async def read_event(response, timeout=5.0):
    """The next server-sent event's data, as JSON."""
    data = b""
    while True:
        line = await asyncio.wait_for(response.content.readline(), timeout)
        assert line, "the stream ended"
        if line == b"\n" and data:
            return json.loads(data)
        if line.startswith(b"data: "):
            data += line[6:].rstrip(b"\n")


def test_events_start_with_a_snapshot_then_deltas_and_ask_for_the_stream():
    model = fed_model()

    async def check(client, link):
        r = await client.get("/events")
        assert r.headers["Content-Type"] == "text/event-stream"
        first = await read_event(r)
        assert first["kind"] == "snapshot" and set(first["groups"]) == {"inc", EVIL}
        assert len(first["runs"]) == 2 and len(first["transfers"]) == 1
        assert len(first["workers"]) == 2 and link.streams == [True]

        model.apply(Events(101.0, [GroupCounts("inc", 0, 0, 0, 10, 0, 0, 10, 0, 1.0)],
                           list(model.workers.values()),
                           [TaskRun("inc-9", W2, 0, 100.5, 100.9, True)], [], {}), now=1.0)
        second = await read_event(r)
        assert second["kind"] == "delta" and list(second["groups"]) == ["inc"]
        assert [run[0] for run in second["runs"]] == ["inc-9"]
        r.close()
        deadline = time.monotonic() + 5
        while link.streams[-1] is not False and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert link.streams == [True, False]
    with_client(check, model=model)


def test_server_shutdown_ends_open_streams():
    async def main():
        link = FakeLink()
        app = make_app(fed_model(), link)
        server = TestServer(app)
        client = TestClient(server)
        await client.start_server()
        r = await client.get("/events")
        await read_event(r)
        started = time.monotonic()
        await client.close()  # the server's shutdown: the stream must not hold it
        assert time.monotonic() - started < 2 * dashboard_server.EVENTS_INTERVAL + 1
        assert link.streams[-1] is False

    asyncio.run(asyncio.wait_for(main(), 30))


# ---------------------------------------------------------------------- the link

class FakeCenter:
    """A ROUTER that reads what the link sends, by op."""

    def __init__(self, context):
        self.socket = context.socket(zmq.ROUTER)
        self.socket.linger = 0
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.ident = None

    async def expect(self, cls, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {cls.__name__} came"
            frames = await asyncio.wait_for(self.socket.recv_multipart(), left)
            self.ident = frames[0]
            msg, _ = protocol.decode_message(frames[1:])
            if isinstance(msg, cls):
                return msg
            assert isinstance(msg, Heartbeat), msg

    async def send(self, msg):
        await self.socket.send_multipart([self.ident, *protocol.encode_message(msg)])


def run_link(check, timeout=30, **link_options):
    """Run ``await check(center, link, model)`` with a CenterLink started on a
    FakeCenter; closes both whatever happens (a link ``check`` closed itself
    is closed once)."""
    async def main():
        context = zmq.asyncio.Context()
        center = FakeCenter(context)
        model = Model()
        link = CenterLink(model, center.address, **link_options)
        link.start()
        try:
            await check(center, link, model)
        finally:
            await link.close()
            center.socket.close()
            context.term()

    asyncio.run(asyncio.wait_for(main(), timeout))


async def welcomed(center):
    """Play the center's part of a registration: the link then watches."""
    register = await center.expect(RegisterClient)
    await center.send(Welcome(protocol.PROTOCOL_VERSION))
    return register, await center.expect(Watch)


def test_link_registers_watches_applies_and_answers():
    refusals = []

    async def check(center, link, model):
        register, watch = await welcomed(center)
        assert register.name == CLIENT_NAME
        assert register.protocol == protocol.PROTOCOL_VERSION
        assert watch.stream is False
        assert link.registered
        link.want_stream(True)
        assert (await center.expect(Watch)).stream is True
        await center.expect(Heartbeat)

        started = time.monotonic()
        await link.heard(0.2)  # no events yet: it waited, and gave up
        assert time.monotonic() - started >= 0.2
        await center.send(Events(5.0, [GroupCounts("inc", 0, 0, 0, 1, 0, 0, 1, 0, 0.1)],
                                 [], [], [], {"tasks": 1}))
        await asyncio.wait_for(link.heard(30), 10)  # (returns as the events come)
        asking = asyncio.ensure_future(link.describe("inc-1"))
        ask = await center.expect(DescribeKey)
        assert ask.key == "inc-1" and model.finished() == (1, 0)
        await center.send(Reply(ask.id, {"key": "inc-1", "state": "memory"}))
        assert (await asking)["state"] == "memory"

        # A restarted center: register again, then watch again (with the stream).
        await center.send(Reregister())
        await center.expect(RegisterClient)
        assert not model.groups and not link.registered
        await center.send(Welcome(protocol.PROTOCOL_VERSION))
        assert (await center.expect(Watch)).stream is True

        await center.send(Refused("no more"))
        deadline = time.monotonic() + 5
        while not refusals and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert refusals == ["no more"]

    run_link(check, on_refused=refusals.append)


def test_link_stops_watching_when_nobody_looks_and_watches_again_when_asked():
    from zfutures.dashboard.center_link import IDLE_UNWATCH

    now = [0.0]

    async def check(center, link, model):
        await welcomed(center)
        await center.send(Events(5.0, [GroupCounts("inc", 0, 0, 0, 1, 0, 0, 1, 0, 0.1)],
                                 [], [], [], {}))
        await asyncio.wait_for(link.heard(30), 10)
        now[0] = IDLE_UNWATCH - 1
        link.want_stream(True)  # (a live page open: never idle)
        await center.expect(Watch)
        now[0] = 2 * IDLE_UNWATCH
        link._check_idle()  # (what each heartbeat does: the open page holds it)
        assert link.watching
        link.want_stream(False)
        await center.expect(Watch)
        await center.expect(Unwatch)  # idle, at the next heartbeat: the center may rest
        assert not link.watching and model.groups  # (kept until used again)
        link.used()
        assert (await center.expect(Watch)).stream is False
        assert link.watching and not model.groups  # stale: started over

    run_link(check, clock=lambda: now[0])


def test_link_says_goodbye_when_it_closes():
    async def check(center, link, model):
        await welcomed(center)
        await link.close()
        await center.expect(CloseClient)

    run_link(check)


# ---------------------------------------------------------------------- the process

@pytest.fixture
def center_router():
    context = zmq.Context()
    socket_ = context.socket(zmq.ROUTER)
    socket_.linger = 0
    port = socket_.bind_to_random_port("tcp://127.0.0.1")
    yield socket_, f"tcp://127.0.0.1:{port}"
    socket_.close()
    context.term()


def start_dashboard(center_address, *args, env=None):
    listening = socket.socket()
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listening.bind(("127.0.0.1", 0))
    listening.listen(64)
    port = listening.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "zfutures.dashboard", "--center", center_address,
         "--listen-fd", str(listening.fileno()), *args],
        pass_fds=[listening.fileno()], env=env)
    listening.close()
    return process, port


def http_get(port, path, timeout=10.0):
    """(status, body) of a GET, retried until the server answers or ``timeout``."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def stop(process, timeout=10.0):
    if process.poll() is None:
        process.kill()
        process.wait(timeout)


def test_process_serves_registers_and_stops_on_sigterm(center_router):
    router, address = center_router
    process, port = start_dashboard(address, "--token", TOKEN)
    try:
        assert http_get(port, "/health") == (200, "ok")
        assert http_get(port, "/status")[0] == 403
        assert http_get(port, f"/status?token={TOKEN}")[0] == 200
        assert router.poll(10_000)
        frames = router.recv_multipart()
        msg, _ = protocol.decode_message(frames[1:])
        assert isinstance(msg, RegisterClient) and msg.name == CLIENT_NAME
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        stop(process)


def test_process_stops_when_its_parent_is_not_the_center(center_router):
    _, address = center_router
    # The named parent is not ours (pid 1 never is, for a test's child).
    env = dict(os.environ, **{PARENT_PID_ENV: "1"})
    process, port = start_dashboard(address, env=env)
    try:
        assert process.wait(10) == 0
    finally:
        stop(process)


def test_process_exits_when_the_center_refuses_it(center_router):
    router, address = center_router
    process, port = start_dashboard(address)
    try:
        assert router.poll(10_000)
        frames = router.recv_multipart()
        router.send_multipart([frames[0], *protocol.encode_message(Refused("protocol 8"))])
        assert process.wait(10) == 1
    finally:
        stop(process)


def test_process_with_keys_registers_over_curve(tmp_path):
    from zfutures.security import Security, keygen

    keys = keygen(tmp_path / "keys")
    security = Security(keys)
    context = zmq.Context()
    auth = security.authenticator(context)
    router = security.serving(context.socket(zmq.ROUTER))
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    process, _ = start_dashboard(f"tcp://127.0.0.1:{port}", "--keys", str(keys))
    try:
        assert router.poll(10_000), "no message over CURVE"
        msg, _ = protocol.decode_message(router.recv_multipart()[1:])
        assert isinstance(msg, RegisterClient)
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        stop(process)
        router.close()
        auth.stop()
        context.term()
