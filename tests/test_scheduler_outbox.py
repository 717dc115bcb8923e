"""The outbox: messages merged per recipient and op, in the order each
recipient must see them (scheduler/outbox.py)."""
from __future__ import annotations

from scheduler_sim import (
    C1,
    W1,
    W2,
    Sim,
    task,
)

from zfutures.messages import Compute, ComputeItem, ReleaseKeys, op_of
from zfutures.scheduler import Outbox


def compute(key: str) -> ComputeItem:
    """A compute item of ``key``, owning one frame."""
    return ComputeItem(key, {}, run=1, nframes=1)


def taken(outbox: Outbox) -> list[tuple]:
    """``outbox.take()``, each message with its class (NamedTuples of two
    classes with the same fields compare equal)."""
    return [(ident, type(msg), msg, frames) for ident, msg, frames in outbox.take()]

# --------------------------------------------------------------------------- outbox order


def test_outbox_batches_per_recipient_and_op_when_no_key_is_named_twice():
    outbox = Outbox()
    outbox.add(W1, Compute, compute("a"), [b"pa"])
    outbox.add(W1, ReleaseKeys, "x")
    outbox.add(W1, Compute, compute("b"), [b"pb"])
    outbox.add(W2, Compute, compute("c"), [b"pc"])
    outbox.add(W1, ReleaseKeys, "y")
    assert taken(outbox) == [
        (W1, Compute, Compute([compute("a"), compute("b")]), [b"pa", b"pb"]),
        (W1, ReleaseKeys, ReleaseKeys(["x", "y"]), []),
        (W2, Compute, Compute([compute("c")]), [b"pc"]),
    ]
    assert outbox.take() == []


def test_outbox_keeps_a_release_before_the_compute_of_the_same_key():
    outbox = Outbox()
    outbox.add(W1, Compute, compute("a"), [b"pa"])
    outbox.add(W1, ReleaseKeys, "k")
    outbox.add(W1, Compute, compute("k"), [b"pk"])   # k again, after its release
    outbox.add(W1, ReleaseKeys, "z")
    assert [(cls, msg) for _, cls, msg, _ in taken(outbox)] == [
        (Compute, Compute([compute("a")])), (ReleaseKeys, ReleaseKeys(["k", "z"])),
        (Compute, Compute([compute("k")]))]


def test_outbox_keeps_a_compute_before_the_release_of_the_same_key():
    outbox = Outbox()
    outbox.add(W1, ReleaseKeys, "x")
    outbox.add(W1, Compute, compute("k"), [b"pk"])
    outbox.add(W1, ReleaseKeys, "k")
    assert [(cls, msg) for _, cls, msg, _ in taken(outbox)] == [
        (ReleaseKeys, ReleaseKeys(["x"])), (Compute, Compute([compute("k")])),
        (ReleaseKeys, ReleaseKeys(["k"]))]


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
    messages = [msg for ident, msg, _ in sim.s.outbox.take() if ident == W1]
    assert [(op_of(msg), msg.keys if isinstance(msg, ReleaseKeys)
             else [t.key for t in msg.tasks]) for msg in messages] == [
        ("compute", ["a"]), ("release-keys", ["k"]), ("compute", ["k"])]
