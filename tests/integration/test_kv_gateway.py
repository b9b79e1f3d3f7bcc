"""The read-only JSON-gateway client against a real etcd v3 server."""

from __future__ import annotations

import shutil
import uuid

import pytest

from pcocc import proc
from pcocc.daemon import free_port
from pcocc.errors import PermissionDenied, ServiceUnavailable
from pcocc.kv import keys
from pcocc.kv.client import KvClient
from pcocc.kv.gateway import GatewayReader, prefix_end


def test_prefix_end_covers_exactly_the_prefix():
    assert prefix_end("/a/b/") == "/a/b0"
    assert "/a/b/zzz" < prefix_end("/a/b/") <= "/a/b0"


def test_reads_what_the_grpc_client_wrote(etcd_server):
    user = f"u{uuid.uuid4().hex[:8]}"
    with KvClient(etcd_server.endpoints) as kv:
        kv.put(keys.cluster_definition(user, 7), b'{"x": 1}')
        kv.put(keys.vm_state(user, 7, 0), "état".encode())
        kv.put(keys.cluster_definition(user + "x", 7), b"other user")
    with GatewayReader(etcd_server.endpoints) as reader:
        assert reader.get(keys.cluster_definition(user, 7)) == '{"x": 1}'
        assert reader.get(keys.cluster_definition(user, 8)) is None
        found = reader.get_prefix(keys.user_prefix(user))
    assert found == {
        keys.cluster_definition(user, 7): '{"x": 1}',
        keys.vm_state(user, 7, 0): "état",
    }


def test_a_dead_endpoint_is_skipped_and_all_dead_is_a_clear_error(etcd_server):
    dead = f"http://127.0.0.1:{free_port()}"
    with GatewayReader(f"{dead},{etcd_server.endpoint}", timeout_s=2) as reader:
        assert reader.get_prefix("/pcocc/none/") == {}
        assert reader.endpoint == etcd_server.endpoint
    with pytest.raises(ServiceUnavailable, match=f"etcd at {dead}"):
        GatewayReader(dead, timeout_s=2).get("/x")


def test_auth_logs_in_and_roles_are_enforced(tmp_path):
    from pcocc.kv.server import EtcdServer

    if shutil.which("etcdctl") is None:
        pytest.skip("etcdctl is not installed (Debian package etcd-client)")
    with EtcdServer(tmp_path) as server:
        ep = server.endpoint

        def ctl(*args: str, login: str | None = "root:rootpw") -> None:
            user = [f"--user={login}"] if login else []
            proc.run(["etcdctl", f"--endpoints={ep}", *user, *args], env={"ETCDCTL_API": "3"})

        ctl("put", keys.cluster_definition("bob", 1), "bob's", login=None)
        ctl("user", "add", "root:rootpw", login=None)
        ctl("user", "grant-role", "root", "root", login=None)
        ctl("auth", "enable", login=None)
        ctl("role", "add", "pcocc-alice")
        ctl("role", "grant-permission", "pcocc-alice", "--prefix=true", "readwrite",
            keys.user_prefix("alice"))  # fmt: skip
        ctl("user", "add", "alice:alicepw")
        ctl("user", "grant-role", "alice", "pcocc-alice")
        ctl("put", keys.cluster_definition("alice", 1), "alice's")

        alice = GatewayReader(ep, user="alice", password="alicepw")
        assert alice.get_prefix(keys.user_prefix("alice")) == {
            keys.cluster_definition("alice", 1): "alice's"
        }
        with pytest.raises(PermissionDenied, match="refused to let user 'alice'"):
            alice.get_prefix(keys.user_prefix("bob"))
        with pytest.raises(PermissionDenied, match="log in as alice"):
            GatewayReader(ep, user="alice", password="wrong").get("/x")
        with pytest.raises(PermissionDenied, match="anonymous"):
            GatewayReader(ep).get_prefix(keys.user_prefix("alice"))
