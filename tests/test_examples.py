"""Run the examples: every notebook in examples/ (with nbclient) and the tree reduction script.

Each test checks the outputs it knows about and, afterwards, that it left no zfutures
process (center or worker) behind.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")
KernelSpecManager = pytest.importorskip("jupyter_client.kernelspec").KernelSpecManager

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))

#: Text that must appear in the output of the cell carrying each tag. Each notebook in
#: examples/ runs even without an entry here, and must then only be free of errors.
EXPECTED: dict[str, dict[str, list[str]]] = {
    "tree_reduction.ipynb": {
        "setup": ["1 thread(s)"],
        "map": ["16 futures", "all finished: True"],
        "where": ["xs[0] = random-", "lives on ['", "keys,"],
        "reduce": ["tasks per level: [16, 8, 4, 2, 1]", "status: finished"],
        "locality": ["level 4:", "inputs already on the worker that used them:"],
        "result": ["shape: (1000000,) dtype: float64", "first values:"],
        "check": ["16 different pieces: True", "tree sum == local sum: True"],
        "release": ["keys left on the cluster: 1"],
    },
    "ad_hoc.ipynb": {
        "result": ["got a ndarray of 8 MB", "still held by ['"],
        "args": ["same result: True", "futures in a dict: {'x': ((1000000,), 0.5)"],
        "fire-naive": ["of 6 side effects happened"],
        "fire": ["6 of 6 side effects happened, 0 failed",
                 "write_note keys still on the workers: 0"],
        "iterate": ["step  10:", "converged: True"],
        "dag": ["branch taken: robust", "spikes removed"],
        "errors": ["caught: ValueError(\"invalid literal for int() with base 10: 'forty-two'\")",
                   "cause is a RemoteTraceback: True", "in parse",
                   "status: error", "downstream: error ValueError(",
                   "gather, skipping failures: [42]"],
        "retries": ["succeeded at attempt 3"],
    },
}

PR_SET_CHILD_SUBREAPER = 36  # from <linux/prctl.h>

pytestmark = pytest.mark.timeout(180)  # every test here, including its fixtures


# --------------------------------------------------------------------------- fixtures


def _set_child_subreaper(on: bool) -> bool:
    """Make this process adopt its orphaned descendants (Linux); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@pytest.fixture(scope="module", autouse=True)
def adopt_orphans():
    # The cluster processes are children of the notebook kernel (or of the script's
    # process). When that parent exits first, they would be re-parented to init and no
    # longer be descendants of this process, so a leak would go unseen. As a child
    # subreaper, this process adopts them instead, and no_processes_left finds them.
    adopted = _set_child_subreaper(True)
    yield adopted
    if adopted:
        _set_child_subreaper(False)


def _zfutures_children() -> list[psutil.Process]:
    """Live descendants of this process whose command line mentions zfutures.

    Reaps adopted orphans that have exited (zombies), which would otherwise stay in the
    process table until this process exits.
    """
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                if child.ppid() == os.getpid():
                    try:
                        os.waitpid(child.pid, os.WNOHANG)
                    except ChildProcessError:
                        pass
                continue
            if "zfutures" in " ".join(child.cmdline()):
                found.append(child)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture(autouse=True)
def no_processes_left():
    """After the test, no zfutures process started by it may still run (10 s grace)."""
    yield
    deadline = time.monotonic() + 10
    left = _zfutures_children()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _zfutures_children()
    if left:
        described = []
        for process in left:
            try:
                described.append(f"{process.pid}: {' '.join(process.cmdline())}")
                process.kill()  # ours: a descendant of this test process
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(left, timeout=5)
        _zfutures_children()  # reap what was adopted
        pytest.fail("zfutures processes still running 10 s after the test:\n"
                    + "\n".join(described))


@pytest.fixture(scope="module")
def python3_kernel(tmp_path_factory):
    """Make the kernel named "python3" run this very interpreter.

    nbclient starts the kernel by name, and jupyter_client looks the name up in the
    Jupyter data directories: a "python3" kernelspec in the user's or the system's
    directories may point at another Python, without zfutures or with an old copy of it.
    So we write a kernelspec for sys.executable (ipykernel's own kernel.json, argv[0] =
    sys.executable) into a temporary prefix and put that first on JUPYTER_PATH, which
    jupyter_client searches before every other directory. (KernelManager(kernel_cmd=...)
    would do too, but kernel_cmd is deprecated in jupyter_client, and nbclient builds
    its KernelManager itself.)
    """
    prefix = tmp_path_factory.mktemp("jupyter")
    kernelspec.install(prefix=str(prefix), kernel_name="python3")
    data_dir = str(prefix / "share" / "jupyter")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join(
            [data_dir, *filter(None, [os.environ.get("JUPYTER_PATH")])]))
        spec = KernelSpecManager().get_kernel_spec("python3")
        assert spec.argv[0] == sys.executable, spec.argv
        yield "python3"


# --------------------------------------------------------------------------- notebooks


def _output_text(cell) -> str:
    """Everything a code cell printed or displayed, as text."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_examples_exist():
    names = {path.name for path in NOTEBOOKS}
    assert set(EXPECTED) <= names, f"missing notebooks: {set(EXPECTED) - names}"
    assert (EXAMPLES / "tree_reduction.py").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_is_saved_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    with_outputs = [cell.get("id") for cell in nb.cells if cell.cell_type == "code"
                    and (cell.outputs or cell.execution_count is not None)]
    assert not with_outputs, f"cells saved with outputs: {with_outputs}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs(path, python3_kernel):
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=120, kernel_name=python3_kernel,
                                     resources={"metadata": {"path": str(EXAMPLES)}})
    client.execute()  # raises CellExecutionError, with the traceback, at a failing cell

    problems = []
    by_tag = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        label = f"cell {index} ({cell.get('id')})"
        for tag in cell.metadata.get("tags", []):
            by_tag[tag] = cell
        for output in cell.outputs:
            # Error outputs can survive execute(): nbclient lets cells tagged
            # "raises-exception" fail. The cluster's processes write their logs to the
            # kernel's stderr, which ipykernel forwards to the notebook: no tracebacks.
            if output.output_type == "error":
                problems.append(f"{label} raised {output.ename}: {output.evalue}")
            elif (output.output_type == "stream" and output.name == "stderr"
                  and "Traceback (most recent call last)" in output.text):
                problems.append(f"{label} wrote a traceback to stderr:\n{output.text}")

    for tag, expected in EXPECTED.get(path.name, {}).items():
        if tag not in by_tag:
            problems.append(f"no code cell tagged {tag!r}")
            continue
        text = _output_text(by_tag[tag])
        for snippet in expected:
            if snippet not in text:
                problems.append(f"cell tagged {tag!r}: {snippet!r} not in its output:\n{text}")
    assert not problems, "\n\n".join(problems)


# --------------------------------------------------------------------------- script


def _run_script(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    """Run examples/tree_reduction.py; its exit status, stdout and stderr.

    The output goes to files, not pipes: a cluster process that outlived the script
    would hold a pipe open and make the wait hang, instead of being reported by
    no_processes_left. It runs in an empty directory, so the cluster's processes
    (``python -m zfutures``, which puts the working directory first on sys.path) import
    the same zfutures as this process, not whatever the working directory holds.
    """
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.run([sys.executable, str(EXAMPLES / "tree_reduction.py"), *args],
                                 cwd=tmp_path, stdin=subprocess.DEVNULL,
                                 stdout=stdout, stderr=stderr, timeout=150)
    return process.returncode, out.read_text(), err.read_text()


def test_tree_reduction_script(tmp_path):
    status, output, errors = _run_script(tmp_path, "--workers", "2", "--size", "1000")
    assert status == 0, f"exit status {status}\n{output}{errors}"
    for snippet in ["local cluster of 2 workers at tcp://127.0.0.1:",
                    "reduced 16 arrays of 1000 random numbers in",
                    "result: shape (1000,), first values [",
                    "check: the 16 inputs are different arrays: OK",
                    "check against the sum of the gathered inputs: OK"]:
        assert snippet in output, f"{snippet!r} not in the output:\n{output}"


def test_tree_reduction_script_rejects_bad_arguments(tmp_path):
    status, output, errors = _run_script(tmp_path, "--workers", "0")
    assert status == 2, f"exit status {status}\n{output}{errors}"
    assert "--workers: must be at least 1" in errors


# --------------------------------------------------------------------------- progress


def test_progress_draws_an_updating_bar_in_a_notebook(python3_kernel, tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import time\n"
        "from zfutures import Executor, progress\n"
        "with Executor(n_workers=1) as ex:\n"
        "    futures = ex.map(time.sleep, [0.05] * 8, pure=False)\n"
        "    progress(futures)\n"
        "    print('all done:', all(f.done() for f in futures))\n")])
    nbclient.NotebookClient(nb, timeout=120, kernel_name=python3_kernel,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = nb.cells[0].outputs
    html = [o for o in outputs if o.output_type == "display_data" and "text/html" in o.data]
    assert html, f"no HTML bar displayed: {outputs}"
    # One display, updated in place (not one output per step), showing the end state.
    assert len(html) == 1
    assert "8/8 done" in html[0].data["text/html"]
    assert "all done: True" in _output_text(nb.cells[0])
