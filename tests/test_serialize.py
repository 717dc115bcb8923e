"""Objects to frames and back; tasks with futures as key references; pure-task tokens."""
from __future__ import annotations

import dataclasses
import gc
import os
import pickle
import sys
import threading
import weakref

import numpy as np
import pytest

from zfutures.serialize import (
    OUT_OF_BAND_THRESHOLD,
    dumps,
    dumps_function,
    dumps_task,
    loads,
    loads_task,
    sizeof,
    token,
    unique_token,
)


class Ref:
    """A stand-in for Future: all the task pickler looks at is the type and ``key``."""

    def __init__(self, key: str):
        self.key = key

    def __repr__(self) -> str:
        return f"Ref({self.key!r})"


@dataclasses.dataclass
class Box:
    content: object


def add(a, b=0):
    return a + b


def through_the_wire(frames: list) -> list:
    """Frames as a receiver gets them: separate bytes objects, nothing shared."""
    return [bytes(frame) for frame in frames]


# --------------------------------------------------------------------------- dumps / loads


@pytest.mark.parametrize("obj", [
    None, 0, -(2**70), 1.5, "text é", b"\x00bytes", [1, [2, [3]]], (1, "a"), {"k": {1, 2}},
    frozenset({"x"}), Box([1, 2]), range(10),
])
def test_plain_objects_round_trip(obj):
    assert loads(through_the_wire(dumps(obj))) == obj


def test_lambdas_and_closures_round_trip_by_value():
    offset = 10

    def closure(x):
        return x + offset

    assert loads(through_the_wire(dumps(closure)))(1) == 11
    assert loads(through_the_wire(dumps(lambda x: x * 3)))(2) == 6


def test_large_array_travels_out_of_band_without_being_copied():
    arr = np.arange(1_000_000, dtype=np.float64)            # 8 MB
    frames = dumps(arr)
    assert len(frames) > 1
    assert len(frames[0]) < 10_000                          # the stream holds no data
    buffer = frames[1]
    assert isinstance(buffer, memoryview)
    assert buffer.nbytes == arr.nbytes
    assert np.shares_memory(np.frombuffer(buffer, dtype=arr.dtype), arr)

    copy = loads(through_the_wire(frames))
    assert copy.dtype == arr.dtype and copy.shape == arr.shape
    assert np.array_equal(copy, arr)


def test_loading_uses_the_received_buffer_without_copying():
    arr = np.arange(100_000, dtype=np.int64)
    received = [bytes(frames) if i == 0 else bytearray(frames)
                for i, frames in enumerate(dumps(arr))]
    copy = loads(received)
    assert np.shares_memory(copy, np.frombuffer(received[1], dtype=np.int64))


def test_arrays_inside_containers_each_get_their_own_frame():
    a = np.ones(100_000)
    b = np.zeros((300, 300), dtype=np.float32)
    frames = dumps({"a": a, "b": [b], "small": np.arange(3)})
    assert len(frames) == 3
    out = loads(through_the_wire(frames))
    assert np.array_equal(out["a"], a) and np.array_equal(out["b"][0], b)
    assert out["b"][0].dtype == np.float32 and np.array_equal(out["small"], np.arange(3))


def test_small_array_stays_in_the_stream():
    frames = dumps(np.arange(10))
    assert len(frames) == 1
    assert np.array_equal(loads(through_the_wire(frames)), np.arange(10))


def test_non_contiguous_large_array_round_trips():
    base = np.arange(2 * OUT_OF_BAND_THRESHOLD, dtype=np.int64).reshape(-1, 2)
    view = base[:, 1]                                       # strided: no single buffer
    out = loads(through_the_wire(dumps(view)))
    assert np.array_equal(out, view)


def test_fortran_ordered_array_keeps_its_values_and_order():
    arr = np.asfortranarray(np.arange(200_000, dtype=np.int32).reshape(400, 500))
    out = loads(through_the_wire(dumps(arr)))
    assert np.array_equal(out, arr)


def test_sizeof_uses_nbytes_for_arrays():
    arr = np.zeros(1000, dtype=np.float64)
    assert sizeof(arr) == 8000
    assert sizeof(b"x" * 1000) >= 1000


def test_sizeof_counts_what_containers_hold():
    arr = np.zeros(10**6, dtype=np.uint8)
    assert sizeof((arr, "label")) >= 10**6
    assert sizeof({"a": arr, "b": [arr, arr]}) >= 3 * 10**6
    many = [np.zeros(1000, dtype=np.uint8)] * 1000  # sampled, then scaled
    assert 10**6 <= sizeof(many) <= 2 * 10**6
    assert sizeof([]) == sys.getsizeof([]) and sizeof({}) == sys.getsizeof({})
    nested = [[[[arr]]]]  # deeper than it looks: an estimate, not a walk
    assert sizeof(nested) < 10**6


# --------------------------------------------------------------------------- tasks


def test_dumps_task_finds_references_nested_anywhere_in_the_call():
    refs = {name: Ref(name) for name in
            ["arg", "in-list", "in-dict", "in-set", "in-tuple", "in-kwarg", "deep", "in-obj"]}
    args = (refs["arg"], [1, refs["in-list"]], {"k": refs["in-dict"]}, {refs["in-set"]},
            (refs["in-tuple"],), Box(refs["in-obj"]))
    kwargs = {"b": refs["in-kwarg"], "c": [{"d": ({refs["deep"]},)}]}
    _frames, deps = dumps_task(add, args, kwargs, Ref)
    assert sorted(deps) == sorted(refs)


def test_dumps_task_lists_each_dependency_once_in_first_seen_order():
    x, y = Ref("x"), Ref("y")
    _frames, deps = dumps_task(add, (y, x, [y, Ref("x")]), {"b": x}, Ref)
    assert deps == ["y", "x"]


def test_dumps_task_without_references_has_no_dependencies():
    _frames, deps = dumps_task(add, (1, [2], {"k": 3}), {}, Ref)
    assert deps == []


def test_loads_task_replaces_references_with_values():
    args = (Ref("x"), [Ref("y"), 5], {"k": Ref("x")}, {Ref("s")}, Box(Ref("y")))
    kwargs = {"b": (Ref("y"),)}
    frames, _ = dumps_task(add, args, kwargs, Ref)
    fn, args2, kwargs2 = loads_task(through_the_wire(frames), {"x": 1, "y": "Y", "s": 3.5})
    assert fn is add
    assert args2[:4] == (1, ["Y", 5], {"k": 1}, {3.5})
    assert args2[4] == Box("Y")
    assert kwargs2 == {"b": ("Y",)}


def test_loads_task_shares_one_value_between_references_to_the_same_key():
    frames, _ = dumps_task(add, (Ref("x"), Ref("x")), {}, Ref)
    value = [1, 2]
    _, args, _ = loads_task(frames, {"x": value})
    assert args[0] is value and args[1] is value


def test_task_with_a_large_array_argument_sends_it_out_of_band():
    arr = np.ones(200_000)
    frames, deps = dumps_task(add, (arr, Ref("x")), {}, Ref)
    assert len(frames) == 3 and deps == ["x"]              # function, call, the array
    _, args, _ = loads_task(through_the_wire(frames), {"x": 0})
    assert np.array_equal(args[0], arr) and args[1] == 0


def test_only_the_exact_reference_type_is_a_reference():
    class NotARef:
        key = "looks-like-one"

    _frames, deps = dumps_task(add, (NotARef(), Box("key")), {}, Ref)
    assert deps == []


# --------------------------------------------------------------------------- tokens


def task_token(fn, *args, **kwargs) -> str:
    frames, _ = dumps_task(fn, args, kwargs, Ref)
    return token(frames)


def test_token_is_32_hex_digits_and_deterministic_for_equal_calls():
    first = task_token(add, 1, b=[2, 3])
    assert len(first) == 32 and int(first, 16) >= 0
    assert task_token(add, 1, b=[2, 3]) == first
    assert task_token(add, 1, b=[2, 3]) == task_token(add, 1, b=list((2, 3)))


def test_token_is_deterministic_for_calls_with_futures_and_arrays():
    arr = np.arange(100_000)
    assert task_token(add, Ref("x"), arr) == task_token(add, Ref("x"), arr.copy())


@pytest.mark.parametrize("other", [
    lambda: task_token(add, 2, b=[2, 3]),          # another argument
    lambda: task_token(add, 1, b=[2, 4]),          # another keyword value
    lambda: task_token(add, 1, [2, 3]),            # positional instead of keyword
    lambda: task_token(lambda a, b=0: a - b, 1, b=[2, 3]),   # another function
], ids=["arg", "kwarg", "positional", "function"])
def test_token_differs_for_different_calls(other):
    assert other() != task_token(add, 1, b=[2, 3])


def test_token_differs_for_different_futures():
    assert task_token(add, Ref("x")) != task_token(add, Ref("y"))


def test_token_covers_out_of_band_buffers():
    a = np.zeros(100_000)
    b = a.copy()
    b[-1] = 1.0
    frames_a, _ = dumps_task(add, (a,), {}, Ref)
    frames_b, _ = dumps_task(add, (b,), {}, Ref)
    assert frames_a[0] == frames_b[0]                  # the data is not in the stream ...
    assert token(frames_a) != token(frames_b)          # ... yet the token sees it


# --------------------------------------------------------------------------- failures


def test_unpicklable_positional_argument_is_named():
    lock = threading.Lock()
    with pytest.raises((TypeError, pickle.PicklingError), match="argument 1"):
        dumps_task(add, (1, lock), {}, Ref)


def test_unpicklable_keyword_argument_is_named():
    with pytest.raises((TypeError, pickle.PicklingError), match="keyword argument 'b'"):
        dumps_task(add, (1,), {"b": threading.Lock()}, Ref)


def test_argument_failing_to_pickle_with_another_error_raises_TypeError_naming_it():
    class Stubborn:
        def __reduce__(self):
            raise ValueError("no pickling for me")

        def __repr__(self):
            return "<Stubborn object>"

    with pytest.raises(TypeError, match=r"argument 0 <Stubborn object>") as info:
        dumps_task(add, (Stubborn(),), {}, Ref)
    assert "no pickling for me" in str(info.value)


def test_unpicklable_object_nested_in_an_argument_is_blamed_on_that_argument():
    gen = (i for i in range(3))
    with pytest.raises((TypeError, pickle.PicklingError), match="argument 2"):
        dumps_task(add, (1, 2, {"deep": [gen]}), {}, Ref)


def test_a_function_pickled_once_serves_many_calls():
    function = dumps_function(add, Ref)
    first, _ = dumps_task(add, (1, 2), {}, Ref, function)
    second, _ = dumps_task(add, (3, 4), {}, Ref, function)
    assert first[0] is second[0] is function.stream         # not pickled again
    assert first == dumps_task(add, (1, 2), {}, Ref)[0]     # same bytes as without it
    functions = {}
    fn1, args1, _ = loads_task(first, {}, functions)
    fn2, args2, _ = loads_task(second, {}, functions)
    assert fn1 is fn2 and args1 == (1, 2) and args2 == (3, 4)  # unpickled once


def test_functions_holding_futures_are_not_cached():
    holder = {"ref": Ref("k")}
    frames, deps = dumps_task(lambda: holder, (), {}, Ref)
    assert deps == ["k"]
    functions = {}
    fn, _, _ = loads_task(frames, {"k": 1}, functions)
    assert fn()["ref"] == 1 and not functions               # depends on data: not kept


def test_a_function_submitted_again_is_not_pickled_again():
    def work(x):
        return x + 1

    first = dumps_function(work, Ref)
    assert dumps_function(work, Ref) is first
    other = dumps_function(lambda x: x + 1, Ref)
    assert other is not first


def test_unique_tokens_of_a_forked_child_differ_from_its_parents():
    unique_token()  # the parent has made some already
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next tokens, then leave at once
        try:
            os.write(write_end, " ".join(unique_token() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [unique_token() for _ in range(3)]
    assert len(child) == 3
    assert not set(child) & set(parent)
    assert {t[:16] for t in child}.isdisjoint({t[:16] for t in parent})  # a prefix of its own


def test_a_function_that_refers_to_a_key_is_pickled_each_time():
    ref = Ref("key-1")

    def uses(x):
        return (x, ref)

    first = dumps_function(uses, Ref)
    assert first.deps == ["key-1"]
    assert dumps_function(uses, Ref) is not first


def test_calls_with_plain_arguments_take_the_fast_path_and_load_the_same():
    def add(a, b=0):
        return a + b

    plain_args = (1, 2.5, "s", None, True, (1, [2, 3]))
    frames, deps = dumps_task(add, plain_args, {}, Ref)
    assert deps == []
    assert loads_task(frames, {}, {})[1:] == (plain_args, {})
    # A future anywhere, even inside a list, still becomes a reference.
    frames, deps = dumps_task(add, (1, [Ref("k")]), {}, Ref)
    assert deps == ["k"]
    assert loads_task(frames, {"k": 41}, {})[1] == (1, [41])


def test_killed_worker_is_a_broken_process_pool_and_pickles_by_reference():
    from concurrent.futures.process import BrokenProcessPool

    from zfutures import KilledWorker, ZFuturesError
    from zfutures.errors import KilledWorker as same

    assert KilledWorker is same
    error = pickle.loads(pickle.dumps(KilledWorker("died running 'x'")))
    assert type(error) is KilledWorker
    assert isinstance(error, BrokenProcessPool) and isinstance(error, ZFuturesError)
    assert error.args == ("died running 'x'",)


def test_center_and_worker_processes_start_without_multiprocessing_psutil_or_asyncio():
    """Each is tens of milliseconds of every process's start, and neither
    needs them: KilledWorker is made on first use, RSS is read from /proc,
    monitor events are parsed by the center itself."""
    import subprocess
    import sys

    code = ("import sys, zfutures.cli, zfutures.worker, zfutures.nanny, zfutures.center; "
            "print(sorted(m for m in ('concurrent.futures.process', 'psutil', 'asyncio') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_frames_nbytes_counts_bytes_and_buffers_of_any_item_size():
    from zfutures.serialize import dumps, frames_nbytes

    array = np.arange(1000, dtype=np.float64)
    frames = [b"abc", bytearray(5), memoryview(array), pickle.PickleBuffer(array)]
    assert frames_nbytes(frames) == 3 + 5 + 8000 + 8000
    assert frames_nbytes([]) == 0
    assert frames_nbytes(dumps(array)) >= 8000


def test_the_pickles_of_functions_are_kept_without_keeping_the_functions():
    def work(x):
        return x + 1

    ref = weakref.ref(work)
    dumps_function(work, Ref)
    del work
    gc.collect()
    assert ref() is None

    class Big:
        def method(self):
            return self

    big = Big()
    ref = weakref.ref(big)
    first = dumps_function(big.method, Ref)
    assert dumps_function(big.method, Ref) is not first  # a bound method is not kept
    del big
    gc.collect()
    assert ref() is None
