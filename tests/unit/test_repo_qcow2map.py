"""The cluster map of a QEMU overlay (pcocc.repo.qcow2map) and the layer pcocc.repo.qcow2write
writes from it over a backing file, as ``pcocc save`` copies a frozen overlay. No process:
the overlays are qcow2 files written here; tests/integration/test_vm_save.py saves real
QEMU overlays and checks the layers with qemu-img and e2fsck."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import pytest

from pcocc.repo import qcow2map, qcow2write

CL = qcow2write.CLUSTER


def overlay(path: Path, size: int, data: dict[int, bytes], zeros: tuple[int, ...] = ()
            ) -> None:
    """A qcow2 holding ``data`` ({guest cluster: bytes}) and reading ``zeros`` as zeros."""
    clusters = sorted(data)
    src = path.with_suffix(".raw")
    with open(src, "wb") as f:
        f.truncate(size)
        for c, d in data.items():
            f.seek(c * CL)
            f.write(d)
    fd, out = os.open(src, os.O_RDONLY), os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        qcow2write.write(fd, size, out, clusters, zeros=zeros)
    finally:
        os.close(fd)
        os.close(out)


def read_layer(path: Path) -> tuple[bytes, dict[int, bytes], set[int]]:
    """(backing file name, {guest cluster: data}, zero clusters) of a qcow2 v3 layer, read as
    the format says, checking the backing format extension."""
    raw = path.read_bytes()
    (magic, version, b_off, b_len, cbits, size, _, l1_size, l1_off) = struct.unpack_from(
        ">4sIQIIQIIQ", raw)
    assert (magic, version, cbits) == (b"QFI\xfb", 3, 16)
    (hlen,) = struct.unpack_from(">I", raw, 100)
    exts, pos = {}, hlen
    while True:
        kind, length = struct.unpack_from(">II", raw, pos)
        if kind == 0:
            break
        exts[kind] = raw[pos + 8:pos + 8 + length]
        pos += 8 + (length + 7) // 8 * 8
    assert b_off >= pos + 8 or not b_len  # the name follows the extensions
    if b_len:
        assert exts == {0xE2792ACA: b"qcow2"}
    data, zeros = {}, set()
    for i in range(l1_size):
        (l1e,) = struct.unpack_from(">Q", raw, l1_off + 8 * i)
        for j in range(CL // 8) if l1e else ():
            (l2e,) = struct.unpack_from(">Q", raw, (l1e & ((1 << 62) - 1)) + 8 * j)
            g = i * (CL // 8) + j
            if l2e == 1:
                zeros.add(g)
            elif l2e:
                host = l2e & ((1 << 62) - 1)
                data[g] = raw[host:host + CL]
    return raw[b_off:b_off + b_len], data, zeros


def copy_layer(src: Path, out: Path, backing: str) -> str:
    fd = os.open(src, os.O_RDONLY)
    out_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        found = qcow2map.read_map(fd)
        return qcow2write.write(fd, found.virtual_size, out_fd, [g for g, _ in found.data],
                                offsets=[h for _, h in found.data], zeros=found.zeros,
                                backing=backing, fsync=False)
    finally:
        os.close(fd)
        os.close(out_fd)


def test_a_layer_copied_from_an_overlay_holds_its_clusters_zeros_and_backing(tmp_path):
    data = {0: os.urandom(CL), 1: os.urandom(CL), 7: b"x" * CL,
            9000: os.urandom(CL)}  # past the first L2 table
    overlay(tmp_path / "ov.qcow2", 1 << 30, data, zeros=(3, 4, 8300))
    digest = copy_layer(tmp_path / "ov.qcow2", tmp_path / "layer", "../ab/" + "ab" * 32)
    assert digest == "sha256:" + hashlib.sha256((tmp_path / "layer").read_bytes()).hexdigest()
    backing, got, zeros = read_layer(tmp_path / "layer")
    assert backing == b"../ab/" + b"ab" * 32
    assert got == data and zeros == {3, 4, 8300}


def test_the_map_follows_the_overlay_offsets(tmp_path):
    overlay(tmp_path / "ov.qcow2", 8 << 20, {2: b"a" * CL, 5: b"b" * CL})
    with open(tmp_path / "ov.qcow2", "rb") as f:
        found = qcow2map.read_map(f.fileno())
        assert [g for g, _ in found.data] == [2, 5] and found.zeros == ()
        for g, host in found.data:
            f.seek(host)
            assert f.read(CL) == (b"a" if g == 2 else b"b") * CL


@pytest.mark.parametrize("offset,fmt,value,why", [
    (20, ">I", 12, "cluster size 4096"),
    (32, ">I", 1, "encrypted"),
    (72, ">Q", 1 << 4, "incompatible feature bits 0x10"),  # extended L2 entries
    (60, ">I", 1, "internal snapshots"),
])
def test_images_it_does_not_read_are_named(tmp_path, offset, fmt, value, why):
    overlay(tmp_path / "ov.qcow2", 1 << 20, {0: b"a" * CL})
    head = bytearray((tmp_path / "ov.qcow2").read_bytes()[:104])
    assert qcow2map.unsupported(bytes(head)) is None
    struct.pack_into(fmt, head, offset, value)
    assert why in qcow2map.unsupported(bytes(head))
    assert qcow2map.unsupported(b"not a qcow2" * 20) == "not a qcow2 image"


def test_a_compressed_or_stray_cluster_is_an_error(tmp_path):
    path = tmp_path / "ov.qcow2"
    overlay(path, 1 << 20, {0: b"a" * CL})
    with open(path, "rb") as f:
        (found,) = qcow2map.read_map(f.fileno()).data
    raw = bytearray(path.read_bytes())
    entry = raw.find(struct.pack(">Q", found[1] | 1 << 63))
    for bad, why in [(found[1] | 1 << 62, "compressed"), (len(raw) + CL, "outside")]:
        struct.pack_into(">Q", raw, entry, bad)
        path.write_bytes(raw)
        with open(path, "rb") as f, pytest.raises(qcow2map.MapError, match=why):
            qcow2map.read_map(f.fileno())


def test_backing_names_qemu_cannot_hold_are_refused():
    with pytest.raises(ValueError, match="backing file name"):
        qcow2write.plan(1 << 20, [], backing="x" * 1024)
