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

from zfutures.scheduler import Outbox

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
