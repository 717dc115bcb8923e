"""Fixtures that start real clusters: a local one, and one started by hand."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from zfutures import Executor
from zfutures.processes import read_matching_line


def command(name: str) -> str:
    """The path of a console script installed beside this interpreter."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    found = beside if os.path.exists(beside) else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e .")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_line(process: subprocess.Popen, pattern: str, timeout: float = 15) -> re.Match:
    """Read the process's stdout until a line matches ``pattern``, or fail."""
    match = read_matching_line(process, pattern, timeout)
    assert match, (f"no line matching {pattern!r} within {timeout}s "
                   f"(exit status {process.poll()})")
    return match


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
    """Signal a process we started and wait for its exit status."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        # A nanny's workers would outlive it, no longer our children: theirs first.
        try:
            children = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for child in children:
            child.kill()
        process.kill()
        process.wait(5)
        raise AssertionError(f"process {process.args} ignored signal {sig}") from None


class Processes:
    """Processes a test starts by hand; all stopped at the end of the test."""

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def start(self, *args: str, stderr=None) -> subprocess.Popen:
        """Start a command, its stdout piped (and its stderr to ``stderr``, e.g. a file)."""
        # Like a user who runs workers where their modules are importable:
        # the tests' functions are pickled by reference to these modules.
        env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__))
        process = subprocess.Popen(list(args), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                   stderr=stderr, text=True, env=env)
        self.started.append(process)
        return process

    def center(self, *extra: str, stderr=None) -> tuple[subprocess.Popen, str]:
        if not any(option.endswith("dashboard") or option.startswith("--dashboard")
                   for option in extra):
            # (a free port: centers of tests side by side would fight for 8788)
            extra = ("--dashboard-address", "127.0.0.1:0", *extra)
        process = self.start(command("zfut-center"), "--port", str(free_port()), *extra,
                             stderr=stderr)
        address = read_line(process, r"listening at (tcp://\S+)").group(1)
        return process, address

    def worker(self, address: str, *extra: str, stderr=None) -> subprocess.Popen:
        return self.start(command("zfut-worker"), address, *extra, stderr=stderr)

    def stop_all(self) -> None:
        """Stop every process, even when one of them will not stop (that fails)."""
        stubborn = []
        for process in reversed(self.started):
            if process.poll() is None:
                try:
                    stop(process)
                except AssertionError as e:
                    stubborn.append(str(e))
            if process.stdout:
                process.stdout.close()
        assert not stubborn, stubborn


@pytest.fixture
def processes():
    started = Processes()
    yield started
    started.stop_all()


def wait_for(condition, timeout: float = 10, interval: float = 0.02, message: str = ""):
    """Poll ``condition()`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(interval)


def zfutures_children() -> list[psutil.Process]:
    """Live descendants of this test process that run zfutures."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.is_running() and child.status() != psutil.STATUS_ZOMBIE and \
                    any("zfut" in part for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


# The integration tests that take ``ex`` (or another fixture made by
# cluster_fixture) run twice, once on each kind of cluster a user meets (as
# CPython runs one executor test suite over every executor kind): the local
# one ``Executor()`` starts, and one started by hand with the commands, which
# an Executor connects to by address.
CLUSTER_KINDS = ["local", "by-hand"]
BY_HAND = CLUSTER_KINDS[1]


def start_cluster_by_hand(started: Processes, nworkers: int = 2, nthreads: int = 1,
                          **options) -> Executor:
    """``zfut-center``, then ``zfut-worker`` with ``nworkers`` workers of
    ``nthreads`` threads, as real processes (stopped by ``started``), and an
    Executor (``options``: its keyword arguments) connected to the center once
    every worker is in. The workers are named as the local cluster names its
    own (local-0, local-1, ...), and log warnings only, as it does."""
    _, address = started.center("--log-level", "warning")
    started.worker(address, "--nworkers", str(nworkers), "--nthreads", str(nthreads),
                   "--name", "local" if nworkers > 1 else "local-0", "--log-level", "warning")
    executor = Executor(address, **options)
    try:
        wait_for(lambda: len(executor.scheduler_info()["workers"]) == nworkers, timeout=30,
                 message="the workers started by hand did not register")
    except BaseException:
        executor.shutdown(wait=False)
        raise
    return executor


@contextlib.contextmanager
def cluster_of_kind(kind: str, nworkers: int = 2, nthreads: int = 1,
                    **options) -> Iterator[Executor]:
    """A cluster of ``kind`` (one of CLUSTER_KINDS) with ``nworkers`` workers
    of ``nthreads`` threads, and an Executor on it (``options``: its keyword
    arguments); every process it started is gone once it is left."""
    before = {p.pid for p in zfutures_children()}
    started = Processes()
    try:
        if kind == BY_HAND:
            executor = start_cluster_by_hand(started, nworkers, nthreads, **options)
        else:
            executor = Executor(n_workers=nworkers, threads_per_worker=nthreads, **options)
        # (only its own: a test may use clusters of two fixtures at once)
        mine = {p.pid for p in zfutures_children()} - before
        try:
            yield executor
        finally:
            # Without waiting: a failed test's stuck or deadlocked task must
            # not hold up the end of the module.
            executor.shutdown(wait=False, cancel_futures=True)
    finally:
        started.stop_all()  # by pid: the processes started by hand, if any
    wait_for(lambda: not mine & {p.pid for p in zfutures_children()},
             message=f"the {kind} cluster left processes behind")


def cluster_fixture(nworkers: int = 2, nthreads: int = 1, **options) -> Any:
    """A fixture for a test module: a cluster of ``nworkers`` workers of
    ``nthreads`` threads and an Executor on it (``options``: its keyword
    arguments), shared by the module's tests that take it; started by
    ``Executor()``, or by hand (see CLUSTER_KINDS). A test that checks what
    only a local cluster does is marked ``local_cluster_only``."""

    @pytest.fixture(scope="module", params=CLUSTER_KINDS)
    def cluster(request: pytest.FixtureRequest) -> Iterator[Executor]:
        """A cluster and an Executor on it, of each kind in turn (see
        conftest.cluster_fixture for its size)."""
        with cluster_of_kind(request.param, nworkers, nthreads, **options) as executor:
            yield executor

    return cluster


#: Two single-threaded workers, the cluster most integration tests share.
ex = cluster_fixture()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "local_cluster_only(reason): a test of a cluster fixture (``ex`` and the "
                   "like) that checks what only a local cluster does; skipped, with the "
                   "reason, on the one started by hand")


def pytest_collection_modifyitems(config, items):
    for item in items:
        mark = item.get_closest_marker("local_cluster_only")
        call = getattr(item, "callspec", None)
        if mark and call is not None and BY_HAND in call.params.values():
            item.add_marker(pytest.mark.skip(reason=f"local cluster only: {mark.args[0]}"))


CLIENT_ONLY_SOURCE = '''\
def explode(message):
    raise RuntimeError(message)  # a comment only the source has
'''


@pytest.fixture
def client_only_module(tmp_path):
    """A module in a directory only this process imports from: its functions
    go to the workers by value (as a script's or a notebook's do)."""
    import importlib.util
    import linecache

    import cloudpickle

    name = f"client_only_{tmp_path.name}"
    path = tmp_path / f"{name}.py"
    path.write_text(CLIENT_ONLY_SOURCE)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    cloudpickle.register_pickle_by_value(module)
    yield module
    cloudpickle.unregister_pickle_by_value(module)
    del sys.modules[name]
    linecache.checkcache(str(path))


@pytest.fixture
def hide_from_workers():
    """``hide(module)``: its file is gone for the workers, as on another
    machine; this process keeps its lines (in linecache, as for any file it
    read, or a notebook's cells)."""
    import linecache

    hidden = []

    def hide(module):
        path = module.__file__
        assert linecache.getlines(path)
        os.rename(path, path + ".hidden")
        hidden.append(path)

    yield hide
    for path in hidden:
        os.rename(path + ".hidden", path)


# ---------------------------------------------------------------- real programs
# The dashboard's end-to-end tests drive Debian's Chromium (through playwright,
# never its own browser download) and Prometheus. CI installs both (.ci/run)
# and sets CI=true: there a missing one fails the test instead of skipping it.

CHROMIUM = "/usr/bin/chromium"
PROMETHEUS = "/usr/bin/prometheus"
#: Screenshots the browser tests take, kept for a look after the run.
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "test-artifacts", "dashboard")


def _real_program(path: str, package: str) -> str:
    if os.path.exists(path):
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{path} is missing on CI: .ci/run installs it (apt-get install -y {package})")
    pytest.skip(f"{path} is missing: apt-get install -y {package}")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """Debian's Chromium (skips without it, fails on CI)."""
    return _real_program(CHROMIUM, "chromium")


@pytest.fixture(scope="module")
def browser(chromium_path: str) -> Iterator[Any]:
    """A headless Chromium driven by playwright's sync API (one per module)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=chromium_path, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def screenshots(request: pytest.FixtureRequest) -> Any:
    """``shot(page, label)``: save a screenshot under test-artifacts/dashboard/
    named after the test and the label; returns its path."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    test = re.sub(r"[^\w.-]+", "_", request.node.name)

    def shot(page: Any, label: str) -> str:
        path = os.path.join(ARTIFACTS, f"{test}-{label}.png")
        page.screenshot(path=path, full_page=True)
        return path

    return shot


class Prometheus:
    """A Prometheus server on 127.0.0.1 scraping one target every second."""

    def __init__(self, binary: str, target: str, directory: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        os.makedirs(directory, exist_ok=True)
        config = os.path.join(directory, "prometheus.yml")
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "scrape_configs:\n  - job_name: zfutures\n"
                    f"    static_configs:\n      - targets: ['{target}']\n")
        self.log = open(os.path.join(directory, "prometheus.log"), "w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={config}",
             f"--storage.tsdb.path={os.path.join(directory, 'data')}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_for(self._ready, timeout=30, interval=0.2,
                     message=f"prometheus did not get ready (log: {self.log.name})")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        import urllib.error
        import urllib.request

        assert self.process.poll() is None, f"prometheus exited (log: {self.log.name})"
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The result vector of an instant query through the HTTP API."""
        import json
        import urllib.parse
        import urllib.request

        url = f"{self.url}/api/v1/query?query={urllib.parse.quote(expression)}"
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def targets_up(self) -> bool:
        """Whether its last scrape of the target succeeded."""
        return any(sample["value"][1] == "1" for sample in self.query("up"))

    def stop(self) -> None:
        stop(self.process, timeout=15)
        self.log.close()


@pytest.fixture
def prometheus(tmp_path: Any) -> Iterator[Any]:
    """``start(target)``: Debian's Prometheus scraping ``target`` (host:port,
    its /metrics) every second; stopped, by pid, at the end of the test."""
    binary = _real_program(PROMETHEUS, "prometheus")
    started: list[Prometheus] = []

    def start(target: str) -> Prometheus:
        server = Prometheus(binary, target, str(tmp_path / f"prometheus-{len(started)}"))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# ---------------------------------------------------------------- real disks
# The spilling tests write to a slow disk and to a full one (tests/disks.py).
# Both need root; CI runs as root (CI=true): there a missing feature fails the
# test instead of skipping it. A test asks for them before ``processes``, so
# that its processes stop (and leave the mount) before the disk is undone.

#: The slow disk's write rate, bytes per second.
SLOW_DISK_RATE = 50_000_000


@pytest.fixture
def slow_disk(tmp_path: Any) -> Iterator[Any]:
    """A :class:`disks.SlowDisk` of 2 GiB (sparse) writing at SLOW_DISK_RATE,
    checked with dd before use; undone at the end of the test."""
    import disks

    missing = disks.missing_for_slow_disk()
    if missing:
        disks.unavailable(missing)
    try:
        disk = disks.SlowDisk(str(tmp_path / "slow-disk"), 2 * 2**30, SLOW_DISK_RATE)
    except OSError as e:
        disks.unavailable(f"cannot make a slow disk here ({e}): {disks.HOW}")
    try:
        rate = disk.measure()
        if rate > 2 * SLOW_DISK_RATE:
            disks.unavailable(f"the blkio throttle does not slow writes here: dd wrote "
                              f"{rate / 1e6:.0f} MB/s through a limit of "
                              f"{SLOW_DISK_RATE / 1e6:.0f} MB/s")
        yield disk
    finally:
        disk.close()


@pytest.fixture
def small_tmpfs() -> Iterator[Any]:
    """``mount(path, size)``: a tmpfs of ``size`` (``"50m"``) at ``path``;
    each unmounted at the end of the test."""
    import disks

    missing = disks.missing_for_tmpfs()
    if missing:
        disks.unavailable(missing)
    mounted: list[Any] = []

    def mount(path: str, size: str) -> str:
        try:
            mounted.append(disks.SmallTmpfs(path, size))
        except OSError as e:
            disks.unavailable(f"cannot mount a tmpfs here ({e}): run the tests as root")
        return path

    yield mount
    for fs in reversed(mounted):
        fs.close()
