"""Where a private etcd listens, and which address a node publishes its forwards on."""

from __future__ import annotations

import pytest

from pcocc.cluster.noderun import node_address
from pcocc.errors import ConfigError
from pcocc.kv.private import job_address
from pcocc.kv.server import EtcdServer


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_loopback_server_listens_on_loopback_only(tmp_path):
    server = EtcdServer(tmp_path)
    server.client_port = 4001
    argv = server._argv("etcd")
    # and on a unix socket in its directory, for its own health checks and set-up
    assert _flag(argv, "--listen-client-urls") == "http://127.0.0.1:4001,unix://client.sock:0"
    assert server.endpoints == ["http://127.0.0.1:4001"]


def test_authenticated_server_is_set_up_on_its_unix_socket_alone(tmp_path):
    """The TCP listeners come only once authentication is on (restart on the same data)."""
    server = EtcdServer(tmp_path, auth=True)
    server.client_port = 4001
    setup, serve = server._argv("etcd", tcp=False), server._argv("etcd", new=False)
    assert _flag(setup, "--listen-client-urls") == "unix://client.sock:0"
    assert _flag(setup, "--initial-cluster-state") == "new"
    assert "http://" not in " ".join(setup)
    assert _flag(serve, "--listen-client-urls") == "http://127.0.0.1:4001,unix://client.sock:0"
    assert _flag(serve, "--initial-cluster-state") == "existing"
    assert not any("password" in arg for arg in setup + serve)


def test_server_on_an_address_listens_there_and_on_loopback(tmp_path):
    server = EtcdServer(tmp_path, address="10.5.0.1")
    server.client_port = 4001
    argv = server._argv("etcd")
    assert _flag(argv, "--listen-client-urls") == (
        "http://10.5.0.1:4001,http://127.0.0.1:4001,unix://client.sock:0"
    )
    assert _flag(argv, "--advertise-client-urls") == "http://10.5.0.1:4001"
    # no TCP peer port: the one member needs none, and no one else may reach it
    assert _flag(argv, "--listen-peer-urls") == "unix://peer.sock:0"
    assert server.endpoints == ["http://10.5.0.1:4001"]


def test_attach_reads_the_address_back(tmp_path):
    (tmp_path / "etcd.json").write_text('{"endpoints": ["http://10.5.0.1:4001"], "pid": 1}')
    server = EtcdServer.attach(tmp_path)
    assert (server.address, server.client_port) == ("10.5.0.1", 4001)


def test_job_address_single_host_and_override():
    assert job_address([], {}) == "127.0.0.1"  # local mode: no controller
    assert job_address(["127.0.0.1"], {}) == "127.0.0.1"  # dev cluster on one host
    assert job_address(["127.0.0.1"], {"PCOCC_NODE_ADDRESS": "127.0.0.2"}) == "127.0.0.2"
    with pytest.raises(ConfigError, match="PCOCC_NODE_ADDRESS='head' is not an IPv4 address"):
        job_address([], {"PCOCC_NODE_ADDRESS": "head"})


def test_node_address_follows_the_etcd_endpoints():
    assert node_address("http://127.0.0.1:2379,http://127.0.0.3:2379", {}) == "127.0.0.1"
    assert node_address("http://127.0.0.1:2379", {"PCOCC_NODE_ADDRESS": "127.0.0.2"}) == (
        "127.0.0.2"
    )
