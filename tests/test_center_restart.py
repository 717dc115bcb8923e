"""The center dies and comes back on its address: no work is lost; or it does
not come back, and calls end with ConnectionError instead of hanging."""
from __future__ import annotations

import concurrent.futures
import signal
import time
from operator import add

import numpy as np
import pytest
from conftest import command, free_port, read_line, stop, wait_for

import zfutures
from zfutures import Executor

pytestmark = pytest.mark.timeout(120)


def slow_inc(x, delay=0.1):
    time.sleep(delay)
    return x + 1


def start_center(processes, port: int, *extra: str):
    process = processes.start(command("zfut-center"), "--port", str(port), *extra)
    address = read_line(process, r"listening at (tcp://\S+)").group(1)
    return process, address


def test_a_center_restarted_on_its_address_loses_no_work(processes):
    port = free_port()
    center, address = start_center(processes, port)
    processes.worker(address, "--nworkers", "2", "--name", "w")
    with Executor(address, timeout=10) as ex:
        wait_for(lambda: len(ex.nthreads()) == 2, message="workers did not register")
        # Finished before the restart: impure, so a recomputation would change it.
        noise = ex.submit(np.random.random, 1000, pure=False)
        noise_sum = float(noise.result(timeout=20).sum())
        scattered = ex.scatter(np.arange(100))
        # Pending across the restart: a map and chains over it.
        xs = ex.map(slow_inc, range(40), [0.1] * 40)
        ys = [ex.submit(add, xs[i], xs[i + 1]) for i in range(0, 40, 2)]
        total = ex.submit(sum, ys)
        wait_for(lambda: sum(x.done() for x in xs) >= 4, timeout=30)
        assert not total.done()

        assert stop(center, signal.SIGKILL) == -signal.SIGKILL
        center, again = start_center(processes, port)
        assert again == address

        # Pending futures complete, with the right values.
        assert total.result(timeout=60) == sum(range(1, 41))
        assert ex.gather(xs, timeout=30) == list(range(1, 41))
        # Finished ones kept their values: tasks on them see the same data.
        assert ex.submit(np.sum, noise).result(timeout=20) == pytest.approx(noise_sum)
        assert ex.who_has([noise])[noise.key]
        assert ex.submit(np.sum, scattered).result(timeout=20) == 4950
        # And the cluster takes new work as before.
        assert ex.submit(slow_inc, 1, 0).result(timeout=20) == 2
        assert len(ex.nthreads()) == 2


def test_calls_end_with_connection_error_when_no_center_comes_back(processes):
    center, address = start_center(processes, free_port())
    processes.worker(address, "--name", "w")
    with Executor(address, timeout=10, reconnect_deadline=3) as ex:
        wait_for(lambda: len(ex.nthreads()) == 1, message="the worker did not register")
        pending = ex.submit(slow_inc, 1, 60)
        stop(center, signal.SIGKILL)
        # A call with its own shorter timeout keeps its usual meaning...
        with pytest.raises(concurrent.futures.TimeoutError):
            pending.result(timeout=0.5)
        # ...and one without ends once the reconnect deadline has passed.
        with pytest.raises(zfutures.ConnectionError):
            pending.result()
        with pytest.raises(zfutures.ConnectionError):
            ex.scheduler_info()


def combine(x, data, delay):
    time.sleep(delay)
    return x + int(data.sum())


def test_inputs_the_client_let_go_of_come_back_with_the_tasks_that_need_them(processes):
    port = free_port()
    center, address = start_center(processes, port)
    processes.worker(address, "--nworkers", "2", "--name", "w")
    with Executor(address, timeout=10) as ex:
        wait_for(lambda: len(ex.nthreads()) == 2, message="workers did not register")
        data = ex.scatter(np.arange(10))
        x = ex.submit(slow_inc, 1, 0)
        pending = ex.submit(combine, x, data, 1.5)
        waiting = ex.submit(combine, pending, data, 0)
        x.result(timeout=20)
        del x, data  # only the pending tasks refer to them now
        assert stop(center, signal.SIGKILL) == -signal.SIGKILL
        center, _ = start_center(processes, port)
        assert waiting.result(timeout=60) == 2 + 45 + 45
        assert pending.result(timeout=10) == 2 + 45
