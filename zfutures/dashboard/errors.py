"""A task's error as text, read from its pickled frames without running them.

The frames a worker sends for a task that raised are a pickle of
``(exception, traceback text, ...)`` (see remote_errors.pickle_exception),
and a client's code chooses the exception: unpickling it for real would run
whatever its ``__reduce__`` says, here, on the center's machine. So every
global the pickle names becomes an inert stand-in (:class:`_Opaque`): nothing
is imported and nothing is called, and the traceback text (a plain string in
the pickle) is read out.
"""
from __future__ import annotations

import io
import pickle
from typing import Any

#: Error frames larger than this (bytes in all) are not read: a traceback is
#: a few kilobytes.
MAX_ERROR_BYTES = 4 * 2**20


class _Opaque:
    """What a pickle named, made harmless: built, called and filled without
    doing anything."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return object.__new__(cls if isinstance(cls, type) else _Opaque)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Opaque:
        return _Opaque()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def add(self, item: Any) -> None:
        pass


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        return _Opaque  # (never the real thing: nothing is imported)

    def persistent_load(self, pid: Any) -> Any:
        return _Opaque()


def error_text(frames: list[Any]) -> str:
    """The traceback text in a task's error frames, or a line saying why not."""
    try:
        buffers = [memoryview(f) for f in frames]
        if sum(b.nbytes for b in buffers) > MAX_ERROR_BYTES:
            return "(the error is too large to show here)"
        loaded = _InertUnpickler(io.BytesIO(buffers[0]), buffers=buffers[1:]).load()
    except Exception as e:  # anything a malformed pickle can raise
        return f"(the error could not be read: {type(e).__name__})"
    if isinstance(loaded, tuple) and len(loaded) >= 2 and isinstance(loaded[1], str):
        return loaded[1].rstrip()
    return "(the error holds no traceback text)"
