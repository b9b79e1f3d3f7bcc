"""The etcd keys the cluster runtime uses, built by :mod:`pcocc.kv.keys` (their only owner).

Re-exported under the names used in ``pcocc.cluster``; the two parsers read keys back.
"""

from __future__ import annotations

from pcocc.errors import Corrupt
from pcocc.kv import keys as _k


def user_clusters_prefix(user: str) -> str:
    """Prefix of every cluster of ``user`` (ends with '/')."""
    return _k.clusters_prefix(user)


def cluster_prefix(user: str, batchid: str) -> str:
    """Prefix of every key of one cluster (ends with '/')."""
    return _k.cluster_prefix(user, batchid)


def definition(user: str, batchid: str) -> str:
    return _k.cluster_definition(user, batchid)


def vms_prefix(user: str, batchid: str) -> str:
    return _k.vms_prefix(user, batchid)


def vm_state(user: str, batchid: str, rank: int) -> str:
    return _k.vm_state(user, batchid, rank)


def rnat(user: str, batchid: str, rank: int, port: int) -> str:
    return _k.rnat(user, batchid, rank, port)


def rnat_prefix(user: str, batchid: str, rank: int) -> str:
    return _k.rnat_prefix(user, batchid, rank)


def net_prefix(user: str, batchid: str, net: str) -> str:
    return _k.net_prefix(user, batchid, net)


def net_switch(user: str, batchid: str, net: str) -> str:
    return _k.net_switch(user, batchid, net)


def net_ports_prefix(user: str, batchid: str, net: str) -> str:
    return _k.net_ports_prefix(user, batchid, net)


def net_port(user: str, batchid: str, net: str, rank: int) -> str:
    return _k.net_port(user, batchid, net, rank)


def split_cluster_key(user: str, key: str) -> tuple[str, str] | None:
    """Split a key of one of the user's clusters into (batchid, rest), or None."""
    prefix = user_clusters_prefix(user)
    if not key.startswith(prefix):
        return None
    batchid, _, rest = key[len(prefix) :].partition("/")
    return (batchid, rest) if batchid else None


def parse_vm_state_key(key: str) -> int | None:
    """Rank of a ``.../vms/<rank>/state`` key, None for any other key."""
    try:
        parsed = _k.parse_cluster_key(key)
    except Corrupt:
        return None
    return parsed.rank if parsed.kind == "vm_state" else None
