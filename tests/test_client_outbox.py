"""The client's messages for the center (zfutures.client_outbox): their order,
their batches and their timing. The outbox alone: no center, no sockets."""
from __future__ import annotations

from zfutures.client_direct import DIRECT_FIELDS
from zfutures.client_outbox import RELEASE_DELAY, SUBMIT_BATCH, Outbox
from zfutures.client_records import KeyRecord
from zfutures.messages import Heartbeat, Submit, TaskItem, WhoHas, op_of


def submit(outbox: Outbox, key: str, frames: list | None = None) -> TaskItem:
    frames = [b"payload"] if frames is None else frames
    item = TaskItem(key, [], 0, len(frames))
    outbox.queue(Submit, item, frames)
    return item


def sent(outbox: Outbox) -> list[tuple[str, list]]:
    """The messages for the center so far: (op, their keys), and forget them."""
    out = [(op_of(msg), [t.key for t in msg.tasks] if type(msg) is Submit
            else getattr(msg, "keys", []))
           for msg, _ in outbox.to_center]
    outbox.to_center.clear()
    return out


def test_submits_go_in_messages_of_at_most_submit_batch_tasks():
    outbox = Outbox({}, now=0.0)
    for i in range(SUBMIT_BATCH + 1):
        submit(outbox, f"k{i}")
    assert [len(items) for _, items in outbox.queued()] == [SUBMIT_BATCH, 1]


def test_a_submit_that_would_pass_half_the_centers_limit_starts_a_new_message():
    outbox = Outbox({}, now=0.0)
    outbox.max_message_size = 1000
    submit(outbox, "a", [b"x" * 300])
    submit(outbox, "b", [b"x" * 300])  # (together 600: more than half)
    assert [[item.key for item in items] for _, items in outbox.queued()] == [["a"], ["b"]]


def test_releases_wait_a_moment_to_go_together():
    outbox = Outbox({}, now=0.0)
    outbox.release_later("a", 1.0)
    outbox.release_later("b", 1.005)
    assert outbox.next_due() == 1.0 + RELEASE_DELAY
    outbox.release_if_due(1.0 + RELEASE_DELAY / 2)
    outbox.flush_all()
    assert sent(outbox) == []
    outbox.release_if_due(1.0 + RELEASE_DELAY)
    outbox.flush_all()
    assert sent(outbox) == [("release", ["a", "b"])] and outbox.next_due() is None


def test_a_key_submitted_again_goes_after_its_release():
    outbox = Outbox({}, now=0.0)
    outbox.release_later("x", 0.0)
    submit(outbox, "x")
    outbox.flush_all()
    assert sent(outbox) == [("release", ["x"]), ("submit", ["x"])]


def test_requests_see_the_releases_before_them_and_heartbeats_do_not_wait_for_them():
    outbox = Outbox({}, now=0.0)
    outbox.release_later("x", 0.0)
    outbox.send(Heartbeat())
    assert sent(outbox) == [("heartbeat", [])]
    outbox.send(WhoHas(1, ["y"]))
    assert sent(outbox) == [("release", ["x"]), ("who-has", ["y"])]


def test_a_submit_numbers_its_keys_news():
    keys = {"a": KeyRecord("a"), "b": KeyRecord("b")}
    outbox = Outbox(keys, now=0.0)
    submit(outbox, "a")
    outbox.flush_all()
    submit(outbox, "b")
    outbox.flush_all()
    (first, _), (second, _) = outbox.to_center
    assert first.seq < second.seq
    assert keys["a"].since == first.seq and keys["b"].since == second.seq


def test_a_message_numbered_after_the_queue_comes_after_it():
    outbox = Outbox({}, now=0.0)
    outbox.release_later("x", 0.0)
    submit(outbox, "y")
    seq = outbox.seq_after_queued()  # (what a scatter's update-data is numbered)
    (first, _), (second, _) = outbox.to_center
    assert (op_of(first), op_of(second)) == ("submit", "release") and seq > first.seq


def test_direct_submits_may_wait_for_each_other_but_not_long_nor_with_others():
    outbox = Outbox({}, now=0.0)
    outbox.defer(submit(outbox, "direct"), 1.0)
    assert outbox.defers(1.0) and outbox.next_due() == 1.0 + RELEASE_DELAY
    outbox.flush(1.0)
    assert sent(outbox) == []
    assert not outbox.defers(1.0 + RELEASE_DELAY)
    submit(outbox, "other")  # (a submit through the center goes at once)
    assert not outbox.defers(1.0)
    outbox.flush(1.0)
    assert sent(outbox) == [("submit", ["direct", "other"])] and outbox.deferred == {}


def test_a_submit_made_plain_loses_its_direct_fields_queued_or_about_to_be_sent():
    outbox = Outbox({}, now=0.0)
    direct = dict(direct_worker="tcp://w:1", direct_run=7, direct_ack=True)
    outbox.queue(Submit, TaskItem("queued", [], 0, 1, **direct), [b"p"])
    outbox.defer(outbox.queued()[0][1][0], 0.0)
    outbox.undefer("queued", DIRECT_FIELDS)
    assert outbox.queued()[0][1][0] == TaskItem("queued", [], 0, 1)
    assert outbox.deferred == {}
    outbox.flush_all()
    outbox.to_center[0][0].tasks.append(TaskItem("out", [], 0, 1, **direct))
    outbox.undefer("out", DIRECT_FIELDS)
    assert outbox.to_center[0][0].tasks[1] == TaskItem("out", [], 0, 1)


def test_a_direct_answer_marks_its_own_submit_and_not_an_earlier_one_of_the_key():
    outbox = Outbox({}, now=0.0)
    submit(outbox, "x")                       # let go of before it was sent ...
    outbox.release_later("x", 0.0)
    again = TaskItem("x", [], 0, 1, direct_worker="tcp://w:1", direct_run=7)
    outbox.queue(Submit, again, [b"p"])       # ... and submitted again, straight to a worker
    outbox.defer(again, 0.0)
    outbox.answered("x")
    outbox.flush_all()
    first, _, second = [msg for msg, _ in outbox.to_center]
    assert [op_of(msg) for msg, _ in outbox.to_center] == ["submit", "release", "submit"]
    assert first.tasks[0].direct_answered is False and second.tasks[0].direct_answered is True
