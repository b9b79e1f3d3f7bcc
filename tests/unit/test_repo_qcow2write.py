"""The one-pass qcow2 writer of raw imports (pcocc.repo.qcow2write) and the store path that
takes its digest without reading the blob again. No process is started: the written file
is read back by a small qcow2 reader here (the integration tests run qemu-img check)."""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from pathlib import Path

import pytest

from pcocc.config import RepoConfig
from pcocc.errors import Corrupt, PcoccError
from pcocc.repo import ops, qcow2write, qemu_img, store
from pcocc.repo.reposet import RepoSet

CL = qcow2write.CLUSTER


def sha_file(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def make_sparse(path: Path, size: int, writes: dict[int, bytes]) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in writes.items():
            f.seek(off)
            f.write(data)


def read_qcow2(path: Path) -> tuple[int, dict[int, bytes], list[int]]:
    """(virtual size, {guest cluster: its bytes} of the allocated clusters, refcount of every
    host cluster) of a qcow2 v3 without backing file, read the way the format says."""
    data = path.read_bytes()
    (magic, version, backing_off, _, cbits, size, crypt, l1_size, l1_off, rt_off, rt_clusters,
     nb_snap, _, incompat, _, _, rorder, hlen) = struct.unpack_from(">4sIQIIQIIQQIIQQQQII", data)
    assert (magic, version, backing_off, cbits, crypt, nb_snap, incompat, rorder) == (
        b"QFI\xfb", 3, 0, 16, 0, 0, 0, 4)
    assert hlen % 8 == 0 and data[hlen:hlen + 8] == bytes(8)  # end of header extensions
    guest = {}
    for i in range(l1_size):
        (l1e,) = struct.unpack_from(">Q", data, l1_off + 8 * i)
        if not l1e:
            continue
        assert l1e >> 63, "L1 entry without COPIED"
        l2_off = l1e & ((1 << 62) - 1)
        for j in range(CL // 8):
            (l2e,) = struct.unpack_from(">Q", data, l2_off + 8 * j)
            if not l2e:
                continue
            assert l2e >> 63, "L2 entry without COPIED"
            host = l2e & ((1 << 62) - 1)
            g = i * (CL // 8) + j
            guest[g] = data[host:host + min(CL, size - g * CL)]
    refcounts = []
    for i in range(rt_clusters * CL // 8):
        (rte,) = struct.unpack_from(">Q", data, rt_off + 8 * i)
        if rte:
            refcounts += struct.unpack_from(f">{CL // 2}H", data, rte)
    return size, guest, refcounts


def source_clusters(path: Path, writes: dict[int, bytes]) -> dict[int, bytes]:
    """The non-zero clusters of a sparse file written at ``writes`` (the rest are holes)."""
    touched = {c for off, d in writes.items()
               for c in range(off // CL, (off + max(len(d), 1) - 1) // CL + 1)}
    out = {}
    with open(path, "rb") as f:
        for c in sorted(touched):
            f.seek(c * CL)
            data = f.read(CL)
            if data.strip(b"\0"):
                out[c] = data
    return out


def write_qcow2(src: Path, out: Path) -> str:
    fd = os.open(src, os.O_RDONLY)
    out_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        size = os.fstat(fd).st_size
        return qcow2write.write(fd, size, out_fd, qcow2write.data_clusters(fd, size))
    finally:
        os.close(fd)
        os.close(out_fd)


@pytest.mark.parametrize("size,writes", [
    (1 << 20, {0: os.urandom(CL), 5 * CL + 7: b"x"}),
    # zeros written as data are not stored; a last cluster shorter than a cluster
    (3 * CL + 512, {0: bytes(2 * CL), 2 * CL + 100: os.urandom(3000), 3 * CL: b"end"}),
    # data on both sides of the 512 MiB covered by one L2 table, and a long run of data
    (1536 << 20, {4096: os.urandom(9 * CL), (600 << 20) + 3: b"y", (1536 << 20) - 1: b"z"}),
    (8 << 20, {}),  # nothing but holes
])
def test_written_image_reads_back_as_the_source_and_digest_is_its_sha256(
        tmp_path, size, writes):
    src, out = tmp_path / "src.raw", tmp_path / "out.qcow2"
    make_sparse(src, size, writes)
    digest = write_qcow2(src, out)
    assert digest == sha_file(out)
    vsize, guest, refcounts = read_qcow2(out)
    assert vsize == size and guest == source_clusters(src, writes)
    clusters = out.stat().st_size // CL
    assert out.stat().st_size % CL == 0
    assert refcounts[:clusters] == [1] * clusters and not any(refcounts[clusters:])


def test_only_non_zero_clusters_are_stored(tmp_path):
    src = tmp_path / "src.raw"
    make_sparse(src, 16 * CL, {0: bytes(4 * CL), 6 * CL: b"a", 9 * CL - 1: b"b"})
    fd = os.open(src, os.O_RDONLY)
    try:
        assert qcow2write.data_clusters(fd, 16 * CL) == [6, 8]
    finally:
        os.close(fd)


def test_refcount_blocks_count_themselves():
    # just enough data clusters that the refcount block of the others would be full
    layout = qcow2write.plan(64 << 30, list(range(CL // 2 - 6)))
    assert layout.refblocks * CL // 2 >= layout.total_clusters
    assert layout.refblocks == 2 and layout.reftable == 1


def test_sizes_qemu_cannot_hold_are_left_to_qemu_img():
    assert qcow2write.supported(512) and qcow2write.supported(1 << 30)
    assert not qcow2write.supported(1000) and not qcow2write.supported(0)


# -- through the store ------------------------------------------------------------------

@pytest.fixture
def repos(tmp_path, monkeypatch) -> RepoSet:
    def info(path, fmt=None, *, pass_fds=(), where=None):  # qemu-img probes raw data
        size = os.fstat(int(str(path).rsplit("/", 1)[1])).st_size if str(path).startswith(
            "/dev/fd/") else os.path.getsize(path)
        return qemu_img.ImageInfo(str(path), "raw", size, None, None, None, None)

    monkeypatch.setattr(qemu_img, "info", info)
    return RepoSet([RepoConfig("user", tmp_path / "repo", "", "user")])


def test_raw_import_stores_the_blob_without_hashing_it_again(tmp_path, repos, monkeypatch):
    src = tmp_path / "disk.raw"
    make_sparse(src, 4 << 20, {CL: os.urandom(2 * CL)})

    def no_second_read(*args, **kwargs):
        raise AssertionError("the blob was read again to hash it")

    monkeypatch.setattr(store, "hash_file", no_second_read)
    monkeypatch.setattr(qemu_img, "convert", no_second_read)
    meta = ops.import_image(repos, f"raw:{src}", "img")
    (layer,) = meta.vm_layers().layers
    blob = repos.get("user").blob_path(layer.digest)
    assert sha_file(blob) == layer.digest and blob.stat().st_size == layer.size
    assert read_qcow2(blob)[1] == source_clusters(src, {CL: bytes(2 * CL)})
    assert (blob.stat().st_mode & 0o777) == 0o444


def test_failed_write_leaves_nothing(tmp_path, repos, monkeypatch):
    src = tmp_path / "disk.raw"
    make_sparse(src, 64 << 20, {0: os.urandom(40 << 20)})
    real_write, calls = os.write, []

    def failing_write(fd, data):
        calls.append(fd)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(qcow2write.os, "write", failing_write)
    with pytest.raises(PcoccError, match="No space left"):
        ops.import_image(repos, f"raw:{src}", "img")
    root = repos.get("user").path
    assert [p for p in (root / "data").rglob("*") if p.is_file()] == []
    assert list((root / "tmp").iterdir()) == []
    assert not repos.get("user").has_image("img")


def test_written_blob_needs_a_well_formed_digest(tmp_path, repos):
    repo = repos.get("user")
    with repo.staging() as st:
        f = st / "b"
        f.write_bytes(b"abc")
        with pytest.raises(Corrupt):
            repo.store_hashed_blob(f, "sha256:../../etc")


def test_writeback_reaches_the_kernel(tmp_path):
    """The os module has no sync_file_range: the head start of the fsync goes through libc
    (a no-op fallback would leave the whole writeback to the final fsync)."""
    from pcocc import fsutil

    fn = fsutil._sync_file_range()
    assert fn is not None
    with open(tmp_path / "f", "wb") as f:
        f.write(os.urandom(1 << 20))
        f.flush()
        assert fn(f.fileno(), 0, 0, fsutil._SYNC_FILE_RANGE_WRITE) == 0
        fsutil.start_writeback(f.fileno(), 4096, 8192)
    assert fn(-1, 0, 0, fsutil._SYNC_FILE_RANGE_WRITE) == -1


def test_a_file_system_without_hole_search_is_read_whole(tmp_path, monkeypatch):
    src = tmp_path / "src.raw"
    make_sparse(src, 8 * CL, {3 * CL: b"x"})
    real = os.lseek

    def no_seek_data(fd, pos, how):
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, pos, how)

    monkeypatch.setattr(qcow2write.os, "lseek", no_seek_data)
    fd = os.open(src, os.O_RDONLY)
    try:
        assert qcow2write.data_clusters(fd, 8 * CL) == [3]
    finally:
        os.close(fd)


def fsyncs_by_inode(monkeypatch) -> dict[int, int]:
    """Count the fsyncs of each inode from now on."""
    real, counts = os.fsync, {}

    def counting(fd):
        ino = os.fstat(fd).st_ino
        counts[ino] = counts.get(ino, 0) + 1
        return real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return counts


def test_raw_import_fsyncs_the_blob_once(tmp_path, repos, monkeypatch):
    """qcow2write fsyncs what it wrote and says so to the store, which does not fsync it
    a second time."""
    src = tmp_path / "disk.raw"
    make_sparse(src, 4 << 20, {CL: os.urandom(2 * CL)})
    counts = fsyncs_by_inode(monkeypatch)
    meta = ops.import_image(repos, f"raw:{src}", "img")
    (layer,) = meta.vm_layers().layers
    blob = repos.get("user").blob_path(layer.digest)
    assert counts.get(blob.stat().st_ino) == 1


def test_a_written_blob_not_synced_by_its_writer_is_fsynced(tmp_path, repos, monkeypatch):
    """A download hashed as it arrived (no fsync of its own) is still made durable."""
    repo = repos.get("user")
    with repo.staging() as st:
        f = st / "b"
        f.write_bytes(b"abc")
        ino = f.stat().st_ino
        counts = fsyncs_by_inode(monkeypatch)
        digest = repo.store_hashed_blob(f, "sha256:" + hashlib.sha256(b"abc").hexdigest())
    assert counts.get(ino) == 1 and repo.blob_path(digest).read_bytes() == b"abc"


def test_the_scan_reads_only_the_start_of_data_clusters(tmp_path, monkeypatch):
    """Data is read whole once, by the write; the scan that decides the layout reads the
    start of each cluster, and all of it only when that start is zero."""
    src = tmp_path / "src.raw"
    late = bytes(1000) + b"late data"  # its cluster starts with zeros
    make_sparse(src, 64 * CL, {0: os.urandom(32 * CL), 40 * CL: late, 50 * CL: bytes(CL)})
    real, read = os.preadv, []

    def counting(fd, buffers, pos):
        n = real(fd, buffers, pos)
        read.append(n)
        return n

    monkeypatch.setattr(qcow2write.os, "preadv", counting)
    fd = os.open(src, os.O_RDONLY)
    try:
        assert qcow2write.data_clusters(fd, 64 * CL) == [*range(32), 40]
    finally:
        os.close(fd)
    assert sum(read) <= 32 * 4096 + 2 * CL  # clusters 40 and 50 are read whole
