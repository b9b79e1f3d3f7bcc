"""Stand-in for ``pcocc.kv.keys`` on a branch that does not have it yet; same layout.

Delete when ``pcocc.kv.keys`` is merged.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcocc.errors import Corrupt, UsageError


def _seg(value: object) -> str:
    text = str(value)
    if not text or text in (".", "..") or "/" in text:
        raise UsageError(f"invalid etcd key component {text!r}")
    return text


def clusters_prefix(user: str) -> str:
    return f"/pcocc/users/{_seg(user)}/clusters/"


def cluster_prefix(user: str, batchid: str) -> str:
    return f"{clusters_prefix(user)}{_seg(batchid)}/"


def cluster_definition(user: str, batchid: str) -> str:
    return f"{cluster_prefix(user, batchid)}definition"


def vms_prefix(user: str, batchid: str) -> str:
    return f"{cluster_prefix(user, batchid)}vms/"


def vm_state(user: str, batchid: str, rank: int) -> str:
    return f"{vms_prefix(user, batchid)}{int(rank)}/state"


def rnat_prefix(user: str, batchid: str, rank: int | None = None) -> str:
    base = f"{cluster_prefix(user, batchid)}rnat/"
    return base if rank is None else f"{base}{int(rank)}/"


def rnat(user: str, batchid: str, rank: int, port: int) -> str:
    return f"{rnat_prefix(user, batchid, rank)}{int(port)}"


@dataclass(frozen=True)
class ClusterKey:
    user: str
    batchid: str
    kind: str
    rank: int | None = None
    port: int | None = None


def parse_cluster_key(key: str) -> ClusterKey:
    parts = key.split("/")
    if len(parts) < 7 or parts[:3] != ["", "pcocc", "users"] or parts[4] != "clusters":
        raise Corrupt(f"unexpected etcd key {key!r}")
    rest = parts[6:]
    if rest == ["definition"]:
        return ClusterKey(parts[3], parts[5], "definition")
    if len(rest) == 3 and rest[0] == "vms" and rest[2] == "state" and rest[1].isdigit():
        return ClusterKey(parts[3], parts[5], "vm_state", rank=int(rest[1]))
    if len(rest) == 3 and rest[0] == "rnat" and rest[1].isdigit() and rest[2].isdigit():
        return ClusterKey(parts[3], parts[5], "rnat", rank=int(rest[1]), port=int(rest[2]))
    raise Corrupt(f"unexpected etcd key {key!r}")
