"""Watches of etcd key prefixes, and ``wait_for``: the one way pcocc waits on etcd keys.

``client`` here is a :class:`~pcocc.kv.client.KvClient` (not imported: it imports this).
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pcocc.errors import ServiceUnavailable, TimedOut
from pcocc.kv.etcd3compat import describe, raw_value

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class KvEvent:
    """One change seen by a watch: ``value`` is None when the key was deleted."""

    key: str
    value: bytes | None
    revision: int

    @property
    def is_delete(self) -> bool:
        return self.value is None


class KvWatch:
    """Events of a watched prefix, in order; ``get`` waits for the next one."""

    def __init__(self, client: Any, prefix: str):
        self._client = client
        self.prefix = prefix
        self._queue: queue.Queue[KvEvent | BaseException] = queue.Queue()
        self.watch_id: Any = None

    def callback(self, response: Any) -> None:
        """What etcd3's watch thread calls with each response (or the error that broke it)."""
        if isinstance(response, BaseException):
            self._queue.put(response)
            return
        revision = response.header.revision
        for ev in response.events:
            self._queue.put(KvEvent(ev.key.decode(), raw_value(ev), revision))

    def get(self, timeout_s: float | None = None) -> KvEvent | None:
        """The next event, or None after ``timeout_s``.

        :raise ServiceUnavailable: the watch stream broke (etcd went away)
        """
        try:
            item = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            self._client.link.lost(f"watch broke: {describe(item)}")
            raise ServiceUnavailable(
                f"etcd watch on {self.prefix} at {self._client.endpoint} broke: {describe(item)}",
                hint=self._client.hint,
            ) from item
        return item

    def __iter__(self) -> Iterator[KvEvent]:
        while True:
            event = self.get()
            if event is not None:
                yield event


def wait_for(
    client: Any,
    prefix: str,
    predicate: Callable[[dict[str, bytes]], T | None],
    timeout_s: float | None,
    *,
    tick_s: float = 0.5,
    what: str | None = None,
) -> T:
    """Return the first non-None ``predicate(keys under prefix)``.

    Reads the prefix once, then applies watch events from the next revision on (no change
    between the read and the watch is missed); the predicate also runs every ``tick_s`` so
    that it can check what etcd does not know (a child process, its own lease).

    Rides out etcd outages: while etcd cannot be read or the watch is broken, it reads and
    watches again every ``tick_s``, the predicate seeing the last known keys. The callers
    that hold a lease check it in their predicate, so an outage longer than the lease TTL
    ends the wait with the lease's error.

    :raise TimedOut: no result after ``timeout_s`` (names ``what`` or the prefix)
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    values: dict[str, bytes] = {}

    def expired(outage: ServiceUnavailable | None = None) -> TimedOut:
        after = "" if timeout_s is None else f" after {timeout_s:g} s"
        why = "" if outage is None else f" ({outage.message})"
        return TimedOut(f"timed out{after} waiting for {what or f'etcd keys under {prefix}'}{why}")

    while True:
        try:
            return _wait_once(client, prefix, predicate, deadline, tick_s, values, expired)
        except ServiceUnavailable as err:
            # the predicate first: it raises if the error was its own (a lost lease)
            result = predicate(dict(values))
            if result is not None:
                return result
            outage = err
        if deadline is not None and time.monotonic() >= deadline:
            raise expired(outage)
        time.sleep(tick_s)


def _wait_once(
    client: Any,
    prefix: str,
    predicate: Callable[[dict[str, bytes]], T | None],
    deadline: float | None,
    tick_s: float,
    values: dict[str, bytes],
    expired: Callable[[], TimedOut],
) -> T:
    """Read ``prefix`` into ``values``, then apply watch events until ``predicate``."""
    raw, revision = client.get_prefix_at(prefix)
    values.clear()
    values.update(raw)
    result = predicate(dict(values))
    if result is not None:
        return result
    with client.watch_prefix(prefix, start_revision=revision + 1) as watch:
        while True:
            wait_s = tick_s
            if deadline is not None:
                wait_s = min(tick_s, deadline - time.monotonic())
                if wait_s <= 0:
                    raise expired()
            event = watch.get(wait_s)
            if event is not None:
                if event.value is None:
                    values.pop(event.key, None)
                else:
                    values[event.key] = event.value
            result = predicate(dict(values))
            if result is not None:
                return result

