"""The dashboard reads a task's error as text without running its pickle
(zfutures/dashboard/errors.py): a client chooses the exception, and the
dashboard runs on the center's machine."""
from __future__ import annotations

import os
import pickle

from zfutures import serialize
from zfutures.dashboard.errors import MAX_ERROR_BYTES, error_text
from zfutures.remote_errors import pickle_exception


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as e:  # noqa: B036 - (kept as the worker keeps it)
        return e


def test_a_workers_error_frames_read_as_their_traceback():
    text = error_text(pickle_exception(raised(ValueError("no such thing"))))
    assert text.startswith("Traceback") and text.endswith("ValueError: no such thing")
    assert "in raised" in text


def test_an_exception_class_defined_in_a_function_reads_too():
    class LocalError(Exception):  # (pickled by value: made anew where it is read)
        pass

    text = error_text(pickle_exception(raised(LocalError("made here"))))
    assert "LocalError: made here" in text


class Trap(Exception):
    """An exception whose unpickling would make a directory."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path

    def __reduce__(self):
        return (os.makedirs, (self.path,))


def test_nothing_in_the_pickle_runs(tmp_path):
    path = str(tmp_path / "made-by-unpickling")
    frames = serialize.dumps((Trap(path), "the traceback text", []))
    pickle.loads(frames[0])  # (for real it would run: the check can fail)
    assert os.path.isdir(path)
    os.rmdir(path)
    assert error_text(frames) == "the traceback text"
    assert not os.path.exists(path)


def test_what_cannot_be_read_says_so():
    assert error_text([b"not a pickle"]).startswith("(the error could not be read")
    assert error_text([pickle.dumps(42)]) == "(the error holds no traceback text)"
    assert error_text([b"x" * (MAX_ERROR_BYTES + 1)]) == "(the error is too large to show here)"
