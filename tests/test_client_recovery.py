"""Our work brought back to a center that restarted (zfutures.client_recovery):
what the new center is told, in which order. No center: the messages are read."""
from __future__ import annotations

import concurrent.futures
import itertools

from zfutures import serialize
from zfutures.client_outbox import Outbox
from zfutures.client_records import FINISHED, KeyRecord, record
from zfutures.client_recovery import bring_back
from zfutures.client_requests import Requests
from zfutures.messages import Release, ScatteredItem, SchedulerInfo, Submit, TaskItem, op_of

A1 = "tcp://127.0.0.1:1"


def submitted(keys: dict[str, KeyRecord], key: str, *deps: str) -> KeyRecord:
    info = record(keys, key)
    info.submitted = (TaskItem(key, list(deps), 0, 1), [f"payload of {key}".encode()])
    info.deps = [keys[dep] for dep in deps] or None
    return info


def test_the_new_center_hears_inputs_first_where_results_are_and_the_questions_again():
    keys: dict[str, KeyRecord] = {}
    outbox = Outbox(keys, now=0.0)
    requests = Requests(keys, outbox, [], itertools.count(1))
    data = record(keys, "data")                        # scattered
    data.scattered, data.status, data.who_has, data.nbytes = True, FINISHED, [A1], 8
    done = submitted(keys, "done")                     # finished on A1
    done.status, done.who_has = FINISHED, [A1]
    submitted(keys, "input")                           # let go of, but the input of ...
    submitted(keys, "task", "input", "data")          # ... a pending task
    submitted(keys, "broken").err(serialize.dumps((ValueError("bad"), "")))
    requests.rpc(SchedulerInfo, {}, concurrent.futures.Future())
    del keys["input"]
    outbox.queue(Submit, TaskItem("old", [], 0, 1), [b"p"])  # (never sent)
    outbox.to_center.clear()

    bring_back(keys, outbox, requests)

    sent = [msg for msg, _ in outbox.to_center]
    assert [op_of(msg) for msg in sent] == ["update-data", "submit", "release", "scheduler-info"]
    assert sent[0].items == [ScatteredItem("data", 8, [A1])]
    order = [t.key for t in sent[1].tasks]
    assert sorted(order) == ["done", "input", "task"]  # (not the erred key, nor "old")
    assert order.index("input") < order.index("task")
    by_key = {t.key: t for t in sent[1].tasks}
    assert by_key["done"].who_has == [A1] and by_key["task"].who_has is None
    assert sent[2] == Release(["input"])  # (wanted only as an input: let go of again)
