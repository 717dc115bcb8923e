"""Addresses, and the socket settings every zfutures socket shares."""
from __future__ import annotations

import functools
import re
import socket
import sys
from typing import Any, TypeVar

import zmq

DEFAULT_PORT = 8787

_ADDRESS = re.compile(r"^(?:tcp://)?(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>\d+))?$")


def normalize_address(address: str, default_port: int = DEFAULT_PORT) -> str:
    """Return ``tcp://host:port`` for ``host``, ``host:port`` or ``tcp://host:port``.

    >>> normalize_address("10.0.0.5")
    'tcp://10.0.0.5:8787'
    >>> normalize_address("tcp://localhost:9000")
    'tcp://localhost:9000'
    """
    if not isinstance(address, str):
        raise TypeError(f"an address is a string like 'host:8787', not {type(address).__name__}")
    match = _ADDRESS.match(address.strip())
    if match is None:
        raise ValueError(
            f"malformed address {address!r}: use 'host', 'host:port' or 'tcp://host:port'")
    port = int(match["port"]) if match["port"] else default_port
    if not 0 < port < 65536:
        raise ValueError(f"malformed address {address!r}: port {port} is out of range")
    return f"tcp://{match['host']}:{port}"


def host_of(address: str) -> str:
    """The host part of a ``tcp://host:port`` address."""
    return address[len("tcp://"):].rsplit(":", 1)[0]


def is_loopback(host: str) -> bool:
    """Whether ``host`` can only be reached from this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return all(str(info[4][0]).startswith("127.") or info[4][0] == "::1" for info in infos)


def interface_towards(address: str) -> str:
    """The local IP address that routes to ``address``'s host.

    Used as a worker's default data-server host, so peers can reach it at the
    address it announces. No packet is sent: connecting a UDP socket only asks
    the kernel for a route.
    """
    host = host_of(address).strip("[]")
    if is_loopback(host):
        return "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


#: Data servers also listen on a Linux abstract socket named after their TCP
#: address. Abstract names belong to a network namespace, exactly as TCP ports
#: do, so the name reaches the very process the TCP address would reach from
#: the same namespace, and nothing from another.
LOCAL_TRANSPORT = sys.platform.startswith("linux")


def local_endpoint(address: str) -> str:
    """The abstract-socket endpoint a data server at ``address`` also binds.

    >>> local_endpoint("tcp://127.0.0.1:4000")
    'ipc://@zfutures/tcp://127.0.0.1:4000'
    """
    return f"ipc://@zfutures/{address}"


@functools.lru_cache(maxsize=1024)
def is_local_ip(host: str) -> bool:
    """Whether ``host`` is an IP address of this network namespace.

    Binding only succeeds for one's own addresses, and sends nothing.
    """
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


def peer_endpoint(address: str) -> str:
    """Where to connect for the data server at ``address``.

    A server in this network namespace is reached over its abstract socket:
    Unix sockets move large buffers faster than TCP over loopback, with the
    same ZeroMQ security. Any other is reached over TCP.
    """
    if LOCAL_TRANSPORT and is_local_ip(host_of(address)):
        return local_endpoint(address)
    return address


_Socket = TypeVar("_Socket", bound=zmq.Socket)


def configure(sock: _Socket, security: Any = None, heartbeat_ms: int = 1000) -> _Socket:
    """Settings every zfutures socket gets.

    - With ``security`` (a :class:`~zfutures.security.Security`): CURVE, as a
      server for a ROUTER (it binds), as a client for a DEALER (it connects).

    - LINGER 0: closing never blocks on unsent messages to a vanished peer.
    - ZMTP heartbeats: libzmq drops a dead connection on its own, outside the
      GIL, even while Python is busy.
    - No high-water mark: our own credit (a short queue per worker) bounds the
      queues, and a silent drop at the mark would lose a task.
    - Reconnecting 10 ms after a failed attempt, backing off to 2 s: workers
      started beside their center (a local cluster) join it as soon as it
      listens, not up to 100 ms later.
    """
    sock.linger = 0
    sock.setsockopt(zmq.HEARTBEAT_IVL, heartbeat_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, heartbeat_ms * 3)
    sock.setsockopt(zmq.HEARTBEAT_TTL, heartbeat_ms * 3)
    sock.sndhwm = 0
    sock.rcvhwm = 0
    if sock.type in (zmq.DEALER, zmq.ROUTER):
        sock.setsockopt(zmq.RECONNECT_IVL, 10)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    if security is not None:
        if sock.type == zmq.ROUTER:
            security.serving(sock)
        else:
            security.connecting(sock)
    return sock


def bind_ephemeral(sock: zmq.Socket, host: str, port: int = 0) -> str:
    """Bind ``sock`` to ``host:port`` (0: any free port); return the address."""
    endpoint = f"tcp://{host}:{port or '*'}"
    if ":" in host and not host.startswith("["):
        endpoint = f"tcp://[{host}]:{port or '*'}"
        sock.ipv6 = True
    sock.bind(endpoint)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)
