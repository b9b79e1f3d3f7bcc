"""Strict reading of a qcow2 header, to tell whether a file already is a base layer as the
repository stores it (so that a fetch may store it as downloaded instead of having
``qemu-img convert`` rewrite it).

The answer errs on the side of "convert": any field, feature bit or header extension not
known to be harmless to a standalone, read-only base layer gives a reason, and the caller
falls back to the ordinary import, which checks and rewrites the image. Layout: QEMU's
docs/interop/qcow2.txt (big-endian fields; header extensions follow the header, each
``type, length, data`` padded to 8 bytes, up to a zero type).
"""

from __future__ import annotations

import struct

MAGIC = b"QFI\xfb"
_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # 72 bytes, the fields of version 2
_V3 = struct.Struct(">QQQII")            # 28 more bytes in version 3
_MAX_CLUSTER_BITS = 21

#: incompatible feature bits a base layer may have: compression type, extended L2 entries
#: (bit 0 dirty, bit 1 corrupt, bit 2 external data file: convert)
_INCOMPAT_OK = (1 << 3) | (1 << 4)
#: autoclear bits: bit 0 "bitmaps extension is consistent" (bit 1: raw external data)
_AUTOCLEAR_OK = 1 << 0
#: header extensions that name nothing outside the file: feature name table, bitmaps
_EXT_OK = {0x6803F857, 0x23852875}
_EXT_NAMES = {0xE2792ACA: "a backing format", 0x0537BE77: "an encryption header",
              0x44415441: "an external data file name"}


def head_size(first: bytes) -> int:
    """How many bytes :func:`base_layer_problem` needs: the first cluster (the header and
    its extensions live there), given at least the first 24 bytes."""
    if len(first) < 24 or first[:4] != MAGIC:
        return 0
    bits = struct.unpack_from(">I", first, 20)[0]
    return 1 << min(max(bits, 9), _MAX_CLUSTER_BITS)


def base_layer_problem(head: bytes, file_size: int) -> str | None:
    """Why the qcow2 whose first cluster is ``head`` is not a plain base layer (None when
    it is one): qcow2 version 2 or 3, no backing file, no encryption, no internal
    snapshots, a clean (not dirty, not corrupt) image whose data are in the file itself,
    and only header extensions that name no other file."""
    if len(head) < _V2.size or head[:4] != MAGIC:
        return "not a qcow2 image"
    (_, version, backing_off, backing_len, cluster_bits, _size, crypt, _l1_size, _l1_off,
     _rc_off, _rc_clusters, snapshots, _snap_off) = _V2.unpack_from(head)
    if version not in (2, 3):
        return f"qcow2 version {version}"
    if not 9 <= cluster_bits <= _MAX_CLUSTER_BITS:
        return f"cluster_bits {cluster_bits}"
    if backing_off or backing_len:
        return "it names a backing file"
    if crypt:
        return "it is encrypted"
    if snapshots:
        return "it holds internal snapshots"
    ext_start = _V2.size
    if version == 3:
        if len(head) < _V2.size + _V3.size:
            return "truncated header"
        incompat, _compat, autoclear, refcount_order, header_len = _V3.unpack_from(head, 72)
        if incompat & ~_INCOMPAT_OK:
            return f"incompatible feature bits {incompat:#x}"
        if autoclear & ~_AUTOCLEAR_OK:
            return f"autoclear feature bits {autoclear:#x}"
        if refcount_order > 6:
            return f"refcount_order {refcount_order}"
        if header_len < 104 or header_len % 8 or header_len > len(head):
            return f"header length {header_len}"
        ext_start = header_len
    if len(head) < (1 << cluster_bits) and len(head) < file_size:
        return "the first cluster was not read"
    return _extensions_problem(head, ext_start)


def _extensions_problem(head: bytes, pos: int) -> str | None:
    while True:
        if pos + 8 > len(head):
            return "header extensions run past the first cluster"
        kind, length = struct.unpack_from(">II", head, pos)
        if kind == 0:
            return None
        if kind in _EXT_NAMES:
            return f"its header holds {_EXT_NAMES[kind]}"
        if kind not in _EXT_OK:
            return f"unknown header extension {kind:#x}"
        pos += 8 + (length + 7) // 8 * 8
