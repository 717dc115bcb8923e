"""Workers that spill results to disk (issue #19), as real processes moving gigabytes.

Each test starts a center and workers by hand (``zfut-worker``, a nanny and
its worker unless said otherwise) and checks what a user would see: results
far beyond a worker's memory limit come back byte-identical, nothing is
computed twice, nobody is restarted, the spill directory is cleaned up; a
slow disk does not make a worker look dead; a full disk pauses it rather
than kill it; and the nanny restarts a worker only past its terminate mark.

Results are random arrays: they do not compress, so the bytes on disk are
the bytes in memory.
"""
from __future__ import annotations

import glob
import hashlib
import os
import threading
import time

import numpy as np
import psutil
import pytest
from conftest import SLOW_DISK_RATE, command, stop, wait_for

from zfutures import Executor, KilledWorker

pytestmark = pytest.mark.timeout(180)

#: float64 elements of a 100 MB array.
N_100MB = 12_500_000

#: Seconds within which a worker spilling to a slow disk takes a small value
#: and gives it back (a heartbeat timeout is 5 s).
PROBE_TIMEOUT = 2.0


def random_array(seed: int, n: int = N_100MB) -> np.ndarray:
    return np.random.default_rng(seed).random(n)


def logged_random_array(seed: int, log: str, n: int = N_100MB) -> np.ndarray:
    """``random_array(seed, n)``, and ``seed`` appended to the file ``log``
    (O_APPEND: one line per run, whichever process ran it)."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{seed}\n".encode())
    finally:
        os.close(fd)
    return random_array(seed, n)


def runs(log) -> list[int]:
    """The seeds ``logged_random_array`` ran with, in order, once per run."""
    with open(log) as f:
        return [int(line) for line in f]


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(array)).cast("B")).hexdigest()


def spill_subdirectories(spill_dir) -> list[str]:
    return sorted(glob.glob(os.path.join(str(spill_dir), "zfutures-spill-*")))


def spill_files(spill_dir) -> list[str]:
    """The files in the workers' spill directories under ``spill_dir``."""
    found = []
    for directory in spill_subdirectories(spill_dir):
        try:
            found += [os.path.join(directory, name) for name in os.listdir(directory)]
        except FileNotFoundError:  # (removed as we looked)
            pass
    return found


def lines_with(path, text: str) -> list[str]:
    with open(path) as f:
        return [line.rstrip("\n") for line in f if text in line]


def nanny_said(log) -> list[str]:
    """What the nanny logged of its worker's restarts or deaths."""
    return [line for line in lines_with(log, "zfutures.nanny")
            if "restarting it" in line or "exited with status" in line]


def the_worker(ex: Executor, name: str) -> str:
    """The address of the worker called ``name``, once it has registered."""
    def find():
        return next((address for address, info in ex.scheduler_info()["workers"].items()
                     if info["name"] == name), None)
    return wait_for(find, timeout=30, message=f"worker {name} did not register")


class PeakRss:
    """The peak resident memory of process ``pid``, sampled every ``interval``
    seconds on a thread until :meth:`stop`."""

    def __init__(self, pid: int, interval: float = 0.005):
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._done.wait(self.interval)

    def stop(self) -> int:
        self._done.set()
        self._thread.join(5)
        return self.peak


def test_a_worker_spills_results_far_beyond_its_memory_limit_and_gives_them_all_back(
        processes, tmp_path):
    """1.7 GB of results on a worker of 300 MB: 200 MB scattered to it first,
    then 15 x 100 MB made by its tasks. They move to disk as they come, each
    task runs once, every result comes back byte-identical, the worker is
    never restarted, and its spill files go with the results."""
    spill = tmp_path / "spill"
    log = tmp_path / "ran.log"
    limit = 300_000_000
    _, address = processes.center()
    with open(tmp_path / "worker.log", "w") as stderr:
        nanny = processes.worker(address, "--memory-limit", "300MB", "--spill-dir", str(spill),
                                 "--name", "w", stderr=stderr)
    with Executor(address, timeout=10) as ex:
        w = the_worker(ex, "w")
        pid = ex.run(os.getpid)[w]
        assert psutil.Process(pid).ppid() == nanny.pid
        peak_rss = PeakRss(pid)
        scattered_seeds = [1000, 1001]
        scattered = ex.scatter([random_array(s) for s in scattered_seeds], workers=["w"])
        futures = [ex.submit(logged_random_array, i, str(log), pure=False) for i in range(15)]
        total = 17 * N_100MB * 8
        seen = {"spilled": 0, "files": 0}

        def watch() -> dict:
            """The worker's record, still the same worker; the most spilled."""
            workers = ex.scheduler_info()["workers"]
            assert list(workers) == [w], \
                f"the worker changed: {workers}; {nanny_said(tmp_path / 'worker.log')}"
            info = workers[w]
            if info["spilled"] > seen["spilled"]:
                seen["spilled"] = info["spilled"]
                seen["files"] = max(seen["files"], len(spill_files(spill)))
            return info

        wait_for(lambda: watch() and all(f.done() for f in futures), timeout=120,
                 interval=0.1, message="the tasks did not finish")
        assert [f.exception() for f in futures] == [None] * 15
        assert sorted(runs(log)) == list(range(15)), "a task ran twice, or never"

        # A few at a time, to bound this process's memory.
        for seeds, some in [(scattered_seeds, scattered)] + [
                (list(range(i, min(i + 2, 15))), futures[i:i + 2]) for i in range(0, 15, 2)]:
            try:
                values = ex.gather(some, timeout=60)
            except Exception as e:
                raise AssertionError(
                    f"gathering arrays {seeds} failed: {e!r}; the worker's peak memory was "
                    f"{peak_rss.peak / 1e6:.0f} MB; the nanny said: "
                    f"{nanny_said(tmp_path / 'worker.log')}") from e
            watch()
            for seed, value in zip(seeds, values):
                assert value.shape == (N_100MB,) and value.dtype == np.float64
                assert digest(value) == digest(random_array(seed)), f"array {seed} differs"
            del values, value
        peak = peak_rss.stop()
        print(f"\nspill test 1: worker peak RSS {peak / 1e6:.0f} MB ({peak_rss.samples} "
              f"samples), limit {limit / 1e6:.0f} MB; peak spilled "
              f"{seen['spilled'] / 1e9:.2f} GB of {total / 1e9:.2f} GB")
        assert sorted(runs(log)) == list(range(15)), "reading results back recomputed some"

        assert 1.0e9 <= seen["spilled"] <= total + 17 * 4096, seen
        assert seen["files"] >= 10, f"{seen['files']} spill files at the peak"
        (subdirectory,) = spill_subdirectories(spill)
        assert os.path.basename(subdirectory).startswith(f"zfutures-spill-{pid}-")

        # Never restarted: the same process, the same worker, no word of it.
        assert ex.run(os.getpid) == {w: pid}
        assert not nanny_said(tmp_path / "worker.log")

        futures.clear()  # (releases them: no other reference is left)
        scattered.clear()
        del some
        wait_for(lambda: not spill_files(spill), timeout=20,
                 message="spill files stayed after the results were released")
        wait_for(lambda: ex.scheduler_info()["workers"][w]["spilled"] == 0, timeout=10,
                 message="the center still counts bytes on disk")
        assert spill_subdirectories(spill) == [subdirectory]
    assert stop(nanny) == 0
    assert not psutil.pid_exists(pid)
    assert spill_subdirectories(spill) == [], "the spill directory outlived its worker"


def pairwise(values: list, add) -> object:
    """``values`` summed pairwise, level by level: (v0 + v1) + (v2 + v3), ..."""
    while len(values) > 1:
        values = [add(values[i], values[i + 1]) for i in range(0, len(values), 2)]
    return values[0]


def test_a_tree_reduction_of_arrays_many_times_the_workers_memory_gives_the_right_sum(
        processes, tmp_path):
    """32 x 100 MB arrays made by tasks, summed pairwise with np.add, on two
    workers of 500 MB each: 3.2 GB of leaves through 1 GB of memory. The sum
    is right, and it went through disk. (A worker is now and then restarted
    by its nanny still, at a transient peak: the test says how many, and
    then each leaf is made at least once rather than exactly once.)"""
    spill = tmp_path / "spill"
    log = tmp_path / "ran.log"
    _, address = processes.center()
    with open(tmp_path / "workers.log", "w") as stderr:
        nanny = processes.worker(address, "--nworkers", "2", "--memory-limit", "500MB",
                                 "--spill-dir", str(spill), "--name", "t", stderr=stderr)
    seeds = [2000 + i for i in range(32)]
    with Executor(address, timeout=10) as ex:
        workers = sorted({the_worker(ex, "t-0"), the_worker(ex, "t-1")})
        pids = ex.run(os.getpid)
        assert sorted(pids) == workers
        assert all(psutil.Process(pid).ppid() == nanny.pid for pid in pids.values())
        peaks = [PeakRss(pid) for pid in pids.values()]
        leaves = [ex.submit(logged_random_array, seed, str(log), pure=False) for seed in seeds]
        total = pairwise(leaves, lambda a, b: ex.submit(np.add, a, b))
        del leaves  # (the center drops each leaf once its sum is made)
        most_spilled = 0

        def watch() -> bool:
            nonlocal most_spilled
            info = ex.scheduler_info()["workers"]
            most_spilled = max(most_spilled, sum(w["spilled"] for w in info.values()))
            return total.done()

        wait_for(watch, timeout=150, interval=0.1, message="the reduction did not finish")
        result = total.result(timeout=30)
        rss = [peak.stop() for peak in peaks]
        restarts = nanny_said(tmp_path / "workers.log")
        print(f"\nspill test 2: workers' peak RSS {[round(r / 1e6) for r in rss]} MB, "
              f"limit 500 MB; most spilled at once {most_spilled / 1e9:.2f} GB; "
              f"nanny: {restarts or 'no restart'}")
        made = runs(log)
        if not restarts:
            assert ex.run(os.getpid) == pids
            assert sorted(made) == seeds, "a leaf was made twice, or never"
        assert set(made) == set(seeds), "a leaf was never made"
        assert most_spilled > 0, "nothing went to disk: the test tests nothing"

    # The expected sum without holding 32 arrays: each made again, one at a
    # time; its sum, and a few elements, added in the same order as the tree.
    where = np.array([0, 1, 12_345, N_100MB // 2, N_100MB - 1])
    sums, elements = [], []
    for seed in seeds:
        array = random_array(seed)
        sums.append(array.sum())
        elements.append(array[where])
        del array
    assert result.shape == (N_100MB,) and result.dtype == np.float64
    assert np.isclose(result.sum(), sum(sums), rtol=1e-10, atol=0)
    assert np.array_equal(result[where], pairwise(elements, np.add))


def test_a_worker_writing_to_a_slow_disk_stays_alive_and_serves_what_it_holds(
        slow_disk, processes, tmp_path):
    """A worker spilling about 1 GB to a disk that takes 50 MB/s (so for many
    seconds) keeps answering: the center never takes it for dead (0.2 s
    heartbeats, the center's default timeout), data put on it and taken back
    meanwhile comes and goes at once, and every result is right at the end."""
    spill = os.path.join(slow_disk.mountpoint, "spill")
    log = tmp_path / "ran.log"
    with open(tmp_path / "center.log", "w") as stderr:
        _, address = processes.center(stderr=stderr)
    with open(tmp_path / "worker.log", "w") as stderr:
        nanny = processes.start(*slow_disk.command(
            command("zfut-worker"), address, "--memory-limit", "300MB", "--spill-dir", spill,
            "--name", "slow", "--heartbeat-interval", "0.2"), stderr=stderr)
    seeds = list(range(10))
    with Executor(address, timeout=10) as ex:
        w = the_worker(ex, "slow")
        pid = ex.run(os.getpid)[w]
        assert psutil.Process(pid).ppid() == nanny.pid
        assert slow_disk.holds(nanny.pid) and slow_disk.holds(pid)

        def probe() -> bool:
            """The worker is in; a small value put on it comes back at once."""
            workers = ex.scheduler_info()["workers"]
            assert list(workers) == [w], \
                f"the worker was removed: {workers}; {nanny_said(tmp_path / 'worker.log')}"
            small = np.arange(1000) + len(probes)  # (a new key each time: a new fetch)
            begin = time.monotonic()
            future = ex.scatter(small, workers=[w], timeout=PROBE_TIMEOUT)
            value = ex.gather(future, timeout=PROBE_TIMEOUT)
            took = time.monotonic() - begin
            assert np.array_equal(value, small)
            finished = bool(futures) and all(f.done() for f in futures)
            probes.append((begin, took, slow_disk.written()))
            return finished

        probes: list[tuple[float, float, int]] = []  # (when, round trip, bytes written by then)
        futures: list = []
        probe()  # (once idle, for comparison)
        before = slow_disk.written()
        futures += [ex.submit(logged_random_array, seed, str(log), pure=False) for seed in seeds]
        wait_for(probe, timeout=120, interval=0.2, message="the tasks did not finish")
        # The probes from the first bytes written to the last result: the
        # worker spills as results come, and (over its limit) starts a task
        # only as writes land, so its disk is busy all along.
        during = [p for p in probes if p[2] > before]
        span = during[-1][0] - during[0][0] if during else 0.0
        rate = (during[-1][2] - during[0][2]) / span if span else 0.0
        slowest = max(took for _, took, _ in during) if during else 0.0
        print(f"\nspill test 3: {(slow_disk.written() - before) / 1e6:.0f} MB written to the "
              f"slow disk; {len(during)} probes over {span:.1f} s of writes at "
              f"{rate / 1e6:.0f} MB/s, the slowest {slowest:.3f} s (idle: {probes[0][1]:.3f} s)")
        assert span >= 5 and len(during) >= 10, f"the disk was busy for {span:.1f} s only"
        assert 0.5 * SLOW_DISK_RATE <= rate <= 1.5 * SLOW_DISK_RATE, \
            f"{rate / 1e6:.0f} MB/s: the disk was not busy all along, or not slow"
        assert slowest < PROBE_TIMEOUT  # (each probe's own timeouts say so too)

        for seed, future in zip(seeds, futures):
            assert digest(ex.gather(future, timeout=60)) == digest(random_array(seed)), seed
        assert not nanny_said(tmp_path / "worker.log")
        assert ex.run(os.getpid) == {w: pid}
        assert sorted(runs(log)) == seeds, "a task ran twice, or never"
    # Never taken for dead, nor dead.
    assert not lines_with(tmp_path / "center.log", "removing it")
    assert not lines_with(tmp_path / "center.log", "died")
    assert stop(nanny) == 0
    assert spill_subdirectories(spill) == []


#: float64 elements of a 20 MB array.
N_20MB = 2_500_000


def test_a_worker_whose_disk_is_full_pauses_keeps_every_result_and_finishes_as_memory_frees(
        small_tmpfs, processes, tmp_path):
    """400 MB of results on a 300 MB worker whose spill directory holds 50 MB.
    Two results fit on disk; the next write fails. The worker says so once, at
    ERROR; it stops spilling and pauses (at its spill mark, 70%), keeping every
    result, so the computation waits rather than fails; each time the client
    takes results and releases them, memory frees and more tasks run, until
    all are done, each once. The worker is never restarted."""
    spill = small_tmpfs(str(tmp_path / "spill"), "50m")
    log = tmp_path / "ran.log"
    with open(tmp_path / "center.log", "w") as stderr:
        _, address = processes.center(stderr=stderr)
    with open(tmp_path / "worker.log", "w") as stderr:
        nanny = processes.worker(address, "--memory-limit", "300MB", "--spill-dir", spill,
                                 "--name", "full", "--heartbeat-interval", "0.2", stderr=stderr)
    seeds = list(range(20))
    with Executor(address, timeout=10) as ex:
        w = the_worker(ex, "full")
        pid = ex.run(os.getpid)[w]

        def info() -> dict:
            workers = ex.scheduler_info()["workers"]
            assert list(workers) == [w], \
                f"the worker changed: {workers}; {nanny_said(tmp_path / 'worker.log')}"
            return workers[w]

        pending = {seed: ex.submit(logged_random_array, seed, str(log), N_20MB, pure=False)
                   for seed in seeds}
        wait_for(lambda: info()["paused"], timeout=30, message="the worker did not pause")
        errors = wait_for(lambda: lines_with(tmp_path / "worker.log", "cannot spill"),
                          timeout=10, message="the worker did not say it cannot spill")
        assert "ERROR" in errors[0] and "No space left on device (ENOSPC)" in errors[0], errors
        assert spill_files(spill), "nothing was spilled before the disk was full"
        # Paused, it finishes the task it runs, if any, and starts no other:
        # the computation waits (for a few heartbeats here) rather than fails.
        stalled = {seed for seed, f in pending.items() if f.done()}
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert info()["paused"]
            more = {seed for seed, f in pending.items() if f.done()} - stalled
            assert len(more) <= 1, f"{len(more)} more tasks ran on the paused worker"
            time.sleep(0.1)
        stalled |= more
        assert len(stalled) < len(seeds)
        assert info()["memory"] < 0.95 * 300e6

        # Take the results that are done, and let them go: more tasks run.
        rounds = 0
        while pending:
            wait_for(lambda: any(f.done() for f in pending.values()), timeout=30,
                     message=f"no task finished after results were released: {info()}")
            done = [seed for seed, f in pending.items() if f.done()]
            for seed in done:
                future = pending.pop(seed)
                assert digest(future.result(timeout=30)) == digest(random_array(seed, N_20MB))
                del future
            rounds += 1
        print(f"\nspill test 4: {len(stalled)} results before the pause, all {len(seeds)} "
              f"after {rounds} rounds of releasing")
        assert rounds >= 2
        assert sorted(runs(log)) == seeds, "a task ran twice, or never"
        wait_for(lambda: not spill_files(spill), timeout=10,
                 message="spill files stayed after their results were released")
        assert ex.run(os.getpid) == {w: pid}
    assert not nanny_said(tmp_path / "worker.log")
    assert len(lines_with(tmp_path / "worker.log", "cannot spill")) == 1, "said more than once"
    assert lines_with(tmp_path / "center.log", f"worker {w} paused")
    assert stop(nanny) == 0
    assert spill_subdirectories(spill) == []


def hold_memory(share: float, limit: int, release: str, timeout: float = 60.0) -> int:
    """Grow this process to ``share`` of ``limit`` bytes with a block of its
    own (touched, so resident: memory of the task, not a result), and hold it
    until the file ``release`` exists, ``timeout`` seconds at most. The bytes
    of the block."""
    grow = int(share * limit) - psutil.Process().memory_info().rss
    block = np.ones(max(grow, 0) // 8)
    deadline = time.monotonic() + timeout
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.01)
    return block.nbytes


def holds_steady(ex: Executor, w: str, pid: int, log, seconds: float = 1.0,
                 above: float = 0.0) -> None:
    """For ``seconds`` (a few heartbeats and nanny checks), worker ``w`` stays
    in, paused, the same process, over ``above`` bytes, and the nanny says nothing."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info = ex.scheduler_info()["workers"].get(w)
        assert info is not None, f"worker {w} left; {nanny_said(log)}"
        assert info["paused"] and info["memory"] > above, info
        assert psutil.pid_exists(pid) and not nanny_said(log), nanny_said(log)
        time.sleep(0.1)


def test_the_nanny_restarts_a_worker_only_past_its_terminate_mark(processes, tmp_path):
    """A 400 MB worker whose task holds 85% of it pauses and is left alone (the
    pause mark is 80%, terminate 95%); one whose task takes all of it is
    restarted by its nanny: a new process, and the task fails with KilledWorker."""
    limit = 400_000_000
    release = str(tmp_path / "release")
    log = tmp_path / "worker.log"
    _, address = processes.center("--allowed-failures", "1")
    with open(log, "w") as stderr:
        processes.worker(address, "--memory-limit", "400MB", "--name", "big",
                         "--heartbeat-interval", "0.2", stderr=stderr)
    with Executor(address, timeout=10) as ex:
        w = the_worker(ex, "big")
        pid = ex.run(os.getpid)[w]
        held = ex.submit(hold_memory, 0.85, limit, release, pure=False)
        wait_for(lambda: ex.scheduler_info()["workers"][w]["memory"] > 0.8 * limit, timeout=30,
                 message="the task did not grow the worker past 80% of its limit")
        wait_for(lambda: ex.scheduler_info()["workers"][w]["paused"], timeout=10,
                 message="the worker over its pause mark did not pause")
        holds_steady(ex, w, pid, log, above=0.8 * limit)
        open(release, "w").close()
        assert held.result(timeout=30) > 0.5 * limit
        wait_for(lambda: not ex.scheduler_info()["workers"][w]["paused"], timeout=10,
                 message="the worker did not resume once its task let go of its memory")
        assert ex.run(os.getpid) == {w: pid}
        assert not nanny_said(log)

        too_much = ex.submit(hold_memory, 1.0, limit, str(tmp_path / "never"), pure=False)
        with pytest.raises(KilledWorker):
            too_much.result(timeout=30)
        replacement = wait_for(lambda: next(iter(set(ex.nthreads()) - {w}), None), timeout=20,
                               message="no new worker replaced the one restarted")
        new_pid = ex.run(os.getpid)[replacement]
        assert new_pid != pid and not psutil.pid_exists(pid)
        said = nanny_said(log)
        assert len(said) == 2 and "restarting it" in said[0] and "status -9" in said[1], said
        assert ex.submit(sum, [1, 2], pure=False).result(timeout=20) == 3
    print(f"\nspill test 5: the nanny said: {said}")


def test_with_terminate_off_the_nanny_leaves_a_worker_over_its_limit_alone(processes, tmp_path):
    """``--memory-terminate false``: a task that takes all of the 400 MB limit
    and more pauses its worker, and the worker lives on and finishes it."""
    limit = 400_000_000
    release = str(tmp_path / "release")
    log = tmp_path / "worker.log"
    _, address = processes.center()
    with open(log, "w") as stderr:
        processes.worker(address, "--memory-limit", "400MB", "--memory-terminate", "false",
                         "--name", "unbounded", "--heartbeat-interval", "0.2", stderr=stderr)
    with Executor(address, timeout=10) as ex:
        w = the_worker(ex, "unbounded")
        pid = ex.run(os.getpid)[w]
        held = ex.submit(hold_memory, 1.05, limit, release, pure=False)
        wait_for(lambda: ex.scheduler_info()["workers"][w]["memory"] > limit, timeout=30,
                 message="the task did not grow the worker past its limit")
        holds_steady(ex, w, pid, log, above=0.95 * limit)
        open(release, "w").close()
        assert held.result(timeout=30) > 0.5 * limit
        assert ex.run(os.getpid) == {w: pid}
        assert not nanny_said(log)
