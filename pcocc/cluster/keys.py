"""etcd keys of a cluster, as built by :mod:`pcocc.kv.keys` (the owner of every key name).

This module only re-exports the few names the cluster code uses, so that the rest of
``pcocc.cluster`` does not depend on how ``pcocc.kv.keys`` spells them.
"""

from __future__ import annotations

try:  # pragma: no cover - depends on the kv package being present
    from pcocc.kv import keys as _kv_keys
except ImportError:  # pragma: no cover
    _kv_keys = None  # type: ignore[assignment]

ROOT = "/pcocc/users"


def user_clusters_prefix(user: str) -> str:
    """Prefix of every cluster of ``user`` (ends with '/')."""
    if _kv_keys is not None and hasattr(_kv_keys, "user_clusters_prefix"):
        return _kv_keys.user_clusters_prefix(user)
    return f"{ROOT}/{_check(user)}/clusters/"


def cluster_prefix(user: str, batchid: str) -> str:
    """Prefix of every key of one cluster (ends with '/')."""
    if _kv_keys is not None and hasattr(_kv_keys, "cluster_prefix"):
        return _kv_keys.cluster_prefix(user, batchid)
    return f"{user_clusters_prefix(user)}{_check(batchid)}/"


def definition(user: str, batchid: str) -> str:
    if _kv_keys is not None and hasattr(_kv_keys, "cluster_definition"):
        return _kv_keys.cluster_definition(user, batchid)
    return f"{cluster_prefix(user, batchid)}definition"


def vms_prefix(user: str, batchid: str) -> str:
    return f"{cluster_prefix(user, batchid)}vms/"


def vm_state(user: str, batchid: str, rank: int) -> str:
    if _kv_keys is not None and hasattr(_kv_keys, "vm_state"):
        return _kv_keys.vm_state(user, batchid, rank)
    return f"{vms_prefix(user, batchid)}{int(rank)}/state"


def rnat(user: str, batchid: str, rank: int, port: int) -> str:
    if _kv_keys is not None and hasattr(_kv_keys, "rnat"):
        return _kv_keys.rnat(user, batchid, rank, port)
    return f"{cluster_prefix(user, batchid)}rnat/{int(rank)}/{int(port)}"


def rnat_prefix(user: str, batchid: str, rank: int) -> str:
    return f"{cluster_prefix(user, batchid)}rnat/{int(rank)}/"


def parse_cluster_key(user: str, key: str) -> tuple[str, str] | None:
    """Split a key under the user's clusters into (batchid, rest), or None."""
    prefix = user_clusters_prefix(user)
    if not key.startswith(prefix):
        return None
    batchid, _, rest = key[len(prefix):].partition("/")
    return (batchid, rest) if batchid else None


def parse_vm_state_key(key: str) -> int | None:
    """Rank of a ``.../vms/<rank>/state`` key, None for any other key."""
    parts = key.rstrip("/").split("/")
    if len(parts) >= 3 and parts[-1] == "state" and parts[-3] == "vms" and parts[-2].isdigit():
        return int(parts[-2])
    return None


def _check(part: str) -> str:
    if not part or "/" in part or part in (".", ".."):
        raise ValueError(f"invalid etcd key component {part!r}")
    return part
