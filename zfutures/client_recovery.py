"""Bringing our work back to a center that restarted and forgot us.

The center asks an unknown client to register again (reregister); once
welcomed, the client sends again every key it holds, inputs before the
tasks that need them, saying where the finished ones are, so the center
takes them back instead of recomputing them; then the requests it had not
answered.
"""
from __future__ import annotations

import logging

from .client_outbox import Outbox
from .client_records import ERRED, FINISHED, KeyRecord
from .client_requests import Requests
from .messages import Release, ScatteredItem, Submit, UpdateData

logger = logging.getLogger(__name__)


def bring_back(keys: dict[str, KeyRecord], outbox: Outbox, requests: Requests) -> None:
    """Send again what the center must know of us (see the module's docstring)."""
    order = _inputs_first(keys)
    # Whatever is queued is among the keys brought back here, or about keys
    # the new center never knew.
    outbox.drop_queued()
    scattered, inputs_only = [], []
    for key, info in order:
        if info.status == ERRED:
            continue
        if info.scattered:
            scattered.append(ScatteredItem(key, info.nbytes, list(info.who_has)))
        elif info.submitted is not None:
            item, frames = info.submitted
            if info.status == FINISHED:
                item = item._replace(who_has=list(info.who_has))
            outbox.queue(Submit, item, frames)
        else:
            continue
        if key not in keys:  # wanted only as an input of a pending task
            inputs_only.append(key)
    if scattered:
        outbox.send(UpdateData(scattered))
    for key in inputs_only:
        outbox.queue(Release, key)
    outbox.flush_all()
    requests.ask_again()
    logger.warning("registered again with the center; brought back %d keys", len(order))


def _inputs_first(keys: dict[str, KeyRecord]) -> list[tuple[str, KeyRecord]]:
    """Every key held, and the inputs of pending tasks among them (which may
    have been let go of), each after its own inputs."""
    order: list[tuple[str, KeyRecord]] = []
    seen: set[int] = set()
    for info in list(keys.values()):
        stack = [(info, False)]
        while stack:  # depth first, inputs first: a chain can be long
            info, expanded = stack.pop()
            if expanded:
                order.append((info.key, info))
                continue
            if id(info) in seen:
                continue
            seen.add(id(info))
            stack.append((info, True))
            stack.extend((dep, False) for dep in info.deps or () if id(dep) not in seen)
    return order
