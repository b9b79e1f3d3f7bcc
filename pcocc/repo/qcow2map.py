"""The cluster map of a qcow2 overlay that QEMU wrote (a VM's ``disk0.qcow2``): which guest
clusters it holds and where, so that :mod:`pcocc.repo.qcow2write` can copy them into a new
layer in one sequential pass. Read from the file itself, so only while QEMU does not write
it (``pcocc save`` reads it once it is the backing file of a temporary snapshot).

Only the plain images QEMU creates for a VM's disk are read here (version 2 or 3, 64 KiB
clusters, no encryption, no internal snapshot, no incompatible feature such as extended L2
entries or an external data file, no compressed cluster): :func:`unsupported` says why
another one is not, and the caller copies it with QEMU instead. Layout: QEMU's
docs/interop/qcow2.txt (big-endian; L1 entries point to L2 tables, L2 entries to clusters).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from pcocc.repo.qcow2hdr import MAGIC

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
_HEADER = struct.Struct(">4sIQIIQIIQQIIQ")  # the fields of version 2 (72 bytes)
_OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00  # bits 9-55: a host offset in an L1 or L2 entry
_COMPRESSED = 1 << 62
_ZERO = 1  # "reads as zeros" flag of a standard L2 entry (version 3)
_L2_ENTRIES = CLUSTER // 8


class MapError(OSError):
    """The image is not one this module reads, or it is damaged."""


@dataclass(frozen=True)
class ClusterMap:
    """The guest clusters an overlay holds. The others read through its backing file."""

    virtual_size: int
    #: guest cluster index -> byte offset of its data in the overlay, ascending guest order
    data: tuple[tuple[int, int], ...]
    #: guest clusters that read as zeros (they hide the backing file's data), ascending
    zeros: tuple[int, ...]


def unsupported(head: bytes) -> str | None:
    """Why the qcow2 whose first bytes (at least 104) are ``head`` is not read here; None
    when it is."""
    if len(head) < _HEADER.size or head[:4] != MAGIC:
        return "not a qcow2 image"
    (_, version, _, _, cluster_bits, _, crypt, _, _, _, _, snapshots, _) = \
        _HEADER.unpack_from(head)
    if version not in (2, 3):
        return f"qcow2 version {version}"
    if cluster_bits != CLUSTER_BITS:
        return f"cluster size {1 << cluster_bits}"
    if crypt:
        return "encrypted"
    if snapshots:
        return "it holds internal snapshots"
    if version == 3:
        if len(head) < 104:
            return "truncated header"
        (incompat,) = struct.unpack_from(">Q", head, 72)
        if incompat:
            return f"incompatible feature bits {incompat:#x}"
    return None


def read_map(fd: int) -> ClusterMap:
    """The :class:`ClusterMap` of the qcow2 open at ``fd``.

    :raise MapError: an image :func:`unsupported` refuses, a compressed cluster, or an
        entry pointing outside the file
    """
    head = os.pread(fd, 104, 0)
    why = unsupported(head)
    if why is not None:
        raise MapError(f"cannot read the cluster map: {why}")
    (_, version, _, _, _, size, _, l1_size, l1_offset, _, _, _, _) = _HEADER.unpack_from(head)
    file_size = os.fstat(fd).st_size
    l1 = _table(fd, l1_offset, l1_size, file_size)
    data: list[tuple[int, int]] = []
    zeros: list[int] = []
    guest_clusters = -(-size // CLUSTER)
    for i, l1e in enumerate(l1):
        l2_offset = l1e & _OFFSET_MASK
        if not l2_offset:
            continue
        base = i * _L2_ENTRIES
        for j, l2e in enumerate(_table(fd, l2_offset, _L2_ENTRIES, file_size)):
            if not l2e or base + j >= guest_clusters:
                continue
            if l2e & _COMPRESSED:
                raise MapError(f"compressed cluster for guest cluster {base + j}")
            if l2e & _ZERO and version == 3:
                zeros.append(base + j)
                continue
            host = l2e & _OFFSET_MASK
            if host:
                if host % CLUSTER or host >= file_size:
                    raise MapError(f"guest cluster {base + j} at byte {host}, outside the "
                                   f"{file_size}-byte image")
                data.append((base + j, host))
    return ClusterMap(size, tuple(data), tuple(zeros))


def _table(fd: int, offset: int, entries: int, file_size: int) -> tuple[int, ...]:
    """``entries`` big-endian 64-bit entries at ``offset`` (zeros past the end of a file
    that stops early: QEMU may not have written a table's tail)."""
    if offset % 512 or offset >= file_size or entries > (32 << 20):
        raise MapError(f"table of {entries} entries at byte {offset} of a "
                       f"{file_size}-byte image")
    raw = os.pread(fd, entries * 8, offset)
    raw += bytes(entries * 8 - len(raw))
    return struct.unpack(f">{entries}Q", raw)
