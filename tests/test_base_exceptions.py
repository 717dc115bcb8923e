"""A BaseException from user code on a worker fails that future, and only that.

SystemExit, KeyboardInterrupt or a BaseException of the user's own, raised by
a task, by pickling its result (a ``__reduce__`` that raises) or by pickling
its exception, reaches the client as an error it can read; the worker goes
on serving, in the same process.
"""
from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.timeout(60)


class Stop(BaseException):
    """A BaseException of the user's own."""


class ExitOnPickle:
    def __init__(self, exc: BaseException):
        self.exc = exc

    def __reduce__(self):
        raise self.exc


class ErrorThatExitsOnPickle(Exception):
    def __reduce__(self):
        raise SystemExit("no pickling this error")


def small_result(exc: BaseException) -> ExitOnPickle:
    return ExitOnPickle(exc)  # small: pickled on the task thread, to go with its completion


def big_result(exc: BaseException) -> list:
    return [ExitOnPickle(exc), bytes(100_000)]  # big: pickled on the loop thread, when fetched


def raises(exc: BaseException) -> None:
    raise exc


def raises_unpicklable_error() -> None:
    raise ErrorThatExitsOnPickle("boom")


def length(x) -> int:
    return len(x)


def inc(x: int) -> int:
    return x + 1


@pytest.mark.parametrize("make", [small_result, big_result], ids=["small", "big"])
@pytest.mark.parametrize("exc", [SystemExit("no pickling me"), KeyboardInterrupt(),
                                 Stop("no pickling me")], ids=["SystemExit",
                                                               "KeyboardInterrupt", "own"])
def test_a_result_whose_pickling_raises_a_base_exception_fails_its_future(ex, make, exc):
    pids = ex.run(os.getpid)
    future = ex.submit(make, exc, pure=False)
    with pytest.raises(TypeError, match=f"cannot be pickled.*{type(exc).__name__}"):
        future.result(timeout=20)
    assert ex.submit(inc, 1, pure=False).result(timeout=20) == 2
    assert ex.run(os.getpid) == pids  # the same processes serve on


def test_a_dependent_on_another_worker_of_such_a_result_fails_too(ex):
    pids = ex.run(os.getpid)
    w0, w1 = sorted(pids)
    value = ex.submit(big_result, SystemExit("no pickling me"), workers=[w0], pure=False)
    elsewhere = ex.submit(length, value, workers=[w1], pure=False)
    with pytest.raises(TypeError, match="cannot be pickled.*SystemExit"):
        elsewhere.result(timeout=20)
    # Where it lives, it is a value like any other.
    assert ex.submit(length, value, workers=[w0], pure=False).result(timeout=20) == 2
    assert ex.run(os.getpid) == pids


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), Stop("stop")],
                         ids=["SystemExit", "KeyboardInterrupt", "own"])
def test_a_task_that_raises_a_base_exception_fails_with_it(ex, exc):
    pids = ex.run(os.getpid)
    with pytest.raises(type(exc)) as info:
        ex.submit(raises, exc, pure=False).result(timeout=20)
    assert info.value.args == exc.args
    assert ex.submit(inc, 1, pure=False).result(timeout=20) == 2
    assert ex.run(os.getpid) == pids


def test_a_task_whose_exception_cannot_be_pickled_fails_naming_it(ex):
    pids = ex.run(os.getpid)
    with pytest.raises(RuntimeError, match="ErrorThatExitsOnPickle: boom.*SystemExit"):
        ex.submit(raises_unpicklable_error, pure=False).result(timeout=20)
    assert ex.submit(inc, 1, pure=False).result(timeout=20) == 2
    assert ex.run(os.getpid) == pids
