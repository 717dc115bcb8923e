"""zfutures.performance_report: a self-contained HTML file of what ran inside
a ``with``, written as the run goes; opened in Debian's Chromium with the
network off."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import wait_for

import zfutures
from zfutures.messages import Events, TaskRun
from zfutures.report import ReportWriter


def inc(x):
    return x + 1


def add(a, b):
    return a + b


def boom(x):
    raise ValueError(f"no {x}")


@pytest.fixture(scope="module")
def ex():
    with zfutures.Executor(n_workers=2, threads_per_worker=2, timeout=20) as executor:
        yield executor


def open_offline(browser, path):
    """The report in a page with the network off; (page, console errors)."""
    context = browser.new_context(offline=True, viewport={"width": 1300, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: errors.append(f"asked the network: {r.url}")
            if not r.url.startswith("file:") else None)
    page.goto(f"file://{path}")
    page.wait_for_load_state("load")
    return page, errors


def test_a_report_has_every_run_inside_the_with_and_opens_offline(ex, tmp_path, browser,
                                                                  screenshots):
    ex.gather(ex.map(inc, range(30), pure=False))  # before the report: not in it
    path = tmp_path / "report.html"
    with zfutures.performance_report(path):
        xs = ex.map(inc, range(64), pure=False)
        while len(xs) > 1:  # a tree reduction: its inputs move between the workers
            xs = [ex.submit(add, xs[i], xs[i + 1]) for i in range(0, len(xs), 2)]
        assert xs[0].result(timeout=20) == sum(range(1, 65))
        failed = ex.submit(boom, 1)
        with pytest.raises(ValueError):
            failed.result(timeout=20)
    text = path.read_text()
    # self-contained: nothing to fetch, from any network
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text)
    page, errors = open_offline(browser, path)
    screenshots(page, "report")
    assert errors == []
    assert page.get_attribute("#task-stream", "data-bars") == str(64 + 63 + 1)
    assert "128 task runs on 2 workers" in page.inner_text("#summary")
    groups = page.inner_text("#groups")
    assert re.search(r"inc\s+64\s+0", groups) and re.search(r"add\s+63\s+0", groups)
    assert re.search(r"boom\s+0\s+1", groups)
    assert "transfers" in page.inner_text("#transfers")  # (a tree moves data)
    page.context.close()


def test_a_client_killed_in_the_middle_leaves_a_report_that_opens(tmp_path, browser):
    path, started = tmp_path / "report.html", tmp_path / "started"
    script = textwrap.dedent(f"""
        import os, time, zfutures
        def slow(x):
            time.sleep(0.002)
            return x
        with zfutures.Executor(n_workers=1, timeout=20) as ex:
            with zfutures.performance_report({str(path)!r}):
                ex.gather(ex.map(slow, range(200), pure=False))
                open({str(started)!r}, "w").close()
                ex.gather(ex.map(slow, range(100_000), pure=False))
    """)
    client = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        # (the 200 runs of the first map are in the file: the second runs on)
        wait_for(lambda: started.exists() and path.read_text().count('"slow-') >= 200,
                 timeout=60, message="the client's report never had the first map's runs")
    finally:
        # The client and its local cluster (its session) die at once: nothing
        # gets to finish the report.
        os.killpg(client.pid, signal.SIGKILL)
        client.wait(10)
    text = path.read_text()
    assert "zfReport.finish" not in text
    page, errors = open_offline(browser, path)
    assert errors == []
    assert int(page.get_attribute("#task-stream", "data-bars")) >= 200
    assert "ends early" in page.inner_text("#summary")
    page.context.close()


def test_a_key_that_closes_a_script_element_stays_data(tmp_path):
    path = tmp_path / "report.html"
    writer = ReportWriter(path)
    keys = ["</script><script>alert(1)</script>-1", "<!--<script>-1"]
    writer.add(Events(1.0, [], [], [TaskRun(key, "tcp://w", 0, 1.0, 2.0, True)
                                    for key in keys], [], {}))
    writer.close()
    text = path.read_text()
    data = text[text.index("<script>zfReport.add(") + len("<script>"):]
    assert "<" not in data.split(");</script>")[0]  # (nothing the HTML parser reads)
    assert "\\u003c/script\\u003e\\u003cscript\\u003ealert(1)" in data


def test_runs_past_the_limit_are_counted_not_written(tmp_path, monkeypatch):
    from zfutures import report

    monkeypatch.setattr(report, "MAX_RUNS", 3)
    writer = ReportWriter(tmp_path / "report.html")
    for i in range(2):
        writer.add(Events(1.0, [], [], [TaskRun(f"t-{i}-{j}", "tcp://w", 0, 1.0, 2.0, True)
                                        for j in range(2)], [], {}))
    writer.close()
    text = (tmp_path / "report.html").read_text()
    assert text.count('"t-') == 3 and '"left_out":1' in text


def test_a_report_needs_an_open_executor(tmp_path, monkeypatch):
    from zfutures import executor

    monkeypatch.setattr(executor, "_opened", [])  # (as if none were opened)
    with pytest.raises(RuntimeError, match="needs an open Executor"):
        with zfutures.performance_report(tmp_path / "report.html"):
            pass
