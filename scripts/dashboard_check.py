"""Watch a busy local cluster through its dashboard, for the docs and the notes.

    python scripts/dashboard_check.py --tasks 100000 --screenshot docs/images/dashboard.png

Starts ``Executor(n_workers=2, threads_per_worker=2)``, opens the /status page
in Debian's headless Chromium (apt-get install -y chromium), runs a binary tree
reduction and then maps of trivial tasks, ``--tasks`` in all, and prints the
dashboard process's memory (RSS) before, at its peak, and after: its buffers
are bounded, so the peak must not grow with the number of tasks. With
``--screenshot``, saves the page while the reduction runs.
"""
from __future__ import annotations

import argparse
import operator
import threading
import time

import numpy as np
import psutil

from zfutures import Executor

MB = 2**20
CHROMIUM = "/usr/bin/chromium"


def dashboard_process(ex: Executor) -> psutil.Process:
    """The dashboard process of ``ex``'s local cluster (started by then)."""
    for child in psutil.Process().children(recursive=True):
        try:
            if "zfutures.dashboard" in " ".join(child.cmdline()):
                return child
        except psutil.Error:
            continue
    raise RuntimeError("no dashboard process: was the page opened?")


class PeakMemory:
    """The largest RSS of ``process``, sampled every 50 ms in a thread."""

    def __init__(self, process: psutil.Process):
        self.process = process
        self.peak = process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def wait_for_workers(page, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while page.get_attribute("#memory", "data-workers") in (None, "0"):
        if time.monotonic() > deadline:
            raise RuntimeError("the page drew no worker")
        page.wait_for_timeout(50)


def noisy_random(n: int) -> np.ndarray:
    time.sleep(0.15)  # (a few seconds in all: the page is seen mid-run)
    return np.random.random(n)


def slow_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    time.sleep(0.05)
    return operator.add(a, b)


def inc(x: int) -> int:
    return x + 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--screenshot", help="a PNG of /status during the tree reduction")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with Executor(n_workers=2, threads_per_worker=2) as ex, sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 720})
            page.goto(ex.dashboard_link, wait_until="load", timeout=30_000)
            wait_for_workers(page)
            process = dashboard_process(ex)
            before = process.memory_info().rss
            peak = PeakMemory(process)
            xs = ex.map(noisy_random, [2_000_000] * 64, pure=False)
            while len(xs) > 1:
                xs = [ex.submit(slow_add, xs[i], xs[i + 1]) for i in range(0, len(xs), 2)]
            if args.screenshot:
                page.wait_for_timeout(3000)
                page.screenshot(path=args.screenshot)
            xs[0].result()
            started, done = time.perf_counter(), 0
            while done < args.tasks:
                n = min(10_000, args.tasks - done)
                ex.gather(ex.map(inc, range(done, done + n), pure=False))
                done += n
            took = time.perf_counter() - started
            page.wait_for_timeout(1500)  # (the page has had the last events)
            peak.stop()
            after = process.memory_info().rss
            print(f"{done} tasks in {took:.1f} s with /status open "
                  f"({done / took:,.0f} tasks/s)")
            print(f"dashboard process RSS: {before / MB:.1f} MB before, "
                  f"{peak.peak / MB:.1f} MB at the peak, {after / MB:.1f} MB after")
            print(f"page shows {page.get_attribute('#task-stream', 'data-bars')} bars "
                  f"(at most 20,000 kept)")
        finally:
            browser.close()


if __name__ == "__main__":
    main()
