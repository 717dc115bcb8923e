"""The center's dashboard process: its socket, port, token and bind rules,
its life beside the center, and the link clients get.

The first tests drive zfutures.dashboard.launch with a stand-in process
(tests/dashboard_stub.py); the rest run the real ``zfut-center`` and its real
dashboard process.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import click
import netns
import psutil
import pytest
from conftest import command, free_port, read_line, stop, wait_for

from zfutures import Executor
from zfutures.cli import check_bind
from zfutures.client_state import ClientCore
from zfutures.dashboard import launch
from zfutures.dashboard.launch import DashboardError, bind_listener, parse_address
from zfutures.messages import Welcome
from zfutures.protocol import PROTOCOL_VERSION

STUB = [sys.executable, os.path.join(os.path.dirname(__file__), "dashboard_stub.py")]
LINK = r"zfut-center dashboard at (http://\S+)"


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 20) -> tuple[int, str]:
    """(status, body) of a GET; an HTTP error status is an answer too."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def base(link: str) -> str:
    """http://host:port of a dashboard link."""
    return link.split("/status")[0]


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED


@pytest.fixture
def keys(tmp_path) -> str:
    directory = str(tmp_path / "keys")
    subprocess.run([command("zfut-keygen"), directory], check=True, capture_output=True,
                   timeout=30)
    return directory


# ------------------------------------------------------------------ addresses and ports

@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8790", ("127.0.0.1", 8790)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("myhost", ("myhost", None)),
    (":9000", ("", 9000)),
    ("[::1]:8788", ("::1", 8788)),
    ("::1", ("::1", None)),
])
def test_parse_address(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["host:http", "host:70000", "[::1", "[::1]x"])
def test_parse_address_refuses_malformed(text):
    with pytest.raises(DashboardError):
        parse_address(text)


@pytest.fixture
def busy_port():
    """A port something else listens on, made the default dashboard port."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_taken_default_port_gives_another_with_a_warning(busy_port, monkeypatch, caplog):
    monkeypatch.setattr(launch, "DASHBOARD_PORT", busy_port)
    with caplog.at_level(logging.WARNING, logger="zfutures.dashboard.launch"):
        sock = bind_listener("127.0.0.1", None)
    with sock:
        assert sock.getsockname()[1] not in (busy_port, 0)
    assert f"port {busy_port} is in use" in caplog.text


def test_free_default_port_is_used(monkeypatch):
    port = free_port()
    monkeypatch.setattr(launch, "DASHBOARD_PORT", port)
    with bind_listener("127.0.0.1", None) as sock:
        assert sock.getsockname()[1] == port
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)


def test_taken_explicit_port_is_an_error(busy_port):
    with pytest.raises(DashboardError, match=f"port {busy_port} on 127.0.0.1 is in use"):
        bind_listener("127.0.0.1", busy_port)


def test_port_zero_is_any_free_port():
    with bind_listener("127.0.0.1", 0) as sock:
        assert sock.getsockname()[1] > 0


def test_links():
    assert launch.make_link("127.0.0.1", 8788, None) == "http://127.0.0.1:8788/status"
    assert launch.make_link("::1", 80, "a-b_c") == "http://[::1]:80/status?token=a-b_c"
    assert launch.make_link("0.0.0.0", 1, None) == \
        f"http://{socket.gethostname()}:1/status"


# ------------------------------------------------------------------ bind rule

@pytest.mark.parametrize("address", ["0.0.0.0:0", "10.213.0.1:0"])
def test_dashboard_beyond_loopback_needs_keys_or_insecure(address):
    with pytest.raises(click.UsageError, match="without keys"):
        launch.start_dashboard("tcp://127.0.0.1:8787", address, None, insecure=False,
                               program=STUB)


def test_bind_rule():
    check_bind("127.0.0.1", False, None)
    check_bind("localhost", False, None)
    check_bind("10.213.0.1", True, None)  # (warns)
    check_bind("10.213.0.1", False, object())  # with keys
    with pytest.raises(click.UsageError):
        check_bind("10.213.0.1", False, None)


# ------------------------------------------------------------------ the process

def test_start_passes_socket_parent_and_no_token_without_keys():
    dashboard = launch.start_dashboard("tcp://0.0.0.0:8787", "127.0.0.1:0", None,
                                       insecure=False, program=STUB)
    try:
        assert dashboard.token is None
        assert dashboard.link == f"http://127.0.0.1:{dashboard.port}/status"
        status, body = get(dashboard.link)
        seen = json.loads(body)
        assert status == 200 and seen["listening"]
        assert seen["parent_pid"] == str(os.getpid())
        argv = seen["argv"]
        # A center bound to every interface is reached through loopback.
        assert argv[argv.index("--center") + 1] == "tcp://127.0.0.1:8787"
        assert "--token" not in argv and "--keys" not in argv
    finally:
        dashboard.stop(timeout=10)
    assert dashboard.process.returncode == 0
    # Only the child held the socket: with it gone, so is the port.
    assert refused(dashboard.port)


def test_start_with_keys_makes_a_token(keys):
    from zfutures.security import Security

    first = launch.start_dashboard("tcp://127.0.0.1:8787", "127.0.0.1:0", Security(keys),
                                   insecure=False, program=STUB)
    second = launch.start_dashboard("tcp://127.0.0.1:8787", "127.0.0.1:0", Security(keys),
                                    insecure=False, program=STUB)
    try:
        assert first.token and len(first.token) >= 40 and first.token != second.token
        assert first.link.endswith(f"/status?token={first.token}")
        seen = json.loads(get(first.link)[1])
        # (in the environment: other users of the machine read command lines)
        assert seen["token"] == first.token and first.token not in seen["argv"]
        assert seen["argv"][seen["argv"].index("--keys") + 1] == keys
    finally:
        first.stop(timeout=10)
        second.stop(timeout=10)


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path):
    script, ready = tmp_path / "stubborn.py", tmp_path / "ready"
    script.write_text("import pathlib, signal, time\n"
                      "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                      f"pathlib.Path({str(ready)!r}).touch()\n"
                      "while True: time.sleep(60)\n")
    dashboard = launch.start_dashboard("tcp://127.0.0.1:8787", "127.0.0.1:0", None,
                                       insecure=False, program=[sys.executable, str(script)])
    try:
        _connect_once(dashboard.port)  # (the process starts at the first connection)
        wait_for(ready.exists, timeout=20, message="the stand-in did not start")
        dashboard.stop(timeout=1)
        assert dashboard.process.returncode == -signal.SIGKILL
    finally:
        if dashboard.process is not None and dashboard.process.poll() is None:
            dashboard.process.kill()
            dashboard.process.wait(5)


def _connect_once(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_the_process_starts_at_the_first_connection_and_again_if_it_exits(monkeypatch):
    monkeypatch.setattr(launch, "RESTART_INTERVAL", 0.5)
    dashboard = launch.start_dashboard("tcp://127.0.0.1:8787", "127.0.0.1:0", None,
                                       insecure=False, program=STUB)
    try:
        assert dashboard.process is None  # nobody looked yet: no process
        status, body = get(f"http://127.0.0.1:{dashboard.port}/status")
        assert status == 200 and json.loads(body)["listening"]
        first = dashboard.process
        assert first is not None and first.poll() is None
        first.terminate()
        first.wait(10)
        # (a start within RESTART_INTERVAL of the last waits for it: not a loop)
        assert get(f"http://127.0.0.1:{dashboard.port}/status")[0] == 200
        assert dashboard.process is not None and dashboard.process.pid != first.pid
    finally:
        dashboard.stop(timeout=10)
    assert dashboard.process.poll() is not None


# ------------------------------------------------------------------ the client's link

def test_client_takes_the_link_from_the_welcome():
    core = ClientCore("c")
    link = "http://127.0.0.1:8788/status?token=t"
    core._welcome(Welcome(PROTOCOL_VERSION, dashboard=link), [], 0.0)
    assert core.dashboard_link == link
    core._welcome(Welcome(PROTOCOL_VERSION), [], 1.0)  # a center restarted without one
    assert core.dashboard_link is None


# ------------------------------------------------------------------ zfut-center

def dashboard_children(pid: int) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(pid).children():
        try:
            if "zfutures.dashboard" in child.cmdline():
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def start_center(processes, *extra: str) -> tuple[subprocess.Popen, str]:
    """A zfut-center with its dashboard; (process, dashboard link)."""
    center, _ = processes.center("--log-level", "warning", *extra)
    return center, dashboard_line(center)


def dashboard_line(center: subprocess.Popen) -> str:
    """The link in the line after the listening one. The center prints both in
    one write, so that line is here already: in the pipe, or in the buffer
    that read the first (where waiting for the pipe to be readable would not
    see it)."""
    line = center.stdout.readline()
    match = re.match(LINK, line)
    assert match, f"not the dashboard line: {line!r}"
    return match.group(1)


def test_center_runs_a_dashboard_and_stops_it(processes):
    center, link = start_center(processes, "--dashboard-address", "127.0.0.1:0")
    assert link.startswith("http://127.0.0.1:") and "token" not in link
    assert dashboard_children(center.pid) == []  # until someone looks
    assert get(base(link) + "/health") == (200, "ok")
    [child] = dashboard_children(center.pid)
    assert stop(center) == 0
    wait_for(lambda: not psutil.pid_exists(child.pid) or
             child.status() == psutil.STATUS_ZOMBIE, timeout=10,
             message="the dashboard outlived its center's SIGTERM")
    assert refused(int(base(link).rsplit(":", 1)[1]))


def test_dashboard_dies_with_a_killed_center(processes):
    center, link = start_center(processes, "--dashboard-address", "127.0.0.1:0")
    assert get(base(link) + "/health") == (200, "ok")
    [child] = dashboard_children(center.pid)
    center.kill()
    center.wait(10)
    # No longer our grandchild once orphaned: watch it by pid.
    wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE,
             timeout=5, message="the dashboard outlived its center's SIGKILL")


def test_no_dashboard(processes):
    center, _ = processes.center("--log-level", "warning", "--no-dashboard")
    assert dashboard_children(center.pid) == []
    assert stop(center) == 0
    assert "dashboard" not in center.stdout.read()


def test_busy_dashboard_port_stops_the_center(busy_port):
    result = subprocess.run([command("zfut-center"), "--port", "0", "--dashboard-address",
                             f"127.0.0.1:{busy_port}"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 1
    assert f"port {busy_port} on 127.0.0.1 is in use" in result.stderr
    assert "listening" not in result.stdout


def test_default_dashboard_port_taken(processes):
    holder = socket.socket()
    # (as the dashboard binds it: the connections of an earlier dashboard on
    # that port may linger in TIME_WAIT)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        holder.bind(("127.0.0.1", launch.DASHBOARD_PORT))
        holder.listen()
    except OSError:  # someone else listens there already: the same case
        pass
    try:
        center, link = start_center(processes)
        assert f":{launch.DASHBOARD_PORT}/" not in link
        assert stop(center) == 0
    finally:
        holder.close()


def test_dashboard_beyond_loopback_without_keys_stops_the_center():
    result = subprocess.run([command("zfut-center"), "--port", "0", "--dashboard-address",
                             "0.0.0.0:0"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "without keys" in result.stderr


def test_token_with_keys(processes, keys):
    center, link = start_center(processes, "--keys", keys, "--dashboard-address",
                                "127.0.0.1:0")
    token = link.split("?token=")[1]
    url = base(link)
    assert get(url + "/health") == (200, "ok")
    for path in ("/status", "/metrics", "/api/v1/state", "/workers", "/tasks"):
        status, body = get(url + path)
        assert status == 403, path
        assert "link" in body  # what to do: open the link the center printed
        assert get(url + path, {"Authorization": "Bearer wrong"})[0] == 403
        assert get(f"{url}{path}?token={token}")[0] == 200, path
        assert get(url + path, {"Authorization": f"Bearer {token}"})[0] == 200, path
    # The link's token sets a cookie that opens every page after it.
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    with opener.open(link, timeout=20) as response:
        assert response.status == 200
    with opener.open(url + "/workers", timeout=20) as response:
        assert response.status == 200
    assert stop(center) == 0


@pytest.mark.skipif(netns.available() is not None, reason=str(netns.available()))
def test_center_beyond_loopback_needs_keys_or_insecure():
    """On a veth in a network namespace: refused without keys, served with
    --insecure (the dashboard on that interface too)."""
    with netns.Network(1) as network:
        address = network.addresses[0]
        program = network.command(0, command("zfut-center"), "--host", address, "--port", "0",
                                  "--log-level", "warning")
        result = subprocess.run(program, capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and "without keys" in result.stderr
        center = subprocess.Popen([*program, "--insecure"], stdout=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, text=True)
        try:
            read_line(center, "listening at")
            link = dashboard_line(center)
            assert link.startswith(f"http://{address}:")
            health = subprocess.run(
                network.command(0, sys.executable, "-c",
                                "import urllib.request, sys; sys.stdout.write(urllib.request."
                                f"urlopen('{base(link)}/health', timeout=20).read().decode())"),
                capture_output=True, text=True, timeout=30)
            assert health.stdout == "ok", health.stderr
        finally:
            assert stop(center) == 0
            center.stdout.close()


# ------------------------------------------------------------------ a local cluster

def test_local_cluster_link_answers():
    with Executor(n_workers=1) as ex:
        link = ex.dashboard_link
        assert link is not None and link.startswith("http://127.0.0.1:")
        assert get(base(link) + "/health") == (200, "ok")
        html = ex._repr_html_()
        assert f'href="{link}"' in html and "<th" in html
        assert "Workers</th><td" in html.replace(' style="text-align:left"', "")
    assert repr(ex).startswith("<Executor: center=")


def test_repr_html_escapes(monkeypatch):
    from zfutures.executor_html import executor_html

    class Fake:
        cluster = None
        address = "tcp://<b>:1"
        _closed = False
        dashboard_link = 'http://h:1/status?token="><script>'

        class _io:
            failed = False

            @staticmethod
            def request(cls: Any, timeout: float) -> dict[str, Any]:
                return {"workers": {"w": {"name": "<i>", "nthreads": 2, "memory": 2 * 2**20,
                                          "memory_limit": 4 * 2**30}}}

    html = executor_html(Fake())
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;b&gt;" in html and "2.0 MiB used of 4.0 GiB<" in html  # (nothing on disk)
    assert "<th style=\"text-align:left\">Threads</th><td style=\"text-align:left\">2<" in html

    def spilling(cls: Any, timeout: float) -> dict[str, Any]:
        return {"workers": {"w": {"name": "w", "nthreads": 2, "memory": 2 * 2**20,
                                  "memory_limit": 4 * 2**30, "spilled": 3 * 2**30}}}

    monkeypatch.setattr(Fake._io, "request", staticmethod(spilling))
    assert "2.0 MiB used of 4.0 GiB, 3.0 GiB spilled to disk<" in executor_html(Fake())
