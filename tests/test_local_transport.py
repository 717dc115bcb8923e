"""Workers on one machine move data over Unix sockets, and receive into huge pages."""
from __future__ import annotations

import sys

import numpy as np
import psutil
import pytest
from conftest import wait_for, zfutures_children

from zfutures import Executor
from zfutures.addressing import is_local_ip, local_endpoint, peer_endpoint
from zfutures.processes import _HUGE_PAGES_TUNABLE, worker_environment

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="abstract Unix sockets are Linux's")


def test_own_addresses_are_local_and_others_are_not():
    assert is_local_ip("127.0.0.1")
    assert not is_local_ip("192.0.2.1")  # TEST-NET-1: never a host's address
    assert not is_local_ip("not an address")


@linux_only
def test_a_local_data_server_is_reached_over_its_abstract_socket_and_a_remote_one_over_tcp():
    assert peer_endpoint("tcp://127.0.0.1:4000") == local_endpoint("tcp://127.0.0.1:4000")
    assert local_endpoint("tcp://127.0.0.1:4000").startswith("ipc://@")
    assert peer_endpoint("tcp://192.0.2.1:4000") == "tcp://192.0.2.1:4000"


def unix_sockets_named(endpoint: str) -> int:
    """Sockets in /proc/net/unix with this abstract name: the listening one,
    and one more per connection it accepted."""
    name = "@" + endpoint[len("ipc://@"):]
    with open("/proc/net/unix") as f:
        return sum(1 for line in f if line.split()[-1] == name)


def make_array(nbytes: int) -> np.ndarray:
    return np.full(nbytes // 8, 3.0)


def total(array: np.ndarray) -> float:
    return float(array.sum())


@linux_only
@pytest.mark.timeout(120)
def test_workers_on_one_host_fetch_from_each_other_over_unix_sockets():
    with Executor(n_workers=2, threads_per_worker=1) as ex:
        a, b = sorted(ex.scheduler_info()["workers"])
        endpoint = local_endpoint(a)
        assert unix_sockets_named(endpoint) == 1  # A listens; nobody has connected yet

        array = ex.submit(make_array, 8 * 2**20, workers=[a])
        assert ex.submit(total, array, workers=[b]).result(timeout=30) == 3.0 * 2**20

        # B's connection to A was accepted on A's abstract socket, not over TCP.
        assert unix_sockets_named(endpoint) == 2


def test_a_worker_environment_asks_malloc_for_huge_pages(monkeypatch):
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert worker_environment(1)["GLIBC_TUNABLES"] == _HUGE_PAGES_TUNABLE
    assert "glibc.malloc.hugetlb=1" in _HUGE_PAGES_TUNABLE
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    env = worker_environment(1)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + _HUGE_PAGES_TUNABLE
    assert env["ZFUTURES_PARENT_PID"] == "1"
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")  # the user's choice stands
    assert worker_environment(1)["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=0"


@linux_only
@pytest.mark.timeout(120)
def test_workers_a_nanny_starts_have_the_huge_pages_setting():
    with Executor(n_workers=2, threads_per_worker=1) as ex:
        ex.submit(abs, -1).result(timeout=30)
        workers = wait_for(lambda: [p for p in zfutures_children()
                                    if "--no-nanny" in p.cmdline()] or None)
        assert len(workers) == 2
        for process in workers:
            try:
                environ = process.environ()
            except psutil.AccessDenied:
                pytest.skip("cannot read a worker's environment here")
            assert "glibc.malloc.hugetlb=1" in environ.get("GLIBC_TUNABLES", "")
