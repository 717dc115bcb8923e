"""The dashboard end to end: a real center, workers and dashboard process,
its /status page in a headless Chromium, and its /metrics scraped by a real
Prometheus.

The page is read through the attributes it keeps for this: ``data-bars`` on
``#task-stream`` (task runs drawn), ``data-workers`` and ``data-spilled`` on
``#memory`` (workers drawn, and those drawn with results on disk) and the
text of ``#progress``. Screenshots are kept under test-artifacts/dashboard/.
"""
from __future__ import annotations

import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from conftest import command, wait_for
from prometheus_client.parser import text_string_to_metric_families
from raw_peer import REGISTER_WORKER, RawPeer, h

from zfutures import Executor

N_TASKS = 1000


def slow_inc(x: int) -> int:
    """A task of about 10 ms: 1,000 of them on 2 workers take about 5 s."""
    time.sleep(0.01)
    return x + 1


class Cluster:
    """A center with its dashboard, two single-threaded workers, an Executor."""

    def __init__(self, processes: Any, *center_options: str):
        self.center, address, self.link = center_with_dashboard(processes, *center_options)
        self.url = self.link.split("/status")[0]
        processes.worker(address, "--nworkers", "2", "--nthreads", "1", "--log-level",
                         "warning", *center_options)
        self.executor = Executor(address, **_security(center_options))
        wait_for(lambda: len(self.executor.scheduler_info()["workers"]) == 2, timeout=30,
                 message="the workers did not register")

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def center_with_dashboard(processes: Any, *center_options: str) -> tuple[Any, str, str]:
    """A center with its dashboard: (its process, its address, the dashboard's link)."""
    center, address = processes.center("--log-level", "warning",
                                       "--dashboard-address", "127.0.0.1:0", *center_options)
    # The center prints its dashboard's link in the same write as the
    # listening line: already read into the pipe's buffer, or in the pipe.
    line = center.stdout.readline()
    assert line.startswith("zfut-center dashboard at "), line
    return center, address, line.split(" at ", 1)[1].strip()


def _security(center_options: tuple[str, ...]) -> dict[str, Any]:
    if "--keys" in center_options:
        return {"security": center_options[center_options.index("--keys") + 1]}
    return {}


@pytest.fixture
def cluster(processes) -> Iterator[Cluster]:
    started = Cluster(processes)
    yield started
    started.close()


class Console:
    """A page's console errors and uncaught exceptions, as they come."""

    def __init__(self, page: Any):
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


def open_page(browser: Any, url: str) -> tuple[Any, Console]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    console = Console(page)
    page.goto(url, wait_until="load", timeout=20_000)
    return page, console


def attribute(page: Any, selector: str, name: str) -> int:
    value = page.get_attribute(selector, name)
    return int(value) if value else 0


def test_status_page_follows_a_run(cluster, browser, screenshots):
    page, console = open_page(browser, cluster.link)
    try:
        # Its first snapshot: both workers drawn before any task.
        page.wait_for_selector('#memory[data-workers="2"]', state="attached", timeout=20_000)
        futures = cluster.executor.map(slow_inc, range(N_TASKS))
        # (polled from here: the page's content security policy refuses the
        # string a wait_for_function would evaluate in it)
        wait_for(lambda: attribute(page, "#task-stream", "data-bars") > 0, timeout=20,
                 message="no bar drawn")
        first = attribute(page, "#task-stream", "data-bars")
        screenshots(page, "running-1")
        # Two looks a second apart while the tasks run: the second has more.
        page.wait_for_timeout(1000)
        second = attribute(page, "#task-stream", "data-bars")
        screenshots(page, "running-2")
        assert not futures[-1].done(), "the run ended before the second look"
        assert second > first > 0
        assert cluster.executor.gather(futures, timeout=60) == list(range(1, N_TASKS + 1))
        wait_for(lambda: f"{N_TASKS} of {N_TASKS}" in page.inner_text("#progress"),
                 timeout=20, message="the progress never read all done")
        screenshots(page, "done")
        assert attribute(page, "#memory", "data-workers") == 2
        assert attribute(page, "#task-stream", "data-bars") >= second
        assert console.errors == []
    finally:
        page.close()


class FakeWorker:
    """A raw DEALER registered as a worker, whose heartbeats say what a test
    chooses: a worker with results on disk, before real workers spill."""

    def __init__(self, address: str, memory_limit: int):
        self.context = zmq.Context()
        self.peer = RawPeer(self.context, address)
        self.peer.send(h("register-worker", **dict(REGISTER_WORKER, name="fake-spilling",
                                                   memory_limit=memory_limit)))
        self.peer.expect("welcome")
        self.memory = self.managed = self.spilled = 0

    def beat(self) -> None:
        """One heartbeat with the numbers set (also what keeps it alive)."""
        self.peer.send(h("heartbeat", memory=self.memory, cpu=1.0, managed=self.managed,
                         spilled=self.spilled))

    def close(self) -> None:
        self.peer.close()
        self.context.term()


def test_memory_chart_shows_a_workers_results_on_disk(processes, browser, screenshots):
    center, address, link = center_with_dashboard(processes)
    url = link.split("/status")[0]
    worker = FakeWorker(address, memory_limit=4 * 2**30)
    try:
        worker.memory, worker.managed, worker.spilled = 2 * 2**30, 1 * 2**30, 3 * 2**30
        worker.beat()
        page, console = open_page(browser, link)
        try:
            def drawn(spilled: int) -> bool:
                worker.beat()  # (every look: the center hears it, and keeps it)
                return attribute(page, "#memory", "data-workers") == 1 and \
                    attribute(page, "#memory", "data-spilled") == spilled
            wait_for(lambda: drawn(1), timeout=20, interval=0.25,
                     message="no worker drawn with results on disk")
            screenshots(page, "spilled")
            state = page.request.get(url + "/api/v1/state").json()
            (numbers,) = state["workers"].values()
            assert (numbers["memory"], numbers["managed"], numbers["spilled"]) == \
                (2 * 2**30, 1 * 2**30, 3 * 2**30)
            assert "3.0 GiB" in page.request.get(url + "/workers").text()
            metrics = text_string_to_metric_families(page.request.get(url + "/metrics").text())
            (spilled,) = [s for family in metrics for s in family.samples
                          if s.name == "zfutures_worker_spilled_bytes"]
            assert spilled.labels == {"worker": REGISTER_WORKER["address"]}
            assert spilled.value == 3 * 2**30
            # All read back into memory: no bar on disk any more.
            worker.managed, worker.spilled = 3 * 2**30, 0
            wait_for(lambda: drawn(0), timeout=20, interval=0.25,
                     message="the bar on disk stayed")
            screenshots(page, "read-back")
            # (nothing on disk: managed is the center's own count, and this worker
            # holds no result)
            (numbers,) = page.request.get(url + "/api/v1/state").json()["workers"].values()
            assert (numbers["managed"], numbers["spilled"]) == (0, 0)
            assert console.errors == []
        finally:
            page.close()
    finally:
        worker.close()


def log_a_line() -> None:
    import logging

    logging.getLogger("a.user.module").warning("a line from a task")


def test_workers_page_lists_the_workers(cluster, browser, screenshots):
    cluster.executor.run(log_a_line)  # (on every worker)
    page, console = open_page(browser, cluster.url + "/workers")
    try:
        text = page.content()
        workers = cluster.executor.scheduler_info()["workers"]
        assert len(workers) == 2
        for address in workers:
            assert address in text
        screenshots(page, "workers")
        assert page.query_selector("a[href='/status']") is not None  # navigation
        for address in workers:
            response = page.goto(f"{cluster.url}/workers/{urllib.parse.quote(address, safe='')}")
            assert response.status == 200 and address in page.content()
            # its log lines, asked of the worker itself (a task's among them)
            assert "a line from a task" in page.inner_text("#worker-logs")
        assert console.errors == []
    finally:
        page.close()


def test_status_page_with_keys(processes, browser, screenshots, tmp_path):
    """With keys, the link's token opens the page and its event stream (by
    the cookie it sets); without it, 403."""
    keys = str(tmp_path / "keys")
    subprocess.run([command("zfut-keygen"), keys], check=True, capture_output=True, timeout=30)
    secured = Cluster(processes, "--keys", keys)
    try:
        assert "?token=" in secured.link
        page, console = open_page(browser, secured.link)
        try:
            page.wait_for_selector('#memory[data-workers="2"]', state="attached", timeout=20_000)
            future = secured.executor.submit(slow_inc, 1)  # (held: a task let go is forgotten)
            assert future.result(timeout=30) == 2
            wait_for(lambda: "1 of 1" in page.inner_text("#progress"), timeout=20,
                     message="the progress never read 1 of 1")
            screenshots(page, "with-keys")
            assert console.errors == []
            # The link's token set a cookie: the other pages open without it.
            assert page.request.get(secured.url + "/workers").status == 200
            bare = browser.new_page()  # (a context of its own: no cookie)
            try:
                assert bare.goto(secured.url + "/status").status == 403
            finally:
                bare.close()
        finally:
            page.close()
    finally:
        secured.close()


def test_prometheus_counts_the_finished_tasks(cluster, prometheus):
    server = prometheus(cluster.url.split("//", 1)[1])
    futures = cluster.executor.map(slow_inc, range(N_TASKS // 4), pure=False)
    cluster.executor.gather(futures, timeout=60)
    ran = N_TASKS // 4

    def scraped(expression: str) -> float | None:
        result = server.query(expression)
        return float(result[0]["value"][1]) if result else None

    wait_for(lambda: scraped("zfutures_tasks_finished_total") == ran, timeout=30,
             interval=0.5, message=f"prometheus never saw {ran} finished tasks: "
             f"{server.query('zfutures_tasks_finished_total')}")
    assert scraped("zfutures_workers") == 2
    assert scraped("zfutures_threads") == 2
    assert scraped("zfutures_tasks_failed_total") == 0
    assert scraped('sum(zfutures_tasks{state="memory"})') == ran
    assert len(server.query("zfutures_worker_memory_bytes")) == 2
    assert scraped("sum(zfutures_worker_memory_bytes)") > 0
    assert scraped("zfutures_center_messages_total") > 0
    assert server.targets_up()


def test_status_page_redirect_and_health(cluster, browser):
    page, console = open_page(browser, cluster.url + "/")
    try:
        assert page.url == cluster.url + "/status"
        assert page.request.get(cluster.url + "/health").text() == "ok"
        assert console.errors == []
    finally:
        page.close()


def test_link_in_the_center_output_is_the_clients(cluster):
    assert cluster.executor.dashboard_link == cluster.link
    assert cluster.executor.scheduler_info()["dashboard"] == cluster.link
