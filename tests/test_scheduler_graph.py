"""The task graph: a task's way to memory or error, keys shared by calls and
clients, and tasks released when nobody wants them (scheduler/graph.py)."""
from __future__ import annotations

from scheduler_sim import (
    C1,
    C2,
    W1,
    W2,
    W3,
    Sim,
    addr,
    chain,
    exception_in,
    run_sent,
    task,
)

from zfutures.errors import FutureLostError
from zfutures.messages import DoneItem, KeyAdded, MissingData, ScatteredItem, op_of

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
    assert sent.items("compute", W1)[1].deps == {"a": []}  # not anywhere yet

    sim.finish("a", nbytes=100)
    sent = sim.take()
    assert sim.state("a") == "memory"
    assert sent.keys("key-finished", C1) == ["a"]
    assert sent.items("key-finished", C1)[0].who_has == [addr(W1)]
    assert sent.items("key-finished", C1)[0].nbytes == 100
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
    assert sent.items("compute", W1)[0].deps == {"a": [addr(W1)], "b": [addr(W1)]}


def test_compute_message_lists_every_holder_of_each_input():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))
    sim.finish("x", W1)
    sim.worker(W2)
    sim.s.keys_added(W2, KeyAdded("x", 8))
    sim.take()
    sim.submit(task("y", "x"))
    sent = sim.take()
    (item,) = [i for ident in (W1, W2) for i in sent.items("compute", ident)]
    assert sorted(item.deps["x"]) == [addr(W1), addr(W2)]


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
    sent = sim.take()
    assert sent.computes() == {W1: ["a"]}
    run = run_sent(sent, W1, "a")
    sim.s.release(C1, ["a"])
    sent = sim.take()
    assert sent.keys("release-keys", W1) == ["a"]
    assert sent.computes() == {W1: ["b"]}
    assert "a" not in sim.s.tasks
    # The cancelled task's result, arriving anyway, is dropped on the worker.
    sim.s.task_finished(W1, DoneItem("a", 8, run))
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


def test_a_sync_is_answered_after_the_release_of_its_keys_sent_before():
    # A client put data on W1, which held the key already: W1 asks whether
    # its old copy was let go of. The answer must reach it after that word.
    sim = Sim()
    sim.worker(W1)
    sim.s.update_data(C1, [ScatteredItem("x", 8, [addr(W1)])])  # scattered
    sim.take()
    sim.s.sync(W1, ["early"])                  # (an earlier answer, not sent yet)
    sim.s.release(C1, ["x"])
    sim.s.sync(W1, ["x"])
    messages = [(op_of(msg), msg.keys) for ident, msg, _ in sim.s.outbox.take()
                if ident == W1]
    assert messages == [("synced", ["early"]), ("release-keys", ["x"]), ("synced", ["x"])]


def test_a_sync_is_answered_after_the_release_of_its_keys_still_waiting_their_turn():
    # Let go of with other keys, x waits its turn to be released (see
    # collect_limit); the word that W1 is to drop its copy would then come
    # after the answer, and drop the copy put there since.
    sim = Sim(collect_limit=1)
    sim.worker(W1)
    sim.s.update_data(C1, [ScatteredItem(key, 8, [addr(W1)]) for key in ("x", "y")])
    sim.take()
    sim.s.release(C1, ["x", "y"])              # (y is released, x waits)
    sim.s.sync(W1, ["x"])
    sim.s.collect_garbage()
    messages = [(op_of(msg), msg.keys) for ident, msg, _ in sim.s.outbox.take()
                if ident == W1]
    assert messages == [("release-keys", ["y", "x"]), ("synced", ["x"])]
    assert "x" not in sim.s.tasks


# ------------------------------------------------------- results sent with their completion


def test_a_small_result_a_client_waits_for_comes_to_it_with_the_completion():
    sim = Sim()
    sim.worker(W1)
    sim.submit(task("x"))
    (item,) = sim.take().items("compute", W1)
    assert item.send_result is True                   # a client waits for x
    sim.s.task_finished(W1, DoneItem("x", 8, item.run, nframes=1, duration=0.001),
                        [b"pickled 2"])
    sent = sim.take()
    assert sent.frames("key-finished", C1) == {"x": [b"pickled 2"]}


def test_a_result_no_client_waits_for_is_not_sent_along():
    sim = Sim()
    sim.submit(task("x"), task("y", "x"))
    sim.s.release(C1, ["x"])                     # only y wants x now
    sim.worker(W1)
    item, _ = sim.take().items("compute", W1)
    assert item.key == "x" and item.send_result is False


# --------------------------------------------------------------------------- missing inputs


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

    sim.s.missing_data(W2, MissingData("y", ["x"], sim.s.tasks["y"].run))
    sent = sim.take()
    assert sent.keys("release-keys", W1) == ["x"]   # W1 is no holder after all
    assert sent.computes() == {W2: ["x"]}
    assert sim.state("y") == "waiting"
    sim.finish("x", W2)
    sent = sim.take()
    assert sent.computes() == {W2: ["y"]}
    assert sent.items("compute", W2)[0].deps == {"x": [addr(W2)]}


def test_missing_data_keeps_a_copy_the_worker_never_asked_for():
    sim = Sim(extra_queue=0)
    sim.worker(W1)
    sim.worker(W2)
    sim.worker(W3)
    sim.s.update_data(C1, [ScatteredItem("x", 8, [addr(W1)])])  # scattered
    item, payload = task("y", "x")
    sim.submit((item._replace(workers=[addr(W3)]), payload))
    assert sim.take().items("compute", W3)[0].deps == {"x": [addr(W1)]}
    sim.s.keys_added(W2, KeyAdded("x", 8))           # a copy on W2 since, which W3 does not know of
    sim.s.missing_data(W3, MissingData("y", ["x"], sim.s.tasks["y"].run, tried=[addr(W1)]))
    sent = sim.take()
    # Only W1's copy goes: x stays in memory (scattered, it could not be made
    # again), and y is sent again, to fetch it from W2.
    assert sent.keys("release-keys", W1) == ["x"] and "release-keys" not in sent.ops(W2)
    assert sim.state("x") == "memory" and sim.s.who_has(["x"]) == {"x": [addr(W2)]}
    assert sent.items("compute", W3)[0].deps == {"x": [addr(W2)]}


def test_missing_data_from_a_worker_not_processing_the_task_is_ignored():
    sim = Sim()
    sim.worker(W1)
    sim.worker(W2)
    sim.submit(task("x"))
    sim.finish("x")
    sim.submit(task("y", "x"))
    sim.take()
    _, stranger = sim.on_and_other("y")
    sim.s.missing_data(stranger, MissingData("y", ["x"], sim.s.tasks["y"].run))
    assert sim.state("x") == "memory" and sim.state("y") == "processing"
    assert sim.take().messages == []
