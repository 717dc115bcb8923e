"""Turning Python objects into frames and back, and naming pure tasks.

Objects are pickled with cloudpickle (so lambdas and closures travel) using
pickle protocol 5: large buffers (numpy arrays, bytes) are not copied into
the pickle stream but become frames of their own, which ZeroMQ sends without
copying. A pickled object is therefore a list of frames::

    [pickle stream, buffer, buffer, ...]

A task is pickled by :func:`dumps_task` into two streams, the function and
its ``(args, kwargs)``, then their big buffers::

    [function stream, call stream, buffer, ...]

so that ``map`` pickles its function once for all its tasks, and a worker
unpickles a function it has seen before only once. Any Future found
anywhere in the call is written as a reference to its key (a pickle
"persistent id"); the worker resolves those references to the data when it
unpickles the task, so futures nested in lists, dicts, sets or even inside
user objects are all replaced by their values.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import io
import itertools
import os
import pickle
import sys
import threading
import types
import weakref
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, NoReturn

import cloudpickle

#: Buffers at least this large travel as frames of their own; smaller ones
#: stay in the pickle stream, where copying them is cheaper than a frame.
OUT_OF_BAND_THRESHOLD = 64 * 1024

PROTOCOL = 5


def _buffer_callback(frames: list) -> Callable[[pickle.PickleBuffer], bool]:
    """pickle's buffer_callback: big contiguous buffers go to ``frames``."""
    def callback(buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: let pickle copy it in-band
            return True
        if view.nbytes < OUT_OF_BAND_THRESHOLD:
            return True
        frames.append(view)
        return False
    return callback


def dumps(obj: Any) -> list:
    """Pickle ``obj`` into a list of frames (stream first, then big buffers)."""
    frames: list = [b""]
    stream = io.BytesIO()
    _Pickler(stream, protocol=PROTOCOL, buffer_callback=_buffer_callback(frames)).dump(obj)
    frames[0] = stream.getvalue()
    return frames


#: Held while unpickling. Unpickling imports the modules a value or a task
#: needs, and two threads importing one package at once (numpy, on a fresh
#: worker: a task on a task thread, data put here on the loop thread) can
#: each hold a part of it the other waits for: CPython then raises
#: _DeadlockError in one, and the package stays half imported for good.
#: Pickle holds the GIL for most of its work anyway; a value whose modules
#: are imported already needs no lock (:func:`loads_made_here`).
UNPICKLING = threading.RLock()


def loads(frames: list) -> Any:
    """Inverse of :func:`dumps`."""
    with UNPICKLING:
        return pickle.loads(frames[0], buffers=frames[1:])


def loads_made_here(frames: list) -> Any:
    """:func:`loads` of frames this process made from a value of its own (a
    result spilled to disk): its modules are imported already, so it takes
    no lock, and a long unpickling holds up no other thread's."""
    return pickle.loads(frames[0], buffers=frames[1:])


def _shared_rng_method(module: str, name: str) -> Any:
    """The method ``name`` of a module's shared random generator, on this process."""
    return getattr(importlib.import_module(module), name)


def _reduce_shared_rng_method(obj: Any) -> Any:
    """Send ``np.random.random`` and the like by name, not with a copy of the generator.

    Pickled as-is, a method of numpy's (or the ``random`` module's) shared
    generator carries that generator's state along, so every task would draw
    the very same numbers. By name, each worker uses its own generator.
    """
    owner = getattr(obj, "__self__", None)
    if owner is None or not callable(obj):
        return NotImplemented
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None and owner is getattr(numpy_random.mtrand, "_rand", None):
        return _shared_rng_method, ("numpy.random", obj.__name__)
    if owner is getattr(sys.modules.get("random"), "_inst", None):
        return _shared_rng_method, ("random", obj.__name__)
    return NotImplemented


def _reduce_code_keeping_filename(pickler: cloudpickle.Pickler, code: types.CodeType) -> Any:
    """cloudpickle's reduction of a code object sent by value, with its file's name.

    cloudpickle (3.0 on) names the file of all such code ``<dynamic-code>``;
    then neither the worker nor the client can show the source lines of a
    task's traceback (see remote_errors.py).
    """
    constructor, args = pickler.dispatch_table[types.CodeType](code)
    return constructor, tuple(code.co_filename if type(arg) is str and arg == _DYNAMIC_CODE
                              else arg for arg in args)


_DYNAMIC_CODE = "<dynamic-code>"


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, sending the methods of shared random generators by name, and
    code with the name of its file."""

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _METHOD_TYPES:
            reduced = _reduce_shared_rng_method(obj)
            if reduced is not NotImplemented:
                return reduced
        elif kind is types.CodeType:
            return _reduce_code_keeping_filename(self, obj)
        return super().reducer_override(obj)


_METHOD_TYPES = (types.BuiltinMethodType, types.MethodType)


class _TaskPickler(_Pickler):
    """Writes every instance of ``reference_type`` as a reference to its key."""

    def __init__(self, file, frames: list, reference_type: type[Any], deps: dict):
        super().__init__(file, protocol=PROTOCOL, buffer_callback=_buffer_callback(frames))
        self._reference_type = reference_type
        self._deps = deps

    def persistent_id(self, obj: Any) -> Any:
        if type(obj) is self._reference_type:
            self._deps[obj.key] = None
            return obj.key
        return None


class PickledFunction(NamedTuple):
    """A function pickled once, to be sent with many calls."""

    stream: bytes
    buffers: list
    deps: list[str]


#: Functions pickled recently: id -> (weak reference to the function, its
#: pickle). Pickling a function defined in a script or notebook (by value)
#: costs far more than a small call; a function submitted again is sent as it
#: was first pickled (as dask does). Weakly: a function is not kept alive, nor
#: what it holds, once its caller is done with it (as concurrent.futures keeps
#: no call alive past its future, CPython #16284). Bound methods, and the
#: callables that cannot be weakly referenced (a builtin's bound method), are
#: not kept: each is a new object that holds its instance.
_pickled_functions: dict[int, tuple[weakref.ref, PickledFunction]] = {}
_PICKLED_FUNCTIONS_MAX = 128
_PICKLED_FUNCTION_MAX_BYTES = 100_000


def dumps_function(fn: Callable, reference_type: type) -> PickledFunction:
    """Pickle a task's function (see :func:`dumps_task`), or reuse its recent pickle."""
    cached = _pickled_functions.get(id(fn))
    if cached is not None and cached[0]() is fn:
        return cached[1]
    pickled = _dumps_function(fn, reference_type)
    if not pickled.deps and not pickled.buffers and type(fn) not in _METHOD_TYPES and \
            len(pickled.stream) < _PICKLED_FUNCTION_MAX_BYTES:  # (futures inside change)
        try:
            ref = weakref.ref(fn, functools.partial(_forget_function, id(fn)))
        except TypeError:  # (a builtin, or a callable without weak references)
            return pickled
        if len(_pickled_functions) >= _PICKLED_FUNCTIONS_MAX:
            _pickled_functions.clear()
        _pickled_functions[id(fn)] = (ref, pickled)
    return pickled


def _forget_function(fn_id: int, ref: weakref.ref) -> None:
    """A cached function is gone: its entry goes, before its id can be reused."""
    cached = _pickled_functions.get(fn_id)
    if cached is not None and cached[0] is ref:
        _pickled_functions.pop(fn_id, None)


def _dumps_function(fn: Callable, reference_type: type) -> PickledFunction:
    buffers: list = []
    deps: dict = {}
    stream = io.BytesIO()
    try:
        _TaskPickler(stream, buffers, reference_type, deps).dump(fn)
    except Exception as e:
        _reraise_naming_culprit(e, fn, (), {}, reference_type)
    return PickledFunction(stream.getvalue(), buffers, list(deps))


def dumps_task(fn: Callable, args: tuple, kwargs: dict, reference_type: type,
               function: PickledFunction | None = None) -> tuple[list, list[str]]:
    """Pickle a call into frames; return ``(frames, keys it depends on)``.

    ``function``, from :func:`dumps_function`, saves pickling ``fn`` again.
    Raises whatever pickling raises (``TypeError`` or
    ``pickle.PicklingError``), re-worded to name the object at fault.
    """
    if function is None:
        function = dumps_function(fn, reference_type)
    if not kwargs and _plain(args):  # the common case of map: cheaper by far
        return [function.stream, pickle.dumps((args, kwargs), PROTOCOL),
                *function.buffers], list(function.deps)
    buffers: list = []
    deps: dict = dict.fromkeys(function.deps)  # keeps first-seen order, drops repeats
    stream = io.BytesIO()
    try:
        _TaskPickler(stream, buffers, reference_type, deps).dump((args, kwargs))
    except Exception as e:
        _reraise_naming_culprit(e, fn, args, kwargs, reference_type)
    return [function.stream, stream.getvalue(), *function.buffers, *buffers], list(deps)


_PLAIN_TYPES = frozenset((int, float, str, bool, type(None), complex))


def _plain(values: tuple, depth: int = 2) -> bool:
    """Whether ``values`` hold only numbers, strings and short tuples or lists
    of them: what the standard pickler writes exactly as cloudpickle would,
    with no future inside (and no bytes, which may be big buffers)."""
    for value in values:
        kind = type(value)
        if kind in _PLAIN_TYPES:
            continue
        if (kind is tuple or kind is list) and depth and len(value) <= 16 and \
                _plain(value, depth - 1):
            continue
        return False
    return True


def _reraise_naming_culprit(error: Exception, fn: Callable, args: tuple, kwargs: dict,
                            reference_type: type) -> NoReturn:
    culprit = _find_unpicklable(fn, args, kwargs, reference_type)
    message = f"cannot serialize {culprit} for the cluster: {type(error).__name__}: {error}"
    kind = type(error) if isinstance(error, (TypeError, pickle.PicklingError)) else TypeError
    raise kind(message) from error


def _find_unpicklable(fn: Callable, args: tuple, kwargs: dict, reference_type: type) -> str:
    """Describe the first part of a call that does not pickle on its own."""
    parts = [("the function", fn)]
    parts += [(f"argument {i}", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, part in parts:
        try:
            _TaskPickler(io.BytesIO(), [], reference_type, {}).dump(part)
        except Exception:
            text = repr(part)
            return f"{label} {text[:80] + '...' if len(text) > 80 else text}"
    return "the call"


class _TaskUnpickler(pickle.Unpickler):
    def __init__(self, file, buffers: Any, data: Mapping[str, Any]):
        super().__init__(file, buffers=buffers)
        self._data = data
        self.used_data = False

    def persistent_load(self, key: str) -> Any:
        self.used_data = True
        return self._data[key]


#: Most functions a worker keeps unpickled, keyed by their pickled bytes.
FUNCTION_CACHE_SIZE = 256


def loads_task(frames: list, data: Mapping[str, Any],
               functions: dict | None = None) -> tuple[Callable, tuple, dict]:
    """Unpickle a task, replacing key references with ``data[key]``.

    ``functions`` caches unpickled functions by their pickled bytes, for
    those that stand alone (no buffers, no futures inside).
    """
    buffers = iter(frames[2:])  # the function takes its buffers first, the call the rest
    fn = None
    if functions is not None and len(frames) == 2:
        key = bytes(frames[0])
        fn = functions.get(key)
    with UNPICKLING:
        if fn is None:
            unpickler = _TaskUnpickler(io.BytesIO(frames[0]), buffers, data)
            fn = unpickler.load()
            if functions is not None and len(frames) == 2 and not unpickler.used_data:
                if len(functions) >= FUNCTION_CACHE_SIZE:
                    functions.clear()
                functions[key] = fn
        args, kwargs = _TaskUnpickler(io.BytesIO(frames[1]), buffers, data).load()
    return fn, args, kwargs


_SESSION: str  # (set by _new_session, below)
_counter: itertools.count[int]


def _new_session() -> None:
    """A fresh random prefix for :func:`unique_token`, and its counter from zero."""
    global _SESSION, _counter
    _SESSION = os.urandom(8).hex()
    _counter = itertools.count()


_new_session()
# A child made by fork() would otherwise make its parent's keys, one for one,
# and the center would take the child's calls for the parent's.
os.register_at_fork(after_in_child=_new_session)


def unique_token() -> str:
    """A token no other call, here or in another process, gets (for impure keys).

    A random prefix per process (made again in a forked child) and a counter:
    as unique as a UUID, and cheaper.
    """
    return f"{_SESSION}{next(_counter):016x}"


def token(frames: list) -> str:
    """A deterministic 32-hex-digit token of a pickled task's bytes."""
    h = hashlib.blake2b(digest_size=16)
    for frame in frames:
        h.update(frame)
    return h.hexdigest()


def frames_nbytes(frames: list) -> int:
    """Total bytes of payload frames (bytes, or buffers as pickle gives them).

    Per task on the submit path: bytes, the common case, need no memoryview.
    """
    total = 0
    for frame in frames:
        total += len(frame) if type(frame) is bytes else memoryview(frame).nbytes
    return total


#: Containers whose elements :func:`sizeof` looks into, and how many it samples.
_CONTAINERS = (list, tuple, set, frozenset, dict)
_SAMPLE = 8


def sizeof(obj: Any, depth: int = 3) -> int:
    """Bytes an object holds, cheaply estimated; used for data locality and to
    decide which results are small enough to travel with their completion.

    Containers count their elements (a sample of them, scaled, when there are
    many), so that a tuple holding an array is as big as the array.

    >>> sizeof((bytearray(10**6), "label")) > 10**6
    True
    """
    nbytes = getattr(obj, "nbytes", None)
    if type(nbytes) is int:
        return nbytes
    try:
        own = sys.getsizeof(obj)
    except Exception:
        return 64
    if depth and type(obj) in _CONTAINERS and obj:
        elements = obj.values() if type(obj) is dict else obj
        sample = list(itertools.islice(elements, _SAMPLE))
        inner = sum(sizeof(element, depth - 1) for element in sample)
        own += inner * len(obj) // len(sample)
    return own
