"""Whether this process reaches etcd: one warning when an etcd is lost, one line when it
answers again, whatever the number of calls, keep-alives and watches that fail meanwhile.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class EtcdLink:
    """The state of this process's connection to the etcd at ``endpoint``; ``label`` starts
    its messages (which process speaks, when several share a stderr)."""

    def __init__(self, endpoint: str, label: str | None = None):
        self.endpoint = endpoint
        self._prefix = f"{label}: " if label else ""
        self._lock = threading.Lock()
        self._lost = False

    @property
    def is_lost(self) -> bool:
        return self._lost

    def lost(self, why: str) -> None:
        """A call failed because etcd did not answer; warn the first time only."""
        with self._lock:
            if self._lost:
                log.debug("etcd at %s still away: %s", self.endpoint, why)
                return
            self._lost = True
        log.warning("%slost etcd at %s; retrying (%s)", self._prefix, self.endpoint, why)

    def answered(self) -> None:
        """etcd answered a call; say so once if it was lost."""
        if not self._lost:  # the common case, without the lock
            return
        with self._lock:
            if not self._lost:
                return
            self._lost = False
        log.warning("%sreconnected to etcd at %s", self._prefix, self.endpoint)


_links: dict[str, EtcdLink] = {}
_links_lock = threading.Lock()


def link_to(endpoint: str, label: str | None = None) -> EtcdLink:
    """The one link of this process to ``endpoint``, shared by all its clients (the first
    one's ``label`` is kept)."""
    with _links_lock:
        if endpoint not in _links:
            _links[endpoint] = EtcdLink(endpoint, label)
        return _links[endpoint]
