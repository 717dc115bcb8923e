"""zfutures: ad-hoc distributed computing with futures, over ZeroMQ.

>>> from zfutures import Executor
>>> with Executor() as ex:                    # doctest: +SKIP
...     x = ex.submit(inc, 1)
...     ex.submit(inc, x).result()
3

The public names load on first use: the center and worker processes import
this package too, and should not pay for the client's modules at start-up.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "ALL_COMPLETED": "waiting",
    "FIRST_COMPLETED": "waiting",
    "FIRST_EXCEPTION": "waiting",
    "as_completed": "waiting",
    "wait": "waiting",
    "get_executor": "executor",
    "progress": "progress",
    "performance_report": "report",
    "Executor": "executor",
    "Future": "future",
    "PoolExecutor": "pool",
    "ConnectionError": "errors",
    "FutureLostError": "errors",
    "KilledWorker": "errors",
    "RemoteTraceback": "errors",
    "Security": "security",
    "ZFuturesError": "errors",
}

__all__ = [  # the same names as _EXPORTS, spelled out for tools that read __all__
    "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "ConnectionError", "Executor",
    "Future", "FutureLostError", "KilledWorker", "PoolExecutor", "RemoteTraceback", "Security",
    "ZFuturesError", "as_completed", "get_executor", "performance_report", "progress", "wait",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zfutures' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # next time, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # for type checkers and editors: the names, eagerly
    from .errors import (
        ConnectionError,
        FutureLostError,
        KilledWorker,
        RemoteTraceback,
        ZFuturesError,
    )
    from .executor import Executor, get_executor
    from .future import Future
    from .pool import PoolExecutor
    from .progress import progress
    from .security import Security
    from .waiting import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, as_completed, wait
