"""Write a raw disk as a standalone qcow2 (version 3) in one sequential pass, hashing the
bytes as they are written: the blob's digest is known when the last byte is out, with no
second read of the blob.

``qemu-img convert`` cannot do that: it writes data clusters in order but rewrites its
metadata (refcount block, L1 and L2 tables near the start of the file) until the end, so
the file can only be hashed once it is complete. Here the whole layout is decided before
the first byte is written, from a scan of the source (its data extents, then each 64 KiB
cluster compared with zeros, as ``qemu-img convert`` skips zero clusters too):

    cluster 0           header (and, for a layer over a backing file, the backing
                        format extension and the backing file name)
    refcount table      then the refcount blocks (16-bit refcounts, all 1)
    L1 table            then one L2 table per 512 MiB of guest space that holds data
    data clusters       in guest order; zero clusters are left unallocated (they read as 0)

The same writer copies the clusters of a qcow2 overlay (:mod:`pcocc.repo.qcow2map`) into a
layer over a backing file: the data then come from the overlay's host offsets, and the
overlay's zero clusters stay zero clusters (an L2 entry with the zero flag: they hide what
the backing file holds there).

Every metadata entry carries the COPIED flag (refcount 1), as QEMU's own images do, so
``qemu-img check`` finds nothing to say. Writeback starts while we write
(``sync_file_range``), so the final fsync has little left to do.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from pcocc.fsutil import start_writeback
from pcocc.repo.digest import PREFIX
from pcocc.repo.model import Progress, no_progress

CLUSTER_BITS = 16
CLUSTER = 1 << CLUSTER_BITS
_L2_ENTRIES = CLUSTER // 8
_REFCOUNTS_PER_BLOCK = CLUSTER // 2  # refcount_order 4: 16-bit refcounts
_COPIED = 1 << 63
_HEADER_LENGTH = 104
_ZERO_FLAG = 1  # an L2 entry reading as zeros, without a cluster (qcow2 version 3)
_BACKING_FORMAT_EXT = 0xE2792ACA
#: the longest backing file name QEMU accepts
MAX_BACKING = 1023
_ZERO = bytes(CLUSTER)
_READ = 4 << 20  # bytes read (and hashed) at a time
_PROBE = 512  # bytes read first of each cluster by the scan
_ZERO_PROBE = bytes(_PROBE)
_BUFFERS = 6  # read buffers going round between the writer and the hasher


def supported(size: int) -> bool:
    """Whether a raw disk of ``size`` bytes can be written here (else use qemu-img):
    QEMU sizes disks in whole 512-byte sectors."""
    return size > 0 and size % 512 == 0


def data_clusters(fd: int, size: int) -> list[int]:
    """Indices of the guest clusters of the raw file ``fd`` (``size`` bytes) that hold a
    non-zero byte, ascending. Holes are skipped without reading them; in the data extents,
    the first bytes of each cluster are read, and the rest only when they are all zero (a
    cluster of data is known by its start, so the scan reads little of it: the whole of it
    is read once, to be written)."""
    found: list[int] = []
    probe = bytearray(_PROBE)
    whole = bytearray(CLUSTER)
    pos = 0
    for start, end in _extents(fd, size):
        pos = max(pos, start - start % CLUSTER)
        stop = min(size, -(-end // CLUSTER) * CLUSTER)
        while pos < stop:
            n = os.preadv(fd, [probe], pos)
            if n <= 0:
                raise OSError(f"short read at byte {pos} of a {size}-byte disk")
            if not probe.startswith(_ZERO_PROBE if n == _PROBE else _ZERO[:n]) or (
                    n == _PROBE and _has_data(fd, whole, pos, min(CLUSTER, size - pos))):
                found.append(pos >> CLUSTER_BITS)
            pos += CLUSTER
    return found


def _has_data(fd: int, buf: bytearray, pos: int, length: int) -> bool:
    """Whether the ``length`` bytes at ``pos`` hold a non-zero byte."""
    n = os.preadv(fd, [memoryview(buf)[:length]], pos)
    return not buf.startswith(_ZERO[:n])


def _extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of the data extents of ``fd`` (the rest of the file where the file
    system cannot tell holes apart)."""
    pos = 0
    while pos < size:
        try:
            pos = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno != errno.ENXIO:  # not "only a hole is left": read it all
                yield pos, size
            return
        end = min(os.lseek(fd, pos, os.SEEK_HOLE), size)
        yield pos, end
        pos = end


@dataclass(frozen=True)
class Layout:
    """Where everything goes in the qcow2 file, in clusters."""

    virtual_size: int
    clusters: tuple[int, ...]  # guest clusters with data, ascending
    reftable: int  # number of clusters of each part, in file order
    refblocks: int
    l1: int
    l2_tables: tuple[int, ...]  # L1 indices that get an L2 table, ascending
    zeros: tuple[int, ...] = ()  # guest clusters that read as zeros over the backing file
    backing: bytes = b""  # the backing file name (a qcow2), empty for a standalone image

    @property
    def l1_entries(self) -> int:
        return -(-self.virtual_size // (CLUSTER * _L2_ENTRIES))

    @property
    def metadata_clusters(self) -> int:
        return 1 + self.reftable + self.refblocks + self.l1 + len(self.l2_tables)

    @property
    def total_clusters(self) -> int:
        return self.metadata_clusters + len(self.clusters)

    @property
    def file_size(self) -> int:
        return self.total_clusters * CLUSTER


def plan(virtual_size: int, clusters: list[int], zeros: tuple[int, ...] = (),
         backing: str = "") -> Layout:
    """The layout of a qcow2 of ``virtual_size`` bytes holding the guest ``clusters``, and
    (over the backing file ``backing``) reading ``zeros`` as zeros."""
    name = backing.encode()
    if len(name) > MAX_BACKING:
        raise ValueError(f"backing file name longer than {MAX_BACKING} bytes")
    l1_entries = max(1, -(-virtual_size // (CLUSTER * _L2_ENTRIES)))
    l1 = -(-l1_entries * 8 // CLUSTER)
    l2_tables = tuple(sorted({c // _L2_ENTRIES for c in (*clusters, *zeros)}))
    fixed = 1 + l1 + len(l2_tables) + len(clusters)
    refblocks = reftable = 0
    while True:  # the refcount structures count themselves
        blocks = -(-(fixed + refblocks + reftable) // _REFCOUNTS_PER_BLOCK)
        table = -(-blocks * 8 // CLUSTER)
        if (blocks, table) == (refblocks, reftable):
            break
        refblocks, reftable = blocks, table
    return Layout(virtual_size, tuple(clusters), reftable, refblocks, l1, l2_tables,
                  tuple(zeros), name)


def metadata(layout: Layout) -> bytes:
    """Every byte of the file before the first data cluster."""
    reftable_at = 1
    refblocks_at = reftable_at + layout.reftable
    l1_at = refblocks_at + layout.refblocks
    l2_at = l1_at + layout.l1
    data_at = l2_at + len(layout.l2_tables)
    backing_at = _HEADER_LENGTH + 16 + 8 if layout.backing else 0  # after the extensions
    header = struct.pack(
        ">4sIQIIQIIQQIIQQQQII", b"QFI\xfb", 3, backing_at, len(layout.backing),
        CLUSTER_BITS, layout.virtual_size, 0, max(1, layout.l1_entries), l1_at * CLUSTER,
        reftable_at * CLUSTER, layout.reftable, 0, 0, 0, 0, 0, 4, _HEADER_LENGTH)
    out = bytearray(layout.metadata_clusters * CLUSTER)
    out[:len(header)] = header  # followed by zeros: the end of the header extensions
    if layout.backing:
        struct.pack_into(">II8s", out, _HEADER_LENGTH, _BACKING_FORMAT_EXT, 5, b"qcow2")
        out[backing_at:backing_at + len(layout.backing)] = layout.backing
    struct.pack_into(f">{layout.refblocks}Q", out, reftable_at * CLUSTER,
                     *((refblocks_at + i) * CLUSTER for i in range(layout.refblocks)))
    at = refblocks_at * CLUSTER
    out[at:at + 2 * layout.total_clusters] = b"\0\1" * layout.total_clusters  # all 1
    table_of = {idx: l2_at + n for n, idx in enumerate(layout.l2_tables)}
    for idx, at in table_of.items():
        struct.pack_into(">Q", out, l1_at * CLUSTER + 8 * idx, at * CLUSTER | _COPIED)
    for n, guest in enumerate(layout.clusters):
        entry = table_of[guest // _L2_ENTRIES] * CLUSTER + 8 * (guest % _L2_ENTRIES)
        struct.pack_into(">Q", out, entry, (data_at + n) * CLUSTER | _COPIED)
    for guest in layout.zeros:
        entry = table_of[guest // _L2_ENTRIES] * CLUSTER + 8 * (guest % _L2_ENTRIES)
        struct.pack_into(">Q", out, entry, _ZERO_FLAG)
    return bytes(out)


def write(src_fd: int, virtual_size: int, out_fd: int, clusters: list[int],
          progress: Progress = no_progress, *, offsets: list[int] | None = None,
          zeros: tuple[int, ...] = (), backing: str = "", fsync: bool = True) -> str:
    """Write the qcow2 of the raw disk ``src_fd`` (whose data ``clusters`` come from
    :func:`data_clusters`) to the empty file ``out_fd`` and fsync it; return the
    ``sha256:<hex>`` of what was written. The hash runs in a thread, next to the reads and
    writes (hashlib and os calls release the GIL); a few buffers go round between them.

    :param offsets: where each of ``clusters`` is in ``src_fd`` (a qcow2 overlay, see the
        module docstring), instead of at its guest offset (a raw disk)
    :param zeros: guest clusters that read as zeros over the backing file
    :param backing: the backing file name of the layer ("": a standalone image)
    :param fsync: False leaves the fsync to the caller (writeback is started anyway)
    """
    layout = plan(virtual_size, clusters, zeros, backing)
    if offsets is None:
        offsets, src_size = [c * CLUSTER for c in clusters], virtual_size
    else:
        src_size = os.fstat(src_fd).st_size  # a short last cluster reads as zeros
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(_BUFFERS):
        free.put(bytearray(_READ))
    full: queue.Queue[tuple[memoryview, bytearray | None] | None] = queue.Queue()
    h = hashlib.sha256()
    failed: list[BaseException] = []

    def hasher() -> None:  # never stops early: the writer waits for the buffers it frees
        while (item := full.get()) is not None:
            try:
                if not failed:
                    h.update(item[0])
            except BaseException as err:  # noqa: B036 (re-raised by the writer)
                failed.append(err)
            if item[1] is not None:
                free.put(item[1])

    thread = threading.Thread(target=hasher, name="pcocc-hash")
    thread.start()
    written = 0
    try:
        meta = memoryview(metadata(layout))
        _write_all(out_fd, meta)
        full.put((meta, None))
        written = len(meta)
        for start, count in _runs(offsets):
            buf = free.get()
            view = memoryview(buf)[:count * CLUSTER]
            _read_exactly(src_fd, view, start, src_size)
            _write_all(out_fd, view)
            full.put((view, buf))
            start_writeback(out_fd, written, len(view))
            written += len(view)
            progress(written, layout.file_size)
    finally:
        full.put(None)
        thread.join()
    if failed:
        raise failed[0]
    if fsync:
        os.fsync(out_fd)
    return PREFIX + h.hexdigest()


def _runs(offsets: list[int]) -> Iterator[tuple[int, int]]:
    """``(byte offset, cluster count)`` of the runs of consecutive clusters at ``offsets``
    in the source, each at most one buffer long."""
    per_read = _READ // CLUSTER
    i = 0
    while i < len(offsets):
        j = i + 1
        while (j < len(offsets) and j - i < per_read
               and offsets[j] == offsets[j - 1] + CLUSTER):
            j += 1
        yield offsets[i], j - i
        i = j


def _read_exactly(fd: int, view: memoryview, start: int, size: int) -> None:
    """Fill ``view`` from byte ``start`` of the disk (zeros past its end)."""
    want = min(len(view), size - start)
    got = os.preadv(fd, [view[:want]], start)
    if got != want:
        raise OSError(f"the source disk changed while it was read (short read at byte {start})")
    if want < len(view):
        view[want:] = bytes(len(view) - want)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
