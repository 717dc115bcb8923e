"""The tasks tests/test_stress.py runs, and its model of what each may end with.

The functions are at module level in a module of tests/, so workers unpickle
them by reference (a local cluster's PYTHONPATH is the client's sys.path).
Each has a local twin in ``LOCAL`` that the model calls to know the value
without waiting.
"""
from __future__ import annotations

import time
from typing import Any


class StressError(Exception):
    """A task's own exception class, to see it come back as itself."""


def inc(x):
    return x + 1


def add(*xs):
    return sum(xs)


def slow_add(delay, *xs):
    """Takes ``delay`` seconds: long enough, at times, for a cancel to find it
    pending or running."""
    time.sleep(delay)
    return sum(xs)


def fail(tag):
    raise ValueError("stress failure", tag)


def fail_custom(tag, n):
    raise StressError(tag, n)


def total(structure, extra=0):
    """The sum of the numbers anywhere in ``structure`` (lists, tuples, dicts)."""
    return _sum(structure) + extra


def _sum(obj: Any) -> int:
    if isinstance(obj, (list, tuple, set)):
        return sum(_sum(x) for x in obj)
    if isinstance(obj, dict):
        return sum(_sum(x) for x in obj.values())
    return obj


def keys_in_memory():
    """Run on a worker (Executor.run): the keys in its memory. (No public way
    to ask: found among the worker process's objects.)"""
    import gc

    from zfutures.worker_state import WorkerState

    for _ in range(10):
        try:
            return sorted(key for state in gc.get_objects() if isinstance(state, WorkerState)
                          for key in list(state.data))
        except RuntimeError:  # (changed while read, by the worker's loop)
            continue
    raise RuntimeError("the worker's memory kept changing while read")


LOCAL = {
    inc: inc,
    add: add,
    slow_add: lambda delay, *xs: sum(xs),  # (no need to wait here)
    fail: fail,
    fail_custom: fail_custom,
    total: total,
}


# ---------------------------------------------------------------------- the model

NO_VALUE = object()


class Allowed:
    """What a key may end with: its value (NO_VALUE if it fails), and the
    errors, as (type, args), it may fail with (any one of them: a task with
    several failed inputs fails with the error of one)."""

    __slots__ = ("value", "errors")

    def __init__(self, value: Any = NO_VALUE, errors: frozenset = frozenset()):
        self.value = value
        self.errors = errors

    def __repr__(self) -> str:
        if self.value is not NO_VALUE:
            return f"value {self.value!r}"
        return "error " + " or ".join(f"{t.__name__}{args!r}" for t, args in self.errors)


def expect(fn, args: tuple, kwargs: dict) -> Allowed:
    """What ``fn(*args, **kwargs)`` ends with, plain arguments (no futures)."""
    try:
        return Allowed(LOCAL[fn](*args, **kwargs))
    except Exception as e:  # noqa: BLE001 (the model's own run of the task)
        return Allowed(errors=frozenset({(type(e), e.args)}))


def expect_with_inputs(fn, args: tuple, kwargs: dict, inputs: list[Allowed],
                       substitute) -> Allowed:
    """What a call with futures among its arguments ends with: the call on
    the inputs' values, or, if any input fails, the error of one of those
    that fail. ``substitute(args, kwargs)`` puts the values in."""
    failed = [a for a in inputs if a.value is NO_VALUE]
    if failed:
        return Allowed(errors=frozenset().union(*(a.errors for a in failed)))
    args, kwargs = substitute(args, kwargs)
    return expect(fn, args, kwargs)


class ScatterEvent:
    """One scatter of a key, and the workers that held it just after."""

    __slots__ = ("key", "holders", "released_after")

    def __init__(self, key: str, holders: frozenset):
        self.key = key
        self.holders = holders
        # How many workers had been killed when no future held the key any
        # more (None while one does): the center may then forget the data,
        # and a task made from it cannot be made again once its own result
        # is lost with a worker killed later.
        self.released_after: int | None = None

    def lost(self, killed: set) -> bool:
        """Whether every copy of this scatter may be gone."""
        return self.holders <= killed or \
            self.released_after is not None and len(killed) > self.released_after


class Entry:
    """One future the driver holds, and what the model allows it."""

    __slots__ = ("name", "future", "key", "allowed", "roots", "inputs", "cancelled", "kind",
                 "call", "cancel_ok")

    def __init__(self, name: str, future: Any, allowed: Allowed, kind: str, *,
                 roots: frozenset = frozenset(), inputs: frozenset = frozenset(),
                 call: tuple | None = None):
        self.name = name
        self.future = future
        self.key = future.key
        self.allowed = allowed
        self.kind = kind  # "task", "scatter" or "pool"
        # The scatters it depends on (itself, for a scatter), through any inputs.
        self.roots = roots
        # Every key it needs (its inputs' keys and theirs, not its own).
        self.inputs = inputs
        self.cancelled = False  # cancel() returned True
        self.cancel_ok = False  # it may end cancelled without cancel() (a pool's shutdown)
        self.call = call  # (fn, args, kwargs) of a call without futures in it

    def lost_ok(self, killed: set) -> bool:
        """Whether FutureLostError is an allowed end: data it needs was
        scattered only to workers killed since."""
        return any(event.lost(killed) for event in self.roots)

    def __repr__(self) -> str:
        return f"{self.name}<{self.key}: {self.allowed!r}{', cancelled' if self.cancelled else ''}>"
