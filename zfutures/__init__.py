"""zfutures: ad-hoc distributed computing with futures, over ZeroMQ.

>>> from zfutures import Executor
>>> with Executor() as ex:                    # doctest: +SKIP
...     x = ex.submit(inc, 1)
...     ex.submit(inc, x).result()
3
"""
from .errors import (
    ConnectionError,
    FutureLostError,
    KilledWorker,
    RemoteTraceback,
    ZFuturesError,
)
from .executor import Executor
from .future import Future

__version__ = "0.1.0"

__all__ = [
    "ConnectionError",
    "Executor",
    "Future",
    "FutureLostError",
    "KilledWorker",
    "RemoteTraceback",
    "ZFuturesError",
]
