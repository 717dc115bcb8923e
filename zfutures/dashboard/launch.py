"""Start the dashboard process beside a center (``zfut-center`` calls this).

The center's program binds the dashboard's listening socket itself and hands
its descriptor to the child: the link is known (and printed) at once, before
the child has even imported aiohttp, and a port that is taken is an error when
the center starts rather than a line in a log nobody reads. The child
(``python -m zfutures.dashboard``) serves HTTP on that socket and joins the
center as a client; it exits with its parent (see ``PARENT_PID_ENV``).
"""
from __future__ import annotations

import errno
import importlib.util
import logging
import os
import secrets
import socket
import subprocess
import sys
from typing import Any
from urllib.parse import quote

import click

from ..addressing import host_of
from ..processes import PARENT_PID_ENV, stop_processes

logger = logging.getLogger(__name__)

#: The dashboard's port when none is asked for (the center's is 8787).
DASHBOARD_PORT = 8788

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
    """The dashboard process of a center, and the link to its /status page."""

    def __init__(self, process: subprocess.Popen, host: str, port: int, token: str | None):
        self.process = process
        self.host = host
        self.port = port
        #: None without keys: then the dashboard asks for no token
        self.token = token
        self.link = make_link(host, port, token)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; wait for its exit."""
        stop_processes([self.process], timeout)

    def __repr__(self) -> str:
        return f"<Dashboard pid={self.pid} at {self.link}>"


def start_dashboard(center_address: str, address: str | None, security: Any,
                    insecure: bool, log_level: str = "warning",
                    program: list[str] | None = None) -> Dashboard:
    """Bind the dashboard's socket and start its process for the center at
    ``center_address`` (as the center bound it, e.g. ``tcp://0.0.0.0:8787``).

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
    try:
        port = sock.getsockname()[1]
        token = secrets.token_urlsafe(32) if security is not None else None
        process = _spawn(program or [sys.executable, "-m", "zfutures.dashboard"],
                         _reachable(center_address, center_host), sock.fileno(),
                         token, security, log_level)
    finally:
        # The child holds its own copy now; ours would only keep the port busy
        # (and accept connections into a backlog) after the child is gone.
        sock.close()
    dashboard = Dashboard(process, host, port, token)
    logger.debug("dashboard process %d at %s", process.pid, dashboard.link)
    return dashboard


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
    if token is not None:
        args += ["--token", token]
    if security is not None:
        args += ["--keys", str(security.directory)]
    # The child exits once this process is no longer its parent: a center
    # killed with SIGKILL leaves no dashboard behind.
    env = dict(os.environ, **{PARENT_PID_ENV: str(os.getpid())})
    return subprocess.Popen(args, pass_fds=(fd,), env=env, stdin=subprocess.DEVNULL)
