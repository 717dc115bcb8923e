"""A model-based stress test: random sequences of user calls on a real local
cluster, each outcome checked against a model of what it may end with.

A sequence starts a local cluster of two workers and makes random calls:
submit (pure, impure, with a chosen key), map, tasks on earlier futures
nested in lists, tuples, sets and dicts, resubmits of the same pure call,
cancel, release, scatter (and scatters of the same data again), gather
(raising and skipping errors), who_has, tasks that raise, a PoolExecutor on
the same or a cluster of its own, and SIGKILLs of workers. Between calls it
sleeps a random short while, to vary the interleavings. The model
(tests/stress_model.py) knows the value or the error of every call; a worker
killed allows FutureLostError only to futures that need data scattered to
workers all killed since. At the end every future must have ended (within
END_BOUND seconds), the cluster must forget every key once the futures are
gone, and no process may be left behind.

Short by default (SEQUENCES sequences of STEPS calls: part of ``make test``).
Environment:

- ``ZFUTURES_STRESS_SECONDS=600``: run sequences for that long (``make stress SECONDS=600``);
- ``ZFUTURES_STRESS_SEED=N``: replay sequence N (its calls, not their timing);
- ``ZFUTURES_STRESS_STEPS=N``: calls per sequence.

A failure names the seed and lists the calls made, written as a script.
"""
from __future__ import annotations

import concurrent.futures
import gc
import itertools
import os
import random
import signal
import threading
import time
import traceback

import pytest
import stress_model
from conftest import zfutures_children
from stress_model import (
    NO_VALUE,
    Allowed,
    Entry,
    ScatterEvent,
    add,
    expect,
    expect_with_inputs,
    fail,
    fail_custom,
    inc,
    slow_add,
    total,
)

import zfutures
from zfutures import Executor, Future, FutureLostError, PoolExecutor
from zfutures.errors import RemoteTraceback

SECONDS = float(os.environ.get("ZFUTURES_STRESS_SECONDS") or 0)
SEED = os.environ.get("ZFUTURES_STRESS_SEED")
STEPS = int(os.environ.get("ZFUTURES_STRESS_STEPS") or 60)
SEQUENCES = 3  # by default, without SECONDS
MAX_KILLS = 2  # per sequence: below the center's allowed_failures (3), so no KilledWorker
END_BOUND = 60.0  # seconds within which every future ends
CLEAN_BOUND = 30.0  # seconds within which the cluster forgets released keys
SEQUENCE_BOUND = 240.0  # a sequence that takes longer is stuck (a call without a bound hung)

pytestmark = pytest.mark.timeout(
    SECONDS + 2 * SEQUENCE_BOUND if SECONDS else SEQUENCES * SEQUENCE_BOUND + 60)

OPERATIONS = {  # name: weight
    "submit": 18, "depend": 12, "map": 5, "resubmit": 6, "scatter": 7, "cancel": 10,
    "ex_cancel": 2, "release": 10, "gather": 6, "result": 6, "who_has": 3,
    "pool_submit": 4, "pool_map": 2, "pool_cancel": 2, "pool_shutdown": 1, "kill": 2,
}
CHOSEN_KEYS = [f"stress-key-{i}" for i in range(4)]  # few: chosen keys come back often
PAUSES = (0, 0, 0, 0, 0, 0.001, 0.005, 0.02, 0.05)


class StressFailure(AssertionError):
    pass


class Stats:
    def __init__(self):
        self.sequences = self.calls = self.kills = self.scatters_refused = 0
        self.seeds: list[int] = []
        self.ends = {"value": 0, "error": 0, "cancelled": 0, "lost": 0}
        self.started = time.monotonic()

    def summary(self) -> str:
        seeds = self.seeds if len(self.seeds) <= 10 else \
            f"{self.seeds[0]}..{self.seeds[-1]}"
        return (f"zfutures stress: {self.sequences} sequences, {self.calls} calls, "
                f"{self.kills} workers killed ({self.scatters_refused} scatters refused "
                f"after a kill), in {time.monotonic() - self.started:.1f} s; "
                f"futures ended: {self.ends}; seeds {seeds}")


class _Summary:
    """Prints the numbers at the end of pytest's output, -s or not."""

    def __init__(self, stats: Stats):
        self.stats = stats

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.write_line(self.stats.summary())


def _outcome(future, timeout: float):
    """("value", v), ("cancelled", exc), ("error", exc), or ("timeout", exc)."""
    try:
        return "value", future.result(timeout)
    except BaseException as e:  # noqa: BLE001 (the future's error, checked by the caller)
        # The error is the future's own, which keeps it: its traceback would
        # keep this frame and its callers' (and every entry they hold), and
        # the future with them, as with a concurrent.futures future.
        e.__traceback__ = None
        future = None  # noqa: F841
        if isinstance(e, concurrent.futures.CancelledError):
            return "cancelled", e
        if isinstance(e, concurrent.futures.TimeoutError):
            return "timeout", e
        if isinstance(e, Exception):
            return "error", e
        raise


class Sequence:
    """One random sequence of calls on a fresh local cluster, checked as it goes."""

    def __init__(self, seed: int, stats: Stats, steps: int):
        self.seed = seed
        self.rng = random.Random(seed)
        self.stats = stats
        self.steps = steps
        self.log: list[str] = []
        self.step = 0
        self.names = itertools.count()
        self.entries: list[Entry] = []  # futures held, cancelled ones too
        self.killed: set[str] = set()  # addresses of workers killed
        self.kills = 0
        self.history: dict[tuple, str] = {}  # pure plain call -> its key
        self.chosen_calls: dict[str, tuple] = {}  # chosen key -> its call, last made
        self.ex: Executor | None = None
        self.pool: PoolExecutor | None = None
        self.pool_entries: list[Entry] = []  # of the current pool
        self.scatters: dict[str, list] = {}  # key -> its ScatterEvents
        self.pool_alone = self.rng.random() < 0.25  # a cluster of its own, else ex's
        self.pools = 0

    # ------------------------------------------------------------------ helpers

    def note(self, line: str) -> None:
        self.log.append(f"[{self.step:3}] {line}")

    def fail(self, why: str) -> None:
        raise StressFailure(why)

    def call(self) -> None:
        self.stats.calls += 1

    def new_name(self) -> str:
        return f"f{next(self.names)}"

    def usable(self) -> list[Entry]:
        """Futures of the Executor a task may take as input: not cancelled."""
        return [e for e in self.entries if e.kind != "pool" and not e.cancelled]

    def random_call(self) -> tuple:
        rng = self.rng
        choice = rng.random()
        if choice < 0.25:
            return inc, (rng.randrange(8),), {}
        if choice < 0.5:
            return add, (rng.randrange(5), rng.randrange(5)), {}
        if choice < 0.8:
            delay = rng.choice((0.001, 0.01, 0.05, 0.2, 0.5))
            return slow_add, (delay, rng.randrange(5), rng.randrange(5)), {}
        if choice < 0.9:
            return fail, (rng.randrange(3),), {}
        return fail_custom, (f"tag{rng.randrange(3)}", rng.randrange(3)), {}

    @staticmethod
    def show_call(fn, args: tuple, kwargs: dict, **options) -> str:
        parts = [fn.__name__, *map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items()),
                 *(f"{k}={v!r}" for k, v in options.items())]
        return ", ".join(parts)

    def check_end(self, entry: Entry, kind: str, got, where: str) -> None:
        """``entry`` ended with (kind, got): is that allowed?"""
        killed = self.killed
        if kind == "timeout":
            self.fail(f"{where}: {entry} did not end within the bound "
                      f"(status {entry.future.status})")
        if entry.cancelled:
            if kind != "cancelled":
                self.fail(f"{where}: {entry} was cancelled (cancel() returned True) "
                          f"but ended with {kind} {got!r}")
            self.stats.ends["cancelled"] += 1
            return
        if kind == "cancelled":
            if not entry.cancel_ok:
                self.fail(f"{where}: {entry} ended cancelled, never cancelled")
            self.stats.ends["cancelled"] += 1
            return
        if kind == "value":
            if entry.allowed.value is NO_VALUE or got != entry.allowed.value:
                self.fail(f"{where}: {entry} ended with value {got!r}")
            self.stats.ends["value"] += 1
            return
        if isinstance(got, FutureLostError):
            if not entry.lost_ok(killed):
                self.fail(f"{where}: {entry} ended lost ({got!r}), but no data it needs "
                          f"was on killed workers only (killed: {sorted(killed)}; "
                          f"scattered to {[sorted(ev.holders) for ev in entry.roots]})")
            self.stats.ends["lost"] += 1
            return
        if (type(got), got.args) not in entry.allowed.errors:
            self.fail(f"{where}: {entry} ended with error {got!r}:\n"
                      + "".join(traceback.format_exception(type(got), got, got.__traceback__)))
        if not isinstance(got.__cause__, RemoteTraceback):
            self.fail(f"{where}: {entry}'s error {got!r} has no remote traceback as its "
                      f"cause ({got.__cause__!r})")
        self.stats.ends["error"] += 1

    def check_status(self, entry: Entry, kind: str) -> None:
        status = entry.future.status
        allowed = {"value": {"finished"}, "cancelled": {"cancelled"},
                   "error": {"error", "lost"}}[kind]
        if kind == "value" and entry.lost_ok(self.killed):
            # A value already here stays readable once the cluster lost the key.
            allowed = {"finished", "lost"}
        if status not in allowed:
            self.fail(f"{entry} ended with {kind} but its status is {status!r}")

    def poll(self, condition, what: str, bound: float = CLEAN_BOUND):
        """Poll ``condition()`` (returns (ok, detail)) until ok; fail after ``bound`` s."""
        deadline = time.monotonic() + bound
        while True:
            ok, detail = condition()
            if ok:
                return detail
            if time.monotonic() > deadline:
                self.fail(f"{what} not so within {bound} s: {detail}")
            time.sleep(0.05)

    def futures_alive(self) -> str:
        """Futures of ours still alive in this process, and what holds them
        (a key they hold is no leak of the cluster's)."""
        gc.collect()
        alive = [o for o in gc.get_objects()
                 if isinstance(o, Future) and o._executor is self.ex]
        if not alive:
            return "no future of ours is alive here"
        def holders(obj, depth=0):
            found = [r for r in gc.get_referrers(obj)
                     if r is not alive and not (isinstance(r, list) and len(r) > 10000)]
            if depth == 2:
                return [type(r).__name__ for r in found]
            return [(type(r).__name__, holders(r, depth + 1)) for r in found[:4]]

        held = [f"{f!r} held by {holders(f)}" for f in alive[:5]]
        return f"{len(alive)} futures of ours still alive here: {held}"

    def worker_data(self) -> dict:
        """The keys in each worker's memory, as the workers see it."""
        deadline = time.monotonic() + END_BOUND
        while True:  # (a worker may be leaving or starting as we ask)
            try:
                return self.ex.run(stress_model.keys_in_memory, timeout=10)
            except Exception as e:  # noqa: BLE001
                if time.monotonic() > deadline:
                    self.fail(f"ex.run(keys_in_memory) kept failing: {e!r}")
                time.sleep(0.1)

    def live_workers(self) -> set[str]:
        return set(self.ex.scheduler_info()["workers"])

    # ------------------------------------------------------------------ operations

    def op_submit(self) -> None:
        rng = self.rng
        fn, args, kwargs = self.random_call()
        mode = rng.random()
        name = self.new_name()
        if mode < 0.25:
            future = self.ex.submit(fn, *args, pure=False, **kwargs)
            shown = self.show_call(fn, args, kwargs, pure=False)
        elif mode < 0.5:
            key = rng.choice(CHOSEN_KEYS)
            in_use = [e for e in self.entries
                      if not e.cancelled and (e.key == key or key in e.inputs)]
            if in_use:  # another call under that key would be the user's own conflict
                fn, args, kwargs = self.chosen_calls[key]
            self.chosen_calls[key] = (fn, args, kwargs)
            pure = rng.random() < 0.5
            future = self.ex.submit(fn, *args, key=key, pure=pure, **kwargs)
            shown = self.show_call(fn, args, kwargs, key=key, pure=pure)
            if future.key != key:
                self.fail(f"submit with key={key!r} made key {future.key!r}")
        else:
            future = self.ex.submit(fn, *args, **kwargs)
            shown = self.show_call(fn, args, kwargs)
            self.check_pure_key(fn, args, kwargs, future.key)
        self.call()
        self.note(f"{name} = ex.submit({shown})  # {future.key}")
        if mode < 0.25:
            token = future.key.rpartition("-")[2]
            if not future.key.startswith(fn.__name__ + "-") or len(token) != 32 or \
                    any(c not in "0123456789abcdef" for c in token):
                self.fail(f"impure key {future.key!r} is not {fn.__name__}-<32 hex digits>")
            if any(e.key == future.key for e in self.entries):
                self.fail(f"impure key {future.key!r} given twice")
        self.entries.append(Entry(name, future, expect(fn, args, kwargs), "task",
                                  call=(fn, args, kwargs)))

    def check_pure_key(self, fn, args: tuple, kwargs: dict, key: str) -> None:
        call = (fn, args, tuple(sorted(kwargs.items())))
        known = self.history.setdefault(call, key)
        if known != key:
            self.fail(f"the same pure call {self.show_call(fn, args, kwargs)} made key "
                      f"{key!r}, and {known!r} before")
        if not key.startswith(fn.__name__ + "-"):
            self.fail(f"pure key {key!r} does not start with {fn.__name__}-")

    def op_resubmit(self) -> None:
        if not self.history:
            return self.op_submit()
        fn, args, kwargs = self.rng.choice(sorted(self.history, key=repr))
        kwargs = dict(kwargs)
        name = self.new_name()
        future = self.ex.submit(fn, *args, **kwargs)
        self.call()
        self.note(f"{name} = ex.submit({self.show_call(fn, args, kwargs)})  "
                  f"# again: {future.key}")
        self.check_pure_key(fn, args, kwargs, future.key)
        self.entries.append(Entry(name, future, expect(fn, args, kwargs), "task",
                                  call=(fn, args, kwargs)))

    def op_map(self) -> None:
        rng = self.rng
        n = rng.randrange(1, 6)
        pure = rng.random() < 0.7
        prefix = "stressmap" if rng.random() < 0.2 else None
        if rng.random() < 0.5:
            fn, iterables = inc, ([rng.randrange(8) for _ in range(n)],)
        elif rng.random() < 0.5:
            fn, iterables = add, ([rng.randrange(5) for _ in range(n)],
                                  [rng.randrange(5) for _ in range(n)])
        else:
            fn, iterables = slow_add, ([rng.choice((0.001, 0.05, 0.2)) for _ in range(n)],
                                       [rng.randrange(5) for _ in range(n)])
        futures = self.ex.map(fn, *iterables, pure=pure, key=prefix)
        self.call()
        names = [self.new_name() for _ in futures]
        self.note(f"{', '.join(names)}, = ex.map({fn.__name__}, "
                  f"{', '.join(map(repr, iterables))}, pure={pure}, key={prefix!r})"
                  f"  # {[f.key for f in futures]}")
        if len(futures) != n:
            self.fail(f"map over {n} elements gave {len(futures)} futures")
        for name, future, args in zip(names, futures, zip(*iterables)):
            if prefix and not future.key.startswith(prefix + "-"):
                self.fail(f"map with key={prefix!r} made key {future.key!r}")
            if pure and not prefix:
                self.check_pure_key(fn, args, {}, future.key)
            self.entries.append(Entry(name, future, expect(fn, args, {}), "task",
                                      call=(fn, args, {})))

    def build(self, inputs: list[Entry]):
        """A random structure holding the inputs' futures, and its twin holding
        the entries (for the model)."""
        rng = self.rng
        real, model = [], []
        for entry in inputs:
            shape = rng.randrange(5)
            if shape == 0:
                real.append(entry.future)
                model.append(entry)
            elif shape == 1:
                real.append({"x": entry.future, "n": 1})
                model.append({"x": entry, "n": 1})
            elif shape == 2:
                real.append((entry.future, [entry.future]))
                model.append((entry, [entry]))
            elif shape == 3:
                real.append({entry.future})
                model.append({entry})
            else:
                real.append([{"deep": (entry.future,)}])
                model.append([{"deep": (entry,)}])
        return real, model

    @staticmethod
    def substitute(obj):
        """The model's structure with every entry replaced by its value."""
        if isinstance(obj, Entry):
            return obj.allowed.value
        if isinstance(obj, (list, tuple, set)):
            return type(obj)(Sequence.substitute(x) for x in obj)
        if isinstance(obj, dict):
            return {k: Sequence.substitute(v) for k, v in obj.items()}
        return obj

    def op_depend(self) -> None:
        rng = self.rng
        usable = self.usable()
        if not usable:
            return self.op_submit()
        inputs = rng.sample(usable, min(len(usable), rng.randrange(1, 4)))
        pure = rng.random() < 0.7
        name = self.new_name()
        names = {id(e.future): e.name for e in inputs}
        real = None
        if len(inputs) == 2 and rng.random() < 0.5:
            fn = add
            args, model_args, kwargs = tuple(e.future for e in inputs), tuple(inputs), {}
            shown = f"add, {inputs[0].name}, {inputs[1].name}"
        else:
            fn = total
            real, model = self.build(inputs)
            extra = rng.randrange(3)
            args, model_args, kwargs = (real,), (model,), {"extra": extra}
            shown = f"total, {_show(real, names)}, extra={extra}"
        future = self.ex.submit(fn, *args, pure=pure, **kwargs)
        del args, real  # (hold no input future beyond the entries)
        self.call()
        self.note(f"{name} = ex.submit({shown}, pure={pure})  # {future.key}")
        allowed = expect_with_inputs(
            fn, model_args, kwargs, [e.allowed for e in inputs],
            lambda a, k: (tuple(self.substitute(x) for x in a), k))
        roots = frozenset().union(*(e.roots for e in inputs))
        needed = frozenset().union(*(e.inputs | {e.key} for e in inputs))
        self.entries.append(Entry(name, future, allowed, "task", roots=roots, inputs=needed))

    def op_scatter(self) -> None:
        rng = self.rng
        shape = rng.randrange(3)
        if shape == 0:
            data = rng.randrange(8)
        elif shape == 1:
            data = [rng.randrange(8) for _ in range(rng.randrange(1, 4))]
        else:
            data = {f"d{i}": rng.randrange(8) for i in range(rng.randrange(1, 4))}
        options = {}
        placement = rng.random()
        if placement < 0.3:
            workers = sorted(self.live_workers())
            options["workers"] = [workers[rng.randrange(len(workers))]] if workers else None
        elif placement < 0.5:
            options["broadcast"] = True
        kills = self.kills
        shown = f"ex.scatter({data!r}{''.join(f', {k}={v!r}' for k, v in options.items())})"
        try:
            result = self.ex.scatter(data, timeout=END_BOUND, **options)
        except zfutures.ConnectionError as e:
            # Allowed, if not welcome: the workers to scatter to are taken from
            # the center's list, which may still name a worker just killed.
            self.note(f"{shown} -> raised {e!r}")
            if not any(address in str(e) for address in self.killed):
                self.fail(f"scatter raised {e!r}, naming no worker killed")
            self.stats.scatters_refused += 1
            return
        self.call()
        if shape == 0:
            pairs = [(data, result)]
        elif shape == 1:
            pairs = list(zip(data, result))
        else:
            if set(result) != set(data):
                self.fail(f"scatter of a dict gave keys {sorted(result)}")
            pairs = [(data[k], result[k]) for k in data]
        names = [self.new_name() for _ in pairs]
        self.note(f"{', '.join(names)} = {shown}  # {[f.key for _, f in pairs]}")
        del result
        holders = self.ex.who_has([f for _, f in pairs])
        self.call()
        for name, (value, future) in zip(names, pairs):
            held_by = frozenset(holders.get(future.key, ()))
            if not held_by and self.kills == kills and not self.killed:
                self.fail(f"scattered {name} ({future.key}) is held by no worker: {holders}")
            event = ScatterEvent(future.key, held_by)
            self.scatters.setdefault(future.key, []).append(event)
            self.entries.append(Entry(name, future, Allowed(value), "scatter",
                                      roots=frozenset({event})))

    def op_cancel(self) -> None:
        usable = self.usable()
        if not usable:
            return
        entry = self.rng.choice(usable)
        cancelled = entry.future.cancel()
        self.call()
        self.note(f"{entry.name}.cancel() -> {cancelled}")
        self.after_cancel(entry, cancelled)

    def after_cancel(self, entry: Entry, cancelled: bool) -> None:
        future = entry.future
        if cancelled:
            entry.cancelled = True
            if not future.cancelled() or future.status != "cancelled":
                self.fail(f"{entry}: cancel() returned True, but cancelled() is "
                          f"{future.cancelled()}, status {future.status!r}")
            kind, got = _outcome(future, 0)
            if kind != "cancelled":
                self.fail(f"{entry}: cancelled, but result() gave {kind} {got!r}")
        elif not future.done():
            self.fail(f"{entry}: cancel() returned False, but it is not done "
                      f"(status {future.status!r})")

    def op_ex_cancel(self) -> None:
        usable = self.usable()
        if not usable:
            return
        chosen = self.rng.sample(usable, min(len(usable), self.rng.randrange(1, 3)))
        self.ex.cancel([e.future for e in chosen])
        self.call()
        self.note(f"ex.cancel([{', '.join(e.name for e in chosen)}])  "
                  f"# cancelled: {[e.future.cancelled() for e in chosen]}")
        for entry in chosen:
            self.after_cancel(entry, entry.future.cancelled())

    def op_release(self) -> None:
        candidates = [e for e in self.entries if e.kind != "pool"]
        if not candidates:
            return
        entry = self.rng.choice(candidates)
        self.entries.remove(entry)
        if entry.kind == "scatter" and not any(e.key == entry.key for e in self.entries):
            for event in self.scatters.get(entry.key, ()):  # (its data may be forgotten)
                if event.released_after is None:
                    event.released_after = len(self.killed)
        if self.rng.random() < 0.5:
            entry.future.release()
            self.call()
            self.note(f"{entry.name}.release(); del {entry.name}")
        else:
            self.note(f"del {entry.name}")
        # (the last reference to the future goes with the entry)

    def op_result(self) -> None:
        candidates = [e for e in self.entries if e.kind != "pool"]
        if not candidates:
            return
        entry = self.rng.choice(candidates)
        self.call()
        self.check_result(entry, "result()")

    def check_result(self, entry: Entry, where: str) -> None:
        """``entry.future.result()`` ends as the model allows. (In a frame of
        its own: the exception it may hold, whose traceback holds futures, goes
        with it.)"""
        kind, got = _outcome(entry.future, END_BOUND)
        if where == "result()":
            self.note(f"{entry.name}.result() -> {kind} {got!r}")
        self.check_end(entry, kind, got, where)
        self.check_status(entry, kind)

    def op_gather(self) -> None:
        rng = self.rng
        candidates = [e for e in self.entries if e.kind != "pool"]
        if not candidates:
            return
        chosen = rng.sample(candidates, min(len(candidates), rng.randrange(1, 7)))
        skip = rng.random() < 0.5
        killed = self.killed
        if skip:  # a dict, nested: what is left out is by name
            half = len(chosen) // 2
            real = {e.name: e.future for e in chosen[:half]}
            real["more"] = {e.name: e.future for e in chosen[half:]}
        elif rng.random() < 0.5:
            real = [e.future for e in chosen]
        else:
            real = {"first": chosen[0].future, "rest": [e.future for e in chosen[1:]]}
        shown = _show(real, {id(e.future): e.name for e in chosen})
        try:
            got = self.ex.gather(real, errors="skip" if skip else "raise", timeout=END_BOUND)
        except concurrent.futures.TimeoutError:
            self.note(f"ex.gather({shown}, errors={'skip' if skip else 'raise'!r}) -> timeout")
            self.fail(f"gather of {chosen} did not end within {END_BOUND} s")
        except Exception as e:  # noqa: BLE001 (checked below)
            # The exception is a future's own, which keeps it: its traceback
            # would keep this frame, and with it every entry (as a user's frame
            # that catches a task's exception does).
            e.__traceback__ = None
            self.call()
            self.note(f"ex.gather({shown}) -> raised {e!r}")
            if skip:
                self.fail(f"gather(errors='skip') of {chosen} raised {e!r}")
            if not any(self.may_raise(entry, e) for entry in chosen):
                self.fail(f"gather of {chosen} raised {e!r}, which none of them may")
            return
        finally:
            del real
        self.call()
        self.note(f"ex.gather({shown}, errors={'skip' if skip else 'raise'!r}) -> {got!r}")
        for entry in chosen:
            if skip:
                place = got if entry in chosen[:len(chosen) // 2] else got.get("more", {})
                present = entry.name in place
            else:
                present = True
            must_fail = entry.cancelled or entry.allowed.value is NO_VALUE
            if present:
                if must_fail:
                    self.fail(f"gather gave a value for {entry}")
                value = place[entry.name] if skip else None
                if skip and value != entry.allowed.value:
                    self.fail(f"gather gave {value!r} for {entry}")
            elif not (must_fail or entry.lost_ok(killed) or entry.cancel_ok):
                self.fail(f"gather(errors='skip') left out {entry}, which may not fail")
        if not skip:
            expected = [e.allowed.value for e in chosen]
            if isinstance(got, dict):
                got = [got["first"], *got["rest"]]
            if got != expected:
                self.fail(f"gather of {chosen} gave {got!r}")

    def may_raise(self, entry: Entry, error: BaseException) -> bool:
        if isinstance(error, concurrent.futures.CancelledError):
            return entry.cancelled or entry.cancel_ok
        if entry.cancelled:
            return False
        if isinstance(error, FutureLostError):
            return entry.lost_ok(self.killed)
        return (type(error), error.args) in entry.allowed.errors

    def op_who_has(self) -> None:
        self.check_who_has(bound=CLEAN_BOUND)

    def check_who_has(self, bound: float) -> None:
        """Every finished future of ours with a value is held by a live worker
        (after a kill, once it is computed again: polled)."""
        killed = self.killed
        finished = [e for e in self.entries
                    if e.kind != "pool" and not e.cancelled and not e.lost_ok(killed)
                    and e.future.status == "finished"]
        if not finished:
            return

        def held():
            who = self.ex.who_has([e.future for e in finished])
            everyone = self.ex.who_has()
            workers = self.live_workers()
            self.call()
            missing = {e.name: (e.key, who.get(e.key)) for e in finished
                       if not set(who.get(e.key, ())) & workers}
            absent = [e.name for e in finished if e.key not in everyone]
            return not missing and not absent, \
                f"not held by a live worker {missing}, not in who_has(): {absent}; " \
                f"workers {sorted(workers)}"

        self.note(f"ex.who_has([{', '.join(e.name for e in finished)}])")
        self.poll(held, "finished keys held by live workers", bound)

    def op_kill(self) -> None:
        if self.kills >= MAX_KILLS:
            return
        deadline = time.monotonic() + END_BOUND
        while True:  # (a worker may be leaving or starting as we ask)
            try:
                pids = self.ex.run(os.getpid, timeout=10)
                break
            except Exception as e:  # noqa: BLE001
                if time.monotonic() > deadline:
                    self.fail(f"ex.run(os.getpid) kept failing: {e!r}")
                time.sleep(0.1)
        self.call()
        address, pid = sorted(pids.items())[self.rng.randrange(len(pids))]
        os.kill(pid, signal.SIGKILL)
        self.killed.add(address)
        self.kills += 1
        self.stats.kills += 1
        self.note(f"os.kill({pid}, SIGKILL)  # worker {address}")

    # ------------------------------------------------------------------ the pool

    def get_pool(self) -> PoolExecutor:
        if self.pool is None:
            if self.pool_alone:
                self.pool = PoolExecutor(2)
                self.note("pool = PoolExecutor(2)")
            else:
                self.pool = PoolExecutor(2, address=self.ex.address)
                self.note("pool = PoolExecutor(2, address=ex.address)")
            self.call()
            self.pools += 1
            self.pool_entries = []
        return self.pool

    def op_pool_submit(self) -> None:
        pool = self.get_pool()
        fn, args, kwargs = self.random_call()
        future = pool.submit(fn, *args, **kwargs)
        self.call()
        name = self.new_name()
        self.note(f"{name} = pool.submit({self.show_call(fn, args, kwargs)})")
        entry = Entry(name, future, expect(fn, args, kwargs), "pool")
        self.entries.append(entry)
        self.pool_entries.append(entry)

    def op_pool_map(self) -> None:
        pool = self.get_pool()
        rng = self.rng
        xs = [rng.randrange(8) for _ in range(rng.randrange(1, 8))]
        chunksize = rng.randrange(1, 4)
        if rng.random() < 0.5:
            fn, iterables, expected = inc, (xs,), [x + 1 for x in xs]
        else:
            delays = [rng.choice((0.001, 0.02)) for _ in xs]
            fn, iterables, expected = slow_add, (delays, xs), xs
        self.note(f"list(pool.map({fn.__name__}, {', '.join(map(repr, iterables))}, "
                  f"chunksize={chunksize}))")
        got = list(pool.map(fn, *iterables, timeout=END_BOUND, chunksize=chunksize))
        self.call()
        if got != expected:
            self.fail(f"pool.map gave {got!r}, not {expected!r}")

    def op_pool_cancel(self) -> None:
        if not self.pool_entries:
            return
        entry = self.rng.choice(self.pool_entries)
        future = entry.future
        cancelled = future.cancel()
        self.call()
        self.note(f"{entry.name}.cancel() -> {cancelled}")
        if cancelled:
            entry.cancelled = True
            if not future.cancelled():
                self.fail(f"{entry}: cancel() returned True, but it is not cancelled")
        elif not (future.running() or future.done()):
            self.fail(f"{entry}: cancel() returned False, but it is neither running nor done")

    def op_pool_shutdown(self) -> None:
        if self.pool is None:
            return
        wait = self.rng.random() < 0.7
        cancel_futures = self.rng.random() < 0.3
        self.shutdown_pool(wait, cancel_futures)

    def shutdown_pool(self, wait: bool, cancel_futures: bool) -> None:
        pool, self.pool = self.pool, None
        if cancel_futures:
            for entry in self.pool_entries:
                if not entry.future.done():
                    entry.cancel_ok = True  # (unless sent: it finishes)
        pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        self.call()
        self.note(f"pool.shutdown(wait={wait}, cancel_futures={cancel_futures})")
        if wait:
            pending = [e for e in self.pool_entries if not e.future.done()]
            if pending:
                self.fail(f"pool.shutdown(wait=True) returned before {pending} were done")
        try:
            pool.submit(inc, 1)
        except RuntimeError:
            pass
        else:
            self.fail("pool.submit after shutdown did not raise RuntimeError")
        self.pool_entries = []

    # ------------------------------------------------------------------ a sequence

    def run(self) -> None:
        rng = self.rng
        self.note("ex = Executor(n_workers=2)")
        self.ex = Executor(n_workers=2)
        self.call()
        try:
            names = sorted(OPERATIONS)
            weights = [OPERATIONS[n] for n in names]
            for step in range(1, self.steps + 1):
                self.step = step
                name = rng.choices(names, weights)[0]
                getattr(self, f"op_{name}")()
                pause = rng.choice(PAUSES)
                if pause:
                    time.sleep(pause)
            self.step += 1
            self.finish()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=False, cancel_futures=True)
            self.entries.clear()
            self.pool_entries.clear()
            self.ex.shutdown(wait=False)
        self.poll(lambda: (not zfutures_children(), zfutures_children()),
                  "no zfutures process left after shutdown")

    def finish(self) -> None:
        """Every future ends as the model allows; then, all dropped, the cluster
        forgets every key."""
        if self.pool is not None:
            self.shutdown_pool(wait=True, cancel_futures=False)
        self.note("concurrent.futures.wait(all, timeout=END_BOUND)")
        futures = [e.future for e in self.entries]
        not_done = concurrent.futures.wait(futures, timeout=END_BOUND).not_done
        if not_done:
            late = [e for e in self.entries if e.future in not_done]
            self.fail(f"not done within {END_BOUND} s: {late}")
        del futures, not_done
        for entry in self.entries:
            self.check_result(entry, "at the end")
        del entry  # (the last one would stay alive in this frame)
        self.check_who_has(bound=CLEAN_BOUND)
        self.note("del all futures")
        self.entries.clear()
        self.pool_entries.clear()
        gc.collect()

        def forgotten():
            tasks = self.ex.scheduler_info()["tasks"]
            has_what = self.ex.has_what()
            left = {w: keys for w, keys in has_what.items() if keys}
            in_memory = {w: keys for w, keys in self.worker_data().items() if keys}
            return not any(tasks.values()) and not left and not in_memory, \
                f"tasks {tasks}, has_what {left}, in the workers' memory {in_memory}; " \
                f"{self.futures_alive()}"

        self.poll(forgotten, "every key forgotten once its futures are gone")
        self.call()


def _show(obj, names: dict) -> str:
    """A structure of futures written with the futures' names."""
    if id(obj) in names:
        return names[id(obj)]
    if isinstance(obj, list):
        return "[" + ", ".join(_show(x, names) for x in obj) + "]"
    if isinstance(obj, tuple):
        return "(" + ", ".join(_show(x, names) for x in obj) + ("," if len(obj) == 1 else "") + ")"
    if isinstance(obj, set):
        return "{" + ", ".join(_show(x, names) for x in obj) + "}"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k!r}: {_show(v, names)}" for k, v in obj.items()) + "}"
    return repr(obj)


def run_sequence(seed: int, stats: Stats, steps: int = STEPS) -> None:
    """Run one sequence on a thread of its own, bounded by SEQUENCE_BOUND; fail
    with its seed and its calls if anything went wrong."""
    sequence = Sequence(seed, stats, steps)
    failure: list[BaseException] = []

    def target():
        try:
            sequence.run()
        except BaseException as e:  # noqa: BLE001 (reported below)
            failure.append(e)

    thread = threading.Thread(target=target, name=f"stress-{seed}", daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(SEQUENCE_BOUND)
    stats.sequences += 1
    stats.seeds.append(seed)
    if thread.is_alive():
        stack = "".join(traceback.format_stack(
            __import__("sys")._current_frames().get(thread.ident)))
        if sequence.ex is not None:
            sequence.ex.shutdown(wait=False)
        problem = f"stuck for {SEQUENCE_BOUND} s at step {sequence.step}:\n{stack}"
    elif failure:
        error = failure[0]
        if isinstance(error, StressFailure):
            problem = str(error)
        else:
            problem = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    else:
        return
    steps_log = "\n".join(sequence.log)
    pytest.fail(f"stress sequence seed {seed} (replay: ZFUTURES_STRESS_SEED={seed} "
                f"ZFUTURES_STRESS_STEPS={steps}), after {time.monotonic() - started:.1f} s: "
                f"{problem}\n--- the calls made:\n{steps_log}", pytrace=False)


def test_random_sequences_of_calls_end_as_the_model_says(request):
    stats = Stats()
    request.config.pluginmanager.register(_Summary(stats), f"stress-summary-{id(stats)}")
    first = int(SEED) if SEED else random.SystemRandom().randrange(10**6)
    seeds = itertools.count(first)
    if SECONDS:
        deadline = time.monotonic() + SECONDS
        while time.monotonic() < deadline:
            run_sequence(next(seeds), stats)
    else:
        for _ in range(1 if SEED else SEQUENCES):
            run_sequence(next(seeds), stats)
    print(stats.summary())
    assert stats.sequences and not zfutures_children()


def test_the_model_knows_the_tasks():
    """The model's own run of the tasks agrees with the tasks."""
    assert expect(inc, (1,), {}).value == 2
    assert expect(slow_add, (5.0, 1, 2), {}).value == 3  # (without waiting)
    assert expect(fail, (1,), {}).errors == {(ValueError, ("stress failure", 1))}
    assert expect(total, ([1, {"a": (2, [3])}],), {"extra": 1}).value == 7
    assert stress_model.StressError.__module__ == "stress_model"
