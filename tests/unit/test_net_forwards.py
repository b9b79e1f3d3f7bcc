"""Forwarded guest ports: which ones QEMU listens for (ssh, public-forwards), which ones get
no listener (forwards: private, reached by ``pcocc nc`` through the VM's ssh server)."""

from __future__ import annotations

import pytest

from pcocc.kv import keys
from pcocc.cluster.definition import build_definition
from pcocc.cluster.lookup import clusters_of
from tests.fixtures.memkv import MemoryKv
from tests.unit.test_cluster_lookup import fake_key
from pcocc.cluster.record import ClusterRecord
from pcocc.cluster.state import ClusterState
from pcocc.cluster.vmstate import VmRecord
from pcocc.errors import ConfigError, NotFound
from pcocc.net import user
from pcocc.net.resolve import plan_networks, resolve_networks
from pcocc.vm.qemu import VmSpec, build_argv

NAT = {"type": "user", "forwards": [8888, 9000], "public-forwards": [8080]}


def _netdevs(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]


# -- networks.yaml -> NICs ------------------------------------------------------------------
def test_forwards_are_private_and_public_forwards_listen():
    net = user.from_config("nat", NAT, 0, ssh=True)
    assert net.forwards == (22, 8080)  # what QEMU listens for
    assert net.private == (8888, 9000)  # no listener at all
    assert net.ports == (22, 8080, 8888, 9000)


def test_a_port_listed_in_both_is_public_and_ssh_always_listens():
    net = user.from_config("nat", {"forwards": [8080, 22, 7], "public-forwards": [8080]}, 1,
                           ssh=False)
    assert net.forwards == (22, 8080) and net.private == (7,)


def test_qemu_listens_only_for_ssh_and_public_forwards():
    """Private forwards never reach the QEMU command line, even with a host port known."""
    net = user.from_config("nat", {**NAT, "cidr": "10.0.3.0/24"}, 0, ssh=True)
    spec = VmSpec(name="v", host_address="192.0.2.7", ssh_host_port=4022,
                  host_ports=((8080, 4080), (8888, 4888)), user_nets=(net,))
    assert spec.forwarded_ports() == [22, 8080]
    assert _netdevs(build_argv(spec)) == [
        "user,id=net0,net=10.0.3.0/24,hostfwd=tcp:192.0.2.7:4022-:22,"
        "hostfwd=tcp:192.0.2.7:4080-:8080"
    ]
    assert user.hostfwd_rules(net, "192.0.2.7", {8888: 4888}) == []


def test_private_forwards_without_ssh_are_refused_before_allocation():
    networks = {"web": {"type": "user", "ssh-forward": False, "forwards": [8888]}}
    with pytest.raises(ConfigError) as info:
        resolve_networks("tpl", "rs", ["web"], networks)
    assert str(info.value) == (
        "network 'web' forwards guest port 8888 privately, but the VM forwards no ssh port"
        " ('pcocc nc' reaches private forwards through the VM's ssh server)"
    )
    assert "public-forwards" in info.value.hint and "ssh-forward: true" in info.value.hint
    # public ones need no ssh
    public = {"web": {"type": "user", "ssh-forward": False, "public-forwards": [8888]}}
    assert plan_networks(resolve_networks("tpl", "rs", ["web"], public)).forwards == [8888]


def test_ssh_of_another_network_serves_private_forwards():
    networks = {"nat": {"type": "user"},
                "web": {"type": "user", "ssh-forward": False, "forwards": [8888]}}
    plan = plan_networks(resolve_networks("tpl", "rs", ["nat", "web"], networks))
    assert plan.has_ssh and plan.private == [8888]


def test_a_port_private_in_one_network_and_public_in_another_is_refused():
    networks = {"a": {"type": "user", "forwards": [80]},
                "b": {"type": "user", "ssh-forward": False, "public-forwards": [80]}}
    with pytest.raises(ConfigError, match="network 'b' forwards guest port 80, which another"):
        resolve_networks("tpl", "rs", ["a", "b"], networks)


# -- pcocc nc -------------------------------------------------------------------------------
@pytest.fixture
def view(tmp_path, monkeypatch):
    """A running one-VM cluster whose network forwards 8888 privately and 8080 publicly;
    the node published ssh and 8080 (what QEMU listens for)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PCOCC_RUN_DIR", str(tmp_path / "run"))
    templates = {"tpl": {"kernel": "/k", "resource-set": "rs",
                         "resources": {"networks": ["nat"]}}}
    definition = build_definition("tpl:1", templates, owner="bob", networks={"nat": NAT})
    kv = MemoryKv()
    rec = ClusterRecord("7", definition, ClusterState.RUNNING, "n1", 123, batch="local")
    kv.put(keys.cluster_definition("bob", "7"), rec.to_json())
    vm = VmRecord(rank=0, host="n1", status="running", node_pid=10, ssh_port=2200,
                  host_key=fake_key(0), address="192.0.2.7")
    kv.put(keys.vm_state("bob", "7", 0), vm.to_json())
    kv.put(keys.rnat("bob", "7", 0, 22), "192.0.2.7:2200")
    kv.put(keys.rnat("bob", "7", 0, 8080), "192.0.2.7:4080")
    return clusters_of(kv, "bob")[0]


def test_nc_reaches_a_private_forward_through_ssh(view, monkeypatch):
    from pcocc.cluster import access

    ran = []
    monkeypatch.setattr(access, "ensure_user_key", lambda: "ssh-ed25519 AAAA pcocc")
    monkeypatch.setattr(access, "run_interactive", lambda argv: ran.append(argv) or 3)
    assert access.nc(view, "root@vm0", 8888) == 3
    argv = ran[0]
    assert argv[:2] == ["ssh", "-F"]
    assert argv[3:] == ["-W", "127.0.0.1:8888", "root@vm0"]
    assert "Host vm0" in open(argv[2]).read()


def test_nc_to_an_unforwarded_port_lists_every_forward(view):
    from pcocc.cluster import access

    with pytest.raises(NotFound, match="port 7 of vm0 is not forwarded") as info:
        access.nc(view, "vm0", 7)
    assert info.value.hint == "forwarded ports: 22, 8080, 8888, 9000"
