"""The dashboard beside a center (``zfut-center`` calls this).

The center's program binds the dashboard's listening socket itself: the
link is known (and printed) at once, and a port that is taken is an error
when the center starts rather than a line in a log nobody reads. The
dashboard process (``python -m zfutures.dashboard``) starts only when the
first connection comes (a browser, a Prometheus scrape): until someone
looks, a center pays nothing for its dashboard, not even a process, and a
local cluster starts no faster or slower for having one. The child takes
the socket's descriptor, serves HTTP on it and joins the center as a
client; it exits with its parent (see ``PARENT_PID_ENV``). Should it exit
on its own, the next connection starts another.
"""
from __future__ import annotations

import errno
import importlib.util
import logging
import os
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any
from urllib.parse import quote

import click

from ..addressing import host_of
from ..processes import PARENT_PID_ENV, stop_processes

logger = logging.getLogger(__name__)

#: The dashboard's port when none is asked for (the center's is 8787).
DASHBOARD_PORT = 8788

#: The environment variable that hands the token to the dashboard process
#: (a command line is readable by every user of the machine).
TOKEN_ENV = "ZFUTURES_DASHBOARD_TOKEN"

#: Seconds between two starts of the dashboard process at least: one that
#: fails as it starts (a broken install) is not started again in a loop.
RESTART_INTERVAL = 10.0

#: Hosts that mean "every interface": a link needs a name others can reach.
_WILDCARDS = {"", "0.0.0.0", "::", "*"}

#: What the dashboard process needs beyond zfutures' own requirements.
_NEEDS = ("aiohttp", "prometheus_client")


class DashboardError(click.ClickException):
    """The dashboard cannot start as asked (its port is taken, say)."""


def parse_address(address: str) -> tuple[str, int | None]:
    """``"HOST:PORT"``, ``"[IPV6]:PORT"``, ``"HOST"`` or ``":PORT"`` -> (host, port).

    An empty host means the center's; a missing port is None (the default).
    """
    text = address.strip()
    if text.startswith("["):  # [::1]:8788
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise DashboardError(f"dashboard address {address!r}: use [IPV6]:PORT")
        port_text = rest[1:]
    elif text.count(":") > 1:  # a bare IPv6 address, no port
        host, port_text = text, ""
    else:
        host, _, port_text = text.partition(":")
    if not port_text:
        return host, None
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise DashboardError(f"dashboard address {address!r}: the port must be 0-65535")
    return host, port


def bind_listener(host: str, port: int | None) -> socket.socket:
    """A listening TCP socket on ``host:port``.

    ``port`` None: DASHBOARD_PORT, or any free port (with a warning) if that
    one is taken; an explicit port that is taken raises DashboardError; 0 is
    any free port.
    """
    try:
        return _listen(host, DASHBOARD_PORT if port is None else port)
    except OSError as e:
        if e.errno != errno.EADDRINUSE:
            raise DashboardError(f"the dashboard cannot bind {host}:{port}: {e}") from None
        if port is not None:
            raise DashboardError(
                f"the dashboard's port {port} on {host} is in use: choose another with "
                "--dashboard-address HOST:PORT (PORT 0: any free one), or pass "
                "--no-dashboard") from None
    sock = _listen(host, 0)
    logger.warning("port %d is in use; the dashboard listens on port %d instead",
                   DASHBOARD_PORT, sock.getsockname()[1])
    return sock


def _listen(host: str, port: int) -> socket.socket:
    family, type_, proto, _, sockaddr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, type_, proto)
    try:
        # A restarted center gets its port back though connections of the last
        # one linger in TIME_WAIT; a port someone listens on stays refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        # Listening now: a browser that comes before the child is ready waits
        # in the backlog instead of being refused.
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def make_link(host: str, port: int, token: str | None) -> str:
    """The /status link to print and give to clients."""
    if host in _WILDCARDS:
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    link = f"http://{host}:{port}/status"
    return f"{link}?token={quote(token, safe='')}" if token else link


def missing_requirement() -> str | None:
    """The first package the dashboard needs that is not installed, or None."""
    for name in _NEEDS:
        if importlib.util.find_spec(name) is None:
            return name
    return None


class Dashboard:
    """A center's dashboard: its listening socket, held for the center's
    life, and the process serving it, started at the first connection.

    ``start_process`` is what starts that process (given the socket's
    descriptor); a thread of its own waits for connections and for the
    process, asleep in ``select`` and ``wait`` otherwise.
    """

    def __init__(self, sock: socket.socket, host: str, port: int, token: str | None,
                 start_process: Any):
        self.socket = sock
        self.host = host
        self.port = port
        #: None without keys: then the dashboard asks for no token
        self.token = token
        self.link = make_link(host, port, token)
        self.process: subprocess.Popen | None = None
        self._start_process = start_process
        self._wake_read, self._wake_write = os.pipe()
        self._stopping = False
        self._last_start = -RESTART_INTERVAL
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="zfutures-dashboard-launch")
        self._thread.start()

    @property
    def pid(self) -> int | None:
        """The dashboard process's pid, None until someone connected."""
        return self.process.pid if self.process is not None else None

    def _run(self) -> None:
        while not self._stopping:
            process = self.process
            if process is not None and process.poll() is None:
                try:
                    process.wait(0.5)  # (the stop flag is read between waits)
                except subprocess.TimeoutExpired:
                    pass
                continue
            if process is not None:
                logger.warning("the dashboard process exited (status %s); the next "
                               "connection starts another", process.returncode)
                self.process = None
            select.select([self.socket.fileno(), self._wake_read], [], [])
            if self._stopping:
                return
            pause = self._last_start + RESTART_INTERVAL - time.monotonic()
            if pause > 0:  # (it failed at once: no loop of starts)
                select.select([self._wake_read], [], [], pause)
                continue
            self._last_start = time.monotonic()
            try:
                self.process = self._start_process(self.socket.fileno())
            except OSError as e:
                logger.error("could not start the dashboard process: %s", e)
            else:
                logger.debug("dashboard process %d at %s", self.process.pid, self.link)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL after ``timeout`` seconds)
        and the thread; close the socket."""
        self._stopping = True
        os.write(self._wake_write, b"x")
        self._thread.join(timeout)
        if self.process is not None:
            stop_processes([self.process], timeout)
        self.socket.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def __repr__(self) -> str:
        return f"<Dashboard pid={self.pid} at {self.link}>"


def start_dashboard(center_address: str, address: str | None, security: Any,
                    insecure: bool, log_level: str = "warning",
                    program: list[str] | None = None) -> Dashboard:
    """Bind the dashboard's socket for the center at ``center_address`` (as
    the center bound it, e.g. ``tcp://0.0.0.0:8787``); its process starts at
    the first connection.

    ``address``: ``"HOST:PORT"`` (see parse_address); None is the center's host
    and port DASHBOARD_PORT, or any free port if that one is taken. Binding
    beyond loopback needs keys (``security``) or ``insecure``, as for the center
    itself. With keys, every page asks for a token, made here and part of the
    link. ``program`` replaces ``python -m zfutures.dashboard`` (tests only).

    Raises DashboardError (a port taken, a bad address) or click.UsageError
    (the bind rule).
    """
    from ..cli import check_bind

    center_host = host_of(center_address).strip("[]")
    host, port = parse_address(address) if address is not None else ("", None)
    host = host or center_host
    check_bind(host, insecure, security)
    sock = bind_listener(host, port)
    port = sock.getsockname()[1]
    token = secrets.token_urlsafe(32) if security is not None else None
    command = program or [sys.executable, "-m", "zfutures.dashboard"]
    center = _reachable(center_address, center_host)

    def start_process(fd: int) -> subprocess.Popen:
        return _spawn(command, center, fd, token, security, log_level)

    return Dashboard(sock, host, port, token, start_process)


def _reachable(center_address: str, center_host: str) -> str:
    """The center's address for a process on its machine: a center bound to
    every interface is reached through loopback."""
    if center_host not in _WILDCARDS:
        return center_address
    loopback = "[::1]" if ":" in center_host else "127.0.0.1"
    return f"tcp://{loopback}:{center_address.rpartition(':')[2]}"


def _spawn(program: list[str], center: str, fd: int, token: str | None, security: Any,
           log_level: str) -> subprocess.Popen:
    args = [*program, "--center", center, "--listen-fd", str(fd), "--log-level", log_level]
    if security is not None:
        args += ["--keys", str(security.directory)]
    # The child exits once this process is no longer its parent: a center
    # killed with SIGKILL leaves no dashboard behind.
    env = dict(os.environ, **{PARENT_PID_ENV: str(os.getpid())})
    env.pop(TOKEN_ENV, None)
    if token is not None:
        env[TOKEN_ENV] = token
    return subprocess.Popen(args, pass_fds=(fd,), env=env, stdin=subprocess.DEVNULL)
