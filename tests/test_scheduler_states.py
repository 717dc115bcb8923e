"""A task's legal changes of state: the table is the whole story.

Every change :data:`~zfutures.scheduler.states.TRANSITIONS` does not list
raises before it changes anything; every change it lists is one the scheduler
makes, shown here by the shortest run of events that makes it.
"""
from __future__ import annotations

import itertools

import pytest
from scheduler_sim import (
    C1,
    W1,
    W2,
    Sim,
    addr,
    task,
)

from zfutures.messages import MissingData, ScatteredItem
from zfutures.scheduler.graph import TaskGraph
from zfutures.scheduler.records import TaskState
from zfutures.scheduler.states import (
    ENTERS_FLIGHT,
    ERRED,
    FLIGHT_STEP,
    IN_FLIGHT,
    LEAVES_FLIGHT,
    MEMORY,
    PROCESSING,
    READY,
    RELEASED,
    STATES,
    STAYS,
    TRANSITIONS,
    WAITING,
    IllegalTransition,
)

ILLEGAL = sorted(set(itertools.product(STATES, STATES)) - set(TRANSITIONS))


@pytest.mark.parametrize("old, new", ILLEGAL)
def test_a_change_the_table_does_not_list_raises_and_changes_nothing(old, new):
    sim = Sim()
    sim.submit(task("a"), task("b", "a"))
    ts = sim.s.tasks["b"]
    ts.state = old
    waiters = set(sim.s.tasks["a"].waiters)
    with pytest.raises(IllegalTransition, match=f"'b' may not go from '{old}' to '{new}'"):
        sim.s.graph.set_state(ts, new)
    assert ts.state == old and set(sim.s.tasks["a"].waiters) == waiters


def test_no_state_changes_to_itself_and_memory_is_left_only_by_a_release():
    assert not [t for t in TRANSITIONS if t[0] == t[1]]
    assert [new for old, new in TRANSITIONS if old == MEMORY] == [RELEASED]


def test_the_flight_steps_follow_from_the_table():
    steps = {(old, new): step for old, nexts in FLIGHT_STEP.items()
             for new, step in nexts.items()}
    assert set(steps) == set(TRANSITIONS)
    for (old, new), step in steps.items():
        expected = {(True, False): LEAVES_FLIGHT, (False, True): ENTERS_FLIGHT}.get(
            (old in IN_FLIGHT, new in IN_FLIGHT), STAYS)
        assert step == expected, (old, new)


# --------------------------------------------------------------------------- each legal change


def direct_run(sim: Sim) -> None:
    sim.worker(W1)
    sim.submit(task("a", direct_worker=addr(W1), direct_run=7 << 40))


def scatter(sim: Sim, key: str = "a") -> None:
    sim.worker(W1)
    sim.s.update_data(C1, [ScatteredItem(key, 8, [addr(W1)])])


def unknown_input(sim: Sim) -> None:
    sim.submit(task("a", "nobody-knows-me"))


def input_erred(sim: Sim) -> None:
    sim.worker(W1)
    sim.submit(task("x"))
    sim.err("x", ValueError("boom"))
    sim.submit(task("a", "x"))


def sent_ahead(sim: Sim) -> None:
    sim.worker(W1, nthreads=2)
    sim.submit(task("x"), task("a", "x"))


def waiting_then_scattered(sim: Sim) -> None:
    sim.submit(task("x"), task("a", "x"))
    scatter(sim)


def waiting_then_released(sim: Sim) -> None:
    sim.submit(task("x"), task("a", "x"))
    sim.s.release(C1, ["a"])


def ready_input_lost(sim: Sim) -> None:
    sim.worker(W1)
    sim.submit(task("x"))
    sim.finish("x", W1)
    sim.submit(task("busy"), task("a", "x"))  # W1 is full: a waits, ready
    sim.s.remove_worker(W1)


def ready_then_brought_back(sim: Sim) -> None:
    sim.submit(task("a"))                     # no worker: a waits, ready
    sim.worker(W1, keys=["a"])                # a worker comes back with its result


def ready_input_recomputed_errs(sim: Sim) -> None:
    # x's holder cannot give it to b's worker: x is computed again, and errs;
    # a, ready meanwhile (no room for it), errs with it.
    sim.worker(W1)
    sim.submit(task("x"))
    sim.finish("x", W1)
    sim.submit(task("busy"))
    sim.worker(W2)
    sim.submit(task("b", "x"), task("a", "x"))
    assert sim.on("b") == W2 and sim.state("a") == READY
    sim.s.missing_data(W2, MissingData("b", ["x"], sim.s.tasks["b"].run, [addr(W1)]))
    sim.err("x", ValueError("boom"))


def ready_then_released(sim: Sim) -> None:
    sim.submit(task("a"))
    sim.s.release(C1, ["a"])


def placed(sim: Sim) -> None:
    sim.submit(task("a"))
    sim.worker(W1)


def worker_died(sim: Sim) -> None:
    placed(sim)
    sim.s.remove_worker(W1)


def finished(sim: Sim) -> None:
    placed(sim)
    sim.finish("a")


def erred(sim: Sim) -> None:
    placed(sim)
    sim.err("a", ValueError("boom"))


def processing_then_released(sim: Sim) -> None:
    placed(sim)
    sim.s.release(C1, ["a"])


def memory_then_released(sim: Sim) -> None:
    finished(sim)
    sim.s.release(C1, ["a"])


def erred_then_scattered(sim: Sim) -> None:
    erred(sim)
    sim.s.update_data(C1, [ScatteredItem("a", 8, [addr(W1)])])


def erred_then_released(sim: Sim) -> None:
    erred(sim)
    sim.s.release(C1, ["a"])


#: Each legal change, and events that make it for task "a" (on a scheduler
#: that sends a worker no more tasks than it has threads).
SCENARIOS = {
    (RELEASED, WAITING): ready_then_released,
    (RELEASED, PROCESSING): direct_run,
    (RELEASED, MEMORY): scatter,
    (RELEASED, ERRED): unknown_input,
    (WAITING, READY): ready_then_released,
    (WAITING, PROCESSING): sent_ahead,
    (WAITING, MEMORY): waiting_then_scattered,
    (WAITING, ERRED): input_erred,
    (WAITING, RELEASED): waiting_then_released,
    (READY, PROCESSING): placed,
    (READY, WAITING): ready_input_lost,
    (READY, MEMORY): ready_then_brought_back,
    (READY, ERRED): ready_input_recomputed_errs,
    (READY, RELEASED): ready_then_released,
    (PROCESSING, WAITING): worker_died,
    (PROCESSING, MEMORY): finished,
    (PROCESSING, ERRED): erred,
    (PROCESSING, RELEASED): processing_then_released,
    (MEMORY, RELEASED): memory_then_released,
    (ERRED, MEMORY): erred_then_scattered,
    (ERRED, RELEASED): erred_then_released,
}


@pytest.fixture
def changes(monkeypatch) -> list[tuple[str, str, str]]:
    """Every change of state the scheduler makes from now on: (key, old, new)."""
    made = []
    set_state = TaskGraph.set_state

    def recording(self: TaskGraph, ts: TaskState, state: str) -> None:
        made.append((ts.key, ts.state, state))
        set_state(self, ts, state)

    monkeypatch.setattr(TaskGraph, "set_state", recording)
    return made


def test_every_legal_change_has_a_scenario():
    assert set(SCENARIOS) == set(TRANSITIONS)


@pytest.mark.parametrize("old, new", sorted(SCENARIOS))
def test_the_scheduler_makes_each_legal_change(old, new, changes):
    SCENARIOS[old, new](Sim(extra_queue=0))
    assert ("a", old, new) in changes, TRANSITIONS[old, new]
