"""The lease TTL setting, and a cluster whose leases are lost with etcd."""

import contextlib
import threading

import pytest
from tests.fixtures.launcher import FakeBatch, assert_all_gone, make_launcher

from pcocc.cluster.lease import DEFAULT_LEASE_TTL_S, lease_ttl_s
from pcocc.errors import ServiceUnavailable, UsageError
from pcocc.kv import keys

from tests.fixtures.memkv import MemoryKv

USER, JOB = "alice", "42"


def test_lease_ttl_from_env():
    assert lease_ttl_s({}) == DEFAULT_LEASE_TTL_S
    assert lease_ttl_s({"PCOCC_LEASE_TTL": " 4 "}) == 4
    for bad in ("1", "0", "-3", "2.5", "soon"):
        with pytest.raises(UsageError, match="PCOCC_LEASE_TTL"):
            lease_ttl_s({"PCOCC_LEASE_TTL": bad})


class LosableKv(MemoryKv):
    """A MemoryKv whose leases can all be lost at once, as with an etcd outage."""

    def __init__(self):
        super().__init__()
        self.leases = []
        self.deletes = 0

    @contextlib.contextmanager
    def lease(self, ttl_s):
        with super().lease(ttl_s) as lease:
            self.leases.append(lease)
            yield lease

    def delete_prefix(self, prefix):
        self.deletes += 1
        super().delete_prefix(prefix)

    def lose_etcd(self):
        for lease in self.leases:
            lease.lost = ServiceUnavailable(
                "lost etcd: etcd at http://127.0.0.1:1 did not answer for 11 s,"
                " longer than the lease TTL (10 s)"
            )


def test_lost_etcd_ends_the_cluster_naming_etcd(run_dir):
    kv = LosableKv()
    batch = FakeBatch(kv)
    launcher = make_launcher(kv, batch, command="sleep 30")
    state_keys = [keys.vm_state(USER, JOB, rank) for rank in (0, 1)]

    def all_running(snapshot):
        return True if all('"running"' in snapshot.get(k, "") for k in state_keys) else None

    def lose_when_running():
        # every node holds its lease once its VM runs (a node takes it with its first record,
        # so losing etcd as soon as one VM runs could miss the other's lease)
        kv.wait_for(keys.cluster_prefix(USER, JOB), all_running, 10)
        kv.lose_etcd()

    threading.Thread(target=lose_when_running, daemon=True).start()
    with pytest.raises(ServiceUnavailable, match=r"^lost etcd: etcd at http://127.0.0.1:1"):
        launcher.run()
    assert launcher.lifecycle.state.value == "failed"
    assert kv.deletes == 0  # the teardown did not wait for the lost etcd
    assert all(result == 1 for result in batch.tasks.results.values())
    assert_all_gone(kv, batch, run_dir)


class BrokenOnceClient:
    """A KvClient stand-in: the first read works, the first watch breaks, then all is well."""

    endpoint = "http://127.0.0.1:1"

    def __init__(self):
        self.data = {"/p/a": b"1"}
        self.events = []  # none: the change is only seen by reading again
        self.reads = 0
        self.watches = 0

    def get_prefix_at(self, prefix):
        self.reads += 1
        if self.reads == 2:
            raise ServiceUnavailable("cannot read /p/ in etcd at http://127.0.0.1:1: unavailable")
        return dict(self.data), 7

    @contextlib.contextmanager
    def watch_prefix(self, prefix, start_revision=None):
        self.watches += 1
        client = self

        class Watch:
            def get(self, timeout_s):
                if client.watches == 1:
                    client.data["/p/b"] = b"2"  # changes while the watch is broken
                    raise ServiceUnavailable("etcd watch on /p/ at http://127.0.0.1:1 broke")
                return client.events.pop(0) if client.events else None

        yield Watch()


def test_wait_for_rides_out_a_broken_watch():
    from pcocc.kv.watch import wait_for

    client = BrokenOnceClient()
    seen = []

    def predicate(snapshot):
        seen.append(sorted(snapshot))
        return "done" if "/p/b" in snapshot else None

    assert wait_for(client, "/p/", predicate, 10, tick_s=0.01) == "done"
    # the stale snapshot was shown while etcd was away, then a fresh read caught the change
    assert seen[0] == ["/p/a"] and seen[-1] == ["/p/a", "/p/b"]
    assert client.reads == 3


def test_wait_for_ends_when_the_predicate_gives_up():
    from pcocc.kv.watch import wait_for

    class DeadClient(BrokenOnceClient):
        def get_prefix_at(self, prefix):
            raise ServiceUnavailable("cannot read /p/ in etcd at http://127.0.0.1:1: unavailable")

    calls = []

    def predicate(snapshot):
        calls.append(1)
        if len(calls) >= 3:
            raise ServiceUnavailable("lost etcd: lease gone")  # what a lease check does

    with pytest.raises(ServiceUnavailable, match="lost etcd"):
        wait_for(DeadClient(), "/p/", predicate, None, tick_s=0.01)
