"""A task's exception and traceback, from the worker that raised it to the client."""
from __future__ import annotations

import linecache
import threading
import traceback

import pytest

from zfutures import RemoteTraceback
from zfutures.remote_errors import pickle_exception, remote_exception

SOURCE = '''\
def explode(message):
    raise RuntimeError(message)  # a comment only the source has


def handle(message):
    try:
        explode(message)
    except RuntimeError as e:
        raise ValueError("while handling") from e
'''


@pytest.fixture
def cell():
    """Functions from source no file holds, as a notebook's cells; the client
    has them in linecache, as IPython puts them there."""
    filename = "<zfutures-test-cell>"
    namespace: dict = {}
    exec(compile(SOURCE, filename, "exec"), namespace)

    def show(visible: bool) -> None:
        if visible:
            linecache.cache[filename] = (len(SOURCE), None, SOURCE.splitlines(True), filename)
        else:
            linecache.cache.pop(filename, None)

    show(False)
    yield namespace, show
    show(False)


def raised(fn, *args) -> BaseException:
    try:
        fn(*args)
    except BaseException as e:  # noqa: B036
        return e
    raise AssertionError("it did not raise")


def test_exception_comes_back_with_its_args_and_the_traceback_as_cause():
    exc = remote_exception(pickle_exception(raised(int, "x")))
    assert type(exc) is ValueError and exc.args == ("invalid literal for int() with base 10: 'x'",)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert exc.__cause__.tb.startswith("Traceback (most recent call last):")
    assert "ValueError: invalid literal" in exc.__cause__.tb


def test_lines_the_worker_has_are_formatted_there_as_the_stdlib_does():
    error = raised(lambda: int("x"))  # (frames of this file: the worker has it)
    text = remote_exception(pickle_exception(error)).__cause__.tb
    assert text == "".join(traceback.format_exception(type(error), error, error.__traceback__))


def test_lines_the_worker_lacks_are_filled_in_by_the_client(cell):
    namespace, show = cell
    error = raised(namespace["handle"], "boom")  # where the worker has no source
    frames = pickle_exception(error)
    show(True)  # where the client has it
    text = remote_exception(frames).__cause__.tb
    assert text == "".join(traceback.format_exception(type(error), error, error.__traceback__))
    assert "raise RuntimeError(message)  # a comment only the source has" in text
    assert '    raise ValueError("while handling") from e\n' in text  # the cause's chain too


def test_lines_no_one_has_are_left_out_as_the_stdlib_does(cell):
    namespace, _ = cell
    error = raised(namespace["explode"], "boom")
    text = remote_exception(pickle_exception(error)).__cause__.tb
    assert text == "".join(traceback.format_exception(type(error), error, error.__traceback__))
    assert "\x00" not in text and 'File "<zfutures-test-cell>", line 2, in explode\n' in text


def test_an_exception_that_does_not_pickle_is_replaced_by_one_that_says_what_it_was():
    error = ValueError("x")
    error.lock = threading.Lock()
    exc = remote_exception(pickle_exception(raised(lambda: _raise(error))))
    assert type(exc) is RuntimeError and str(exc).startswith("ValueError: x (")
    assert "could not be pickled: TypeError" in str(exc)
    assert "ValueError: x" in exc.__cause__.tb


def _raise(error: BaseException) -> None:
    raise error
