"""The center's Scheduler, driven one event at a time: no sockets, threads or sleeps.

Every message the scheduler queues is checked against the wire protocol on the
way out (see :meth:`Sim.take`), so a test that reads the outbox also checks
that the center would send well-formed messages.
"""
from __future__ import annotations

import itertools
import pickle
import sys

import pytest

from zfutures import protocol
from zfutures.errors import FutureLostError, KilledWorker
from zfutures.scheduler import MAX_ITEMS_PER_MESSAGE, Outbox, Scheduler

C1, C2 = b"client-1", b"client-2"
W1, W2, W3 = b"w1", b"w2", b"w3"

MB = 1_000_000


def addr(ident: bytes) -> str:
    return f"tcp://{ident.decode()}:9000"


def task(key: str, *deps: str, priority: int = 0, retries: int = 0) -> tuple[dict, list]:
    """A submit item and its payload, as a client would send them."""
    item = {"key": key, "deps": list(deps), "priority": priority}
    if retries:
        item["retries"] = retries
    return item, [f"payload of {key}".encode()]


def error_frames(exc: BaseException) -> list:
    """Exception frames as a worker sends them: opaque to the center."""
    return [pickle.dumps((exc, "remote traceback text"), protocol=5)]


def exception_in(frames: list) -> BaseException:
    exc, _text = pickle.loads(frames[0])
    return exc


class Sent:
    """The messages of one ``outbox.take()``, indexed by recipient and op."""

    def __init__(self, messages: list):
        self.messages = messages
        self._by = {}
        last_size = {}  # items in the last message of each (ident, op)
        for ident, op, fields, frames in messages:
            lists = [name for name, value in fields.items() if isinstance(value, list)]
            size = len(fields[lists[0]]) if lists else 0
            if (ident, op) in self._by:  # only past a full one: seen as one
                assert last_size[(ident, op)] == MAX_ITEMS_PER_MESSAGE, \
                    f"two {op!r} messages to {ident!r}: not batched"
                before, before_frames = self._by[(ident, op)]
                fields = dict(fields, **{lists[0]: before[lists[0]] + fields[lists[0]]})
                frames = before_frames + frames
            last_size[(ident, op)] = size
            self._by[(ident, op)] = (fields, frames)

    def ops(self, ident: bytes) -> set[str]:
        return {op for i, op in self._by if i == ident}

    def items(self, op: str, ident: bytes) -> list[dict]:
        fields, _ = self._by.get((ident, op), ({}, []))
        return fields.get("tasks", [])

    def keys(self, op: str, ident: bytes) -> list[str]:
        """Keys of a ``release-keys`` message, or of the items of a batched one."""
        fields, _ = self._by.get((ident, op), ({}, []))
        if "keys" in fields:
            return list(fields["keys"])
        return [item["key"] for item in fields.get("tasks", [])]

    def frames(self, op: str, ident: bytes) -> dict[str, list]:
        """key -> its frames, for ops whose items own frames."""
        fields, frames = self._by.get((ident, op), ({}, []))
        return {item["key"]: f for item, f in protocol.unpack_items(
            fields.get("tasks", []), frames)}

    def computes(self) -> dict[bytes, list[str]]:
        return {ident: [item["key"] for item in fields["tasks"]]
                for (ident, op), (fields, _) in self._by.items() if op == "compute"}

    def computed_keys(self) -> list[str]:
        return [key for keys in self.computes().values() for key in keys]


class Sim:
    """A Scheduler plus helpers that speak its events and read its outbox."""

    def __init__(self, clients=(C1,), **kwargs):
        self.s = Scheduler(**kwargs)
        for client in clients:
            self.s.add_client(client, client.decode())

    def worker(self, ident: bytes, nthreads: int = 1, keys=()) -> None:
        self.s.add_worker(ident, addr(ident), ident.decode(), nthreads, keys=list(keys))

    def submit(self, *tasks: tuple[dict, list], client: bytes = C1) -> None:
        items, frames = [], []
        for item, payload in tasks:
            items.append(dict(item, nframes=len(payload)))
            frames.extend(payload)
        self.s.submit(client, items, frames)

    def finish(self, key: str, worker: bytes | None = None, nbytes: int = 8) -> None:
        if worker is None:
            worker = self.s.tasks[key].processing_on.ident
        self.s.task_finished(worker, key, nbytes, run=self.s.tasks[key].run)

    def err(self, key: str, exc: BaseException) -> list:
        frames = error_frames(exc)
        self.s.task_erred(self.s.tasks[key].processing_on.ident, key, frames)
        return frames

    def state(self, key: str) -> str:
        return self.s.tasks[key].state

    def on(self, key: str) -> bytes | None:
        ws = self.s.tasks[key].processing_on
        return None if ws is None else ws.ident

    def on_and_other(self, key: str) -> tuple[bytes, bytes]:
        """The worker processing ``key``, and the other one of W1 and W2."""
        on = self.on(key)
        return on, W2 if on == W1 else W1

    def take(self) -> Sent:
        """Take the outbox, checking every message against the wire protocol."""
        messages = self.s.outbox.take()
        for _ident, op, fields, frames in messages:
            header = protocol.decode_header(protocol.encode_header(op, **fields))
            items = header.get("tasks")
            item_schema = protocol.SCHEMAS[op]["tasks"][1] if items else {}
            if "nframes" in item_schema or "nframes?" in item_schema:
                protocol.unpack_items(items, frames)  # checks the counts
            else:
                assert not frames, f"{op!r} carries frames no item accounts for"
        return Sent(messages)


def chain(n: int) -> list[tuple[dict, list]]:
    """t0 <- t1 <- ... <- t(n-1), each task depending on the one before."""
    return [task(f"t{i}", *([f"t{i - 1}"] if i else [])) for i in range(n)]


# --------------------------------------------------------------------------- life cycle


def test_task_goes_waiting_ready_processing_memory_released_forgotten():
    sim = Sim()
    sim.submit(task("a"), task("b", "a"))
    assert sim.state("a") == "ready"      # no inputs, but no worker yet
    assert sim.state("b") == "waiting"    # its input is not in memory
    assert sim.take().computes() == {}

    sim.worker(W1)
    sent = sim.take()
    # b follows a to the worker computing a, to start there as soon as a is done.
    assert sent.computes() == {W1: ["a", "b"]}
    assert sent.frames("compute", W1) == {"a": [b"payload of a"], "b": [b"payload of b"]}
    assert sim.state("a") == "processing" and sim.on("a") == W1
    assert sim.state("b") == "processing" and sim.s.tasks["b"].waiting_on
    assert sent.items("compute", W1)[1]["deps"] == {"a": []}  # not anywhere yet

    sim.finish("a", nbytes=100)
    sent = sim.take()
    assert sim.state("a") == "memory"
    assert sent.keys("key-finished", C1) == ["a"]
    assert sent.items("key-finished", C1)[0]["who_has"] == [addr(W1)]
    assert sent.items("key-finished", C1)[0]["nbytes"] == 100
    assert sim.state("b") == "processing" and not sim.s.tasks["b"].waiting_on

    sim.finish("b")
    assert sim.state("b") == "memory"
    assert sim.take().keys("key-finished", C1) == ["b"]

    sim.s.release(C1, ["a"])
    # b no longer needs a and nobody holds a future for it: its data goes ...
    assert sim.take().keys("release-keys", W1) == ["a"]
    # ... but the task stays, so that b could be recomputed from it.
    assert sim.state("a") == "released"
    assert sim.s.who_has(["a"]) == {"a": []}

    sim.s.release(C1, ["b"])
    assert sim.take().keys("release-keys", W1) == ["b"]
    assert sim.s.tasks == {}
    assert sim.s.has_what() == {addr(W1): []}
    assert sim.s.workers[W1].nbytes == 0


def test_task_waits_until_all_of_its_inputs_are_in_memory():
    sim = Sim(extra_queue=1)
    sim.worker(W1)
    sim.submit(task("a"), task("b"), task("c", "a", "b"))
    sim.take()
    sim.finish("a")
    assert sim.state("c") == "waiting"
    assert "c" not in sim.take().computed_keys()
    sim.finish("b")
    sent = sim.take()
    assert sent.computes() == {W1: ["c"]}
    assert sent.items("compute", W1)[0]["deps"] == {"a": [addr(W1)], "b": [addr(W1)]}


def test_compute_message_lists_every_holder_of_each_input():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))
    sim.finish("x", W1)
    sim.worker(W2)
    sim.s.keys_added(W2, "x", 8)
    sim.take()
    sim.submit(task("y", "x"))
    sent = sim.take()
    (item,) = [i for ident in (W1, W2) for i in sent.items("compute", ident)]
    assert sorted(item["deps"]["x"]) == [addr(W1), addr(W2)]


def test_released_input_is_recomputed_for_a_new_dependent():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("a"), task("b", "a"))
    sim.finish("a")
    sim.finish("b")
    sim.s.release(C1, ["a"])
    sim.take()
    assert sim.state("a") == "released"

    sim.submit(task("c", "a"))
    assert sim.take().computes() == {W1: ["a", "c"]}  # c follows a, to wait for it there
    assert sim.state("a") == sim.state("c") == "processing"
    sim.finish("a")
    sim.finish("c")
    assert sim.state("c") == "memory"


def test_tasks_without_links_share_one_empty_set_and_links_get_their_own():
    # An empty set per task for dependents, waiting_on and waiters was a third
    # of the center's memory per task at 100,000 tasks.
    sim = Sim()
    sim.submit(task("a"), task("b"), task("c", "a"))
    a, b, c = (sim.s.tasks[k] for k in "abc")
    assert b.dependents is b.waiting_on is b.waiters is a.waiting_on
    assert a.dependents == {c} and not b.dependents
    assert c.waiting_on == {a} and a.waiters == {c} and not b.waiters
    sim.worker(W1)
    sim.finish("a")
    sim.finish("c")
    assert not c.waiting_on and not a.waiters and not b.waiters
    sim.s.release(C1, ["c", "a", "b"])
    assert not sim.s.tasks


# --------------------------------------------------------------------------- errors


def test_task_whose_input_erred_errs_with_the_same_exception_frames_transitively():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("a"), task("b", "a"), task("c", "b"))
    sim.take()
    frames = sim.err("a", ValueError("boom", 42))
    sent = sim.take()
    assert {k: sim.state(k) for k in "abc"} == {"a": "erred", "b": "erred", "c": "erred"}
    assert sent.frames("key-erred", C1) == {"a": frames, "b": frames, "c": frames}
    exc = exception_in(sent.frames("key-erred", C1)["c"])
    assert type(exc) is ValueError and exc.args == ("boom", 42)
    assert sent.computes() == {}          # b and c never run
    assert sim.s.placement.ready == [] and not sim.s.workers[W1].processing


def test_task_submitted_after_its_input_erred_errs_at_once_instead_of_waiting():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("a"))
    frames = sim.err("a", KeyError("k"))
    sim.take()
    sim.submit(task("b", "a"))
    sent = sim.take()
    assert sim.state("b") == "erred"
    assert sent.frames("key-erred", C1) == {"b": frames}
    assert sent.computes() == {}


def test_error_reaches_the_end_of_a_long_chain_without_recursion():
    sim = Sim()
    sim.worker(W1)
    sim.submit(*chain(5000))
    sim.take()
    frames = sim.err("t0", RuntimeError("first link"))
    sent = sim.take()
    assert all(ts.state == "erred" for ts in sim.s.tasks.values())
    assert len(sent.keys("key-erred", C1)) == 5000
    assert sent.frames("key-erred", C1)["t4999"] == frames


def test_task_depending_on_an_unknown_key_errs_with_FutureLostError():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("b", "never-submitted"))
    sent = sim.take()
    assert sim.state("b") == "erred"
    exc = exception_in(sent.frames("key-erred", C1)["b"])
    assert isinstance(exc, FutureLostError) and "never-submitted" in str(exc)
    assert sent.computes() == {}


def test_task_with_retries_is_run_again_and_errs_when_they_are_used_up():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x", retries=1))
    sim.take()
    sim.err("x", OSError("flaky"))
    sent = sim.take()
    assert sent.computes() == {W1: ["x"]}
    assert "key-erred" not in sent.ops(C1)
    frames = sim.err("x", OSError("flaky again"))
    sent = sim.take()
    assert sim.state("x") == "erred"
    assert sent.frames("key-erred", C1) == {"x": frames}


def test_erred_key_released_by_its_client_is_forgotten():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("a"), task("b", "a"))
    sim.err("a", ValueError())
    sim.s.release(C1, ["a", "b"])
    assert sim.s.tasks == {}


# --------------------------------------------------------------------------- placement


@pytest.mark.parametrize(("x_bytes", "y_bytes", "expected"),
                         [(10 * MB, 1 * MB, W1), (1 * MB, 10 * MB, W2)])
def test_task_goes_to_the_worker_holding_most_bytes_of_its_inputs(x_bytes, y_bytes, expected):
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))                 # W1 is busy with x ...
    sim.worker(W2)
    sim.submit(task("y"))                 # ... so y goes to the idle W2
    assert (sim.on("x"), sim.on("y")) == (W1, W2)
    sim.finish("x", W1, nbytes=x_bytes)
    sim.finish("y", W2, nbytes=y_bytes)
    sim.take()
    sim.submit(task("z", "x", "y"))
    assert sim.on("z") == expected
    assert sim.take().computed_keys() == ["z"]


def test_task_without_inputs_goes_to_the_least_loaded_worker():
    sim = Sim(extra_queue=2)
    sim.worker(W1)
    sim.submit(task("a"), task("b"))      # W1: 2 tasks
    sim.worker(W2)
    sim.submit(task("c"))                 # W2: 1 task
    assert sim.on("c") == W2
    sim.worker(W3)
    sim.submit(task("d"))
    assert sim.on("d") == W3
    sim.submit(task("e"))                 # W2 and W3 have 1 each, W1 has 2
    assert sim.on("e") in (W2, W3)


def test_between_equally_loaded_workers_a_task_goes_where_less_data_is_held():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("big"))
    sim.finish("big", nbytes=10 * MB)
    sim.worker(W2)
    sim.submit(task("z"))
    assert sim.on("z") == W2


def test_load_is_measured_per_thread():
    sim = Sim(extra_queue=0)
    sim.worker(W1, nthreads=4)
    sim.submit(task("a"), task("b"))      # W1: 2 of 4 threads busy
    sim.worker(W2, nthreads=1)
    sim.submit(task("c"))                 # W2's only thread is busier than W1's half
    assert sim.on("c") == W2
    sim.submit(task("d"))
    assert sim.on("d") == W1


def test_worker_gets_at_most_nthreads_plus_extra_queue_tasks_and_the_rest_waits():
    sim = Sim(extra_queue=2)
    sim.worker(W1, nthreads=2)
    sim.submit(*[task(f"t{i}") for i in range(10)])
    sent = sim.take()
    assert len(sent.computes()[W1]) == 4
    assert len(sim.s.workers[W1].processing) == 4
    assert sorted(sim.state(f"t{i}") for i in range(10)) == ["processing"] * 4 + ["ready"] * 6

    sim.finish(sent.computes()[W1][0])
    assert len(sim.take().computes()[W1]) == 1
    assert len(sim.s.workers[W1].processing) == 4


def test_worker_that_joins_later_gets_queued_work_at_once():
    sim = Sim(extra_queue=1)
    sim.worker(W1, nthreads=1)
    sim.submit(*[task(f"t{i}") for i in range(10)])
    sim.take()
    sim.worker(W2, nthreads=3)
    sent = sim.take()
    assert len(sent.computes()[W2]) == 4
    assert sum(sim.state(f"t{i}") == "ready" for i in range(10)) == 4


def test_ready_tasks_are_sent_by_priority_then_submission_order():
    sim = Sim(extra_queue=0)
    priorities = {"p0-first": 0, "p5-first": 5, "p0-second": 0, "p5-second": 5,
                  "low": -1, "p10": 10}
    sim.submit(*[task(key, priority=p) for key, p in priorities.items()])
    sim.worker(W1, nthreads=1)
    order = []
    for _ in priorities:
        (item,) = sim.take().items("compute", W1)
        assert item["priority"] == priorities[item["key"]]
        order.append(item["key"])
        sim.finish(item["key"])
    assert order == ["p10", "p5-first", "p5-second", "p0-first", "p0-second", "low"]


def test_many_tasks_for_one_worker_travel_in_one_compute_message():
    sim = Sim(extra_queue=100)
    sim.worker(W1)
    sim.submit(*[task(f"t{i}") for i in range(50)])
    messages = [m for m in sim.s.outbox.take() if m[1] == "compute"]
    assert len(messages) == 1
    ident, _, fields, frames = messages[0]
    assert ident == W1 and len(fields["tasks"]) == 50
    payloads = dict((item["key"], f) for item, f in protocol.unpack_items(fields["tasks"],
                                                                         frames))
    assert payloads == {f"t{i}": [f"payload of t{i}".encode()] for i in range(50)}


def test_results_for_one_client_travel_in_one_message():
    sim = Sim(extra_queue=10)
    sim.worker(W1)
    sim.submit(*[task(f"t{i}") for i in range(5)])
    sim.take()
    for i in range(5):
        sim.s.task_finished(W1, f"t{i}", 8)
    sent = sim.take()
    assert sorted(sent.keys("key-finished", C1)) == [f"t{i}" for i in range(5)]


# --------------------------------------------------------------------------- sharing keys


def test_same_key_submitted_twice_by_one_client_runs_once():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))
    sim.submit(task("x"))
    assert sim.take().computed_keys() == ["x"]
    sim.finish("x")
    assert sim.take().keys("key-finished", C1) == ["x"]
    sim.s.release(C1, ["x"])              # one release: the client holds it once
    assert sim.take().keys("release-keys", W1) == ["x"]


def test_same_key_submitted_by_two_clients_runs_once_and_both_hear_of_it():
    sim = Sim(clients=(C1, C2))
    sim.worker(W1)
    sim.submit(task("x"), client=C1)
    sim.submit(task("x"), client=C2)
    assert sim.take().computed_keys() == ["x"]
    sim.finish("x")
    sent = sim.take()
    assert sent.keys("key-finished", C1) == ["x"]
    assert sent.keys("key-finished", C2) == ["x"]


def test_key_submitted_again_after_it_finished_is_reported_without_rerunning():
    sim = Sim(clients=(C1, C2))
    sim.worker(W1)
    sim.submit(task("x"), client=C1)
    sim.finish("x")
    sim.take()
    sim.submit(task("x"), client=C2)
    sent = sim.take()
    assert sent.computes() == {}
    assert sent.keys("key-finished", C2) == ["x"]
    assert "key-finished" not in sent.ops(C1)


def test_release_by_one_client_keeps_a_key_another_client_wants():
    sim = Sim(clients=(C1, C2))
    sim.worker(W1)
    sim.submit(task("x"), client=C1)
    sim.submit(task("x"), client=C2)
    sim.finish("x")
    sim.take()
    sim.s.release(C1, ["x"])
    assert "release-keys" not in sim.take().ops(W1)
    assert sim.state("x") == "memory"
    sim.s.release(C1, ["x"])              # a second release by C1 changes nothing
    assert sim.state("x") == "memory"
    sim.s.release(C2, ["x"])
    assert sim.take().keys("release-keys", W1) == ["x"]
    assert "x" not in sim.s.tasks


def test_release_while_another_client_waits_keeps_the_task_running():
    sim = Sim(clients=(C1, C2))
    sim.worker(W1)
    sim.submit(task("x"), client=C1)
    sim.submit(task("x"), client=C2)
    sim.s.release(C1, ["x"])
    assert sim.state("x") == "processing"
    sim.finish("x")
    assert sim.take().keys("key-finished", C2) == ["x"]


def test_input_kept_while_a_dependent_still_needs_it_though_no_client_holds_it():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("a"), task("b", "a"))
    sim.s.release(C1, ["a"])
    sim.finish("a")
    assert sim.state("a") == "memory"     # b has not run yet
    assert sim.state("b") == "processing"
    assert "release-keys" not in sim.take().ops(W1)
    sim.finish("b")
    assert sim.take().keys("release-keys", W1) == ["a"]


def test_releasing_a_processing_task_cancels_it_on_its_worker_and_frees_the_slot():
    sim = Sim(extra_queue=0)
    sim.worker(W1)
    sim.submit(task("a"), task("b"))
    assert sim.take().computes() == {W1: ["a"]}
    sim.s.release(C1, ["a"])
    sent = sim.take()
    assert sent.keys("release-keys", W1) == ["a"]
    assert sent.computes() == {W1: ["b"]}
    assert "a" not in sim.s.tasks
    # The cancelled task's result, arriving anyway, is dropped on the worker.
    sim.s.task_finished(W1, "a", 8)
    assert sim.take().keys("release-keys", W1) == ["a"]
    assert "a" not in sim.s.tasks and sim.s.workers[W1].nbytes == 0


def test_releasing_a_waiting_task_releases_inputs_only_it_needed():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("a"), task("b", "a"))
    sim.s.release(C1, ["a", "b"])
    assert sim.s.tasks == {}
    assert sorted(sim.take().keys("release-keys", W1)) == ["a", "b"]  # both were sent


def test_releasing_the_end_of_a_long_chain_forgets_the_whole_chain():
    n = 5000
    sim = Sim()
    sim.submit(*chain(n))
    sim.s.release(C1, [f"t{i}" for i in range(n - 1)])   # the client keeps only the last
    sim.worker(W1)
    for i in range(n):
        assert sim.on(f"t{i}") == W1
        sim.finish(f"t{i}", nbytes=10)
    sim.take()
    assert sim.state(f"t{n - 1}") == "memory"
    assert sum(ts.state == "released" for ts in sim.s.tasks.values()) == n - 1
    assert sim.s.has_what() == {addr(W1): [f"t{n - 1}"]}

    sim.s.release(C1, [f"t{n - 1}"])
    assert sim.take().keys("release-keys", W1) == [f"t{n - 1}"]
    assert sim.s.tasks == {}
    assert sim.s.workers[W1].nbytes == 0


# --------------------------------------------------------------------------- failures


def test_lost_workers_processing_tasks_are_rescheduled_on_another_worker():
    sim = Sim(extra_queue=1)
    sim.worker(W1, nthreads=1)
    sim.submit(task("a"), task("b"))
    sim.worker(W2, nthreads=1)
    sim.take()
    sim.s.remove_worker(W1)
    sent = sim.take()
    assert sorted(sent.computes()[W2]) == ["a", "b"]
    assert {sim.on("a"), sim.on("b")} == {W2}
    assert addr(W1) not in sim.s.has_what()


def test_every_client_and_worker_hears_when_a_worker_leaves():
    # (clients' calls to it, Executor.run and scatter, then fail at once, and
    # fetches from it, by clients and workers, go to other holders at once)
    sim = Sim(clients=(C1, C2))
    sim.worker(W1)
    sim.worker(W2)
    sim.worker(W3)
    sim.take()
    sim.s.remove_worker(W1)
    sim.s.remove_worker(W1)  # (twice: said once)
    sent = sim.take()
    for peer in (C1, C2, W2, W3):
        fields, _ = sent._by[(peer, "workers-left")]
        assert fields["addresses"] == [addr(W1)]
    assert "workers-left" not in sent.ops(W1)
    # a worker that reconnects (a new identity, the same address) did not leave
    sim.s.add_worker(b"w2-again", addr(W2), "w2", 1)
    sim.s.add_worker(b"w2-again", addr(W2), "w2", 1)
    sent = sim.take()
    assert "workers-left" not in sent.ops(C1) and "workers-left" not in sent.ops(W3)


def test_lost_worker_without_replacement_leaves_its_tasks_ready_for_the_next_one():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("a"))
    sim.s.remove_worker(W1)
    assert sim.state("a") == "ready"
    sim.take()
    sim.worker(W2)
    assert sim.take().computes() == {W2: ["a"]}


def test_lost_key_still_wanted_is_recomputed_through_released_inputs():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("a"), task("b", "a"), task("c", "b"))
    sim.s.release(C1, ["a", "b"])         # the client holds only c
    for key in "abc":
        sim.finish(key)
    sim.worker(W2)
    sim.take()
    assert sim.state("a") == sim.state("b") == "released"

    sim.s.remove_worker(W1)
    sent = sim.take()
    assert sent.computes() == {W2: ["a", "b", "c"]}   # the chain, sent ahead in order
    sim.finish("a")
    sim.finish("b")
    sent = sim.take()
    assert sent.keys("release-keys", W2) == ["a"]   # not needed once b is back
    sim.finish("c")
    assert sim.take().keys("key-finished", C1) == ["c"]


def test_lost_chain_is_recomputed_from_its_start_without_recursion():
    n = 5000
    sim = Sim()
    sim.worker(W1)
    sim.submit(*chain(n))
    sim.s.release(C1, [f"t{i}" for i in range(n - 1)])
    for i in range(n):
        sim.finish(f"t{i}")
    sim.take()
    sim.s.remove_worker(W1)
    states = [sim.state(f"t{i}") for i in range(n)]
    assert states == ["ready"] + ["waiting"] * (n - 1)


def test_ready_task_whose_input_is_lost_waits_again_until_the_input_is_recomputed():
    sim = Sim(extra_queue=0)
    sim.worker(W1)
    sim.submit(task("x"))
    sim.finish("x", W1)
    sim.submit(task("busy"))              # W1 is now full ...
    sim.submit(task("y", "x"))
    assert sim.state("y") == "ready"      # ... so y, ready, waits at the center
    sim.take()

    sim.s.remove_worker(W1)               # x was only on W1
    assert sim.state("y") == "waiting"
    assert sim.state("x") == "ready"
    sim.worker(W2)
    assert sim.take().computes() == {W2: ["x"]}   # x first: y cannot run without it
    sim.finish("x")
    assert sim.take().computes() == {W2: ["busy"]}
    sim.finish("busy")
    sent = sim.take()
    assert sent.computes() == {W2: ["y"]}
    assert sent.items("compute", W2)[0]["deps"] == {"x": [addr(W2)]}


def test_a_task_fetching_an_input_whose_only_holder_died_goes_back_to_wait_for_it():
    sim = Sim(extra_queue=0)
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"))
    x_on, other = sim.on_and_other("x")
    sim.finish("x")
    sim.submit(task("busy"))              # x's holder is now full ...
    sim.submit(task("y", "x"))
    assert sim.on("y") == other           # ... so y went to fetch x from it
    sim.take()

    sim.s.remove_worker(x_on)             # x was only there
    sent = sim.take()
    # y's worker would wait out its fetch timeout on the dead holder: it drops
    # y, which waits for x to be computed again, there.
    assert "y" in sent.keys("release-keys", other)
    assert sim.state("y") == "waiting" and sim.s.tasks["y"].waiting_on == {sim.s.tasks["x"]}
    assert sent.computes() == {other: ["x"]}  # (then busy, then y: one at a time)
    sim.finish("x")
    sim.finish("busy")
    sent = sim.take()
    assert sent.computes() == {other: ["busy", "y"]}
    assert sent.items("compute", other)[1]["deps"] == {"x": [addr(other)]}


def test_lost_key_with_another_holder_is_not_recomputed():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"))
    holder, other = sim.on_and_other("x")
    sim.finish("x")
    sim.s.keys_added(other, "x", 8)
    sim.take()
    sim.s.remove_worker(holder)
    assert sim.state("x") == "memory"
    assert sim.take().computes() == {}
    assert sim.s.who_has(["x"]) == {"x": [addr(other)]}


def test_task_errs_with_KilledWorker_after_allowed_failures_worker_deaths():
    sim = Sim(allowed_failures=2)
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"), task("y", "x"))
    first = sim.on("x")
    sim.s.remove_worker(first)
    assert sim.state("x") == "processing"   # one death is not enough
    assert sim.s.tasks["y"].suspicious == 0  # it was waiting for x, not running
    sim.take()
    sim.s.remove_worker(sim.on("x"))
    sent = sim.take()
    assert sim.state("x") == sim.state("y") == "erred"
    frames = sent.frames("key-erred", C1)
    assert set(frames) == {"x", "y"}
    exc = exception_in(frames["x"])
    assert isinstance(exc, KilledWorker) and "'x'" in str(exc)
    assert frames["y"] == frames["x"]


def test_other_tasks_go_on_when_a_task_is_killed():
    sim = Sim(allowed_failures=1)
    sim.worker(W1)
    sim.submit(task("killer"))
    sim.worker(W2)
    sim.submit(task("innocent"))
    assert (sim.on("killer"), sim.on("innocent")) == (W1, W2)
    sim.take()
    sim.s.remove_worker(W1)
    assert sim.state("killer") == "erred"
    assert sim.state("innocent") == "processing" and sim.on("innocent") == W2
    sim.finish("innocent")
    sent = sim.take()
    assert sent.keys("key-finished", C1) == ["innocent"]
    assert sent.keys("key-erred", C1) == ["killer"]


def test_lost_data_that_cannot_be_recomputed_errs_with_FutureLostError():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("scattered"), task("y", "scattered"))
    sim.finish("scattered", W1)
    sim.s.tasks["scattered"].payload = None   # as for scattered data: no task to rerun
    sim.worker(W2)
    sim.take()
    sim.s.remove_worker(W1)
    sent = sim.take()
    assert sim.state("scattered") == "erred"
    assert sim.state("y") == "erred"
    frames = sent.frames("key-erred", C1)
    assert isinstance(exception_in(frames["scattered"]), FutureLostError)
    assert frames["y"] == frames["scattered"]
    assert sent.computes() == {}


def test_missing_data_recomputes_the_input_no_holder_could_provide():
    sim = Sim(extra_queue=0)
    sim.worker(W1)
    sim.submit(task("x"))
    sim.finish("x", W1)
    sim.submit(task("busy"))              # W1 is full: y must go to W2
    sim.worker(W2)
    sim.submit(task("y", "x"))
    assert sim.on("y") == W2
    sim.take()

    sim.s.missing_data(W2, "y", ["x"])
    sent = sim.take()
    assert sent.keys("release-keys", W1) == ["x"]   # W1 is no holder after all
    assert sent.computes() == {W2: ["x"]}
    assert sim.state("y") == "waiting"
    sim.finish("x", W2)
    sent = sim.take()
    assert sent.computes() == {W2: ["y"]}
    assert sent.items("compute", W2)[0]["deps"] == {"x": [addr(W2)]}


def test_missing_data_keeps_a_copy_the_worker_never_asked_for():
    sim = Sim(extra_queue=0)
    sim.worker(W1)
    sim.worker(W2)
    sim.worker(W3)
    sim.s.update_data(C1, [{"key": "x", "nbytes": 8, "workers": [addr(W1)]}])  # scattered
    item, payload = task("y", "x")
    sim.submit((dict(item, workers=[addr(W3)]), payload))
    assert sim.take().items("compute", W3)[0]["deps"] == {"x": [addr(W1)]}
    sim.s.keys_added(W2, "x", 8)           # a copy on W2 since, which W3 does not know of
    sim.s.missing_data(W3, "y", ["x"], run=sim.s.tasks["y"].run, tried=[addr(W1)])
    sent = sim.take()
    # Only W1's copy goes: x stays in memory (scattered, it could not be made
    # again), and y is sent again, to fetch it from W2.
    assert sent.keys("release-keys", W1) == ["x"] and "release-keys" not in sent.ops(W2)
    assert sim.state("x") == "memory" and sim.s.who_has(["x"]) == {"x": [addr(W2)]}
    assert sent.items("compute", W3)[0]["deps"] == {"x": [addr(W2)]}


def test_missing_data_from_a_worker_not_processing_the_task_is_ignored():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"))
    sim.finish("x")
    sim.submit(task("y", "x"))
    sim.take()
    _, stranger = sim.on_and_other("y")
    sim.s.missing_data(stranger, "y", ["x"])
    assert sim.state("x") == "memory" and sim.state("y") == "processing"
    assert sim.take().messages == []


def test_removing_a_client_releases_its_keys_but_not_other_clients_keys():
    sim = Sim(clients=(C1, C2))
    sim.worker(W1, nthreads=2)
    sim.submit(task("mine"), task("pending"), client=C1)
    sim.submit(task("theirs"), client=C2)
    sim.finish("mine")
    sim.finish("theirs")
    sim.take()
    sim.s.remove_client(C1)
    assert sorted(sim.take().keys("release-keys", W1)) == ["mine", "pending"]
    assert set(sim.s.tasks) == {"theirs"}
    assert C1 not in sim.s.clients


def test_task_finished_for_a_forgotten_key_tells_the_worker_to_release_it():
    sim = Sim()
    sim.worker(W1)
    sim.s.task_finished(W1, "nobody-asked", 1000)
    sent = sim.take()
    assert sent.keys("release-keys", W1) == ["nobody-asked"]
    assert "nobody-asked" not in sim.s.tasks
    assert sim.s.workers[W1].nbytes == 0


# --------------------------------------------------------------------------- stale reports


def run_sent(sent: Sent, worker: bytes, key: str) -> int:
    """The run id of ``key``'s compute message to ``worker``."""
    (run,) = [item["run"] for item in sent.items("compute", worker) if item["key"] == key]
    return run


def test_a_late_report_of_a_released_run_is_not_taken_for_the_next_run_of_the_key():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))
    first = run_sent(sim.take(), W1, "x")
    sim.s.release(C1, ["x"])                # dropped while W1 runs it ...
    assert sim.take().keys("release-keys", W1) == ["x"]
    sim.submit(task("x"))                   # ... and submitted again, to W1 again
    second = run_sent(sim.take(), W1, "x")
    assert second != first
    # W1 reported the first run before it heard of the release: that data is
    # gone by now, so the key must not be said to be in memory there.
    sim.s.task_finished(W1, "x", 8, run=first)
    assert sim.state("x") == "processing" and sim.on("x") == W1
    assert sim.take().messages == []        # (no key-finished; no release of the new run)
    sim.s.task_finished(W1, "x", 8, run=second)
    assert sim.state("x") == "memory"
    assert sim.take().keys("key-finished", C1) == ["x"]


def test_a_late_report_from_a_worker_a_task_was_taken_back_from_is_dropped():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("running"), task("queued"))
    sent = sim.take()
    run = run_sent(sent, W1, "queued")
    sim.s.worker_paused(W1, True)           # queued goes back: W1 drops it
    assert "queued" in sim.take().keys("release-keys", W1)
    assert sim.state("queued") != "processing"
    sim.s.task_finished(W1, "queued", 8, run=run)  # it had run after all, and said so
    assert sim.state("queued") != "memory"
    assert sim.take().keys("release-keys", W1) == ["queued"]
    assert sim.s.who_has(["queued"]) == {"queued": []}


def test_late_errors_missing_inputs_and_secessions_of_an_earlier_run_are_ignored():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))
    first = run_sent(sim.take(), W1, "x")
    sim.s.release(C1, ["x"])
    sim.submit(task("x"))
    sim.take()
    sim.s.task_erred(W1, "x", error_frames(ValueError("the first run")), run=first)
    sim.s.missing_data(W1, "x", [], run=first)
    sim.s.task_seceded(W1, "x", run=first)
    assert sim.state("x") == "processing" and sim.on("x") == W1
    assert not sim.s.workers[W1].seceded
    assert sim.take().messages == []


def test_task_finished_from_an_unknown_worker_changes_nothing():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))
    sim.take()
    sim.s.task_finished(b"ghost", "x", 8)
    assert sim.state("x") == "processing"
    assert sim.take().messages == []


def test_keys_added_records_a_copy_that_is_released_with_the_key():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"))
    holder, other = sim.on_and_other("x")
    sim.finish("x", nbytes=500)
    sim.s.keys_added(other, "x", 500)
    assert sorted(sim.s.who_has(["x"])["x"]) == sorted([addr(W1), addr(W2)])
    assert sim.s.workers[other].nbytes == 500
    sim.take()
    sim.s.release(C1, ["x"])
    sent = sim.take()
    assert sent.keys("release-keys", W1) == ["x"] and sent.keys("release-keys", W2) == ["x"]
    assert sim.s.workers[W1].nbytes == sim.s.workers[W2].nbytes == 0


def test_keys_added_for_a_key_not_in_memory_is_released_on_that_worker():
    sim = Sim()
    sim.worker(W1)
    sim.s.keys_added(W1, "unknown", 8)
    assert sim.take().keys("release-keys", W1) == ["unknown"]
    assert sim.s.has_what() == {addr(W1): []}


def test_worker_joining_with_data_nobody_wants_is_told_to_release_it():
    sim = Sim()
    sim.worker(W1, keys=["stale"])
    assert sim.take().keys("release-keys", W1) == ["stale"]
    assert sim.s.has_what() == {addr(W1): []}


def test_worker_returning_with_a_key_queued_for_recomputation_is_not_recomputed():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))
    sim.finish("x", W1)
    sim.s.remove_worker(W1)               # e.g. a network blip: the center gives up on W1
    assert sim.state("x") == "ready"      # wanted, lost: to be recomputed
    sim.take()
    sim.worker(W1, keys=["x"])            # the same worker registers again, still holding x
    sent = sim.take()
    assert sim.state("x") == "memory"
    assert sim.s.who_has(["x"]) == {"x": [addr(W1)]}
    assert sent.computes() == {}
    assert sim.s.tasks["x"] not in [ts for _, ts in sim.s.placement.ready]


# --------------------------------------------------------------------------- reports


def test_info_counts_tasks_by_state_and_reports_each_workers_load():
    sim = Sim(extra_queue=1)
    sim.worker(W1, nthreads=1)
    sim.submit(task("done"))
    sim.finish("done", nbytes=1234)
    sim.submit(task("bad"))
    sim.err("bad", ValueError())
    sim.submit(task("a"), task("b"), task("c"), task("d", "c"))
    info = sim.s.info()
    assert info["tasks"] == {"memory": 1, "erred": 1, "processing": 2, "ready": 1,
                             "waiting": 1}
    assert info["workers"] == {addr(W1): {
        "name": "w1", "nthreads": 1, "memory": 1234, "memory_limit": 0, "resources": {},
        "executing": 1, "queued": 1, "keys": 1, "paused": False}}


def test_only_the_tasks_a_dead_worker_was_running_are_suspected():
    from zfutures.scheduler import Scheduler

    s = Scheduler(allowed_failures=1, extra_queue=3)
    s.add_client(b"c", "c")
    s.add_worker(b"w1", "tcp://w1:1", "w1", nthreads=1)
    s.submit(b"c", [{"key": f"t{i}", "deps": [], "priority": 0, "nframes": 1}
                    for i in range(4)], [b"p"] * 4)
    assert all(s.tasks[f"t{i}"].state == "processing" for i in range(4))
    s.add_worker(b"w2", "tcp://w2:1", "w2", nthreads=1)
    s.remove_worker(b"w1")
    # t0 was first in line, so it was the one running: with one allowed failure it
    # errs. t1..t3 were only queued: they go to w2 unharmed.
    assert s.tasks["t0"].state == "erred"
    assert [s.tasks[f"t{i}"].state for i in (1, 2, 3)] == ["processing"] * 3


def test_a_retiring_worker_hands_on_the_keys_only_it_holds_then_is_told_to_go():
    from zfutures.scheduler import Scheduler

    s = Scheduler()
    s.add_client(b"c", "c")
    s.add_worker(b"w1", "tcp://w1:1", "w1", nthreads=1)
    s.add_worker(b"w2", "tcp://w2:1", "w2", nthreads=1)
    s.update_data(b"c", [{"key": "only-w1", "nbytes": 10, "workers": ["tcp://w1:1"]},
                         {"key": "both", "nbytes": 10, "workers": ["tcp://w1:1", "tcp://w2:1"]}])
    s.outbox.take()
    s.retire_worker(b"w1")
    sent = {(ident, op): fields for ident, op, fields, _ in s.outbox.take()}
    assert sent[(b"w2", "acquire")]["tasks"] == [{"key": "only-w1", "holders": ["tcp://w1:1"]}]
    assert (b"w1", "retired") not in sent             # not before its key is safe
    s.submit(b"c", [{"key": "t", "deps": [], "priority": 0, "nframes": 1}], [b"p"])
    assert s.tasks["t"].processing_on.ident == b"w2"  # a retiring worker takes no task
    s.keys_added(b"w2", "only-w1", 10)
    sent = {(ident, op) for ident, op, _, _ in s.outbox.take()}
    assert (b"w1", "retired") in sent
    s.remove_worker(b"w1")
    assert s.tasks["only-w1"].state == "memory"         # nothing lost, nothing recomputed


def test_a_retiring_worker_whose_keys_target_left_is_handed_on_again_or_let_go():
    """w1 retires and w2 is asked to copy its key; w2 retires and leaves before
    copying it. w1 must not wait for a copy that will never come: its key goes
    to w3 if one stays, and with no worker staying it is told to go."""
    from zfutures.scheduler import Scheduler

    for stays in (True, False):
        s = Scheduler()
        s.add_client(b"c", "c")
        for w in (b"w1", b"w2"):
            s.add_worker(w, f"tcp://{w.decode()}:1", w.decode(), nthreads=1)
        s.update_data(b"c", [{"key": "k", "nbytes": 10, "workers": ["tcp://w1:1"]}])
        s.retire_worker(b"w1")
        sent = {(ident, op): fields for ident, op, fields, _ in s.outbox.take()}
        assert sent[(b"w2", "acquire")]["tasks"] == [{"key": "k", "holders": ["tcp://w1:1"]}]
        if stays:
            s.add_worker(b"w3", "tcp://w3:1", "w3", nthreads=1)
        s.retire_worker(b"w2")
        s.remove_worker(b"w2")
        sent = {(ident, op): fields for ident, op, fields, _ in s.outbox.take()}
        if stays:
            assert sent[(b"w3", "acquire")]["tasks"] == [{"key": "k",
                                                         "holders": ["tcp://w1:1"]}]
            assert (b"w1", "retired") not in sent
            s.keys_added(b"w3", "k", 10)
            assert (b"w1", "retired") in {(i, op) for i, op, _, _ in s.outbox.take()}
        else:
            assert (b"w1", "retired") in sent


# --------------------------------------------------------------------------- recovery
# A center that (re)starts recovers: workers come back with keys it never saw,
# and clients submit again what they hold, saying where finished keys were.


def test_keys_a_worker_brings_back_are_taken_when_a_client_submits_them_again():
    sim = Sim(recovering=True)
    sim.s.add_worker(W1, addr(W1), "w1", 1, keys={"x": 800})
    assert sim.take().keys("release-keys", W1) == []  # kept, unclaimed, for now
    sim.submit(task("x"), task("y", "x"))
    sent = sim.take()
    assert sim.state("x") == "memory" and sim.s.tasks["x"].nbytes == 800
    assert sent.computed_keys() == ["y"]                   # x is not run again
    assert sent.items("key-finished", C1) == [{"key": "x", "who_has": [addr(W1)],
                                               "nbytes": 800}]


def test_a_run_a_previous_center_assigned_is_kept_for_the_client_that_brings_it_back():
    previous = Sim()
    previous.worker(W1)
    previous.submit(task("x"))
    old_run = run_sent(previous.take(), W1, "x")
    sim = Sim(recovering=True)                  # the center restarted meanwhile
    sim.worker(W1)
    sim.s.task_finished(W1, "x", 8, run=old_run)
    assert sim.take().keys("release-keys", W1) == []
    sim.submit(task("x"))
    assert sim.take().computed_keys() == [] and sim.state("x") == "memory"


def test_a_run_a_previous_center_assigned_ends_the_key_brought_back_meanwhile():
    previous = Sim()
    previous.worker(W1)
    previous.submit(task("x"))
    old_run = run_sent(previous.take(), W1, "x")
    sim = Sim(recovering=True)                  # the center restarted: W1 still runs x
    sim.worker(W1)
    sim.worker(W2)
    item, payload = task("x")                   # the client brought x back: it runs
    sim.submit((dict(item, workers=[addr(W2)], allow_other_workers=True), payload))
    assert sim.on("x") == W2                    # anew, elsewhere
    sim.take()
    sim.s.task_finished(W1, "x", 8, run=old_run)  # W1's first run ends: never dropped
    sent = sim.take()
    assert sim.state("x") == "memory" and sim.s.who_has(["x"]) == {"x": [addr(W1)]}
    assert sent.keys("key-finished", C1) == ["x"]
    assert sent.keys("release-keys", W2) == ["x"]  # the second run is not needed


def test_a_late_report_of_a_run_this_center_forgot_is_not_kept_for_claiming():
    sim = Sim(recovering=True)                  # (every center starts out recovering)
    sim.worker(W1)
    sim.submit(task("x"))
    run = run_sent(sim.take(), W1, "x")
    sim.s.release(C1, ["x"])                    # forgotten: W1 is told to drop it ...
    assert sim.take().keys("release-keys", W1) == ["x"]
    sim.s.task_finished(W1, "x", 8, run=run)    # ... after it said it was done
    sim.submit(task("x"))
    assert sim.take().computed_keys() == ["x"]  # run again, not claimed from W1
    assert sim.state("x") == "processing"


def test_a_key_expected_on_a_worker_not_back_yet_waits_for_it():
    sim = Sim(recovering=True)
    sim.worker(W2)
    item, payload = task("x")
    sim.submit((dict(item, who_has=[addr(W1)]), payload), task("y", "x"))
    assert sim.take().computed_keys() == []               # neither x nor y runs yet
    sim.s.add_worker(W1, addr(W1), "w1", 1, keys={"x": 8})
    assert sim.state("x") == "memory"
    assert sim.take().computed_keys() == ["y"]


def test_an_expected_key_its_worker_comes_back_without_is_recomputed():
    sim = Sim(recovering=True)
    item, payload = task("x")
    sim.submit((dict(item, who_has=[addr(W1)]), payload))
    sim.worker(W1)                                        # back, but without x
    assert sim.take().computed_keys() == ["x"]


def test_end_of_recovery_releases_unclaimed_keys_and_recomputes_missing_ones():
    sim = Sim(recovering=True)
    sim.s.add_worker(W1, addr(W1), "w1", 1, keys={"orphan": 8})
    item, payload = task("x")
    sim.submit((dict(item, who_has=[addr(W2)]), payload))  # W2 never comes back
    sim.s.update_data(C1, [{"key": "scattered", "nbytes": 8, "workers": [addr(W2)]}])
    assert sim.take().computed_keys() == []
    sim.s.end_recovery()
    sent = sim.take()
    assert sent.keys("release-keys", W1) == ["orphan"]
    assert sent.computed_keys() == ["x"]
    # Scattered data cannot be recomputed: its future is lost, with a reason.
    assert isinstance(exception_in(sent.frames("key-erred", C1)["scattered"]),
                      FutureLostError)


def test_results_finished_before_the_client_is_back_are_kept_for_it():
    sim = Sim(recovering=True)
    sim.worker(W1)
    sim.s.task_finished(W1, "x", 8)                        # it was running when the center died
    assert sim.take().keys("release-keys", W1) == []
    sim.submit(task("x"))
    assert sim.state("x") == "memory" and sim.take().computed_keys() == []


def test_outside_recovery_unknown_keys_are_released_at_once():
    sim = Sim()
    sim.s.add_worker(W1, addr(W1), "w1", 1, keys={"x": 8})
    sim.s.task_finished(W1, "y", 8)
    assert sorted(sim.take().keys("release-keys", W1)) == ["x", "y"]
    assert not sim.s.recovery.unclaimed


def test_a_worker_coming_back_with_a_key_being_computed_elsewhere_stops_that_run():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))
    sim.take()
    sim.s.add_worker(W2, addr(W2), "w2", 1, keys={"x": 8})
    sent = sim.take()
    assert sim.state("x") == "memory" and sim.s.tasks["x"].who_has == {sim.s.workers[W2]}
    assert sent.keys("release-keys", W1) == ["x"]           # W1 drops its run
    assert not sim.s.workers[W1].processing


def test_a_dead_worker_drops_out_of_the_unclaimed_keys():
    sim = Sim(recovering=True)
    sim.s.add_worker(W1, addr(W1), "w1", 1, keys={"x": 8})
    sim.s.remove_worker(W1)
    assert not sim.s.recovery.unclaimed
    sim.submit(task("x"))
    assert sim.take().computed_keys() == []  # no worker: it waits, to be computed later
    assert sim.state("x") == "ready"


# --------------------------------------------------------------------------- memory pressure


def test_a_paused_worker_gets_no_tasks_and_its_queue_goes_elsewhere():
    sim = Sim()
    sim.worker(W1)
    sim.submit(*[task(f"t{i}") for i in range(3)])        # one runs on W1, two queue there
    assert sorted(sim.take().computed_keys()) == ["t0", "t1", "t2"]
    sim.s.worker_paused(W1, True)
    sent = sim.take()
    assert sorted(sent.keys("release-keys", W1)) == ["t1", "t2"]  # t0 runs on
    assert sim.on("t0") == W1 and sim.state("t1") == sim.state("t2") == "ready"
    sim.worker(W2)
    assert sorted(sim.take().computes()[W2]) == ["t1", "t2"]
    sim.submit(task("later"))
    assert sim.on("later") == W2
    assert sim.s.info()["workers"][addr(W1)]["paused"] is True


def test_a_worker_that_resumes_takes_tasks_again():
    sim = Sim()
    sim.worker(W1)
    sim.s.worker_paused(W1, True)
    sim.submit(task("x"))
    assert sim.take().computed_keys() == [] and sim.state("x") == "ready"
    sim.s.worker_paused(W1, False)
    assert sim.take().computes() == {W1: ["x"]}


def test_a_worker_coming_back_with_a_key_already_in_memory_elsewhere_drops_its_copy():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"))
    sim.finish("x", sim.on("x"))
    holder = next(iter(sim.s.tasks["x"].who_has)).ident
    sim.take()
    # W3 ran x too, before the center gave up on it: an impure task's two runs
    # may differ, so the key keeps the one value clients have already seen.
    sim.s.add_worker(W3, addr(W3), "w3", 1, keys={"x": 8})
    assert sim.take().keys("release-keys", W3) == ["x"]
    assert {ws.ident for ws in sim.s.tasks["x"].who_has} == {holder}


def test_a_late_result_of_a_task_already_done_elsewhere_is_dropped():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"))
    first = sim.on("x")
    sim.s.remove_worker(first)                  # given up on while running x
    second = sim.on("x")
    sim.finish("x", second)
    sim.take()
    sim.worker(first)                           # back, and its run of x ends
    sim.s.task_finished(first, "x", 8)
    assert sim.take().keys("release-keys", first) == ["x"]
    assert {ws.ident for ws in sim.s.tasks["x"].who_has} == {second}


# --------------------------------------------------------------------------- inline results


def test_a_small_result_a_client_waits_for_comes_to_it_with_the_completion():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))
    (item,) = sim.take().items("compute", W1)
    assert item["inline"] is True                # a client waits for x
    sim.s.task_finished(W1, "x", 8, 0.001, [b"pickled 2"])
    sent = sim.take()
    assert sent.frames("key-finished", C1) == {"x": [b"pickled 2"]}


def test_a_result_no_client_waits_for_is_not_sent_along():
    sim = Sim()
    sim.submit(task("x"), task("y", "x"))
    sim.s.release(C1, ["x"])                     # only y wants x now
    sim.worker(W1)
    item, _ = sim.take().items("compute", W1)
    assert item["key"] == "x" and "inline" not in item


# --------------------------------------------------------------------------- sent ahead


def test_the_next_link_of_a_chain_is_sent_ahead_to_the_worker_computing_its_input():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(*chain(3))
    computes = sim.take().computes()
    # All three go to one worker at once: t1 and t2 wait there for their inputs.
    assert list(computes.values()) == [["t0", "t1", "t2"]]
    (worker,) = computes
    assert sim.state("t2") == "processing" and sim.s.tasks["t2"].waiting_on
    sim.finish("t0", worker)
    sim.finish("t1", worker)
    assert sim.take().computed_keys() == []  # nothing new to send: they were there
    sim.finish("t2", worker)
    assert [sim.state(f"t{i}") for i in range(3)] == ["memory"] * 3


def test_a_task_is_not_sent_ahead_when_an_input_lives_elsewhere():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("a"), task("b"))
    placed = {k: sim.on(k) for k in "ab"}
    assert placed["a"] != placed["b"]
    sim.finish("b", placed["b"])
    sim.take()
    sim.submit(task("c", "a", "b"))         # a runs on one worker, b is on the other
    assert sim.take().computed_keys() == [] and sim.state("c") == "waiting"


def test_tasks_sent_ahead_are_taken_back_when_their_input_is_retried_elsewhere():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("t0", retries=1), task("t1", "t0"), task("t2", "t1"))
    sim.take()
    sim.err("t0", ValueError("flaky"))
    sent = sim.take()
    assert sorted(sent.keys("release-keys", W1)) == ["t1", "t2"]
    assert sent.computes() == {W1: ["t0", "t1", "t2"]}  # then sent again, in order
    sim.finish("t0", W1)
    sim.finish("t1", W1)
    sim.finish("t2", W1)
    assert sim.state("t2") == "memory"


def test_a_dead_worker_suspects_only_tasks_that_could_run_not_those_sent_ahead():
    sim = Sim(allowed_failures=2)
    sim.worker(W1)
    sim.submit(task("t0"))
    sim.submit(task("t1", "t0", priority=10))  # high priority, but it cannot start first
    assert sim.on("t1") == W1
    sim.s.remove_worker(W1)
    assert sim.s.tasks["t0"].suspicious == 1     # the one that was running
    assert sim.s.tasks["t1"].suspicious == 0


def test_an_empty_graph_can_be_compacted_and_the_scheduler_goes_on():
    sim = Sim()
    sim.worker(W1)
    sim.submit(*[task(f"t{i}") for i in range(50)])
    while sim.s.workers[W1].processing:
        for ts in list(sim.s.workers[W1].processing):
            sim.finish(ts.key, W1)
    sim.s.release(C1, [f"t{i}" for i in range(50)])
    size = sys.getsizeof(sim.s.tasks)
    sim.s.compact()
    assert sim.s.tasks == {} and sys.getsizeof(sim.s.tasks) < size  # its table given back
    sim.submit(task("again"))
    sim.finish("again", W1)
    assert sim.state("again") == "memory"


# --------------------------------------------------------------------------- outbox order


def test_outbox_batches_per_recipient_and_op_when_no_key_is_named_twice():
    outbox = Outbox()
    outbox.add(W1, "compute", "tasks", {"key": "a"}, [b"pa"])
    outbox.add(W1, "release-keys", "keys", "x")
    outbox.add(W1, "compute", "tasks", {"key": "b"}, [b"pb"])
    outbox.add(W2, "compute", "tasks", {"key": "c"}, [b"pc"])
    outbox.add(W1, "release-keys", "keys", "y")
    taken = [(ident, op, fields, frames) for ident, op, fields, frames in outbox.take()]
    assert taken == [
        (W1, "compute", {"tasks": [{"key": "a", "nframes": 1}, {"key": "b", "nframes": 1}]},
         [b"pa", b"pb"]),
        (W1, "release-keys", {"keys": ["x", "y"]}, []),
        (W2, "compute", {"tasks": [{"key": "c", "nframes": 1}]}, [b"pc"]),
    ]
    assert outbox.take() == []


def test_outbox_keeps_a_release_before_the_compute_of_the_same_key():
    outbox = Outbox()
    outbox.add(W1, "compute", "tasks", {"key": "a"}, [b"pa"])
    outbox.add(W1, "release-keys", "keys", "k")
    outbox.add(W1, "compute", "tasks", {"key": "k"}, [b"pk"])   # k again, after its release
    outbox.add(W1, "release-keys", "keys", "z")
    ops = [(op, fields) for _, op, fields, _ in outbox.take()]
    assert ops == [("compute", {"tasks": [{"key": "a", "nframes": 1}]}),
                   ("release-keys", {"keys": ["k", "z"]}),
                   ("compute", {"tasks": [{"key": "k", "nframes": 1}]})]


def test_outbox_keeps_a_compute_before_the_release_of_the_same_key():
    outbox = Outbox()
    outbox.add(W1, "release-keys", "keys", "x")
    outbox.add(W1, "compute", "tasks", {"key": "k"}, [b"pk"])
    outbox.add(W1, "release-keys", "keys", "k")
    ops = [(op, fields) for _, op, fields, _ in outbox.take()]
    assert ops == [("release-keys", {"keys": ["x"]}),
                   ("compute", {"tasks": [{"key": "k", "nframes": 1}]}),
                   ("release-keys", {"keys": ["k"]})]


def test_a_key_released_and_submitted_again_in_one_turn_is_released_first_on_its_worker():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("k"))
    sim.take()
    sim.finish("k")
    sim.take()
    sim.submit(task("a"))
    sim.s.release(C1, ["k"])
    sim.submit(task("k"))
    messages = [(ident, op, fields) for ident, op, fields, _ in sim.s.outbox.take()
                if ident == W1]
    assert [(op, fields.get("keys") or [t["key"] for t in fields["tasks"]])
            for _, op, fields in messages] == [
        ("compute", ["a"]), ("release-keys", ["k"]), ("compute", ["k"])]


# ---------------------------------------------------------------------- blocks of a map


def run_all(sim: Sim, keys: list[str], order=None) -> dict[str, bytes]:
    """Finish tasks one at a time until ``keys`` are all in memory; return
    where each ran. ``order(running keys)`` picks the one to finish next; by
    default, workers take turns (each finishing its earliest task), as
    workers of equal speed would."""
    ran: dict[str, bytes] = {}
    finished = dict.fromkeys(sim.s.workers, 0)
    for _ in range(10 * len(keys)):
        running = [k for k in keys if sim.state(k) == "processing"]
        if not running:
            break
        if order:
            key = order(running)
        else:
            key = min(running, key=lambda k: (finished[sim.on(k)], sim.s.tasks[k].priority))
        ran[key] = sim.on(key)
        finished[ran[key]] += 1
        sim.finish(key)
    assert all(sim.state(k) == "memory" for k in keys)
    return ran


def two_workers(extra_queue: int) -> Sim:
    sim = Sim(extra_queue=extra_queue)
    sim.worker(W1)
    sim.worker(W2)
    return sim


def test_the_tasks_of_a_map_run_in_contiguous_blocks_one_per_worker():
    # Neighbours are combined later (a tree reduction adds x0 to x1): made on
    # one worker, no transfer is needed.
    sim = two_workers(extra_queue=1)
    keys = [f"x{i}" for i in range(8)]
    sim.submit(*[task(k) for k in keys])
    ran = run_all(sim, keys)
    assert [ran[k] for k in keys] == [W1] * 4 + [W2] * 4
    assert sim.s.placement.affine == 0


def test_blocks_follow_the_workers_threads():
    sim = Sim(extra_queue=1)
    sim.worker(W1, nthreads=3)
    sim.worker(W2, nthreads=1)
    sim.submit(*[task(f"x{i}") for i in range(16)])
    assert sim.take().computes() == {W1: ["x0", "x1", "x2", "x3"], W2: ["x12", "x13"]}
    assert [ts.key for _, ts in sorted(sim.s.workers[W1].ready_here)] == \
        [f"x{i}" for i in range(4, 12)]


def test_a_worker_done_with_its_block_takes_the_back_half_of_the_largest_block():
    sim = two_workers(extra_queue=1)
    keys = [f"x{i}" for i in range(16)]
    sim.submit(*[task(k) for k in keys])
    sim.take()
    for key in ["x0", "x1"]:                   # W1 is quick: done with two tasks ...
        sim.finish(key)
    assert sim.take().computes() == {W1: ["x2", "x3"]}
    for key in ["x2", "x3", "x4", "x5", "x6", "x7"]:  # ... and with its block
        sim.finish(key)
    sent = sim.take()
    # W2 has x8 and x9; W1 takes the back half of what remains of W2's block,
    # and runs it from its front.
    assert sent.computes() == {W1: ["x4", "x5", "x6", "x7", "x13", "x14"]}
    assert [ts.key for _, ts in sorted(sim.s.workers[W1].ready_here)] == ["x15"]
    assert [ts.key for _, ts in sorted(sim.s.workers[W2].ready_here)] == \
        ["x10", "x11", "x12"]


def test_workers_of_different_speeds_keep_neighbours_together():
    # W1 finishes two tasks in the time W2 finishes one. Taking turns at the
    # front of W2's block would split most of its pairs.
    sim = two_workers(extra_queue=1)
    keys = [f"x{i}" for i in range(32)]
    sim.submit(*[task(k) for k in keys])
    turns = itertools.cycle([W1, W1, W2])

    def two_to_one(running: list[str]) -> str:
        for _ in range(3):
            worker = next(turns)
            mine = [k for k in running if sim.on(k) == worker]
            if mine:
                return min(mine, key=lambda k: sim.s.tasks[k].priority)
        return running[0]

    ran = run_all(sim, keys, order=two_to_one)
    assert sum(ran[f"x{i}"] == W1 for i in range(32)) > 16   # the quick one did more
    split = [i for i in range(0, 32, 2) if ran[f"x{i}"] != ran[f"x{i + 1}"]]
    assert len(split) <= 1, split   # (the boundary of the two runs)


def test_a_later_task_of_higher_priority_goes_before_the_blocks():
    sim = two_workers(extra_queue=0)
    sim.submit(*[task(f"x{i}") for i in range(8)])
    sim.take()
    sim.submit(task("urgent", priority=10))
    assert sim.state("urgent") == "ready"
    sim.finish("x4")                      # W2 frees up first
    assert sim.on("urgent") == W2


def test_a_map_with_mixed_priorities_is_not_split_into_blocks():
    # In blocks, W1 would run its own low-priority tasks while high-priority
    # ones waited in the block of a busy W2.
    sim = two_workers(extra_queue=0)
    keys = [f"x{i}" for i in range(8)]
    sim.submit(*[task(k, priority=i % 2) for i, k in enumerate(keys)])
    ran = run_all(sim, keys, order=lambda running: next(
        (k for k in running if sim.on(k) == W1), running[0]))
    low = [sim.s.tasks[k].priority[0] == 0 for k, w in ran.items() if w == W1]
    assert low == sorted(low)             # W1 ran every high one before any low one
    assert low.count(False) >= 3


@pytest.mark.parametrize("leave", ["remove", "pause", "retire"])
def test_the_block_of_a_worker_that_leaves_pauses_or_retires_goes_to_the_others(leave):
    sim = two_workers(extra_queue=0)
    keys = [f"x{i}" for i in range(8)]
    sim.submit(*[task(k) for k in keys])
    assert sim.on("x4") == W2 and sim.s.placement.affine == 6
    w2 = sim.s.workers[W2]
    if leave == "remove":
        sim.s.remove_worker(W2)
    elif leave == "pause":
        sim.s.worker_paused(W2, True)
    else:
        sim.s.retire_worker(W2)
    assert sim.s.placement.affine == 3 and not w2.ready_here
    ran = run_all(sim, keys, order=lambda running: next(
        (k for k in running if sim.on(k) == W1), running[0]))
    assert all(ran[k] == W1 for k in keys if k != "x4")
    assert sim.s.placement.affine == 0


def test_a_task_released_while_it_waits_in_a_block_is_forgotten():
    sim = two_workers(extra_queue=0)
    keys = [f"x{i}" for i in range(8)]
    sim.submit(*[task(k) for k in keys])
    assert sim.state("x6") == "ready"
    sim.s.release(C1, ["x6"])
    assert "x6" not in sim.s.tasks and sim.s.placement.affine == 5
    rest = [k for k in keys if k != "x6"]
    ran = run_all(sim, rest)
    assert [ran[k] for k in rest] == [W1] * 4 + [W2] * 3


# ---------------------------------------------------------------------- durations


def finish_timed(sim: Sim, key: str, seconds: float) -> None:
    sim.s.task_finished(sim.s.tasks[key].processing_on.ident, key, 8, seconds)


def test_short_tasks_once_timed_are_sent_ahead_by_the_dozen():
    sim = Sim(extra_queue=2)
    sim.worker(W1)
    sim.submit(*[task(f"inc-{i}") for i in range(100)])
    assert len(sim.s.workers[W1].processing) == 3    # not timed yet: capacity only
    finish_timed(sim, "inc-0", 20e-6)
    # 20 us each: a round trip's worth is 100 of them, capped per thread.
    assert len(sim.s.workers[W1].processing) == 3 + 50


def test_long_tasks_after_short_ones_are_not_sent_ahead_until_timed_themselves():
    # A worker sent a dozen long tasks ahead keeps them even if it turns out
    # slower than the others, which then idle.
    sim = two_workers(extra_queue=2)
    sim.submit(*[task(f"inc-{i}") for i in range(4)])
    for key in [f"inc-{i}" for i in range(4)]:
        finish_timed(sim, key, 20e-6)
    sim.submit(*[task(f"random-{i}") for i in range(40)])
    assert [len(sim.s.workers[w].processing) for w in (W1, W2)] == [3, 3]
    finish_timed(sim, "random-0", 0.010)
    assert [len(sim.s.workers[w].processing) for w in (W1, W2)] == [3, 3]
    # The short group keeps its own figure.
    sim.submit(*[task(f"inc-{i}") for i in range(4, 8)])
    assert sim.s.placement.durations == {"inc": pytest.approx(20e-6), "random": 0.010}


def test_a_task_goes_to_the_worker_with_less_expected_work_not_fewer_tasks():
    sim = two_workers(extra_queue=2)
    sim.submit(task("long-0"), task("short-0"))
    finish_timed(sim, "long-0", 0.5)
    finish_timed(sim, "short-0", 0.001)
    sim.submit(task("long-1"))
    busy = sim.on("long-1")
    sim.submit(task("short-1"), task("short-2"))
    # The worker with one long task queued looks busier than one with two short.
    assert sim.on("short-1") != busy and sim.on("short-2") != busy


# --------------------------------------------------------------------------- direct tasks
# A client sends a lone task straight to a worker, in a run of its own, and
# tells the center in its submit; the worker's reports travel apart from it.

DIRECT_RUN = 7 << 40


def direct(key: str, worker: bytes, run: int = DIRECT_RUN, ack: bool = False) -> tuple:
    item, payload = task(key)
    item.update(direct_worker=addr(worker), direct_run=run)
    if ack:
        item["direct_ack"] = True
    return item, payload


def two_workers_and_direct(on: bytes) -> Sim:
    """Workers W1 and W2, and "x" sent straight to ``on``."""
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(direct("x", on))
    return sim


def test_a_direct_task_counts_as_processing_on_its_worker_without_a_compute():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(direct("x", W2, ack=True))
    assert sim.state("x") == "processing" and sim.on("x") == W2
    sent = sim.take()
    assert sent.computes() == {}              # the worker has it from the client
    assert sent.keys("direct-accepted", C1) == ["x"]
    sim.s.task_finished(W2, "x", 8, run=DIRECT_RUN, direct=True)
    assert sim.state("x") == "memory"
    assert sim.take().keys("key-finished", C1) == ["x"]
    assert sim.s.direct.unconfirmed == {}


def test_a_direct_tasks_report_that_comes_before_the_submit_waits_for_it():
    sim = Sim()
    sim.worker(W1)
    sim.s.task_finished(W1, "x", 8, duration=0.001, value=[b"small"], run=DIRECT_RUN,
                        direct=True)
    assert "x" not in sim.s.tasks and sim.take().messages == []  # kept, not released
    sim.submit(direct("x", W1))
    assert sim.state("x") == "memory" and sim.s.who_has(["x"]) == {"x": [addr(W1)]}
    sent = sim.take()
    assert sent.frames("key-finished", C1) == {"x": [b"small"]}
    assert sent.computes() == {} and sim.s.direct.early == {} and sim.s.direct.unconfirmed == {}


def test_an_error_and_a_secession_before_the_submit_are_played_back_too():
    sim = Sim()
    sim.worker(W1, nthreads=1)
    sim.s.task_seceded(W1, "waits", run=DIRECT_RUN, direct=True)
    frames = error_frames(ValueError("boom"))
    sim.s.task_erred(W1, "fails", frames, run=DIRECT_RUN + 1, direct=True)
    sim.submit(direct("waits", W1))
    assert sim.s.tasks["waits"] in sim.s.workers[W1].seceded  # its thread is free
    sim.take()
    sim.submit(direct("fails", W1, run=DIRECT_RUN + 1))
    assert sim.state("fails") == "erred"
    assert sim.take().frames("key-erred", C1) == {"fails": frames}


@pytest.mark.parametrize("how", ["busy", "paused", "retiring"])
def test_a_direct_task_counts_on_its_worker_whatever_the_center_thinks_of_it(how):
    # The worker decides (it refuses what it cannot start): a run it did not
    # refuse is the task's, and its client may hold the result already.
    sim = Sim()
    sim.worker(W1, keys=["held"] if how == "retiring" else ())
    sim.worker(W2)
    if how == "busy":
        sim.submit(task("long"), task("next"))  # one on each worker's thread
        assert {sim.on("long"), sim.on("next")} == {W1, W2}
    elif how == "paused":
        sim.s.worker_paused(W1, True)
    else:
        sim.s.retire_worker(W1)
    sim.take()
    sim.submit(direct("x", W1))
    sent = sim.take()
    assert sim.on("x") == W1 and sent.computes() == {} and sent.keys("release-keys", W1) == []
    sim.s.task_finished(W1, "x", 8, run=DIRECT_RUN, direct=True)
    assert sim.state("x") == "memory" and sim.s.who_has(["x"]) == {"x": [addr(W1)]}


def test_a_client_that_has_the_direct_result_already_is_not_sent_it_again():
    sim = Sim(clients=(C1, C2))
    sim.worker(W1)
    item, payload = direct("x", W1)
    sim.submit((dict(item, direct_answered=True), payload))
    sim.submit(task("x"), client=C2)  # the same pure call, from another client
    sim.take()
    sim.s.task_finished(W1, "x", 8, run=DIRECT_RUN, direct=True)
    sent = sim.take()
    assert sent.keys("key-finished", C1) == [] and sent.keys("key-finished", C2) == ["x"]
    assert sim.state("x") == "memory"


def test_a_client_that_had_a_direct_result_hears_of_a_later_run():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    item, payload = direct("x", W1)
    sim.submit((dict(item, direct_answered=True), payload))
    sim.take()
    sim.s.remove_worker(W1)  # it answered, then died before its report came
    assert sim.on("x") == W2
    sim.finish("x")
    assert sim.take().keys("key-finished", C1) == ["x"]


def test_a_direct_task_for_a_worker_that_left_is_placed_as_usual():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.s.remove_worker(W2)
    sim.take()
    sim.submit(direct("x", W2))
    assert sim.on("x") == W1 and sim.take().computes() == {W1: ["x"]}


def test_pausing_does_not_take_back_a_direct_run():
    sim = Sim()
    sim.worker(W1, nthreads=1)
    sim.submit(task("first"))    # the worker's one thread, in the center's eyes
    sim.submit(direct("x", W1))  # it ran x all the same ("first" was done there, say)
    sim.worker(W2)
    sim.take()
    sim.s.worker_paused(W1, True)
    assert sim.take().keys("release-keys", W1) == [] and sim.on("x") == W1


def test_a_retiring_worker_goes_only_once_its_direct_run_is_done_and_handed_on():
    sim = two_workers_and_direct(W1)
    sim.take()
    sim.s.retire_worker(W1)
    sent = sim.take()
    assert sim.on("x") == W1 and "retired" not in sent.ops(W1)  # it runs there still
    sim.s.task_finished(W1, "x", 8, run=DIRECT_RUN, direct=True)
    sent = sim.take()
    assert sent.keys("acquire", W2) == ["x"] and "retired" not in sent.ops(W1)
    sim.s.keys_added(W2, "x", 8)
    assert "retired" in sim.take().ops(W1)
    sim.s.remove_worker(W1)
    assert sim.state("x") == "memory" and sim.s.who_has(["x"]) == {"x": [addr(W2)]}


def test_a_retiring_worker_that_refuses_its_direct_run_goes_and_the_task_is_placed():
    sim = two_workers_and_direct(W1)
    sim.s.retire_worker(W1)
    sim.take()
    sim.s.task_refused(W1, "x", DIRECT_RUN)
    sent = sim.take()
    assert "retired" in sent.ops(W1) and sent.computes() == {W2: ["x"]}


def test_a_direct_task_the_worker_never_confirms_is_placed_only_once_it_refuses_it():
    sim = Sim()
    sim.worker(W1, nthreads=2)
    sim.submit(direct("lost", W1))
    sim.submit(direct("slow", W1, run=DIRECT_RUN + 1))
    sim.take()
    sim.s.sweep_direct()
    sim.s.task_accepted(W1, "slow", DIRECT_RUN + 1)  # still running there
    assert sim.take().messages == []                 # one sweep is not enough
    for _ in range(2):  # asked at each sweep until it answers
        sim.s.sweep_direct()
        sent = sim.take()
        assert sent.items("drop-direct", W1) == [{"key": "lost", "run": DIRECT_RUN}]
        assert sent.computes() == {} and sim.on("lost") == W1  # (it may have run it)
    sim.s.task_refused(W1, "lost", DIRECT_RUN)
    sent = sim.take()
    assert "lost" in sent.keys("release-keys", W1)
    assert run_sent(sent, W1, "lost") != DIRECT_RUN  # placed anew, in a center run
    assert sim.on("slow") == W1 and sim.s.tasks["slow"].run == DIRECT_RUN + 1
    sim.s.sweep_direct()
    assert sim.take().messages == []


def test_a_parked_report_whose_submit_never_comes_is_released_after_two_sweeps():
    sim = Sim()
    sim.worker(W1)
    sim.s.task_finished(W1, "orphan", 8, run=DIRECT_RUN, direct=True)
    sim.s.sweep_direct()
    assert sim.take().messages == []
    sim.s.sweep_direct()
    assert sim.take().keys("release-keys", W1) == ["orphan"]
    assert sim.s.direct.early == {}


def test_a_direct_run_of_a_key_the_center_already_has_is_stale():
    sim = Sim(clients=(C1, C2))
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"), client=C2)
    on, other = sim.on_and_other("x")
    sim.take()
    sim.submit(direct("x", other))       # C1 sends the same pure call straight
    assert sim.on("x") == on
    sim.s.task_finished(other, "x", 8, run=DIRECT_RUN, direct=True)
    assert sim.state("x") == "processing"
    assert sim.take().keys("release-keys", other) == ["x"]
    sim.finish("x")
    assert set(sim.take().keys("key-finished", C1)) == {"x"}


def test_a_direct_task_released_by_its_client_is_dropped_on_its_worker():
    sim = Sim()
    sim.worker(W1)
    sim.submit(direct("x", W1))
    sim.take()
    sim.s.release(C1, ["x"])
    assert sim.take().keys("release-keys", W1) == ["x"]
    assert "x" not in sim.s.tasks and sim.s.direct.unconfirmed == {}
    sim.s.task_finished(W1, "x", 8, run=DIRECT_RUN, direct=True)  # (it had run)
    assert sim.take().keys("release-keys", W1) == [] and not sim.s.direct.early  # (told once)


def test_a_late_report_of_a_released_direct_run_leaves_the_next_run_alone():
    # The client let x go and sent it again, straight to the same worker;
    # the first run's report comes after both. The worker must not be told
    # to drop x again: the copy it holds by then is the second run's.
    sim = Sim()
    sim.worker(W1)
    sim.submit(direct("x", W1))
    sim.s.release(C1, ["x"])
    assert sim.take().keys("release-keys", W1) == ["x"]
    sim.submit(direct("x", W1, run=DIRECT_RUN + 1))
    sim.s.task_finished(W1, "x", 8, run=DIRECT_RUN, direct=True)       # late: the first run
    sim.s.task_finished(W1, "x", 8, run=DIRECT_RUN + 1, direct=True)   # the second
    for _ in range(3):
        sim.s.sweep_direct()
    assert sim.take().keys("release-keys", W1) == []
    assert sim.s.tasks["x"].state == "memory" and sim.s.who_has(["x"]) == {"x": [addr(W1)]}
    assert not sim.s.direct.early and not sim.s.direct.released_runs


def test_news_of_a_key_tells_its_client_which_submit_it_follows():
    # A client that let a key go and submitted it again must be able to tell
    # news of the first submit, still on its way, from news of the second.
    sim = Sim()
    sim.worker(W1)
    for seq in (4, 5):
        item, payload = task("x")
        sim.s.submit(C1, [dict(item, nframes=len(payload))], payload, seq=seq)
        sim.finish("x")
        if seq == 4:  # (all in one burst: the center sends nothing in between)
            sim.s.release(C1, ["x"])
    finished = [protocol.decode_header(protocol.encode_header(op, **fields))
                for ident, op, fields, _ in sim.s.outbox.take()  # (two messages: not Sent)
                if ident == C1 and op == "key-finished"]
    assert [(f["seen"], [i["key"] for i in f["tasks"]]) for f in finished] == \
        [(4, ["x"]), (5, ["x"])]


def test_a_dead_workers_direct_task_is_placed_elsewhere():
    sim = two_workers_and_direct(W2)
    sim.take()
    sim.s.remove_worker(W2)
    assert sim.on("x") == W1 and sim.s.direct.unconfirmed == {}


def test_a_direct_task_its_worker_refuses_is_placed_by_the_center():
    sim = Sim()
    sim.worker(W1)
    sim.s.task_refused(W1, "x", DIRECT_RUN)  # (before the submit: played back)
    sim.submit(direct("x", W1))
    sent = sim.take()
    assert sent.keys("release-keys", W1) == ["x"]   # then, in order, the new run
    assert run_sent(sent, W1, "x") != DIRECT_RUN and sim.s.direct.unconfirmed == {}


def test_a_key_chosen_again_for_another_call_before_its_release_is_done_runs_the_new_call():
    # Releases of many keys go in parts (collect_limit): the key let go of may
    # still be there when the client submits it again, for another call.
    s = Scheduler(collect_limit=1)
    s.add_worker(W1, addr(W1), "w1", 1)
    s.add_client(C1, "c1")
    s.submit(C1, [dict(task("other")[0], nframes=1), dict(task("k")[0], nframes=1)],
             [b"payload of other", b"old call"])
    s.outbox.take()
    s.release(C1, ["k", "other"])                 # (one part now, the rest later)
    s.submit(C1, [dict(task("k")[0], nframes=1)], [b"new call"])
    assert s.tasks["k"].payload == [b"new call"]
    sent = Sent(s.outbox.take())
    assert "k" in sent.items("release-keys", W1) or "k" in [
        item["key"] for item in sent.items("compute", W1)]
