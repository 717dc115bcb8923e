"""A cluster over separate hosts: network namespaces on one machine."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import netns
import pytest
from conftest import command, read_line

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
        xs = inputs
        while len(xs) > 1:
            xs = [ex.submit(add, xs[i], xs[i + 1]) for i in range(0, len(xs), 2)]
        total = xs[0].result(timeout=60)
        hosts = sorted({w.split("//")[1].split(":")[0] for w in ex.nthreads()})
        holders = {w for ws in ex.who_has(inputs).values() for w in ws}
        copies = sum(len(ws) > 1 for ws in ex.who_has(inputs).values())
        ok = np.allclose(total, np.sum(ex.gather(inputs), axis=0))
        print("hosts", *hosts)
        print("input hosts", len(holders))
        print("moved between workers", copies > 0)
        print("correct", ok)
""")


def test_tree_reduction_across_three_hosts(tmp_path):
    with netns.Network(3) as net:
        started = []
        try:
            center = subprocess.Popen(
                net.command(0, command("zfut-center"), "--host", net.addresses[0],
                            "--port", "8787", "--insecure"),
                stdout=subprocess.PIPE, text=True)
            started.append(center)
            address = read_line(center, r"listening at (tcp://\S+)").group(1)
            assert address == f"tcp://{net.addresses[0]}:8787"
            for host in (1, 2):
                started.append(subprocess.Popen(
                    net.command(host, command("zfut-worker"), address, "--insecure"),
                    stdout=subprocess.DEVNULL))
            script = tmp_path / "client.py"
            script.write_text(CLIENT)
            out = subprocess.run(net.command(0, sys.executable, str(script), address),
                                 capture_output=True, text=True, timeout=90)
            assert out.returncode == 0, out.stderr
            lines = out.stdout.splitlines()
            # Workers announce the address peers reach them at, on their own hosts.
            assert lines[0] == f"hosts {net.addresses[1]} {net.addresses[2]}"
            assert lines[1] == "input hosts 2"
            assert lines[2] == "moved between workers True"
            assert lines[3] == "correct True"
        finally:
            for process in reversed(started):
                process.terminate()
            for process in started:
                assert process.wait(10) == 0
