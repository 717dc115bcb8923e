"""Keys: CurveZMQ encryption and an allow list of who may connect.

Whoever can send a task to a cluster runs code on its workers, so a cluster
reachable from other hosts admits only peers holding a key it knows (the
"Ironhouse" pattern of the ZeroMQ guide). ``zfut-keygen DIR`` creates::

    DIR/center.key           the servers' public key (the center and the
    DIR/center.key_secret    workers' data servers) and its secret
    DIR/client.key           a public key for clients and workers to connect
    DIR/client.key_secret    with, and its secret
    DIR/allowed/client.key   the allow list: public keys the servers admit

What to copy where: clients need ``center.key`` and ``client.key_secret``;
the center and the workers need the whole directory (workers serve data, so
they hold the servers' secret too). Admit another client by adding its
public key file to ``allowed/``; the servers reread the list when it changes.

Every socket of a secured cluster uses CURVE: servers as CURVE servers behind
a ZAP authenticator that checks the allow list, and every connecting socket
with the client key pair. Without keys, sockets use no security at all, which
the commands allow only on loopback or with ``--insecure``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Union

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .logs import RateLimitedLog

logger = logging.getLogger(__name__)

#: Environment variable naming a key directory, used when none is given.
KEYS_ENV = "ZFUTURES_KEYS"

CENTER, CLIENT, ALLOWED = "center", "client", "allowed"
ZAP_DOMAIN = "zfutures"

PathLike = Union[str, os.PathLike]


class SecurityError(ValueError):
    """Keys that are missing, unreadable, or not what this role needs."""


class Security:
    """The keys of one member of a cluster, read from a ``zfut-keygen`` directory.

    >>> security = Security("~/.zfutures-keys")             # doctest: +SKIP
    >>> Executor("10.0.0.5:8787", security=security)        # doctest: +SKIP

    ``Executor(security="~/.zfutures-keys")`` takes the path directly, and the
    commands take ``--keys DIR``; all of them fall back to the directory named
    by the ``ZFUTURES_KEYS`` environment variable.
    """

    def __init__(self, directory: PathLike):
        self.directory = Path(directory).expanduser()
        if not self.directory.is_dir():
            raise SecurityError(f"{self.directory} is not a directory of keys: create one "
                                "with 'zfut-keygen DIR'")
        self.center_public, self.center_secret = self._load(CENTER)
        self.client_public, self.client_secret = self._load(CLIENT)
        if self.center_public is None:
            raise SecurityError(f"{self.directory} has no {CENTER}.key: every member needs "
                                "the center's public key")
        if self.client_secret is None:
            raise SecurityError(f"{self.directory} has no {CLIENT}.key_secret: clients and "
                                "workers need a key pair to connect with")

    def __repr__(self) -> str:
        return f"Security({str(self.directory)!r})"

    @classmethod
    def coerce(cls, security: Any) -> Security | None:
        """A Security from one, from a directory path, or from the environment."""
        if security is None:
            directory = os.environ.get(KEYS_ENV)
            return cls(directory) if directory else None
        if isinstance(security, Security):
            return security
        if isinstance(security, (str, os.PathLike)):
            return cls(security)
        raise TypeError(f"security must be a key directory (from 'zfut-keygen DIR') or a "
                        f"zfutures.Security, not {type(security).__name__}")

    def _load(self, name: str) -> tuple[bytes | None, bytes | None]:
        for filename in (f"{name}.key_secret", f"{name}.key"):
            path = self.directory / filename
            if path.exists():
                try:
                    return zmq.auth.load_certificate(path)
                except (OSError, ValueError) as e:
                    raise SecurityError(f"cannot read the key {path}: {e}") from None
        return None, None

    @property
    def allowed_directory(self) -> Path:
        return self.directory / ALLOWED

    # ------------------------------------------------------------------ sockets

    def connecting(self, sock: zmq.Socket) -> zmq.Socket:
        """Make ``sock`` (before it connects) a CURVE client with our key pair."""
        sock.curve_serverkey = self.center_public
        sock.curve_publickey = self.client_public
        sock.curve_secretkey = self.client_secret
        return sock

    def serving(self, sock: zmq.Socket) -> zmq.Socket:
        """Make ``sock`` (before it binds) a CURVE server; see :meth:`authenticator`."""
        if self.center_secret is None:
            raise SecurityError(f"{self.directory} has no {CENTER}.key_secret: the center "
                                "and the workers need it to serve")
        sock.curve_server = True
        sock.curve_secretkey = self.center_secret
        sock.zap_domain = ZAP_DOMAIN.encode()
        return sock

    def authenticator(self, context: zmq.Context) -> ThreadAuthenticator:
        """Start the ZAP handler that admits only the allow list, for ``context``'s
        servers. Stop it before terminating the context."""
        if not self.allowed_directory.is_dir():
            raise SecurityError(f"{self.allowed_directory} does not exist: the servers admit "
                                "the public keys in it (see 'zfut-keygen')")
        auth = ThreadAuthenticator(context, log=logging.getLogger("zfutures.zap"))
        auth.start()
        auth.configure_curve_callback(ZAP_DOMAIN, AllowList(self.allowed_directory))
        return auth


class AllowList:
    """The ZAP callback: admit a CURVE public key if ``directory`` holds it.

    The directory is read again whenever it changes, so admitting a new
    client is copying its public key file in, without a restart.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.refused = RateLimitedLog(logger)
        self._stamp: tuple | None = None
        self._keys: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        self._reload()
        if key in self._keys:
            return True
        self.refused.warning("refused a connection: its key is not in the allow list",
                             f"public key {key.decode(errors='replace')}, allow list "
                             f"{self.directory}")
        return False

    def _reload(self) -> None:
        try:
            stamp = tuple(sorted((p.name, p.stat().st_mtime_ns)
                                 for p in self.directory.iterdir()))
        except OSError:
            stamp = ()
        if stamp != self._stamp:
            self._stamp = stamp
            try:
                self._keys = set(zmq.auth.load_certificates(self.directory))
            except (OSError, ValueError) as e:
                logger.error("cannot read the allow list %s: %s; admitting no one",
                             self.directory, e)
                self._keys = set()


def keygen(directory: PathLike) -> Path:
    """Create a key directory (see the module docstring); refuse to overwrite keys."""
    directory = Path(directory).expanduser()
    existing = [directory / f"{name}.key_secret" for name in (CENTER, CLIENT)
                if (directory / f"{name}.key_secret").exists()]
    if existing:
        raise SecurityError(f"{existing[0]} exists already: keys are never overwritten "
                            "(remove the directory first to start over)")
    allowed = directory / ALLOWED
    allowed.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    for name in (CENTER, CLIENT):
        public, secret = zmq.auth.create_certificates(directory, name)
        os.chmod(secret, 0o600)
    (allowed / f"{CLIENT}.key").write_bytes((directory / f"{CLIENT}.key").read_bytes())
    return directory
