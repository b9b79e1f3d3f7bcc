"""Networks of a VM: resolving resource sets' network names, planning NICs per type."""

from __future__ import annotations

import pytest

from pcocc.cluster.definition import build_definition
from pcocc.errors import ConfigError
from pcocc.net import resolve
from pcocc.net.resolve import plan_networks, resolve_networks
from pcocc.net.user import UserNet, hostfwd_rules

NETWORKS = {
    "nat": {"type": "user", "cidr": "10.0.3.0/24", "ssh-forward": True, "forwards": [80, 8888]},
    "quiet": {"type": "user", "ssh-forward": False},
    "second": {"type": "user", "cidr": "10.0.4.0/24", "forwards": [9000]},
    "cluster": {"type": "ethernet", "cidr": "10.252.0.0/16"},
    "switch": {"type": "private"},
}


def test_resolve_keeps_order_and_names():
    nets = resolve_networks("tpl", "rs", ["quiet", "nat"], NETWORKS)
    assert [n["name"] for n in nets] == ["quiet", "nat"]
    assert nets[1] == {**NETWORKS["nat"], "name": "nat"}


def test_resolve_refuses_unknown_names_and_types():
    with pytest.raises(ConfigError, match="network 'nope' of resource set 'rs'.* is not defined"):
        resolve_networks("tpl", "rs", ["nope"], NETWORKS)
    with pytest.raises(ConfigError, match="network 'odd' .* has unknown type 'vde'"):
        resolve_networks("tpl", "rs", ["odd"], {"odd": {"type": "vde"}})


def test_private_type_passes_resolution_and_is_skipped_by_the_planner():
    nets = resolve_networks("tpl", "rs", ["switch", "nat"], NETWORKS)
    plan = plan_networks(nets)
    assert [n.network for n in plan.user_nets] == ["nat"]
    assert plan.user_nets[0].id == "net1"  # ids follow the position among all networks


def test_no_networks_gives_the_default_nic_with_ssh():
    plan = plan_networks([])
    assert plan.user_nets == [UserNet(id="net0", network="", cidr=None, forwards=(22,))]
    assert plan.has_ssh and plan.qemu_args == []


def test_only_the_first_user_network_with_ssh_forward_gets_it():
    plan = plan_networks(resolve_networks("t", "rs", ["quiet", "nat", "second"], NETWORKS))
    # forwards are private (no listener); only the ssh port listens
    assert [(n.id, n.cidr, n.forwards, n.private) for n in plan.user_nets] == [
        ("net0", None, (), ()),
        ("net1", "10.0.3.0/24", (22,), (80, 8888)),
        ("net2", "10.0.4.0/24", (), (9000,)),  # ssh-forward defaults to true, but nat has it
    ]
    assert plan.forwards == [22, 80, 8888, 9000]
    assert plan.private == [80, 8888, 9000]


def test_a_guest_port_forwarded_twice_is_refused():
    nets = [
        {"name": "a", "type": "user", "forwards": [80]},
        {"name": "b", "type": "user", "ssh-forward": False, "forwards": [80]},
    ]
    with pytest.raises(ConfigError, match="network 'b' forwards guest port 80, which another"):
        plan_networks(nets)


def test_a_new_type_only_needs_a_builder(monkeypatch):
    def build_private(name, settings, index, plan):
        netdev = f"net{index}"
        plan.qemu_args += ["-netdev", f"dgram,id={netdev}", "-device", f"e1000,netdev={netdev}"]

    monkeypatch.setitem(resolve.BUILDERS, "private", build_private)
    plan = plan_networks(resolve_networks("t", "rs", ["nat", "switch"], NETWORKS))
    assert plan.qemu_args == ["-netdev", "dgram,id=net1", "-device", "e1000,netdev=net1"]
    assert [n.id for n in plan.user_nets] == ["net0"]


def test_hostfwd_rules_use_the_address_and_skip_unknown_ports():
    net = UserNet(id="net0", forwards=(22, 80))
    assert hostfwd_rules(net, "10.1.2.3", {22: 4022, 80: 4080}) == [
        "tcp:10.1.2.3:4022-:22",
        "tcp:10.1.2.3:4080-:80",
    ]
    assert hostfwd_rules(net, "10.1.2.3", {80: 4080}) == ["tcp:10.1.2.3:4080-:80"]


# -- in the cluster definition --------------------------------------------------------------
def _templates(networks):
    return {
        "tpl": {
            "kernel": "/k",
            "resource-set": "rs",
            "resources": {"cores": 1, "networks": networks},
        }
    }


def test_definition_carries_resolved_networks():
    d = build_definition("tpl:2", _templates(["nat"]), networks=NETWORKS)
    assert [vm.networks for vm in d.vms] == [[{**NETWORKS["nat"], "name": "nat"}]] * 2
    again = type(d).from_json(d.to_json())
    assert again.vms[1].networks == d.vms[1].networks


def test_definition_without_networks_keeps_the_default():
    d = build_definition("tpl:1", _templates([]), networks=NETWORKS)
    assert d.vms[0].networks == []


