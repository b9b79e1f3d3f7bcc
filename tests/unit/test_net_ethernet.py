"""Ethernet networks: settings, names, identities and the texts for dnsmasq and nft; the
resolution that marks a job for the Slurm plugin, and the QEMU arguments of the VM's TAP."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pcocc.batch import slurm
from pcocc.batch.base import JobSpec
from pcocc.cluster.batchadapter import BatchAdapter
from pcocc.cluster.definition import build_definition
from pcocc.cluster.jobs import _request
from pcocc.errors import ConfigError
from pcocc.net import ethernet
from pcocc.net.resolve import VmContext, plan_networks, resolve_networks

NETWORKS = {
    "nat": {"type": "user"},
    "fast": {"type": "ethernet", "cidr": "10.200.0.0/24", "allow-outbound": True,
             "reverse-nat": {"vm-port": 22, "host-ports": "20000-20009"}, "domain": "job.local"},
    "alpha": {"type": "ethernet", "cidr": "10.201.0.0/29"},
}
FAST = ethernet.from_config("fast", NETWORKS["fast"], 1)


def test_settings_and_ids():
    assert ethernet.ethernet_names(NETWORKS) == ["alpha", "fast"]
    nets = ethernet.all_from_config(NETWORKS)
    assert [(n.name, n.net_id) for n in nets] == [("alpha", 0), ("fast", 1)]
    assert FAST.reverse_nat == ethernet.ReverseNat(22, 20000, 20009)
    assert FAST.gateway == "10.200.0.1" and FAST.address(0) == "10.200.0.2"
    assert nets[0].capacity == 5
    with pytest.raises(ConfigError, match="network 'alpha' has no address for vm5: .* room"
                                          " for 5 VMs"):
        nets[0].address(5)


@pytest.mark.parametrize("settings, message", [
    ({"cidr": "10.0.0.0/30"}, "job-prefix /30 does not fit"),
    ({"cidr": "10.0.0.1/24"}, "cidr: 10.0.0.1/24 has host bits set"),
    ({"cidr": "10.0.0.0/24", "reverse-nat": {"host-ports": "99-100"}}, "reverse-nat.host-ports"),
    ({"cidr": "10.0.0.0/24", "reverse-nat": {"host-ports": "3000-2000"}}, "reverse-nat"),
    ({"cidr": "10.0.0.0/24", "domain": "Bad_Domain"}, "domain 'Bad_Domain' is not a DNS"),
    ({"cidr": "10.0.0.0/24", "host-interface": "eth0;rm"}, "host-interface"),
])
def test_bad_settings_name_the_network(settings, message):
    with pytest.raises(ConfigError, match=f"networks.yaml: network 'x': .*{message}"):
        ethernet.from_config("x", {"type": "ethernet", **settings}, 0)


def test_each_job_gets_a_subnet_of_the_pool_the_same_on_every_node():
    pool = ethernet.from_config("p", {"cidr": "10.8.0.0/16", "job-prefix": 24}, 0)
    assert pool.for_job(5).cidr == "10.8.5.0/24" == pool.for_job(5 + 256).cidr
    assert pool.for_job(5).gateway == "10.8.5.1" and pool.for_job(5).address(1) == "10.8.5.3"
    assert pool.for_job(6).cidr == "10.8.6.0/24"
    assert FAST.for_job(99).cidr == FAST.cidr  # a /24 pool: one subnet
    with pytest.raises(ConfigError, match="job-prefix /30 does not fit in cidr 10.8.0.0/16"):
        ethernet.from_config("p", {"cidr": "10.8.0.0/16", "job-prefix": 30}, 0)
    nets = resolve_networks("t", "rs", ["pool"], {"pool": {"type": "ethernet",
                                                            "cidr": "10.8.0.0/16"}})
    plan = plan_networks(nets, VmContext(job=7, rank=0))
    assert plan.ethernets[0].cidr == "10.8.7.0/24"


def test_device_names_fit_ifnamsiz_and_differ_per_job_network_and_vm():
    biggest = 0xFFFFFFF0
    names = [ethernet.bridge_name(biggest, 15), ethernet.vxlan_name(biggest, 15),
             ethernet.tap_name(biggest, 15, 999)]
    assert all(len(n) <= 15 for n in names), names
    assert ethernet.tap_name(42, 1, 0) == "pt2a10"
    assert ethernet.bridge_name(42, 1) == "pb2a1"
    assert len({ethernet.tap_name(j, n, r) for j in (42, 43) for n in (0, 1)
                for r in (0, 1)}) == 8
    with pytest.raises(ValueError):
        ethernet.tap_name(42, 0, 1000)


def test_vni_and_mac_are_the_same_on_every_node_and_distinct_per_job_and_vm():
    assert ethernet.vni(42, 1) == ethernet.vni(42, 1)
    assert len({ethernet.vni(j, n) for j in range(1, 50) for n in range(2)}) == 98
    assert 1 <= ethernet.vni(0xFFFFFFF0, 15) < 1 << 24
    macs = {ethernet.vm_mac(42, FAST, r) for r in range(10)}
    assert len(macs) == 10
    assert all(int(m.split(":")[0], 16) & 0x03 == 0x02 for m in macs)  # local, unicast


def test_dnsmasq_serves_each_vm_its_address_and_name_on_the_bridge_only():
    text = ethernet.dnsmasq_conf(42, FAST, [0, 1], "/run/x.pid")
    lines = text.splitlines()
    assert "interface=pb2a1" in lines and "bind-interfaces" in lines
    assert f"dhcp-host={ethernet.vm_mac(42, FAST, 1)},10.200.0.3,vm1" in lines
    assert "host-record=vm1,vm1.job.local,10.200.0.3" in lines
    assert "dhcp-option=option:router" not in lines  # allow-outbound: the bridge routes
    closed = ethernet.from_config("c", {"cidr": "10.9.0.0/24"}, 0)
    assert "dhcp-option=option:router" in ethernet.dnsmasq_conf(1, closed, [0], "p")


def test_nft_ruleset_nats_out_and_forwards_host_ports_to_the_vms():
    fast = replace(FAST, vni=77)
    text = ethernet.nft_ruleset(42, [fast], [(fast, 1, 20003)], [fast], uid=1234,
                                peers=["10.0.0.2", "10.0.0.3"])
    assert "table inet pcocc_job_42 {" in text
    assert "tcp dport 20003 fib daddr type local dnat ip to 10.200.0.3:22" in text
    # from the node itself, only the job's user (and root) reach the VM through its port
    assert "tcp dport 20003 fib daddr type local meta skuid { 0, 1234 } dnat ip to" \
           " 10.200.0.3:22" in text
    # the job's VXLAN: from its other nodes only, and from no user's socket
    assert "udp dport 4789 @th,96,24 77 ip saddr != { 10.0.0.2, 10.0.0.3 } drop" in text
    assert "udp dport 4789 @th,96,24 77 meta skuid != 0 drop" in text
    assert "ip saddr 10.200.0.0/24 ip daddr != 10.200.0.0/24 masquerade" in text
    assert 'oifname "pv2a1" arp saddr ip 10.200.0.1 drop' in text  # gateway stays local
    closed = ethernet.from_config("c", {"cidr": "10.9.0.0/24"}, 0)
    text = ethernet.nft_ruleset(7, [closed], [], [], uid=1234)
    assert "masquerade" not in text and "table bridge" not in text
    assert 'iifname "pb70" drop' in text


def test_vm_opens_its_tap_with_vhost_when_usable():
    args = ethernet.tap_netdev_args(42, FAST, 1, 2, "virtio-net-pci", vhost=True)
    assert args == ["-netdev", "tap,id=eth2,ifname=pt2a11,script=no,downscript=no,vhost=on",
                    "-device", f"virtio-net-pci,netdev=eth2,mac={ethernet.vm_mac(42, FAST, 1)}"]
    assert "vhost" not in ethernet.tap_netdev_args(42, FAST, 1, 0, "e1000", vhost=False)[1]


def test_resolved_ethernet_carries_its_net_id_and_builds_the_tap():
    nets = resolve_networks("tpl", "rs", ["nat", "fast"], NETWORKS)
    assert nets[1]["net-id"] == 1
    assert plan_networks(nets).qemu_args == []  # before allocating: checked only
    plan = plan_networks(nets, VmContext(job=42, rank=1))
    assert plan.qemu_args[1].startswith("tap,id=eth1,ifname=pt2a11,")
    assert [n.network for n in plan.user_nets] == ["nat"]


def _templates(networks):
    return {"tpl": {"image": "img", "resource-set": "rs",
                    "resources": {"networks": networks}}}


def test_a_cluster_with_an_ethernet_network_asks_slurm_for_the_plugin():
    with_eth = build_definition("tpl:2", _templates(["fast"]), networks=NETWORKS)
    without = build_definition("tpl:2", _templates(["nat"]), networks=NETWORKS)
    assert with_eth.node_setup and not without.node_setup
    adapter = BatchAdapter(type("M", (), {"name": "slurm"})())
    spec = adapter._spec(_request(with_eth, []))
    assert spec.node_setup
    assert slurm.SETUP_OPTION in slurm.sbatch_argv(spec)
    assert slurm.SETUP_OPTION not in slurm.sbatch_argv(adapter._spec(_request(without, [])))
    assert not JobSpec(ntasks=1).node_setup


def test_stored_definition_with_an_ethernet_network_passes_the_node_checks():
    """The node process re-checks the definition against the schemas: the net-id that
    resolution adds is accepted when it is one, refused otherwise."""
    import json

    from pcocc.cluster.stored import ClusterDefinition, check_settings
    from pcocc.errors import Corrupt

    d = build_definition("tpl:2", _templates(["fast"]), networks=NETWORKS)
    stored = ClusterDefinition.from_json(d.to_json())
    check_settings(stored)
    for bad in (16, "1", True, None):
        data = json.loads(d.to_json())
        data["vms"][0]["networks"][0]["net-id"] = bad
        with pytest.raises(Corrupt, match="net-id"):
            check_settings(ClusterDefinition.from_json(json.dumps(data)))


def test_a_cluster_larger_than_a_jobs_subnet_is_refused_before_allocating():
    build_definition("tpl:5", _templates(["alpha"]), networks=NETWORKS)
    with pytest.raises(ConfigError, match="network 'alpha' has no address for vm5"):
        build_definition("tpl:6", _templates(["alpha"]), networks=NETWORKS)


def test_nat_needs_the_node_to_forward_ipv4(tmp_path):
    from pcocc.net import ethsetup

    flag = tmp_path / "ip_forward"
    flag.write_text("0\n")
    closed = ethernet.from_config("c", {"cidr": "10.9.0.0/24"}, 0)
    ethsetup.check_forwarding([closed], str(flag))  # no NAT: no need
    with pytest.raises(ConfigError, match="network 'fast' .* net.ipv4.ip_forward is 0"):
        ethsetup.check_forwarding([closed, FAST], str(flag))
    flag.write_text("1\n")
    ethsetup.check_forwarding([FAST], str(flag))


def test_answers_of_reverse_nat_and_outbound_connections_pass_the_bridge_drop():
    """The VM's answer to a reverse NAT connection enters from the bridge: the table lets
    established connections through before it drops what enters from the bridge."""
    closed = ethernet.from_config("c", {"cidr": "10.9.0.0/24",
                                        "reverse-nat": {"host-ports": "20000-20001"}}, 0)
    text = ethernet.nft_ruleset(7, [closed], [(closed, 0, 20000)], [], uid=1234)
    fwd = text.split("chain job_fwd")[1]
    assert fwd.index("ct state established,related accept") < fwd.index('iifname "pb70" drop')
