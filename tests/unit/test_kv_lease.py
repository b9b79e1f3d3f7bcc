"""The keep-alive thread of a lease: outages shorter than the TTL pass, longer ones lose it."""

import contextlib
import threading
import time
from types import SimpleNamespace

import pytest

from pcocc.errors import ServiceUnavailable
from pcocc.kv.lease import KvLease

ENDPOINT = "http://127.0.0.1:2379"


class FakeClient:
    endpoint = ENDPOINT

    @contextlib.contextmanager
    def errors(self, what):
        yield


class FlakyRawLease:
    """An etcd3 lease whose refreshes fail while ``down`` is set."""

    id = 0xABC

    def __init__(self):
        self.down = threading.Event()
        self.refreshes = 0

    def refresh(self):
        if self.down.is_set():
            raise ServiceUnavailable(f"cannot refresh lease in etcd at {ENDPOINT}: unavailable")
        self.refreshes += 1
        return [SimpleNamespace(TTL=2)]

    def revoke(self):
        self.revoked = True


def wait_until(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_outage_shorter_than_ttl_is_survived():
    raw = FlakyRawLease()
    lease = KvLease(FakeClient(), raw, 2)
    lease.start_keepalive()
    try:
        wait_until(lambda: raw.refreshes >= 1)
        raw.down.set()
        wait_until(lambda: lease.failing is not None)
        raw.down.clear()
        before = raw.refreshes
        wait_until(lambda: raw.refreshes > before)
        assert lease.failing is None and lease.lost is None
        lease.check()  # does not raise
    finally:
        lease.revoke()
    assert raw.revoked


def test_outage_longer_than_ttl_loses_the_lease():
    raw = FlakyRawLease()
    lease = KvLease(FakeClient(), raw, 1)
    lease.start_keepalive()
    raw.down.set()
    wait_until(lambda: lease.lost is not None)
    with pytest.raises(ServiceUnavailable) as exc:
        lease.check()
    assert exc.value.message.startswith("lost etcd: etcd at " + ENDPOINT)
    assert "longer than the lease TTL (1 s)" in exc.value.message
    raw.down.clear()  # etcd is back, but the lease stays lost: etcd expired it
    time.sleep(0.5)
    assert lease.lost is not None and raw.refreshes == 0
    lease.revoke()  # nothing to revoke any more
    assert not hasattr(raw, "revoked")


def test_expired_lease_is_lost():
    raw = FlakyRawLease()
    raw.refresh = lambda: [SimpleNamespace(TTL=0)]
    lease = KvLease(FakeClient(), raw, 1)
    lease.start_keepalive()
    wait_until(lambda: lease.lost is not None)
    assert "expired the lease" in lease.lost.message
