"""Which peer a worker asks for each input it lacks, and when: no I/O.

A task's inputs held by other workers are fetched straight from them. Each
input is asked of one holder at a time; the inputs planned for one peer in
one event go in one request (``get-data``). When the holder answers without
the key, leaves, or does not answer within the fetch timeout, the next
holder is asked; when none is left, the input is given up, and WorkerState
sends the tasks that wait for it back to the center.

:class:`Fetches` is a part of WorkerState, and the one owner of what is
being fetched and asked: WorkerState hands it the events about inputs and
takes back the requests to make (:meth:`Fetches.make_requests`: ``(request
id, peer address, keys)`` each) and the inputs that arrived
(:meth:`Fetches.received`).
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Collection, Iterable

logger = logging.getLogger(__name__)

#: A request for inputs to make: its id, the peer's address, the keys.
Request = tuple[int, str, list[str]]


class Fetch:
    """One input being fetched: the holders not tried yet, those tried, the
    tasks that wait for it, the request it was last asked in, and whether the
    center asked for it for its own sake (``acquire``: kept without a task)."""

    __slots__ = ("key", "holders", "tried", "waiting_tasks", "request", "acquired", "nbytes")

    def __init__(self, key: str, holders: list[str], nbytes: int = 0):
        self.key = key
        self.nbytes = nbytes  # its size, as the center told (0: unknown, or small)
        self.holders = holders
        self.tried: list[str] = []
        self.waiting_tasks: set[str] = set()
        self.request: int | None = None
        self.acquired = False


class Fetches:
    """The inputs a worker at ``address`` fetches, and its requests for them.

    ``give_up(fetch)`` is called for a fetch with no holder left to ask,
    fetched no more (WorkerState drops the tasks that wait for it). Each event
    plans fetches (:meth:`want`, :meth:`plan`), then :meth:`make_requests`
    returns the requests to make, one per peer.
    """

    def __init__(self, address: str, timeout: float, give_up: Callable[[Fetch], None]):
        self.address = address
        self.timeout = timeout  # seconds a peer has to answer
        self.give_up = give_up
        self.fetches: dict[str, Fetch] = {}  # input key -> its fetch
        # id -> peer, keys, deadline, when it was made
        self.requests: dict[int, tuple[str, list[str], float, float]] = {}
        # peer -> keys, until make_requests() (or later: held back for memory)
        self._planned: dict[str, list[str]] = {}
        self._request_ids = itertools.count(1)
        self._request_bytes: dict[int, int] = {}  # request id -> the bytes it asked for
        self.incoming = 0  # bytes asked for and not arrived (as far as sizes are known)

    def want(self, key: str, holders: list[str], task_key: str | None = None,
             nbytes: int = 0) -> None:
        """Fetch ``key`` (of ``nbytes``, 0 if unknown) from ``holders``, for task
        ``task_key``, or (None) for the center, which asked for it (once,
        however many want it)."""
        fetch = self.fetches.get(key)
        new = fetch is None
        if fetch is None:
            fetch = self.fetches[key] = Fetch(key, [h for h in holders if h != self.address],
                                              nbytes)
            if self.address in holders:  # the center thinks we hold it: we do not
                fetch.tried.append(self.address)
        if task_key is not None:
            fetch.waiting_tasks.add(task_key)
        else:
            fetch.acquired = True
        if new:
            self.plan(fetch)

    def plan(self, fetch: Fetch) -> None:
        """Ask ``fetch``'s next holder for it, or give it up if none is left."""
        if fetch.holders:
            holder = fetch.holders.pop(0)
            fetch.tried.append(holder)
            self._planned.setdefault(holder, []).append(fetch.key)
        else:
            del self.fetches[fetch.key]
            self.give_up(fetch)

    def make_requests(self, now: float, budget: int | None = None,
                      at_least_one: bool = True) -> list[Request]:
        """The requests planned, one per peer, now out.

        ``budget``: None, all of them; else only as many inputs as add up to
        ``budget`` bytes more in flight (the worker's memory is short: see
        WorkerSpilling.request_inputs), the others held back for a later call.
        With ``at_least_one``, one input goes all the same while nothing is in
        flight, so that a worker short of memory gets on, an input at a time.
        """
        if not self._planned:
            return []
        planned, self._planned = self._planned, {}
        fetches, made = self.fetches, []
        for peer, keys in planned.items():
            # A fetch planned in this same event may be gone already: its only
            # task was given up for want of another input.
            keys = [key for key in keys if key in fetches]
            if budget is not None:
                keys = self._within(peer, keys, budget, at_least_one)
            if not keys:
                continue
            request_id = next(self._request_ids)
            self.requests[request_id] = (peer, keys, now + self.timeout, now)
            nbytes = 0
            for key in keys:
                fetch = fetches[key]
                fetch.request = request_id
                nbytes += fetch.nbytes
            if nbytes:
                self._request_bytes[request_id] = nbytes
                self.incoming += nbytes
                if budget is not None:
                    budget -= nbytes
            made.append((request_id, peer, keys))
        return made

    def _within(self, peer: str, keys: list[str], budget: int, at_least_one: bool
                ) -> list[str]:
        """The first of ``keys`` (for ``peer``) that fit in ``budget`` more
        bytes in flight; the others are held back (planned still)."""
        taken: list[str] = []
        size = 0
        for i, key in enumerate(keys):
            nbytes = self.fetches[key].nbytes
            if size + nbytes > budget and (taken or self.requests or not at_least_one):
                self._planned.setdefault(peer, []).extend(keys[i:])
                break
            taken.append(key)
            size += nbytes
        return taken

    def next_size(self) -> int | None:
        """The size of the first input planned (0 if unknown), or None if none is."""
        for keys in self._planned.values():
            for key in keys:
                fetch = self.fetches.get(key)
                if fetch is not None:
                    return fetch.nbytes
        return None

    @property
    def held_back(self) -> bool:
        """Whether inputs wait to be asked for, held back for memory."""
        return bool(self._planned)

    def received(self, request_id: int, values: Collection[str]) -> list[Fetch]:
        """A peer answered request ``request_id`` with the values of ``values``
        (keys): the fetches of those still wanted, done (their values are to be
        stored). The keys it asked for and did not get are asked of their
        next holders (planned). An answer that comes after its timeout
        serves all the same."""
        request = self.requests.pop(request_id, None)
        self.incoming -= self._request_bytes.pop(request_id, 0)
        arrived = []
        for key in values if request is None else request[1]:
            fetch = self.fetches.get(key)
            if fetch is None:
                continue
            if key in values:
                del self.fetches[key]
                arrived.append(fetch)
            elif fetch.request == request_id:  # the peer no longer has it
                self.plan(fetch)
        return arrived

    def unwant(self, keys: Iterable[str], task_key: str, keep_asked: bool = False) -> None:
        """Task ``task_key`` waits for inputs ``keys`` no more. Those no task
        waits for are fetched no more, unless the center asked for them
        (acquire), or ``keep_asked`` and asked already: their answer is then
        stored all the same."""
        for key in keys:
            fetch = self.fetches.get(key)
            if fetch is not None:
                fetch.waiting_tasks.discard(task_key)
                if not fetch.waiting_tasks and not fetch.acquired and \
                        not (keep_asked and fetch.request is not None):
                    del self.fetches[key]

    def cancel(self, key: str) -> Fetch | None:
        """Fetch input ``key`` no more: its fetch, if it was being fetched."""
        return self.fetches.pop(key, None)

    def extend(self, request_id: int, until: float) -> None:
        """A peer answered ``request_id`` and its data is still to be read
        from that peer's memory: wait for it until ``until``."""
        request = self.requests.get(request_id)
        if request is not None and request[2] < until:
            self.requests[request_id] = (request[0], request[1], until, request[3])

    def peer_left(self, address: str) -> None:
        """Ask nothing more of ``address``; what was asked of it, ask the next
        holder (planned)."""
        for fetch in self.fetches.values():
            if address in fetch.holders:
                fetch.holders.remove(address)
        for request_id, (peer, _, _, _) in list(self.requests.items()):
            if peer == address:
                self._abandon(request_id)
        for key in self._planned.pop(address, ()):  # held back for it: the next holder
            held_back = self.fetches.get(key)
            if held_back is not None:
                self.plan(held_back)

    def expire(self, now: float) -> None:
        """Give up on the requests past their deadline: ask the next holders (planned)."""
        for request_id, (peer, keys, deadline, _) in list(self.requests.items()):
            if deadline > now:
                continue
            logger.warning("no answer from %s for %d keys within %.1fs; trying other holders",
                           peer, len(keys), self.timeout)
            self._abandon(request_id)

    def clear(self) -> None:
        """Fetch nothing more, and wait for no answer."""
        self.fetches.clear()
        self.requests.clear()
        self._planned.clear()
        self._request_bytes.clear()
        self.incoming = 0

    def _abandon(self, request_id: int) -> None:
        """Stop waiting for request ``request_id``: plan its keys from the next
        holders (those still fetched for it, not since asked elsewhere)."""
        self.incoming -= self._request_bytes.pop(request_id, 0)
        for key in self.requests.pop(request_id)[1]:
            fetch = self.fetches.get(key)
            if fetch is not None and fetch.request == request_id:
                self.plan(fetch)
