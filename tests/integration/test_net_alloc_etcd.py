"""Allocations of ethernet networks (pcocc.net.netalloc) against a real etcd: the
transactions of several clients (nodes) at once, and release."""

from __future__ import annotations

import random

import pytest

from pcocc.errors import Busy
from pcocc.kv import keys
from pcocc.kv.client import KvClient
from pcocc.net import ethernet, netalloc
from tests.fixtures.threads import at_once

NET = ethernet.from_config("eth", {"cidr": "10.77.0.0/16", "job-prefix": 24}, 0)


@pytest.fixture
def clients(etcd_server):
    """Six connections, as from six nodes."""
    opened = [KvClient(etcd_server.endpoints) for _ in range(6)]
    yield opened
    for client in opened:
        client.close()


def test_two_jobs_set_up_at_once_on_three_nodes_each_hold_different_values(clients):
    # job ids that try the same subnet first (their id modulo the 256 subnets)
    a = 256 * random.randrange(1000, 100000) + 9
    b = a + 256

    def node(kv, job, name):
        netalloc.join(kv, job, name)
        net = netalloc.job_network(kv, job, NET)
        return net.cidr, net.vni, netalloc.take_ports(kv, job, name, 23000, 23010, 2)

    out = at_once([lambda kv=kv, job=job, n=n: node(kv, job, n)
                    for kv, (job, n) in zip(clients, [(a, "n1"), (a, "n2"), (a, "n3"),
                                                      (b, "n1"), (b, "n2"), (b, "n3")])])
    job_a, job_b = {o[:2] for o in out[:3]}, {o[:2] for o in out[3:]}
    assert len(job_a) == 1 and len(job_b) == 1  # the nodes of a job agree
    (cidr_a, vni_a), (cidr_b, vni_b) = job_a.pop(), job_b.pop()
    assert cidr_a != cidr_b and vni_a != vni_b
    for i, name in enumerate(("n1", "n2", "n3")):  # on each node, ports differ
        assert not set(out[i][2]) & set(out[3 + i][2])
    kv = clients[0]
    assert kv.get(keys.net_subnet("eth", cidr_a.split("/")[0])) == str(a).encode()
    for name in ("n1", "n2", "n3"):
        netalloc.release(kv, a, name)
        netalloc.release(kv, b, name)
    assert netalloc.held(kv, a) == [] and netalloc.held(kv, b) == []
    assert kv.get_prefix(keys.net_job_prefix(a)) == {}
    netalloc.release(kv, a, "n1")  # idempotent


def test_an_exhausted_pool_is_refused_and_a_release_makes_room(clients):
    kv = clients[0]
    base = random.randrange(1, 200)
    small = ethernet.from_config(f"tiny{base}", {"cidr": f"10.78.{base}.0/24",
                                                 "job-prefix": 25}, 1)
    jobs = [1000 * base + i for i in range(3)]
    netalloc.job_network(kv, jobs[0], small)
    netalloc.job_network(kv, jobs[1], small)
    with pytest.raises(Busy, match=f"network 'tiny{base}': all 2 subnets"):
        netalloc.job_network(kv, jobs[2], small)
    netalloc.release(kv, jobs[0], "n1")
    assert netalloc.job_network(kv, jobs[2], small).cidr in (f"10.78.{base}.0/25",
                                                              f"10.78.{base}.128/25")
    for job in jobs:
        netalloc.release(kv, job, "n1")
        assert netalloc.held(kv, job) == []
