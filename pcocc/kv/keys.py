"""Every etcd key name of pcocc, and the parsers that read them back.

This module is the only place that builds key names::

    /pcocc/users/<user>/clusters/<batchid>/definition          cluster definition (JSON)
    /pcocc/users/<user>/clusters/<batchid>/vms/<rank>/state    {host, status, ports, pid} (leased)
    /pcocc/users/<user>/clusters/<batchid>/rnat/<rank>/<port>  host:port for reverse NAT (leased)
    /pcocc/users/<user>/clusters/<batchid>/nets/<net>/switch   host:port of a private network's
                                                               switch (leased by the switch)
    /pcocc/users/<user>/clusters/<batchid>/nets/<net>/ports/<rank>  {host, port, mac} of the VM's
                                                               NIC on that network (leased)
    /pcocc/users/<user>/clusters/<batchid>/ckpt/request        a checkpoint asked by 'pcocc ckpt'
    /pcocc/users/<user>/clusters/<batchid>/ckpt/<rank>         the VM's answer to it
    /pcocc/nodes/<host>/<kind>/<item>                           privileged per-node allocations
                                                               (``rnat-port/<port>``: job id)
    /pcocc/net/vni/<vni>                                        job id holding a VXLAN id
    /pcocc/net/subnet/<net>/<address>                           job id holding a subnet of <net>
    /pcocc/net/jobs/<job>/networks/<net>                        {"vni", "subnet"} of the job
    /pcocc/net/jobs/<job>/nodes/<host>                          a node of the job set up

Prefixes end with ``/`` so that a prefix read or watch of cluster ``1`` never sees cluster
``12``. Segments may not contain ``/`` nor be empty, ``.`` or ``..``.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcocc.errors import Corrupt, UsageError

ROOT = "/pcocc/"


def _segment(what: str, value: object) -> str:
    text = str(value)
    if not text or text in (".", "..") or "/" in text or "\0" in text:
        raise UsageError(f"invalid {what} for an etcd key: {text!r}")
    return text


def _rank(value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"invalid VM rank for an etcd key: {value!r}")
    return str(value)


def _port(value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise UsageError(f"invalid port for an etcd key: {value!r}")
    return str(value)


# users and clusters -----------------------------------------------------------------------
def user_prefix(user: str) -> str:
    return f"{ROOT}users/{_segment('user name', user)}/"


def clusters_prefix(user: str) -> str:
    return f"{user_prefix(user)}clusters/"


def cluster_prefix(user: str, batchid: str | int) -> str:
    return f"{clusters_prefix(user)}{_segment('batch id', batchid)}/"


def cluster_definition(user: str, batchid: str | int) -> str:
    return f"{cluster_prefix(user, batchid)}definition"


def vms_prefix(user: str, batchid: str | int) -> str:
    return f"{cluster_prefix(user, batchid)}vms/"


def vm_prefix(user: str, batchid: str | int, rank: int) -> str:
    return f"{vms_prefix(user, batchid)}{_rank(rank)}/"


def vm_state(user: str, batchid: str | int, rank: int) -> str:
    return f"{vm_prefix(user, batchid, rank)}state"


def rnat_prefix(user: str, batchid: str | int, rank: int | None = None) -> str:
    base = f"{cluster_prefix(user, batchid)}rnat/"
    return base if rank is None else f"{base}{_rank(rank)}/"


def rnat(user: str, batchid: str | int, rank: int, port: int) -> str:
    return f"{rnat_prefix(user, batchid, rank)}{_port(port)}"


def net_prefix(user: str, batchid: str | int, net: str) -> str:
    """Prefix of the keys of one private network of a cluster."""
    return f"{cluster_prefix(user, batchid)}nets/{_segment('network name', net)}/"


def net_switch(user: str, batchid: str | int, net: str) -> str:
    return f"{net_prefix(user, batchid, net)}switch"


def net_ports_prefix(user: str, batchid: str | int, net: str) -> str:
    return f"{net_prefix(user, batchid, net)}ports/"


def net_port(user: str, batchid: str | int, net: str, rank: int) -> str:
    return f"{net_ports_prefix(user, batchid, net)}{_rank(rank)}"


def ckpt_prefix(user: str, batchid: str | int) -> str:
    """Prefix of the keys of the cluster's checkpoint in progress (see
    :mod:`pcocc.cluster.checkpoint`)."""
    return f"{cluster_prefix(user, batchid)}ckpt/"


def ckpt_request(user: str, batchid: str | int) -> str:
    return f"{ckpt_prefix(user, batchid)}request"


def ckpt_report(user: str, batchid: str | int, rank: int) -> str:
    return f"{ckpt_prefix(user, batchid)}{_rank(rank)}"


# nodes ------------------------------------------------------------------------------------
def node_prefix(host: str) -> str:
    return f"{ROOT}nodes/{_segment('host name', host)}/"


def node_allocations_prefix(host: str, kind: str) -> str:
    """Prefix of one kind of per-node allocation (``ports``, ``vlan-ids``, ``taps``...)."""
    return f"{node_prefix(host)}{_segment('allocation kind', kind)}/"


def node_allocation(host: str, kind: str, item: str | int) -> str:
    return f"{node_allocations_prefix(host, kind)}{_segment('allocation item', item)}"


# ethernet networks (written by root's node setup, see pcocc.net.netalloc) ---------------
def net_vnis_prefix() -> str:
    return f"{ROOT}net/vni/"


def net_vni(vni: int) -> str:
    return f"{net_vnis_prefix()}{vni:d}"


def net_subnets_prefix(net: str | None = None) -> str:
    """The subnets taken in network ``net`` (in every network: None)."""
    base = f"{ROOT}net/subnet/"
    return base if net is None else f"{base}{_segment('network name', net)}/"


def net_subnet(net: str, address: str) -> str:
    return f"{net_subnets_prefix(net)}{_segment('subnet address', address)}"


def net_job_prefix(job: int) -> str:
    return f"{ROOT}net/jobs/{job:d}/"


def net_job_network(job: int, net: str) -> str:
    return f"{net_job_prefix(job)}networks/{_segment('network name', net)}"


def net_job_nodes_prefix(job: int) -> str:
    return f"{net_job_prefix(job)}nodes/"


def net_job_node(job: int, host: str) -> str:
    return f"{net_job_nodes_prefix(job)}{_segment('host name', host)}"


# parsers ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterKey:
    """A parsed key under a cluster: ``kind`` is definition, vm_state, rnat, net_switch,
    net_port (``net`` names the network of these two), ckpt_request or ckpt_report."""

    user: str
    batchid: str
    kind: str
    rank: int | None = None
    port: int | None = None
    net: str | None = None


@dataclass(frozen=True)
class NodeKey:
    host: str
    kind: str
    item: str


def _text(key: str | bytes) -> str:
    return key.decode() if isinstance(key, bytes) else key


def _int(text: str, key: str) -> int:
    if not text.isdigit():
        raise Corrupt(f"unexpected etcd key {key!r}: {text!r} is not a number")
    return int(text)


def parse_cluster_key(key: str | bytes) -> ClusterKey:
    """Read back a key built by the cluster functions above.

    :raise Corrupt: the key is not one of the cluster keys
    """
    key = _text(key)
    parts = key.split("/")
    # '', 'pcocc', 'users', user, 'clusters', batchid, ...
    if len(parts) < 7 or parts[:3] != ["", "pcocc", "users"] or parts[4] != "clusters":
        raise Corrupt(f"unexpected etcd key {key!r}: not a pcocc cluster key")
    user, batchid, rest = parts[3], parts[5], parts[6:]
    if rest == ["definition"]:
        return ClusterKey(user, batchid, "definition")
    if len(rest) == 3 and rest[0] == "vms" and rest[2] == "state":
        return ClusterKey(user, batchid, "vm_state", rank=_int(rest[1], key))
    if len(rest) == 3 and rest[0] == "rnat":
        return ClusterKey(user, batchid, "rnat", rank=_int(rest[1], key), port=_int(rest[2], key))
    if len(rest) == 3 and rest[0] == "nets" and rest[2] == "switch" and rest[1]:
        return ClusterKey(user, batchid, "net_switch", net=rest[1])
    if len(rest) == 4 and rest[0] == "nets" and rest[2] == "ports" and rest[1]:
        return ClusterKey(user, batchid, "net_port", rank=_int(rest[3], key), net=rest[1])
    if rest == ["ckpt", "request"]:
        return ClusterKey(user, batchid, "ckpt_request")
    if len(rest) == 2 and rest[0] == "ckpt":
        return ClusterKey(user, batchid, "ckpt_report", rank=_int(rest[1], key))
    raise Corrupt(f"unexpected etcd key {key!r}: unknown cluster entry {'/'.join(rest)!r}")


def parse_node_key(key: str | bytes) -> NodeKey:
    """Read back a key built by ``node_allocation``.

    :raise Corrupt: the key is not a per-node allocation key
    """
    key = _text(key)
    parts = key.split("/")
    if len(parts) != 6 or parts[:3] != ["", "pcocc", "nodes"] or not all(parts[3:]):
        raise Corrupt(f"unexpected etcd key {key!r}: not a pcocc node allocation key")
    return NodeKey(parts[3], parts[4], parts[5])


def last_segment(key: str | bytes) -> str:
    """The item after the last ``/`` (an allocated value under an allocation prefix)."""
    return _text(key).rsplit("/", 1)[-1]
