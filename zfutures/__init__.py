"""zfutures: ad-hoc distributed computing with futures, over ZeroMQ.

>>> from zfutures import Executor
>>> with Executor() as ex:                    # doctest: +SKIP
...     x = ex.submit(inc, 1)
...     ex.submit(inc, x).result()
3
"""
from .context import get_executor
from .errors import (
    ConnectionError,
    FutureLostError,
    KilledWorker,
    RemoteTraceback,
    ZFuturesError,
)
from .executor import Executor
from .future import Future
from .pool import PoolExecutor
from .progress import progress
from .waiting import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, as_completed, wait

__version__ = "0.1.0"

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "as_completed",
    "get_executor",
    "progress",
    "wait",
    "ConnectionError",
    "Executor",
    "Future",
    "FutureLostError",
    "KilledWorker",
    "PoolExecutor",
    "RemoteTraceback",
    "ZFuturesError",
]
