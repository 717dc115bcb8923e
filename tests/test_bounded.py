"""A long-lived center holds nothing per key once the key is released.

100,000 chosen keys (each without "-", so each a task group of its own) go
through the Scheduler: submitted, run, some sent straight to a worker, some
with dependencies, then released. Every table of the scheduler, its workers,
clients and outbox is no bigger after them all than after the first fifth.
"""
from __future__ import annotations

from scheduler_sim import C1, W1, W2, Sim, addr, task

from zfutures.messages import DoneItem
from zfutures.scheduler import MAX_GROUPS, ClientRecord, WorkerRecord

ROUND = 500  # keys per round
SWEEP_EVERY = 4  # rounds between sweeps of direct runs, as the center's every 2 s


def sizes(s) -> dict[str, int]:
    """Length of every container the scheduler holds, by where it is held."""
    found = {}

    def add(where: str, obj, names) -> None:
        for name in names:
            value = getattr(obj, name)
            if isinstance(value, (dict, list, set, frozenset, tuple)):
                found[f"{where}.{name}"] = len(value)

    add("scheduler", s, vars(s))
    for name, part in vars(s).items():  # its parts and outbox
        if type(part).__module__.startswith("zfutures.scheduler."):
            add(name, part, vars(part))
    for ws in s.workers.values():
        add(f"worker {ws.name}", ws, WorkerRecord.__slots__)
    for client in s.clients.values():
        add(f"client {client.name}", client, ClientRecord.__slots__)
    return found


def run_round(sim: Sim, first: int) -> None:
    """Keys k<first>... through their lives: plain tasks, tasks with inputs,
    direct runs reported as usual, reported before their submit, released
    before the worker's report, and reported but never submitted."""
    s = sim.s
    keys = [f"k{first + i}" for i in range(ROUND)]
    plain, with_inputs, direct, released_early, reported_early = keys[:460], \
        keys[460:470], keys[470:480], keys[480:490], keys[490:]
    runs = {key: 10**9 + first + i for i, key in enumerate(keys)}
    for key in reported_early:  # the worker's report comes before the client's submit
        s.task_finished(W1, DoneItem(key, 8, runs[key], direct=True, duration=1e-5))
    for i in range(5):  # a submit that never comes: the sweeps release these
        s.task_finished(W2, DoneItem(f"orphan{first + i}", 8, 1, direct=True, duration=1e-5))
    items = [task(k) for k in plain]
    items += [task(k, plain[2 * i], plain[2 * i + 1]) for i, k in enumerate(with_inputs)]
    for i, key in enumerate(direct + released_early + reported_early):
        worker = W1 if i % 2 or key in reported_early else W2
        items.append(task(key, direct_worker=addr(worker), direct_run=runs[key]))
    sim.submit(*items)
    early_runs = {key: s.tasks[key].run for key in released_early}
    s.release(C1, released_early)
    for key in direct:
        ts = s.tasks[key]
        s.task_finished(ts.processing_on.ident, DoneItem(key, 8, ts.run, direct=True,
                                                         duration=1e-5))
    while computes := sim.take().computes():
        for worker, computed in computes.items():
            for key in computed:
                s.task_finished(worker, DoneItem(key, 8, s.tasks[key].run, duration=1e-5))
    for key, run in early_runs.items():  # late reports of runs released meanwhile
        s.task_finished(W1, DoneItem(key, 8, run, direct=True, duration=1e-5))
    s.release(C1, keys)
    sim.take()


def test_the_scheduler_keeps_nothing_per_released_key():
    sim = Sim()
    sim.worker(W1, nthreads=2)
    sim.worker(W2, nthreads=2)
    total, rounds = 100_000, 100_000 // ROUND
    snapshot = None
    for r in range(rounds):
        run_round(sim, r * ROUND)
        if r % SWEEP_EVERY == SWEEP_EVERY - 1:
            sim.s.sweep_direct()
            sim.take()
        if r == rounds // 5 - 1:
            snapshot = sizes(sim.s)
    assert not sim.s.tasks
    final = sizes(sim.s)
    grown = {name: (snapshot.get(name), size) for name, size in final.items()
             if size > snapshot.get(name, 0)}
    assert not grown, f"grew from {total // 5} keys to {total}: {grown}"
    assert len(sim.s.placement.durations) <= MAX_GROUPS


def test_durations_are_kept_for_the_groups_timed_last():
    placement = Sim().s.placement
    for i in range(MAX_GROUPS + 10):
        placement.timed(f"g{i}", 1.0)
        if i % 100 == 0:
            placement.timed("busy", 0.5)  # timed all along: kept
    assert len(placement.durations) == MAX_GROUPS
    assert "g0" not in placement.durations and f"g{MAX_GROUPS + 9}" in placement.durations
    assert placement.durations["busy"] == 0.5
