"""The etcd key layout: builders and parsers agree, and bad segments are refused."""

from __future__ import annotations

import pytest

from pcocc.errors import Corrupt, UsageError
from pcocc.kv import keys


def test_layout_matches_the_design():
    assert keys.cluster_definition("alice", 42) == "/pcocc/users/alice/clusters/42/definition"
    assert keys.vm_state("alice", "42", 3) == "/pcocc/users/alice/clusters/42/vms/3/state"
    assert keys.rnat("alice", 42, 0, 2222) == "/pcocc/users/alice/clusters/42/rnat/0/2222"
    assert keys.node_allocation("n1", "ports", 5000) == "/pcocc/nodes/n1/ports/5000"


def test_prefixes_end_with_slash_so_clusters_do_not_overlap():
    p1 = keys.cluster_prefix("alice", 1)
    assert p1.endswith("/")
    assert not keys.cluster_definition("alice", 12).startswith(p1)
    assert keys.cluster_definition("alice", 1).startswith(p1)
    assert keys.vm_state("alice", 1, 0).startswith(keys.vms_prefix("alice", 1))
    assert keys.rnat("alice", 1, 2, 80).startswith(keys.rnat_prefix("alice", 1, 2))
    assert keys.rnat_prefix("alice", 1, 2).startswith(keys.rnat_prefix("alice", 1))
    assert keys.cluster_prefix("alice", 1).startswith(keys.user_prefix("alice"))
    assert keys.net_port("alice", 1, "n", 0).startswith(keys.net_ports_prefix("alice", 1, "n"))
    assert not keys.net_switch("alice", 1, "n2").startswith(keys.net_prefix("alice", 1, "n"))


@pytest.mark.parametrize(
    "key",
    [
        keys.cluster_definition("bob", "7"),
        keys.vm_state("bob", "7", 11),
        keys.rnat("bob", "7", 11, 65535),
        keys.net_switch("bob", "7", "cluster"),
        keys.net_port("bob", "7", "cluster", 11),
    ],
)
def test_parse_reads_back_what_was_built(key):
    parsed = keys.parse_cluster_key(key)
    assert (parsed.user, parsed.batchid) == ("bob", "7")
    rebuilt = {
        "definition": lambda: keys.cluster_definition(parsed.user, parsed.batchid),
        "vm_state": lambda: keys.vm_state(parsed.user, parsed.batchid, parsed.rank),
        "rnat": lambda: keys.rnat(parsed.user, parsed.batchid, parsed.rank, parsed.port),
        "net_switch": lambda: keys.net_switch(parsed.user, parsed.batchid, parsed.net),
        "net_port": lambda: keys.net_port(parsed.user, parsed.batchid, parsed.net, parsed.rank),
    }[parsed.kind]()
    assert rebuilt == key
    assert keys.parse_cluster_key(key.encode()) == parsed


def test_parse_vm_state_gives_rank():
    assert keys.parse_cluster_key(keys.vm_state("u", "9", 5)).rank == 5


def test_parse_node_key():
    parsed = keys.parse_node_key(keys.node_allocation("host-a", "vlan-ids", 12))
    assert parsed == keys.NodeKey("host-a", "vlan-ids", "12")
    assert keys.last_segment(keys.node_allocation("h", "ports", 80).encode()) == "80"


@pytest.mark.parametrize(
    "key",
    [
        "/pcocc/users/u/clusters/1/other",
        "/pcocc/users/u/clusters/1/vms/x/state",
        "/pcocc/users/u/jobs/1/definition",
        "/elsewhere/users/u/clusters/1/definition",
        "/pcocc/users/u/clusters/1/rnat/0",
    ],
)
def test_parse_refuses_foreign_keys(key):
    with pytest.raises(Corrupt, match="unexpected etcd key"):
        keys.parse_cluster_key(key)


def test_parse_node_key_refuses_cluster_keys():
    with pytest.raises(Corrupt):
        keys.parse_node_key(keys.cluster_definition("u", 1))


@pytest.mark.parametrize("user", ["", "a/b", "..", "."])
def test_bad_segments_are_refused(user):
    with pytest.raises(UsageError, match="user name"):
        keys.cluster_definition(user, 1)


@pytest.mark.parametrize("rank", [-1, "1", True, 1.0])
def test_bad_ranks_are_refused(rank):
    with pytest.raises(UsageError, match="rank"):
        keys.vm_state("u", 1, rank)


@pytest.mark.parametrize("port", [0, 65536, "80"])
def test_bad_ports_are_refused(port):
    with pytest.raises(UsageError, match="port"):
        keys.rnat("u", 1, 0, port)
