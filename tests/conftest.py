"""Fixtures that start real clusters: a local one, and one started by hand."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

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


# The integration tests that take ``ex`` run twice, once on each kind of
# cluster a user meets (as CPython runs one executor test suite over every
# executor kind): the local one ``Executor()`` starts, and one started by hand
# with the commands, which an Executor connects to by address.
CLUSTER_KINDS = ["local", "by-hand"]


def start_cluster_by_hand(started: Processes) -> Executor:
    """``zfut-center``, then ``zfut-worker`` with two single-threaded workers,
    as real processes (stopped by ``started``), and an Executor connected to
    the center once both workers are in. The workers are named as the local
    cluster names its own (local-0, local-1), and log warnings only, as it does."""
    _, address = started.center("--log-level", "warning")
    started.worker(address, "--nworkers", "2", "--nthreads", "1", "--name", "local",
                   "--log-level", "warning")
    executor = Executor(address)
    try:
        wait_for(lambda: len(executor.scheduler_info()["workers"]) == 2, timeout=30,
                 message="the workers started by hand did not register")
    except BaseException:
        executor.shutdown(wait=False)
        raise
    return executor


@pytest.fixture(scope="module", params=CLUSTER_KINDS)
def ex(request):
    """A cluster of two single-threaded workers and an Executor on it, shared
    by a test module: started by ``Executor()``, or by hand (see CLUSTER_KINDS)."""
    if request.param == "local":
        executor = Executor(n_workers=2, threads_per_worker=1)
        yield executor
        executor.shutdown(wait=False)  # a failed test's stuck future must not hang teardown
    else:
        started = Processes()
        try:
            executor = start_cluster_by_hand(started)
            yield executor
            executor.shutdown(wait=False)
        finally:
            started.stop_all()  # by pid: the processes this fixture started
    wait_for(lambda: not zfutures_children(),
             message=f"{request.param} cluster left processes behind")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "local_cluster_only(reason): a test of ``ex`` that checks what only "
                   "a local cluster does; skipped, with the reason, on the one started by hand")


def pytest_collection_modifyitems(config, items):
    for item in items:
        mark = item.get_closest_marker("local_cluster_only")
        call = getattr(item, "callspec", None)
        if mark and call is not None and call.params.get("ex") == "by-hand":
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
