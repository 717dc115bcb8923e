"""The center's shell: which peer may send which op, and what it does with the rest.

The table (``center.OPS``, by message class; read here by op name) is read
on its own first; then a Center with no run
loop, whose socket no peer connects to, takes messages through ``_handle``
as if they came in (see raw_peer.CenterUnderTest), so each test sees
what the center sent, logged and changed.
"""
from __future__ import annotations

import logging

import pytest
from raw_peer import REGISTER_WORKER, CenterUnderTest, h

from zfutures.center import CLIENT, NANNY, OPS, UNREGISTERED, WORKER, asks_to_register
from zfutures.messages import MESSAGES, OP_NAMES, Synced
from zfutures.protocol import PROTOCOL_VERSION

C, W, N, X = b"client", b"worker", b"nanny", b"stranger"
WORKER_ADDRESS = "tcp://127.0.0.1:9"

#: The center's table, by op name.
RULES = {OP_NAMES[cls]: rule for cls, rule in OPS.items()}

# --------------------------------------------------------------------------- the table


def test_every_op_the_center_takes_is_an_op_of_the_wire_protocol():
    assert set(OPS) <= set(MESSAGES.values())


@pytest.mark.parametrize("role", [CLIENT, WORKER, NANNY])
def test_a_peer_registers_only_in_its_own_role_and_may_register_again(role):
    registrations = {op for op in RULES if op.startswith("register-")}
    assert {op for op in registrations if role in RULES[op].senders} == {f"register-{role}"}


def test_a_peer_that_has_not_registered_may_only_register():
    assert {op for op, rule in RULES.items() if UNREGISTERED in rule.senders} == {
        "register-client", "register-worker", "register-nanny"}


def test_what_a_registered_peer_sends_asks_a_stranger_to_register_again():
    # A stranger that sends these believes it is registered: a peer of an
    # earlier center, or one this center gave up on. It registers again at
    # once, bringing back what it holds.
    for op in ["heartbeat", "submit", "release", "task-finished", "task-erred", "retire",
               "paused", "sync", "scheduler-info"]:
        assert asks_to_register(RULES[op], UNREGISTERED), op
    # A goodbye from a stranger has nothing left to end; only a nanny says its
    # worker died; an op the center does not take is nobody's.
    for op in ["close-client", "unregister", "worker-died"]:
        assert not asks_to_register(RULES[op], UNREGISTERED), op
    assert not asks_to_register(None, UNREGISTERED)
    # A registered peer is never asked: what it may not send is dropped.
    assert not any(asks_to_register(rule, role) for rule in RULES.values()
                   for role in (CLIENT, WORKER, NANNY))


# --------------------------------------------------------------------------- the shell


@pytest.fixture
def cut():
    center = CenterUnderTest()
    yield center
    center.close()


def register(cut: CenterUnderTest) -> None:
    """A client, a worker and a nanny."""
    cut.send_op(C, "register-client", protocol=PROTOCOL_VERSION, name="me")
    cut.send_op(W, "register-worker", **dict(REGISTER_WORKER, address=WORKER_ADDRESS))
    cut.send_op(N, "register-nanny", protocol=PROTOCOL_VERSION)
    cut.sent.clear()


def sent_ops(cut: CenterUnderTest, ident: bytes) -> list[str]:
    return [op for to, op, _ in cut.sent if to == ident]


def test_each_registration_welcomes_its_peer_in_that_role(cut):
    register(cut)
    assert {ident: peer.role for ident, peer in cut.center.peers.items()} == {
        C: CLIENT, W: WORKER, N: NANNY}
    assert C in cut.center.scheduler.clients and W in cut.center.scheduler.workers


def test_an_op_from_a_role_not_allowed_is_dropped_and_logged(cut, caplog):
    register(cut)
    with caplog.at_level(logging.WARNING, "zfutures.center"):
        cut.send_op(C, "worker-died", address=WORKER_ADDRESS)  # only a nanny says so
        cut.send_op(N, "submit", b"p", tasks=[{"key": "k", "deps": [], "priority": 0,
                                               "nframes": 1}])
        cut.send_op(W, "close-client")
    assert W in cut.center.scheduler.workers and W in cut.center.peers
    assert cut.center.scheduler.tasks == {} and cut.sent == []
    assert "dropped 'worker-died' from a client" in caplog.text
    assert "dropped 'submit' from a nanny" in caplog.text
    assert "dropped 'close-client' from a worker" in caplog.text


def test_a_stranger_that_believes_it_is_registered_is_asked_to_register_again(cut):
    cut.send_op(X, "heartbeat")
    cut.send_op(X, "task-finished", tasks=[{"key": "k", "nbytes": 1, "run": 1}])
    assert sent_ops(cut, X) == ["reregister", "reregister"]
    assert X not in cut.center.peers and cut.center.scheduler.tasks == {}


def test_a_strangers_goodbye_or_an_op_the_center_does_not_take_is_dropped_and_logged(cut,
                                                                                      caplog):
    with caplog.at_level(logging.WARNING, "zfutures.center"):
        for op in ["close-client", "unregister", "compute", "get-data"]:
            cut.handle(X, h(op, **{"tasks": [], "id": 1, "keys": []}))
    assert cut.sent == [] and cut.center.peers == {}
    for op in ["close-client", "unregister", "compute", "get-data"]:
        assert f"dropped {op!r} from a peer that has not registered" in caplog.text


def test_any_op_a_peer_may_send_counts_as_hearing_from_it(cut):
    register(cut)
    peer = cut.center.peers[W]
    peer.last_heard = -100.0
    cut.send_op(W, "heartbeat")
    assert peer.last_heard > -100.0
    cut.center.peers[C].last_heard = -100.0
    cut.send_op(C, "task-finished", tasks=[])  # not a client's op: not heard
    assert cut.center.peers[C].last_heard == -100.0


def test_a_workers_heartbeat_reaches_the_scheduler_with_its_memory_and_disk(cut):
    register(cut)
    cut.send_op(W, "heartbeat", memory=5000, cpu=12.5, managed=1000, spilled=4000)
    info = cut.center.scheduler.info()["workers"][WORKER_ADDRESS]
    assert (info["memory"], info["managed"], info["spilled"]) == (5000, 1000, 4000)
    # a heartbeat of the wire without them (an older worker's) keeps what was said
    cut.send_op(W, "heartbeat", memory=6000, cpu=1.0)
    info = cut.center.scheduler.info()["workers"][WORKER_ADDRESS]
    assert (info["memory"], info["managed"], info["spilled"]) == (6000, 1000, 4000)
    # nonsense is dropped field by field; a field of the wrong type, the message
    cut.send_op(W, "heartbeat", memory=7000, cpu=1.0, managed=-1, spilled=-5)
    cut.send_op(W, "heartbeat", memory=8000, cpu=1.0, managed=1, spilled="a lot")
    info = cut.center.scheduler.info()["workers"][WORKER_ADDRESS]
    assert (info["memory"], info["managed"], info["spilled"]) == (7000, 1000, 4000)
    # a client's heartbeat says nothing of a worker (and only that it is alive)
    cut.send_op(C, "heartbeat", memory=1, cpu=1.0, managed=1, spilled=1)
    assert cut.center.scheduler.info()["workers"][WORKER_ADDRESS]["spilled"] == 4000
    assert cut.errors == [] and cut.sent == []


def test_a_handler_that_fails_drops_its_message_and_the_center_goes_on(cut, monkeypatch):
    register(cut)

    def broken(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cut.center.scheduler, "release", broken)
    cut.send_op(C, "release", keys=["k"])
    assert len(cut.errors) == 1 and "failed to handle 'release'" in cut.errors[0]
    cut.send_op(C, "scheduler-info", id=7)
    assert [msg.id for to, op, msg in cut.sent if op == "reply"] == [7]


def test_a_workers_sync_is_answered_and_a_clients_dropped(cut):
    register(cut)
    cut.send_op(W, "sync", keys=["k"])
    cut.send_op(C, "sync", keys=["k"])
    assert cut.sent == [(W, "synced", Synced(["k"]))]


def test_a_goodbye_forgets_the_peer_at_once(cut):
    register(cut)
    cut.send_op(C, "close-client")
    cut.send_op(W, "unregister")
    assert set(cut.center.peers) == {N}
    assert C not in cut.center.scheduler.clients and W not in cut.center.scheduler.workers
