"""A cluster over separate hosts: network namespaces on one machine."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import netns
import psutil
import pytest
from conftest import command, read_line

from zfutures.processes import read_matching_line

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
]

CLIENT = textwrap.dedent("""
    import sys
    from operator import add
    import numpy as np
    from zfutures import Executor

    with Executor(sys.argv[1], timeout=20) as ex:
        deadline = __import__("time").monotonic() + 20
        while len(ex.nthreads()) < 2:
            assert __import__("time").monotonic() < deadline, "workers did not join"
            __import__("time").sleep(0.05)
        inputs = ex.map(np.random.random, [200_000] * 16, pure=False)
        xs, every = inputs, list(inputs)
        while len(xs) > 1:
            xs = [ex.submit(add, xs[i], xs[i + 1]) for i in range(0, len(xs), 2)]
            every += xs
        total = xs[0].result(timeout=60)
        hosts = sorted({w.split("//")[1].split(":")[0] for w in ex.nthreads()})
        holders = {w for ws in ex.who_has(inputs).values() for w in ws}
        # (the inputs are made in blocks, one per worker: what moves is a partial sum)
        copies = sum(len(ws) > 1 for ws in ex.who_has(every).values())
        ok = np.allclose(total, np.sum(ex.gather(inputs), axis=0))
        print("hosts", *hosts)
        print("input hosts", len(holders))
        print("moved between workers", copies > 0)
        print("correct", ok)
""")


@pytest.mark.parametrize("secured", [False, True], ids=["insecure", "keys"])
def test_tree_reduction_across_three_hosts(tmp_path, secured):
    """Data moves between worker hosts; with keys, every connection is CURVE."""
    if secured:
        keys = str(tmp_path / "keys")
        subprocess.run([command("zfut-keygen"), keys], check=True, capture_output=True,
                       timeout=30)
        security = ["--keys", keys]
    else:
        security = ["--insecure"]
    with netns.Network(3) as net:
        started = []
        try:
            center_log = open(tmp_path / "center.log", "w")
            center = subprocess.Popen(
                net.command(0, command("zfut-center"), "--host", net.addresses[0],
                            "--port", "8787", *security),
                stdout=subprocess.PIPE, stderr=center_log, text=True)
            started.append(center)
            address = read_line(center, r"listening at (tcp://\S+)").group(1)
            assert address == f"tcp://{net.addresses[0]}:8787"
            for host in (1, 2):
                started.append(subprocess.Popen(
                    net.command(host, command("zfut-worker"), address, *security),
                    stdout=subprocess.DEVNULL))
            script = tmp_path / "client.py"
            script.write_text(CLIENT)
            env = dict(os.environ, ZFUTURES_KEYS=keys) if secured else None
            out = subprocess.run(net.command(0, sys.executable, str(script), address),
                                 capture_output=True, text=True, timeout=90, env=env)
            assert out.returncode == 0, out.stderr
            lines = out.stdout.splitlines()
            # Workers announce the address peers reach them at, on their own hosts.
            assert lines[0] == f"hosts {net.addresses[1]} {net.addresses[2]}"
            assert lines[1] == "input hosts 2"
            assert lines[2] == "moved between workers True"
            assert lines[3] == "correct True"
            # Without keys, the center says at start that anyone may run code on it.
            warned = "reachable from other hosts" in (tmp_path / "center.log").read_text()
            assert warned == (not secured)
        finally:
            for process in reversed(started):
                process.terminate()
            for process in started:
                assert process.wait(10) == 0


CUT_CLIENT = textwrap.dedent("""
    import select
    import sys
    import time
    from operator import add

    import numpy as np
    from zfutures import Executor

    N = 64

    def piece(i):
        time.sleep(0.15)
        return np.random.default_rng(i).random(20_000)

    def wait_until(condition, timeout, what):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.05)

    def tree(xs, combine):
        while len(xs) > 1:
            xs = [combine(xs[i], xs[i + 1]) for i in range(0, len(xs), 2)]
        return xs[0]

    def host(address):
        return address.split("//")[1].split(":")[0]

    address, survivor, doomed = sys.argv[1:4]
    with Executor(address, timeout=20) as ex:
        wait_until(lambda: {host(w) for w in ex.nthreads()} == {survivor, doomed}, 30,
                   "workers did not join")
        inputs = ex.map(piece, range(N))
        nodes, level = [], inputs
        while len(level) > 1:
            level = [ex.submit(add, level[i], level[i + 1]) for i in range(0, len(level), 2)]
            nodes += level
        total = level[0]

        def only_on(where, futures):
            return sum({host(w) for w in ws} == {where} for ws in ex.who_has(futures).values())

        wait_until(lambda: sum(f.done() for f in inputs) >= 8 and only_on(survivor, inputs)
                   and only_on(doomed, inputs), 60, "no inputs held on one host only")
        print("cut now", flush=True)
        ready, _, _ = select.select([sys.stdin], [], [], 30)
        assert ready and sys.stdin.readline().strip() == "cut", "the test did not cut"
        # Finished keys whose only copy was on the cut host must be computed again.
        only_doomed = only_on(doomed, inputs + nodes)
        print("pending at cut", sum(not f.done() for f in inputs + nodes), flush=True)
        print("only on cut host", only_doomed, flush=True)
        result = total.result(timeout=60)
        values = ex.gather(inputs, timeout=30)
        expected = tree([np.random.default_rng(i).random(20_000) for i in range(N)], np.add)
        wait_until(lambda: len(ex.nthreads()) == 1, 30, "the cut host was not dropped")
        print("hosts", *sorted(host(w) for w in ex.nthreads()))
        print("holders", *sorted({host(w) for ws in ex.who_has(inputs + [total]).values()
                                  for w in ws}))
        print("inputs correct", all(np.array_equal(v, np.random.default_rng(i).random(20_000))
                                    for i, v in enumerate(values)))
        print("correct", np.array_equal(result, expected))
""")


def _stop_hosts(started: list[subprocess.Popen], timeout: float = 25) -> None:
    """SIGTERM what the test started; SIGKILL it and its children after ``timeout``."""
    children = {}
    for process in reversed(started):
        try:
            children[process] = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children[process] = []
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + timeout
    for process in started:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for child in children[process]:
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass
            process.kill()
            process.wait(10)
        for pipe in (process.stdin, process.stdout):
            if pipe:
                pipe.close()


def test_a_host_cut_off_mid_computation_is_routed_around(tmp_path):
    """Host 2's link goes down while a tree reduction over both worker hosts runs:
    the center drops its worker, what only it held is computed again on host 1,
    and the result is exact."""
    with netns.Network(3) as net:
        started = []
        try:
            center = subprocess.Popen(
                net.command(0, command("zfut-center"), "--host", net.addresses[0],
                            "--port", "8787", "--insecure", "--worker-timeout", "3"),
                stdout=subprocess.PIPE, text=True)
            started.append(center)
            address = read_line(center, r"listening at (tcp://\S+)").group(1)
            for host in (1, 2):
                started.append(subprocess.Popen(
                    net.command(host, command("zfut-worker"), address, "--insecure",
                                "--nthreads", "2", "--name", f"host{host}"),
                    stdout=subprocess.DEVNULL))
            script = tmp_path / "client.py"
            script.write_text(CUT_CLIENT)
            errors = tmp_path / "client.err"
            with open(errors, "w") as err:
                client = subprocess.Popen(
                    net.command(0, sys.executable, str(script), address, net.addresses[1],
                                net.addresses[2]),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
            started.append(client)
            assert read_matching_line(client, r"^cut now", 60), \
                f"the client did not get to the cut: {errors.read_text()[-3000:]}"
            net.cut(2)
            client.stdin.write("cut\n")
            client.stdin.close()
            status = client.wait(90)
            lines = client.stdout.read().splitlines()
            assert status == 0, errors.read_text()[-3000:]
            assert len(lines) == 6, lines
            assert int(lines[0].removeprefix("pending at cut ")) > 0, lines
            assert int(lines[1].removeprefix("only on cut host ")) > 0, lines
            assert lines[2:] == [f"hosts {net.addresses[1]}", f"holders {net.addresses[1]}",
                                 "inputs correct True", "correct True"]
        finally:
            _stop_hosts(started)
        # Everything left on SIGTERM, the cut host's nanny and worker too.
        assert [process.returncode for process in started] == [0] * len(started)
