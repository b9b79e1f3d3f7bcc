"""What the ``ethernet`` networks of a job hold in the site etcd: a VXLAN id and a subnet
per network for the whole job, host ports of reverse NAT per node.

Root's node setup (:mod:`pcocc.net.jobsetup`) takes each value by creating a key named
after it (``/pcocc/net/vni/<vni>``, ``/pcocc/net/subnet/<net>/<address>``,
``/pcocc/nodes/<node>/rnat-port/<port>``, see :mod:`pcocc.kv.keys`) holding the job id, in
a transaction that succeeds only if the key does not exist: two jobs never hold the same
value, whichever nodes set them up at the same instant. The VNI and subnet of a job's
network are created in one transaction with the job's record of them
(``/pcocc/net/jobs/<job>/networks/<net>``), which only one node of the job can create:
the others read it and use the same values. Each node of the job registers itself under
``/pcocc/net/jobs/<job>/nodes/``; cleanup releases the node's ports, and the last node of
the job to clean up also releases the VNIs and subnets. A key is released only if it still
holds the job's id (a transaction again), so a cleanup never frees another job's value.

Whatever is read back is parsed strictly: a job record that is not exactly what this
module writes is refused (:class:`~pcocc.errors.Corrupt`), and a key under an allocation
prefix that is not a value this module would create is ignored (it cannot collide with
one: the transaction compares the exact key).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any, Protocol

from pcocc.errors import Busy, Corrupt, KvConflict
from pcocc.kv import keys
from pcocc.net import ethernet
from pcocc.net.ethernet import EthernetNet

PORT_KIND = "rnat-port"
#: transactions lost to concurrent allocators before giving up
ATTEMPTS = 50


class AllocKv(Protocol):
    """What allocation needs of the etcd client (:class:`pcocc.kv.client.KvClient`)."""

    def get(self, key: str) -> bytes | str | None: ...
    def get_prefix(self, prefix: str) -> Mapping[str, bytes | str]: ...
    def create(self, key: str, value: str, *, also: Mapping[str, str] | None = None) -> bool: ...
    def delete_if(self, key: str, value: str) -> bool: ...


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _owner(job: int) -> str:
    return str(job)


def _subnet(net: EthernetNet, index: int) -> ipaddress.IPv4Network:
    pool = ipaddress.IPv4Network(net.pool or net.cidr)
    size = 1 << (32 - net.job_prefix)
    return ipaddress.IPv4Network((int(pool.network_address) + index * size, net.job_prefix))


def _subnet_count(net: EthernetNet) -> int:
    return 1 << (net.job_prefix - ipaddress.IPv4Network(net.pool or net.cidr).prefixlen)


def _taken(kv: AllocKv, prefix: str, canonical: Callable[[str], bool]) -> set[str]:
    """The values held under ``prefix`` (keys whose last segment is not canonical are
    ignored: no allocation ever creates them)."""
    found = set()
    for key in kv.get_prefix(prefix):
        item = key[len(prefix):] if key.startswith(prefix) else ""
        if canonical(item):
            found.add(item)
    return found


def _first_free(start: int, count: int, taken: set[str], name: Callable[[int], str]) -> int | None:
    """The first index from ``start`` (wrapping around) whose name is not taken."""
    for step in range(min(count, len(taken) + 1)):
        index = (start + step) % count
        if name(index) not in taken:
            return index
    return None


def parse_record(key: str, value: bytes | str, net: EthernetNet) -> tuple[int, str]:
    """(vni, subnet) of a job record of ``net``; anything else is refused.

    :raise Corrupt: not a record this module writes for that network
    """
    try:
        data = json.loads(_text(value))
        if not isinstance(data, dict) or set(data) != {"vni", "subnet"}:
            raise ValueError("expected exactly 'vni' and 'subnet'")
        vni, subnet = data["vni"], data["subnet"]
        if type(vni) is not int or not 0 < vni <= ethernet.VNI_COUNT:
            raise ValueError(f"VNI {vni!r} out of range")
        parsed = ipaddress.IPv4Network(subnet) if isinstance(subnet, str) else None
        pool = ipaddress.IPv4Network(net.pool or net.cidr)
        if parsed is None or str(parsed) != subnet or parsed.prefixlen != net.job_prefix \
                or not parsed.subnet_of(pool):
            raise ValueError(f"subnet {subnet!r} is not a /{net.job_prefix} of {pool}")
    except ValueError as err:
        raise Corrupt(f"etcd key {key}: not a job record of network '{net.name}' ({err})",
                      hint="an admin removes the key (etcdctl del) and the job's"
                           " allocations, then retries") from None
    return vni, subnet


def join(kv: AllocKv, job: int, node: str) -> None:
    """Register ``node`` as a node of the job that holds allocations (see :func:`release`)."""
    kv.create(keys.net_job_node(job, node), _owner(job))


def job_network(kv: AllocKv, job: int, net: EthernetNet) -> EthernetNet:
    """``net`` with the job's subnet (``cidr``) and VNI, taken now or by another node of
    the job before.

    :raise Busy: every subnet of the network's pool (or every VNI) is held by other jobs
    :raise Corrupt: the job's record is not what this module writes
    """
    pool = ipaddress.IPv4Network(net.pool or net.cidr)
    record = keys.net_job_network(job, net.name)
    count = _subnet_count(net)
    for _ in range(ATTEMPTS):
        raw = kv.get(record)
        if raw is not None:
            vni, subnet = parse_record(record, raw, net)
            return replace(net, cidr=subnet, pool=str(pool), vni=vni)
        vnis = _taken(kv, keys.net_vnis_prefix(), lambda s: bool(re.fullmatch(r"[1-9][0-9]*", s)))
        subnets = _taken(kv, keys.net_subnets_prefix(net.name), lambda s: True)
        vni = _first_free(ethernet.vni(job, net.net_id) - 1, ethernet.VNI_COUNT, vnis,
                          lambda i: str(i + 1))
        index = _first_free(job % count, count, subnets,
                            lambda i: str(_subnet(net, i).network_address))
        if index is None or vni is None:
            what = f"all {count} subnets /{net.job_prefix} of {pool}" if index is None \
                else f"all {ethernet.VNI_COUNT} VXLAN ids"
            raise Busy(f"network '{net.name}': {what} are held by other jobs",
                       hint="wait for jobs to end, or give the network a larger cidr or a"
                            " longer job-prefix in networks.yaml")
        subnet = _subnet(net, index)
        text = json.dumps({"vni": vni + 1, "subnet": str(subnet)}, sort_keys=True)
        if kv.create(record, text, also={
                keys.net_vni(vni + 1): _owner(job),
                keys.net_subnet(net.name, str(subnet.network_address)): _owner(job)}):
            return replace(net, cidr=str(subnet), pool=str(pool), vni=vni + 1)
    raise KvConflict(f"network '{net.name}': lost the race for a subnet {ATTEMPTS} times",
                     hint="retry the job")


def take_ports(kv: AllocKv, job: int, node: str, low: int, high: int, count: int,
               usable: Callable[[int], bool] = lambda port: True) -> list[int]:
    """``count`` ports of [low, high] that no job holds on ``node`` and are ``usable``
    (nothing listens there), each taken by its own transaction.

    :raise Busy: fewer than ``count`` left (none is kept then)
    """
    prefix = keys.node_allocations_prefix(node, PORT_KIND)
    taken = _taken(kv, prefix, lambda s: bool(re.fullmatch(r"[1-9][0-9]{0,4}", s)))
    got: list[int] = []
    for port in range(low, high + 1):
        if len(got) == count:
            break
        if str(port) not in taken and usable(port) \
                and kv.create(keys.node_allocation(node, PORT_KIND, port), _owner(job)):
            got.append(port)
    if len(got) < count:
        _release(kv, [keys.node_allocation(node, PORT_KIND, p) for p in got], job)
        raise Busy(f"{count} host ports needed on {node}, only {len(got)} free in {low}-{high}",
                   hint="widen reverse-nat.host-ports in networks.yaml")
    return got


def _release(kv: AllocKv, names: Iterable[str], job: int) -> None:
    for key in names:
        kv.delete_if(key, _owner(job))


def _owned(kv: AllocKv, prefix: str, job: int) -> list[str]:
    return [k for k, v in kv.get_prefix(prefix).items() if _text(v) == _owner(job)]


def release(kv: AllocKv, job: int, node: str, whole_job: bool = True) -> None:
    """Release what the job holds on ``node``; with ``whole_job``, when no other node of
    the job remains registered, also its VNIs and subnets. Idempotent."""
    _release(kv, _owned(kv, keys.node_allocations_prefix(node, PORT_KIND), job), job)
    kv.delete_if(keys.net_job_node(job, node), _owner(job))
    if not whole_job or kv.get_prefix(keys.net_job_nodes_prefix(job)):
        return
    # found by their value, not through the job's records (which might be damaged)
    _release(kv, _owned(kv, keys.net_vnis_prefix(), job), job)
    _release(kv, _owned(kv, keys.net_subnets_prefix(), job), job)
    for key, value in kv.get_prefix(f"{keys.net_job_prefix(job)}networks/").items():
        kv.delete_if(key, value)


def held(kv: AllocKv, job: int) -> list[str]:
    """Every key that the job holds (for checks: none after its cleanup)."""
    found = list(kv.get_prefix(keys.net_job_prefix(job)))
    for prefix in (keys.net_vnis_prefix(), keys.net_subnets_prefix(), f"{keys.ROOT}nodes/"):
        found += _owned(kv, prefix, job)
    return sorted(found)


def site_kv(etcd: Any) -> Any:
    """A client of the site etcd of ``etcd`` (batch.yaml's section), logged in as its
    ``user`` with its ``password-file``; None when batch.yaml has no external etcd."""
    from pcocc.kv.connect import configured_endpoints
    from pcocc.kv.endpoints import ENDPOINTS_VAR

    endpoints = configured_endpoints(etcd, {})
    if not endpoints:
        return None
    from pcocc.kv.client import KvClient

    return KvClient.from_env({ENDPOINTS_VAR: endpoints}, etcd=etcd, label="site etcd")
