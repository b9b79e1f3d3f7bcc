"""An in-memory :class:`~pcocc.cluster.ports.Kv` with leases and watches.

It behaves like the etcd wrapper as far as the cluster runtime can tell (ordered events,
leases that delete their keys), so the launcher and node logic can be tested without etcd.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass
class MemLease:
    id: int
    ttl_s: int
    #: set by a test to play a lease lost with etcd
    lost: Exception | None = None

    def check(self) -> None:
        if self.lost is not None:
            raise self.lost


class MemoryKv:
    def __init__(self) -> None:
        self._data: dict[str, tuple[str, int | None]] = {}
        self._events: list[tuple[str, str | None]] = []  # (key, value or None = deleted)
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self.live_leases: set[int] = set()

    # -- Kv protocol ----------------------------------------------------------------------
    def put(self, key: str, value: str, lease: MemLease | None = None) -> None:
        with self._cond:
            if lease is not None and lease.id not in self.live_leases:
                raise RuntimeError(f"lease {lease.id} is not alive")
            self._data[key] = (value, lease.id if lease else None)
            self._notify(key, value)

    def get(self, key: str) -> str | None:
        with self._cond:
            item = self._data.get(key)
            return item[0] if item else None

    def get_prefix(self, prefix: str) -> dict[str, str]:
        with self._cond:
            return {k: v for k, (v, _) in self._data.items() if k.startswith(prefix)}

    def delete_prefix(self, prefix: str) -> None:
        with self._cond:
            for key in [k for k in self._data if k.startswith(prefix)]:
                del self._data[key]
                self._notify(key, None)

    @contextlib.contextmanager
    def lease(self, ttl_s: int) -> Iterator[MemLease]:
        lease = MemLease(next(self._ids), ttl_s)
        with self._cond:
            self.live_leases.add(lease.id)
        try:
            yield lease
        finally:
            self.expire(lease.id)

    def wait_for(
        self,
        prefix: str,
        predicate: Callable[[dict[str, str]], T | None],
        timeout_s: float | None,
        tick_s: float = 0.5,
    ) -> T:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            snapshot = {k: v for k, (v, _) in self._data.items() if k.startswith(prefix)}
            seen = len(self._events)
        while True:
            result = predicate(dict(snapshot))
            if result is not None:
                return result
            with self._cond:
                if seen == len(self._events):
                    remaining = (
                        tick_s if deadline is None else min(tick_s, deadline - time.monotonic())
                    )
                    if remaining <= 0:
                        raise TimeoutError(f"nothing under {prefix} satisfied the wait")
                    self._cond.wait(remaining)
                pending = self._events[seen:]
                seen = len(self._events)
            for key, value in pending:
                if not key.startswith(prefix):
                    continue
                if value is None:
                    snapshot.pop(key, None)
                else:
                    snapshot[key] = value
                result = predicate(dict(snapshot))
                if result is not None:
                    return result
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"nothing under {prefix} satisfied the wait")

    # -- for tests ------------------------------------------------------------------------
    def expire(self, lease_id: int) -> None:
        """Drop a lease and its keys, as etcd does when keep-alives stop."""
        with self._cond:
            self.live_leases.discard(lease_id)
            for key in [k for k, (_, lid) in self._data.items() if lid == lease_id]:
                del self._data[key]
                self._notify(key, None)

    def lease_of(self, key: str) -> int | None:
        with self._cond:
            item = self._data.get(key)
            return item[1] if item else None

    def keys(self) -> list[str]:
        with self._cond:
            return sorted(self._data)

    def _notify(self, key: str, value: str | None) -> None:
        self._events.append((key, value))
        self._cond.notify_all()
