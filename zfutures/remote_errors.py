"""A task's exception, from the worker that raised it to the client that re-raises it.

The worker formats the traceback as the standard library does, with the
source line of each frame, as ProcessPoolExecutor's workers do. It cannot
when the source is not on its machine: a function the client sent by value
(defined in a script, a notebook, a module the workers cannot import) runs
from the client's file. Such a frame is sent as a mark in the text and its
place in the source, and the client, which has the source, fills it in::

    worker: (exception, text with marks, [(filename, lineno, name, end_lineno,
                                            colno, end_colno), ...])
    client: the text, each mark replaced by that line of the file, or dropped
            where the client has no source either
"""
from __future__ import annotations

import linecache
import re
import sys
import traceback

from . import serialize
from .errors import RemoteTraceback

#: Stands for the source line of the frame at that index of the list sent
#: along (a character no source line shows, so no text is taken for one).
_MARK = "\x00zfutures-line-{}\x00"
_MARKED_LINE = re.compile(r"^(.*?) {4}\x00zfutures-line-(\d+)\x00\n", re.MULTILINE)


def describe(exc: BaseException) -> str:
    """``"TypeName: message"``, even for an exception whose ``__str__`` raises."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except BaseException:  # noqa: B036 - user code may raise anything
        return type(exc).__name__


def pickle_exception(exc: BaseException) -> list:
    """Frames of ``(exception, formatted traceback, frames without source)``
    for the client to re-raise (see :func:`remote_exception`).

    An exception that does not pickle (or whose pickling raises anything,
    SystemExit included) is replaced by one that does and says what it was,
    so the failure still reaches the user.
    """
    missing: list[tuple] = []
    try:
        formatted = traceback.TracebackException(type(exc), exc, exc.__traceback__)
        _mark_missing_lines(formatted, missing, set())
        text = "".join(formatted.format())
    except BaseException:  # noqa: B036 - user code may raise anything
        missing = []
        text = f"{type(exc).__name__} (its traceback could not be formatted)\n"
    try:
        return serialize.dumps((exc, text, missing))
    except BaseException as e:  # noqa: B036 - user code may raise anything
        return serialize.dumps((RuntimeError(
            f"{describe(exc)} (the exception could not be pickled: {describe(e)})"), text,
            missing))


def _mark_missing_lines(formatted: traceback.TracebackException, missing: list,
                        seen: set) -> None:
    """Give each frame of ``formatted`` (and of its causes, contexts and
    grouped exceptions) whose source line is not here a mark for its line,
    and list where that line is in ``missing``."""
    if id(formatted) in seen:
        return
    seen.add(id(formatted))
    frames = []
    for frame in formatted.stack:
        if frame.line or frame.lineno is None:
            frames.append(frame)
            continue
        frames.append(traceback.FrameSummary(frame.filename, frame.lineno, frame.name,
                                             lookup_line=False,
                                             line=_MARK.format(len(missing))))
        missing.append((frame.filename, frame.lineno, frame.name,
                        getattr(frame, "end_lineno", None), getattr(frame, "colno", None),
                        getattr(frame, "end_colno", None)))
    formatted.stack = traceback.StackSummary.from_list(frames)
    for other in (formatted.__cause__, formatted.__context__,
                  *(getattr(formatted, "exceptions", None) or ())):
        if other is not None:
            _mark_missing_lines(other, missing, seen)


def remote_exception(frames: list) -> BaseException:
    """Rebuild a task's exception, with the remote traceback as its cause."""
    try:
        exc, text, *rest = serialize.loads(frames)
    except BaseException as e:  # noqa: BLE001 (the class may not exist here, or misbehave)
        return RuntimeError(f"a task failed, and its exception could not be loaded: {e!r}")
    if text:
        exc.__cause__ = RemoteTraceback(fill_source_lines(text, rest[0] if rest else ()))
    return exc


def fill_source_lines(text: str, missing: list | tuple) -> str:
    """Replace each mark in a worker's traceback by the source line from this
    process's files (linecache: notebooks' cells too), or drop it."""
    if not missing:
        return text

    def source(match: re.Match) -> str:
        margin, index = match.group(1), int(match.group(2))
        filename, lineno, name, end_lineno, colno, end_colno = missing[index]
        if not linecache.getline(filename, lineno).strip():
            return ""  # (as the standard library shows a frame without source)
        positions = {}
        if sys.version_info >= (3, 11):  # (where a frame knows its columns: carets)
            positions = {"end_lineno": end_lineno, "colno": colno, "end_colno": end_colno}
        frame = traceback.FrameSummary(filename, lineno, name, **positions)
        # The frame as the standard library writes it, but its first line
        # ("File ..., line ..., in ..."), which the text has already.
        lines = traceback.StackSummary.from_list([frame]).format()[0].splitlines(True)[1:]
        return "".join(margin + line for line in lines)

    return _MARKED_LINE.sub(source, text)
