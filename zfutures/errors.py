"""Exceptions raised by zfutures.

All of them derive from :class:`ZFuturesError`, so ``except ZFuturesError``
catches whatever the library itself raises (as opposed to exceptions raised by
user tasks, which are re-raised unchanged).
"""
import builtins
from typing import Any


class ZFuturesError(Exception):
    """Base class of every error raised by zfutures itself."""


class ConnectionError(ZFuturesError, builtins.ConnectionError):
    """The center could not be reached, or was gone longer than allowed.

    Subclasses the builtin :class:`ConnectionError` too, so code that already
    catches network failures keeps working.
    """


class FutureLostError(ZFuturesError):
    """The data of a key is gone and cannot be recomputed."""


class ProtocolError(ZFuturesError):
    """A message did not follow the wire protocol."""


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised on a worker.

    Chained as ``__cause__`` of the re-raised exception, as
    :class:`concurrent.futures.ProcessPoolExecutor` does, so the remote stack
    shows up in the local traceback.
    """

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _make_killed_worker() -> type:
    # concurrent.futures.process brings multiprocessing with it (25 ms at
    # start): made on first use, workers never pay for it.
    from concurrent.futures.process import BrokenProcessPool

    class KilledWorker(ZFuturesError, BrokenProcessPool):
        """Workers died ``allowed_failures`` times while running this task.

        Also a :class:`concurrent.futures.process.BrokenProcessPool`, which is
        what code written for ProcessPoolExecutor catches when a task kills
        its process.
        """

    KilledWorker.__module__, KilledWorker.__qualname__ = __name__, "KilledWorker"
    return KilledWorker


def __getattr__(name: str) -> Any:
    if name == "KilledWorker":
        globals()["KilledWorker"] = cls = _make_killed_worker()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
