"""The etcd client against a real etcd v3 server."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
import time
import uuid

import pytest

from pathlib import Path

from pcocc.errors import (
    Busy,
    ConfigError,
    Corrupt,
    KvConflict,
    PermissionDenied,
    ServiceUnavailable,
    TimedOut,
)
from pcocc.kv import keys
from pcocc.kv.client import KvClient
from pcocc.daemon import free_port


@pytest.fixture
def kv(etcd_server):
    with KvClient(etcd_server.endpoints) as client:
        yield client


@pytest.fixture
def cluster():
    """A fresh cluster id, so tests never see each other's keys."""
    return ("tester", uuid.uuid4().hex[:12])


def test_put_get_prefix_delete(kv, cluster):
    definition = keys.cluster_definition(*cluster)
    kv.put_json(definition, {"vms": 2})
    kv.put(keys.vm_state(*cluster, 0), b"running")
    kv.put(keys.vm_state(*cluster, 1), "booting")
    assert kv.get_json(definition) == {"vms": 2}
    states = kv.get_prefix(keys.vms_prefix(*cluster))
    assert states == {
        keys.vm_state(*cluster, 0): b"running",
        keys.vm_state(*cluster, 1): b"booting",
    }
    assert kv.delete(keys.vm_state(*cluster, 0)) is True
    assert kv.delete(keys.vm_state(*cluster, 0)) is False
    assert kv.delete_prefix(keys.cluster_prefix(*cluster)) == 2
    assert kv.get(definition) is None
    assert kv.get_json(definition) is None


def test_get_json_refuses_garbage(kv, cluster):
    kv.put(keys.cluster_definition(*cluster), b"{not json")
    with pytest.raises(Corrupt, match="does not hold JSON"):
        kv.get_json(keys.cluster_definition(*cluster))


def test_leaving_lease_block_by_exception_removes_its_keys(kv, cluster):
    key = keys.vm_state(*cluster, 0)
    with pytest.raises(RuntimeError), kv.lease(30) as lease:
        kv.put(key, b"up", lease=lease)
        assert kv.get(key) == b"up"
        raise RuntimeError("boom")
    assert kv.get(key) is None


def test_keepalive_keeps_keys_beyond_ttl(kv, cluster):
    key = keys.vm_state(*cluster, 0)
    with kv.lease(2) as lease:
        kv.put(key, b"up", lease=lease)
        time.sleep(4.5)
        assert kv.get(key) == b"up"
        assert lease.remaining_ttl_s() > 0  # whole seconds: a 1-s lease may show 0


_HOLDER = """
import sys, time
from pcocc.kv.client import KvClient
kv = KvClient(sys.argv[1])
with kv.lease(2) as lease:
    kv.put(sys.argv[2], b"alive", lease=lease)
    print("ready", flush=True)
    time.sleep(600)
"""


def test_lease_expiry_removes_keys_of_a_killed_process(kv, cluster):
    key = keys.vm_state(*cluster, 3)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, kv.endpoint, key], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert kv.get(key) == b"alive"
    finally:
        holder.kill()  # no chance to revoke: only expiry can remove the key
        holder.wait()
    kv.wait_for(keys.vms_prefix(*cluster), lambda v: True if key not in v else None, timeout_s=20)
    assert kv.get(key) is None


def test_watch_wakes_a_waiter(kv, cluster):
    prefix = keys.vms_prefix(*cluster)
    result = {}

    def waiter():
        result["keys"] = kv.wait_for(prefix, lambda v: v if len(v) == 2 else None, timeout_s=30)

    thread = threading.Thread(target=waiter)
    thread.start()
    kv.put(keys.vm_state(*cluster, 0), b"running")
    kv.put(keys.vm_state(*cluster, 1), b"running")
    thread.join(40)
    assert not thread.is_alive()
    assert sorted(result["keys"]) == [keys.vm_state(*cluster, 0), keys.vm_state(*cluster, 1)]


def test_watch_reports_puts_and_deletes_in_order(kv, cluster):
    key = keys.cluster_definition(*cluster)
    with kv.watch_prefix(keys.cluster_prefix(*cluster)) as watch:
        kv.put(key, b"1")
        kv.delete(key)
        first, second = watch.get(10), watch.get(10)
    assert (first.key, first.value) == (key, b"1")
    assert second.key == key and second.is_delete


def test_wait_for_times_out_with_a_clear_message(kv, cluster):
    with pytest.raises(TimedOut, match="VMs to run"):
        kv.wait_for(keys.vms_prefix(*cluster), lambda v: v or None, 0.5, what="VMs to run")


def _allocate_many(endpoint: str, prefix: str, count: int, out) -> None:
    with KvClient(endpoint) as client:
        got = [client.allocate(prefix, range(1000, 1100), b"x") for _ in range(count)]
    out.put(got)


def test_allocation_under_contention_gives_distinct_values(kv, cluster):
    prefix = keys.node_allocations_prefix(f"host-{cluster[1]}", "ports")
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    workers = [
        ctx.Process(target=_allocate_many, args=(kv.endpoint, prefix, 6, out)) for _ in range(4)
    ]
    for w in workers:
        w.start()
    got = [port for _ in workers for port in out.get(timeout=60)]
    for w in workers:
        w.join(30)
    assert len(got) == 24
    assert len(set(got)) == 24
    assert set(got) <= {str(p) for p in range(1000, 1100)}
    assert len(kv.get_prefix(prefix)) == 24


def test_allocation_exhausted_is_busy(kv, cluster):
    prefix = keys.node_allocations_prefix(f"host-{cluster[1]}", "vlan-ids")
    assert kv.allocate(prefix, [7]) == "7"
    with pytest.raises(Busy, match="all 1 candidates"):
        kv.allocate(prefix, [7])


def test_leased_allocation_is_released_with_the_lease(kv, cluster):
    prefix = keys.node_allocations_prefix(f"host-{cluster[1]}", "ports")
    with kv.lease(30) as lease:
        assert kv.allocate(prefix, [5, 6], lease=lease) == "5"
        assert kv.allocate(prefix, [5, 6]) == "6"
    assert kv.allocate(prefix, [5, 6]) == "5"


def test_increment_from_threads_gives_distinct_ids(kv, cluster):
    key = keys.node_allocation(f"host-{cluster[1]}", "counters", "vm-id")
    got: list[int] = []
    lock = threading.Lock()

    def work():
        with KvClient(kv.endpoint) as client:
            for _ in range(10):
                value = client.increment(key)
                with lock:
                    got.append(value)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(got) == list(range(1, 41))


def test_replace_detects_a_concurrent_change(kv, cluster):
    key = keys.cluster_definition(*cluster)
    kv.put(key, b"a")
    kv.replace(key, b"a", b"b")
    with pytest.raises(KvConflict, match="changed meanwhile"):
        kv.replace(key, b"a", b"c")
    assert kv.get(key) == b"b"


def test_unreachable_etcd_is_a_clear_service_error():
    endpoint = f"http://127.0.0.1:{free_port()}"
    with KvClient(endpoint, timeout_s=2) as client, pytest.raises(ServiceUnavailable) as info:
        client.get(keys.cluster_definition("u", 1))
    message = str(info.value)
    assert endpoint in message and "/pcocc/users/u/clusters/1/definition" in message
    assert info.value.__cause__ is not None
    assert "PCOCC_ETCD_ENDPOINTS" in info.value.hint


def test_bad_endpoints_are_config_errors():
    with pytest.raises(ConfigError, match="invalid etcd endpoint"):
        KvClient("ftp://127.0.0.1:2379")
    with pytest.raises(ConfigError, match="uses TLS but no CA is configured"):
        KvClient("https://127.0.0.1:2379")
    with pytest.raises(ConfigError, match="no etcd endpoint"):
        KvClient.from_env({})


def test_private_etcd_serves_a_job_and_stops(tmp_path):
    from pcocc import daemon
    from pcocc.kv.private import private_etcd

    if __import__("shutil").which("etcd") is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    with private_etcd(tmp_path / "job 1", "me") as env:
        with KvClient.from_env(env) as client:
            client.put(keys.cluster_definition("me", "local-1"), b"{}")
            assert client.get(keys.cluster_definition("me", "local-1")) == b"{}"
            # the job user's role covers the job owner's keys only
            with pytest.raises(PermissionDenied):
                client.put(keys.cluster_definition("other", "local-1"), b"{}")
        # without the job's login, etcd refuses (authentication is on)
        with KvClient(env["PCOCC_ETCD_ENDPOINTS"]) as anonymous, pytest.raises(PermissionDenied):
            anonymous.get_prefix("/")
        # no secret in etcd's argv (``ps`` shows it to every user)
        for pid in daemon.processes_mentioning(str(tmp_path / "job 1"), environ=False):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert env["PCOCC_ETCD_JOB_LOGIN"].split(":")[1].encode() not in cmdline
        assert daemon.processes_mentioning(str(tmp_path / "job 1"))
    assert daemon.processes_mentioning(str(tmp_path / "job 1")) == []


def test_ctrl_c_in_a_lease_block_revokes_it(kv, cluster):
    key = keys.rnat(*cluster, 0, 2222)
    with pytest.raises(KeyboardInterrupt), kv.lease(60) as lease:
        kv.put(key, b"127.0.0.1:40000", lease=lease)
        raise KeyboardInterrupt
    assert kv.get(key) is None


def test_etcd_that_cannot_start_names_its_log(tmp_path):
    from pcocc.kv.server import EtcdServer

    if __import__("shutil").which("etcd") is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    server = EtcdServer(tmp_path, start_timeout_s=20)
    server.data_dir.write_text("a file where etcd wants its data directory")
    with pytest.raises(ServiceUnavailable, match="did not become healthy") as info:
        server.start()
    assert str(tmp_path / "etcd.log") in info.value.hint
    assert server.pid is None


def test_watch_on_a_stopped_etcd_raises_service_unavailable(tmp_path):
    from pcocc.kv.server import EtcdServer

    if __import__("shutil").which("etcd") is None:
        pytest.skip("etcd is not installed (Debian package etcd-server)")
    with EtcdServer(tmp_path) as server, KvClient(server.endpoints, timeout_s=2) as client:
        prefix = keys.vms_prefix("u", "1")
        with client.watch_prefix(prefix) as watch:
            client.put(keys.vm_state("u", "1", 0), b"up")
            assert watch.get(10).value == b"up"
            server.stop()
            with pytest.raises(ServiceUnavailable, match="watch on /pcocc/users/u/clusters/1/vms/"):
                watch.get(10)


def _etcdctl(endpoint: str, *args: str, user: str | None = None) -> None:
    from pcocc import proc

    login = [f"--user={user}"] if user else []
    proc.run(["etcdctl", f"--endpoints={endpoint}", *login, *args], env={"ETCDCTL_API": "3"})


def test_user_roles_limit_a_user_to_their_prefix(tmp_path):
    from pcocc.errors import PermissionDenied
    from pcocc.kv.server import EtcdServer

    if __import__("shutil").which("etcdctl") is None:
        pytest.skip("etcdctl is not installed (Debian package etcd-client)")
    with EtcdServer(tmp_path) as server:
        ep = server.endpoint
        _etcdctl(ep, "user", "add", "root:rootpw")
        _etcdctl(ep, "user", "grant-role", "root", "root")
        _etcdctl(ep, "auth", "enable")
        admin = "root:rootpw"
        _etcdctl(ep, "role", "add", "pcocc-alice", user=admin)
        _etcdctl(ep, "role", "grant-permission", "pcocc-alice", "--prefix=true", "readwrite",
                 keys.user_prefix("alice"), user=admin)  # fmt: skip
        _etcdctl(ep, "user", "add", "alice:alicepw", user=admin)
        _etcdctl(ep, "user", "grant-role", "alice", "pcocc-alice", user=admin)

        env = {"PCOCC_ETCD_ENDPOINTS": ep, "PCOCC_ETCD_USER": "alice",
               "PCOCC_ETCD_PASSWORD": "alicepw"}  # fmt: skip
        with KvClient.from_env(env) as alice:
            with alice.watch_prefix(keys.user_prefix("alice")) as watch:
                alice.put(keys.cluster_definition("alice", 1), b"{}")
                assert watch.get(10).key == keys.cluster_definition("alice", 1)
            assert alice.get(keys.cluster_definition("alice", 1)) == b"{}"
            with pytest.raises(PermissionDenied, match="refused to let user 'alice'"):
                alice.put(keys.cluster_definition("bob", 1), b"{}")
        with pytest.raises(PermissionDenied, match="log in as alice"):
            KvClient(ep, user="alice", password="wrong")


def test_refreshing_an_expired_lease_is_not_found(kv, cluster):
    from pcocc.errors import NotFound

    with kv.lease(60, keepalive=False) as lease:
        kv.put(keys.vm_state(*cluster, 0), b"up", lease=lease)
        kv._etcd.revoke_lease(lease.id)  # as if it had expired
        with pytest.raises(NotFound, match="expired"):
            lease.refresh()
    assert kv.get(keys.vm_state(*cluster, 0)) is None


def test_first_answering_endpoint_is_used(etcd_server, cluster):
    dead = f"http://127.0.0.1:{free_port()}"
    with KvClient(f"{dead},{etcd_server.endpoint}", timeout_s=2) as client:
        assert client.endpoint == etcd_server.endpoint
        client.put(keys.cluster_definition(*cluster), b"x")
        assert client.get(keys.cluster_definition(*cluster)) == b"x"
    with pytest.raises(ServiceUnavailable, match="cannot connect"):
        KvClient([dead, dead], timeout_s=2)
