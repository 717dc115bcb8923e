"""``progress(futures)``: a progress bar until futures are done."""
from __future__ import annotations

import sys
from typing import Any

from .waiting import as_completed


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython()
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


class _HTMLBar:
    """A bar in a Jupyter cell, updated in place (no widget library needed)."""

    def __init__(self, total: int):
        from IPython.display import HTML, display

        self._html, self.total, self.done = HTML, total, 0
        self._handle = display(self._render(), display_id=True)

    def _render(self):
        share = 100 * self.done / self.total if self.total else 100
        return self._html(
            f'<div style="width:30em;border:1px solid #999">'
            f'<div style="width:{share:.1f}%;background:#4a8;height:1em"></div></div>'
            f"<code>{self.done}/{self.total} done</code>")

    def update(self, n: int = 1) -> None:
        self.done += n
        self._handle.update(self._render())

    def close(self) -> None:
        self._handle.update(self._render())


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, file: Any) -> Any:
    if _in_notebook():
        return _HTMLBar(total)
    if file is not None and hasattr(file, "isatty") and file.isatty():
        from tqdm import tqdm

        return tqdm(total=total, file=file, unit="task")
    return _Silent()  # not a terminal: a bar would only fill a log with noise


def progress(futures: Any, timeout: float | None = None, file: Any = None) -> None:
    """Block until ``futures`` are done, showing a progress bar.

    A tqdm bar in a terminal (on ``file``, standard error by default), an
    updating bar in a Jupyter notebook, nothing where output is not a
    terminal. Failed tasks count as done; their errors stay on their futures.

    >>> progress(ex.map(slow, range(100)))   # doctest: +SKIP
    100%|██████████| 100/100 [00:02<00:00, 48.1task/s]
    """
    from .executor import _walk_futures

    found: list = []
    if hasattr(futures, "key"):
        futures = [futures]
    elif not isinstance(futures, (list, tuple, set, frozenset, dict)):
        futures = list(futures)  # any iterable, as wait and as_completed take
    _walk_futures(futures, found)
    found = list(dict.fromkeys(found))
    bar = _bar(len(found), sys.stderr if file is None else file)
    try:
        for _ in as_completed(found, timeout=timeout):
            bar.update(1)
    finally:
        bar.close()
