"""What an Executor's calls accept: their arguments checked at the call, and a
task's placement (workers, resources) as its message item carries it."""
from __future__ import annotations

from typing import Any, Optional

from . import serialize
from .addressing import normalize_address


def check_seconds(name: str, value: Any) -> None:
    """``value`` must be a positive number of seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")


def check_options(address: Any, n_workers: Any, threads_per_worker: Any, timeout: Any,
                   name: Any) -> None:
    """The arguments of Executor(): what they must be."""
    if address is not None and not isinstance(address, str):
        raise TypeError(f"address must be a string like 'host:8787' or None, "
                        f"not {type(address).__name__}")
    if n_workers is not None and (type(n_workers) is not int or n_workers < 1):
        raise ValueError(f"n_workers must be a positive int, not {n_workers!r}")
    if type(threads_per_worker) is not int or threads_per_worker < 1:
        raise ValueError(f"threads_per_worker must be a positive int, not {threads_per_worker!r}")
    check_seconds("timeout", timeout)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string, not {type(name).__name__}")


def check_callable(call: str, fn: Any) -> None:
    """The function of a call (submit, map, run) must be callable."""
    if not callable(fn):
        raise TypeError(f"{call} needs a callable, not {type(fn).__name__} {fn!r}")


def map_keys(key: Any, count: int) -> list[str | None]:
    """The keys of a map's ``count`` tasks, from its argument ``key``: a list
    of keys, one per element; or a string prefix, or None (the keys are then
    made from each task's token: None for each)."""
    if isinstance(key, (list, tuple)):
        if len(key) != count:
            raise ValueError(f"map got {len(key)} keys for {count} elements")
        return list(key)
    if key is None or isinstance(key, str):
        return [None] * count
    raise TypeError("key must be a list of keys or a string prefix")


def check_task_options(retries: Any, priority: Any, workers: Any, resources: Any) -> None:
    """The options of a submit or map: what they must be."""
    if type(retries) is not int or retries < 0:
        raise ValueError(f"retries must be a non-negative int, not {retries!r}")
    if type(priority) is not int:
        raise TypeError(f"priority must be an int, not {type(priority).__name__}")
    if workers is not None:
        names = [workers] if isinstance(workers, str) else workers
        if not isinstance(names, (list, tuple, set, frozenset)) or \
                not all(isinstance(w, str) for w in names):
            raise TypeError("workers must be a worker address or name, or a list of them")
    if resources is not None:
        if not isinstance(resources, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                and v >= 0 for k, v in resources.items()):
            raise TypeError('resources must map names to amounts, like {"GPU": 1}')


#: A task's worker restrictions and resource needs: the fields ``workers``,
#: ``allow_other_workers`` and ``resources`` of its TaskItem, in that order.
Placement = tuple[Optional[list[str]], bool, Optional[dict[str, float]]]
#: The placement of a task that may run anywhere.
ANYWHERE: Placement = (None, False, None)


def placement(workers: Any, allow_other_workers: bool,
              resources: dict[str, float] | None) -> Placement:
    """A task's worker restrictions and resource needs, as its message item
    carries them (made once for all the tasks of a map)."""
    if workers is None and not resources:
        return ANYWHERE
    if workers is None:
        names, loose = None, False
    else:
        names = [normal_worker(w) for w in ([workers] if isinstance(workers, str) else workers)]
        loose = bool(allow_other_workers)
    return names, loose, {k: float(v) for k, v in resources.items()} if resources else None


def normal_worker(name: str) -> str:
    """Worker addresses in their canonical form; names as they are."""
    if name.startswith("tcp://"):
        return normalize_address(name)
    return name


def chosen_workers(workers_info: dict[str, Any], workers: Any) -> list[str]:
    """Addresses of the named workers (addresses or names) among those of
    ``workers_info`` (scheduler-info's), or of all of them."""
    if workers is None:
        return sorted(workers_info)
    names = [workers] if isinstance(workers, str) else list(workers)
    by_name = {w["name"]: address for address, w in workers_info.items()}
    addresses = []
    for name in names:
        address = normal_worker(name) if name.startswith("tcp://") else by_name.get(name)
        if address is None or address not in workers_info:
            raise ValueError(f"no worker {name!r} in the cluster; it has {sorted(workers_info)}")
        addresses.append(address)
    return addresses


def check_size(frames: list[Any], max_message_size: int) -> None:
    """Refuse, here and now, a call the center would refuse to receive: its
    pickled ``frames`` must fit in half the center's message size limit."""
    size = serialize.frames_nbytes(frames)
    if size > max_message_size // 2:
        raise ValueError(
            f"this call pickles to {size} bytes, more than half the center's message "
            f"size limit ({max_message_size} bytes, zfut-center "
            "--max-message-size): put big data on the cluster with scatter() and pass "
            "the future instead, or make it on a worker with a task")
