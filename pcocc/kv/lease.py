"""etcd leases kept alive by a thread; an outage shorter than the TTL is survived."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pcocc.errors import NotFound, PcoccError, ServiceUnavailable

log = logging.getLogger(__name__)


class KvLease:
    """A granted lease, kept alive by a thread while its ``with`` block runs.

    ``client`` is the :class:`~pcocc.kv.client.KvClient` that granted it (not imported
    here: the client imports this module).
    """

    def __init__(self, client: Any, lease: Any, ttl_s: int):
        self._client = client
        self._lease = lease
        self.ttl_s = ttl_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: when the last refresh that etcd answered was sent (monotonic clock)
        self._refreshed_at = time.monotonic()
        #: the error of the refreshes failing right now, None while etcd answers
        self.failing: PcoccError | None = None
        #: set once the lease is known to be gone (see ``check``)
        self.lost: ServiceUnavailable | None = None

    @property
    def id(self) -> int:
        return self._lease.id

    def refresh(self) -> None:
        """Restart the lease's time to live.

        :raise NotFound: the lease already expired (the keys put under it are gone)
        """
        with self._client.errors("refresh lease"):
            responses = self._lease.refresh()
        if not responses or responses[-1].TTL <= 0:
            raise NotFound(
                f"etcd lease {self.id:x} expired: the keys put under it are gone",
                hint="the process was stalled or cut from etcd for longer than the lease TTL",
            )

    def remaining_ttl_s(self) -> int:
        """Seconds left before expiry (-1 once expired or revoked)."""
        with self._client.errors("read lease"):
            return self._lease.remaining_ttl

    def start_keepalive(self) -> None:
        self._thread = threading.Thread(
            target=self._keepalive, name=f"etcd-lease-{self.id:x}", daemon=True
        )
        self._thread.start()

    def check(self) -> None:
        """Raise if the lease is gone: etcd said so, or did not answer for a whole TTL.

        :raise ServiceUnavailable: names etcd's endpoint and how long it was away
        """
        if self.lost is not None:
            raise self.lost

    def _keepalive(self) -> None:
        """Refresh every ``ttl/3`` s; an outage shorter than the TTL is survived.

        A refresh that etcd does not answer (down, stopped, unreachable) is retried (the
        client's :class:`~pcocc.kv.link.EtcdLink` says once that etcd is lost); once no
        refresh was answered for a whole TTL, etcd has expired the lease (or will as soon as
        it is back), so the lease is marked lost and the thread ends.
        """
        period = max(self.ttl_s / 3.0, 0.2)
        while not self._stop.wait(period):
            sent_at = time.monotonic()
            try:
                self.refresh()
            except NotFound as err:
                self._mark_lost(f"etcd at {self._client.endpoint} expired the lease")
                log.debug("%s", err)
                return
            except PcoccError as err:
                self.failing = err
                away_s = time.monotonic() - self._refreshed_at
                if away_s >= self.ttl_s:
                    self._mark_lost(
                        f"etcd at {self._client.endpoint} did not answer for {away_s:.0f} s,"
                        f" longer than the lease TTL ({self.ttl_s} s)"
                    )
                    return
                log.debug("cannot refresh etcd lease %x (will retry): %s", self.id, err)
            else:
                self._refreshed_at = sent_at
                self.failing = None

    def _mark_lost(self, why: str) -> None:
        self.lost = ServiceUnavailable(
            f"lost etcd: {why}; the keys under lease {self.id:x} are gone",
            hint=f"check that etcd runs at {self._client.endpoint} and keeps running",
        )
        log.debug("%s", self.lost)

    def revoke(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.lost is not None:
            return  # etcd expired it (or will when it is back): nothing to revoke
        with self._client.errors("revoke lease"):
            self._lease.revoke()
