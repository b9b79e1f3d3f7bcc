"""VXLAN ids, subnets and reverse NAT ports of ethernet networks, taken in etcd by
transactions (pcocc.net.netalloc), against the in-memory store."""

from __future__ import annotations

import json
import threading

import pytest

from pcocc.errors import Busy, Corrupt
from pcocc.kv import keys
from pcocc.net import ethernet, netalloc
from tests.fixtures.memkv import MemoryKv
from tests.fixtures.threads import at_once

NET = ethernet.from_config("eth", {"cidr": "10.9.0.0/16", "job-prefix": 24}, 0)
#: two subnets only
SMALL = ethernet.from_config("tiny", {"cidr": "10.10.0.0/24", "job-prefix": 25}, 1)


class RacingKv(MemoryKv):
    """Allocators that read the store, then all try their transaction at the same instant
    (the first ``parties`` creates wait for each other), as on two nodes at once."""

    def __init__(self, parties: int):
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=10)
        self.waited = 0

    def create(self, key, value, *, also=None):
        if self.waited < self.barrier.parties:
            self.waited += 1
            self.barrier.wait()
        return super().create(key, value, also=also)


def test_two_jobs_that_prefer_the_same_subnet_at_the_same_instant_get_different_ones():
    kv = RacingKv(2)
    # jobs 7 and 7 + 256 both try subnet 7 first (job id modulo the 256 subnets)
    a, b = at_once([lambda: netalloc.job_network(kv, 7, NET),
                    lambda: netalloc.job_network(kv, 7 + 256, NET)])
    assert a.cidr != b.cidr and a.vni != b.vni
    assert {a.cidr, b.cidr} == {"10.9.7.0/24", "10.9.8.0/24"}
    assert kv.get(keys.net_subnet("eth", a.network.network_address.exploded)) in ("7", "263")


def test_two_jobs_racing_for_one_vni_get_different_ones():
    kv = RacingKv(2)
    # ids VNI_COUNT apart give the same first VNI: the loser takes the next free one
    job_b = 5 + ethernet.VNI_COUNT
    assert ethernet.vni(5, 0) == ethernet.vni(job_b, 0)
    a, b = at_once([lambda: netalloc.job_network(kv, 5, NET),
                    lambda: netalloc.job_network(kv, job_b, NET)])
    assert a.vni != b.vni


def test_the_nodes_of_one_job_agree_on_its_subnet_and_vni():
    kv = RacingKv(3)
    calls = [lambda: netalloc.job_network(kv, 12, NET)] * 3
    nets = at_once(calls)
    assert len({(n.cidr, n.vni) for n in nets}) == 1
    assert len(kv.get_prefix(keys.net_vnis_prefix())) == 1


def test_exhausted_pool_is_a_clear_error_naming_the_network():
    kv = MemoryKv()
    netalloc.job_network(kv, 1, SMALL)
    netalloc.job_network(kv, 2, SMALL)
    with pytest.raises(Busy, match=r"network 'tiny': all 2 subnets /25 of 10.10.0.0/24 are"
                                   r" held by other jobs") as err:
        netalloc.job_network(kv, 3, SMALL)
    assert "job-prefix" in err.value.hint
    assert netalloc.held(kv, 3) == []  # nothing taken by the refused job


def test_release_frees_everything_once_the_last_node_of_the_job_leaves():
    kv = MemoryKv()
    for node in ("n1", "n2"):
        netalloc.join(kv, 1, node)
        netalloc.job_network(kv, 1, SMALL)
        netalloc.take_ports(kv, 1, node, 20000, 20009, 2)
    netalloc.job_network(kv, 2, SMALL)
    with pytest.raises(Busy):
        netalloc.job_network(kv, 3, SMALL)
    netalloc.release(kv, 1, "n1")
    # n2 still runs the job: its subnet and VNI stay, n1's ports are free
    assert keys.net_job_network(1, "tiny") in netalloc.held(kv, 1)
    assert not any("/n1/" in k for k in netalloc.held(kv, 1))
    netalloc.release(kv, 1, "n2")
    assert netalloc.held(kv, 1) == []
    assert netalloc.job_network(kv, 3, SMALL).cidr == "10.10.0.128/25"  # job 1's
    netalloc.release(kv, 1, "n2")  # again: nothing to do, nothing fails
    assert netalloc.held(kv, 2) != []  # another job's keys are untouched


def test_release_leaves_a_value_another_job_holds():
    kv = MemoryKv()
    netalloc.job_network(kv, 4, NET)
    key = keys.net_vni(ethernet.vni(4, 0))
    kv.put(key, "99")  # say an admin gave it to job 99 meanwhile
    netalloc.release(kv, 4, "n1")
    assert kv.get(key) == "99"


def test_ports_of_two_jobs_on_a_node_differ_and_exhaustion_keeps_none():
    kv = MemoryKv()
    assert netalloc.take_ports(kv, 1, "n1", 20000, 20003, 2) == [20000, 20001]
    assert netalloc.take_ports(kv, 2, "n1", 20000, 20003, 1,
                               usable=lambda p: p != 20002) == [20003]
    assert netalloc.take_ports(kv, 3, "n2", 20000, 20003, 1) == [20000]  # per node
    with pytest.raises(Busy, match="2 host ports needed on n1, only 1 free in 20000-20003"):
        netalloc.take_ports(kv, 4, "n1", 20000, 20003, 2)
    assert netalloc.held(kv, 4) == []
    netalloc.release(kv, 1, "n1")
    assert netalloc.take_ports(kv, 4, "n1", 20000, 20003, 2) == [20000, 20001]


@pytest.mark.parametrize("value, why", [
    ("not json", "not a job record"),
    (json.dumps({"vni": 5, "subnet": "10.9.3.0/24", "x": 1}), "exactly 'vni' and 'subnet'"),
    (json.dumps({"vni": 0, "subnet": "10.9.3.0/24"}), "VNI 0 out of range"),
    (json.dumps({"vni": True, "subnet": "10.9.3.0/24"}), "out of range"),
    (json.dumps({"vni": 5, "subnet": "192.168.0.0/24"}), "is not a /24 of 10.9.0.0/16"),
    (json.dumps({"vni": 5, "subnet": "10.9.3.0/25"}), "is not a /24"),
    (json.dumps({"vni": 5, "subnet": "10.9.3.1/24"}), "host bits set"),
    (json.dumps({"vni": 5, "subnet": "10.9.3.0/24\nx"}), ""),
    (json.dumps([5]), "exactly"),
])
def test_hostile_job_records_are_refused_with_the_key_named(value, why):
    kv = MemoryKv()
    kv.put(keys.net_job_network(8, "eth"), value)
    with pytest.raises(Corrupt, match=f"etcd key /pcocc/net/jobs/8/networks/eth: .*{why}"):
        netalloc.job_network(kv, 8, NET)


def test_junk_under_an_allocation_prefix_does_not_stop_allocation():
    kv = MemoryKv()
    kv.put(keys.net_vnis_prefix() + "../x", "1")
    kv.put(keys.node_allocations_prefix("n1", "rnat-port") + "0020000", "1")
    assert netalloc.job_network(kv, 3, NET).vni == ethernet.vni(3, 0)
    assert netalloc.take_ports(kv, 3, "n1", 20000, 20000, 1) == [20000]
