"""zfut-center and zfut-worker started as a user starts them."""
from __future__ import annotations

import signal
import subprocess
import time
from operator import add

import numpy as np
import pytest
from conftest import command, free_port, read_line, stop, wait_for

from zfutures import Executor

pytestmark = pytest.mark.timeout(90)


def inc(x):
    return x + 1


def test_hand_started_cluster_serves_an_executor(processes):
    center, address = processes.center()
    assert address.startswith("tcp://127.0.0.1:")
    for i in range(2):
        processes.worker(address, "--name", f"w{i}")
    port = address.rsplit(":", 1)[1]
    with Executor(f"127.0.0.1:{port}", timeout=10) as ex:
        wait_for(lambda: len(ex.nthreads()) == 2, message="workers did not register")
        names = {w["name"] for w in ex.scheduler_info()["workers"].values()}
        assert names == {"w0", "w1"}
        xs = ex.map(np.random.random, [10_000] * 8, pure=False)
        inputs = xs
        while len(xs) > 1:
            xs = [ex.submit(add, xs[i], xs[i + 1]) for i in range(0, len(xs), 2)]
        np.testing.assert_allclose(xs[0].result(timeout=30),
                                   np.sum(ex.gather(inputs), axis=0))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_commands_exit_cleanly_on_signals(processes, sig):
    center, address = processes.center()
    worker = processes.worker(address)
    read_line(worker, r"serving at tcp://")
    assert stop(worker, sig) == 0
    assert stop(center, sig) == 0


def test_center_prints_its_address_and_binds_loopback_by_default(processes):
    port = free_port()
    center = processes.start(command("zfut-center"), "--port", str(port))
    line = read_line(center, r"zfut-center listening at (tcp://\S+)")
    assert line.group(1) == f"tcp://127.0.0.1:{port}"


def test_binding_beyond_loopback_without_keys_is_refused(processes, tmp_path):
    for name in ("zfut-center", "zfut-worker"):
        args = ["--host", "0.0.0.0"] + (["--port", str(free_port())] if "center" in name
                                         else ["tcp://127.0.0.1:1"])
        with open(tmp_path / "err", "w") as err:
            refused = processes.start(command(name), *args, stderr=err)
            assert refused.wait(30) != 0
        # The message says how to do it right.
        assert "zfut-keygen" in (tmp_path / "err").read_text()


def test_worker_started_before_the_center_keeps_trying(processes):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    early = processes.worker(address, "--name", "early")
    time.sleep(1)  # a while with no center at all (a duration, not a condition)...
    assert early.poll() is None  # ...which the worker survives
    processes.start(command("zfut-center"), "--port", str(port))
    with Executor(address, timeout=10) as ex:
        wait_for(lambda: len(ex.nthreads()) == 1, message="the early worker never registered")
        assert ex.submit(inc, 1).result(timeout=10) == 2


def test_nworkers_runs_several_worker_processes(processes):
    center, address = processes.center()
    processes.worker(address, "--nworkers", "2", "--nthreads", "2")
    with Executor(address, timeout=10) as ex:
        wait_for(lambda: len(ex.nthreads()) == 2, message="not two workers")
        assert set(ex.nthreads().values()) == {2}
        assert ex.gather(ex.map(inc, range(20))) == list(range(1, 21))


def test_worker_rejects_a_malformed_address(processes):
    worker = processes.start(command("zfut-worker"), "not an address")
    assert worker.wait(30) == 2  # click's usage error


def test_default_port_serves_executor_by_host_alone(processes):
    import socket

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 8787)) == 0:
            pytest.skip("port 8787 is taken on this machine")
    center = processes.start(command("zfut-center"))
    assert read_line(center, r"listening at (tcp://\S+)").group(1) == "tcp://127.0.0.1:8787"
    processes.worker("127.0.0.1")
    with Executor("127.0.0.1:8787", timeout=10) as ex:
        assert ex.address == "tcp://127.0.0.1:8787"
        assert ex.submit(inc, 1).result(timeout=10) == 2
    with Executor("127.0.0.1", timeout=10) as ex:
        assert ex.submit(inc, 2).result(timeout=10) == 3


def test_a_worker_that_joins_later_gets_queued_work_at_once(processes):
    center, address = processes.center()
    processes.worker(address, "--name", "first")
    with Executor(address, timeout=10) as ex:
        wait_for(lambda: len(ex.nthreads()) == 1, message="first worker did not register")
        futures = ex.map(time.sleep, [0.2] * 20, pure=False)
        # Only a short queue went to the first worker; the rest waits at the center.
        queued = ex.scheduler_info()["workers"]
        assert sum(w["executing"] + w["queued"] for w in queued.values()) <= 4
        processes.worker(address, "--name", "second")
        ex.gather(futures, timeout=30)
        holders = {w for ws in ex.who_has(futures).values() for w in ws}
        assert len(holders) == 2, "the late worker got none of the waiting tasks"


def test_a_worker_stopped_after_its_center_left_leaves_at_once(processes):
    # With keys to hand on and no center to take them, it would wait its
    # retire timeout (10 s) for nothing: the center said it was going.
    center, address = processes.center()
    worker = processes.worker(address, "--no-nanny")
    with Executor(address, timeout=10) as ex:
        wait_for(lambda: len(ex.nthreads()) == 1, message="the worker never registered")
        kept = ex.submit(np.ones, 1000)
        assert kept.result(timeout=10).sum() == 1000  # (its data stays on the worker)
        assert stop(center) == 0
        assert stop(worker, timeout=5) == 0


@pytest.mark.parametrize("args, says", [
    (["--memory-target", "1.5"], "--memory-target"),
    (["--memory-pause", "lots"], "--memory-pause"),
    (["--memory-spill", "0.9"], "spill 0.9 > pause 0.8"),
])
def test_worker_rejects_memory_thresholds_that_make_no_sense(processes, args, says):
    worker = processes.start(command("zfut-worker"), "127.0.0.1:1", *args,
                             stderr=subprocess.PIPE)
    _, err = worker.communicate(timeout=30)
    assert worker.returncode == 2 and says in err


def test_a_threshold_turned_off_is_accepted(processes):
    worker = processes.start(command("zfut-worker"), "127.0.0.1:1", "--no-nanny",
                             "--memory-spill", "false", "--memory-target", "off")
    read_line(worker, r"serving at tcp://")
