"""Import of Singularity images (SIF) as one-layer OCI images, without Singularity.

SIF layout (all integers little-endian, structures packed):

- global header, 128 bytes: launch script (32), magic ``SIF_MAGIC\\0`` (10), version (3),
  architecture code (3), UUID (16), then eight int64: created, modified, free descriptors,
  total descriptors, descriptors offset, descriptors size, data offset, data size;
- a table of descriptors, 585 bytes each: data type (int32), used (1 byte), id, group id,
  linked id (uint32 each), offset, size, size with padding, created, modified, uid, gid
  (int64 each), name (128 bytes), type-specific extra (384 bytes). For a partition
  (data type 0x4004) the extra starts with file system type (int32, 1 = squashfs),
  partition type (int32, 2 = primary system partition) and an architecture code (3).

We read the header and the descriptors, find the squashfs system partition, copy it out,
unsquashfs it into a private temporary directory, tar it (gzip) into one layer, write a
config and a manifest, and hand the blobs to the store like any OCI import.
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import shutil
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pcocc import proc
from pcocc.errors import Corrupt
from pcocc.repo import oci, ocispec
from pcocc.repo.difflayer import write_layer
from pcocc.repo.digest import digest_hex, hash_file
from pcocc.repo.model import AddBlob, OciImage, Progress, no_progress

log = logging.getLogger(__name__)

SIF_MAGIC = b"SIF_MAGIC\0"
HEADER = struct.Struct("<32s10s3s3s16s8q")
DESCRIPTOR = struct.Struct("<iBIIIqqqqqqq128s384s")
PARTITION_EXTRA = struct.Struct("<ii3s")

DATA_PARTITION = 0x4004
FS_SQUASHFS = 1
PART_SYSTEM = 1
PART_PRIMSYS = 2
SQUASHFS_MAGIC = b"hsqs"

#: SIF architecture codes -> OCI architecture names
ARCHES = {
    "01": "386",
    "02": "amd64",
    "03": "arm",
    "04": "arm64",
    "05": "ppc64",
    "06": "ppc64le",
    "07": "mips",
    "08": "mipsle",
    "09": "mips64",
    "10": "mips64le",
    "11": "s390x",
}


@dataclass
class SifHeader:
    version: str
    arch: str  #: SIF code, e.g. "02"
    created_at: int
    descriptors_total: int
    descriptors_offset: int
    descriptors_size: int
    data_offset: int
    data_size: int


@dataclass
class SifDescriptor:
    data_type: int
    used: bool
    id: int
    offset: int
    size: int
    name: str
    fs_type: int = 0
    part_type: int = 0
    arch: str = ""


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def read_sif(path: Path) -> tuple[SifHeader, list[SifDescriptor]]:
    """Parse the global header and the used descriptors of a SIF file.

    :raise Corrupt: not a SIF file, or offsets outside the file
    """
    try:
        with open(path, "rb") as f:
            return _read_sif(path, f)
    except OSError as err:
        from pcocc.fsutil import os_error

        raise os_error(err, f"cannot read {path}") from err


def _read_sif(path: Path, f: IO[bytes]) -> tuple[SifHeader, list[SifDescriptor]]:
    """Header and descriptors from an open SIF file."""
    file_size = os.fstat(f.fileno()).st_size
    raw = f.read(HEADER.size)
    if len(raw) < HEADER.size:
        raise Corrupt(f"{path}: too short to be a SIF image")
    (
        _launch,
        magic,
        version,
        arch,
        _uuid,
        created,
        _modified,
        _free,
        total,
        doff,
        dsize,
        data_off,
        data_size,
    ) = HEADER.unpack(raw)
    if magic != SIF_MAGIC:
        raise Corrupt(
            f"{path}: not a SIF image (no SIF_MAGIC)",
            hint="only SIF images (Singularity >= 3) can be imported",
        )
    hdr = SifHeader(_cstr(version), _cstr(arch), created, total, doff, dsize, data_off, data_size)
    if (
        total < 0
        or total > 1_000_000
        or doff < HEADER.size
        or (doff + total * DESCRIPTOR.size > file_size)
    ):
        raise Corrupt(f"{path}: SIF descriptor table lies outside the file")
    f.seek(doff)
    table = f.read(total * DESCRIPTOR.size)
    descs = []
    for i in range(total):
        (dtype, used, did, _group, _linked, off, size, _padded, _c, _m, _uid, _gid, name, extra) = (
            DESCRIPTOR.unpack_from(table, i * DESCRIPTOR.size)
        )
        if not used:
            continue
        if off < 0 or size < 0 or off + size > file_size:
            raise Corrupt(f"{path}: SIF object {did} lies outside the file")
        d = SifDescriptor(dtype, True, did, off, size, _cstr(name))
        if dtype == DATA_PARTITION:
            d.fs_type, d.part_type, parch = PARTITION_EXTRA.unpack_from(extra)
            d.arch = _cstr(parch)
        descs.append(d)
    return hdr, descs


def system_partition(path: Path, descs: list[SifDescriptor]) -> SifDescriptor:
    parts = [d for d in descs if d.data_type == DATA_PARTITION]
    for wanted in (PART_PRIMSYS, PART_SYSTEM):
        for d in parts:
            if d.part_type == wanted:
                if d.fs_type != FS_SQUASHFS:
                    raise Corrupt(
                        f"{path}: the system partition is not squashfs (type {d.fs_type})",
                        hint="encrypted or ext3 SIF images are not supported",
                    )
                return d
    raise Corrupt(f"{path}: SIF image has no system partition")


def import_sif(
    path: Path, staging: Path, add_blob: AddBlob, progress: Progress = no_progress
) -> OciImage:
    """Import the SIF image at ``path`` as a one-layer OCI image.

    :raise Corrupt: not a SIF image, no squashfs system partition, bad squashfs
    :raise ToolMissing: unsquashfs is not installed
    """
    hdr, descs = read_sif(path)
    part = system_partition(path, descs)
    work = staging / "sif-work"
    work.mkdir(parents=True, exist_ok=True)
    squash = work / "rootfs.squashfs"
    with open(path, "rb") as src, open(squash, "wb") as dst:
        src.seek(part.offset)
        if src.read(4) != SQUASHFS_MAGIC:
            raise Corrupt(f"{path}: the system partition does not hold a squashfs image")
        src.seek(part.offset)
        _copy_range(src, dst, part.size)
    progress(part.size // 4, part.size)
    rootfs = work / "rootfs"
    # A fresh directory that nothing else writes to; unsquashfs (>= 4.5.1) refuses names
    # with '/' or '..' and does not write through the symlinks it creates.
    proc.run(
        ["unsquashfs", "-no-progress", "-no-xattrs", "-d", rootfs, squash],
        what=f"unsquashfs of the system partition of {path}",
    )
    squash.unlink()
    progress(part.size // 2, part.size)

    layout = staging / "sif-layout"
    blobs = ocispec.blob_dir(layout)
    blobs.mkdir(parents=True, exist_ok=True)
    layer_tmp = work / "layer.tar.gz"
    diff_id = _tar_rootfs(rootfs, layer_tmp)
    layer_digest = hash_file(layer_tmp, fsync=False)
    layer_size = layer_tmp.stat().st_size
    os.replace(layer_tmp, blobs / digest_hex(layer_digest))
    shutil.rmtree(work, ignore_errors=True)

    arch = ARCHES.get(part.arch or hdr.arch) or _host_arch()
    config = _config(arch, diff_id, hdr.created_at, path.name)
    config_desc = ocispec.write_json_blob(blobs, config, ocispec.MT_OCI_CONFIG, sort_keys=True)
    manifest = {
        "schemaVersion": 2,
        "mediaType": ocispec.MT_OCI_MANIFEST,
        "config": config_desc,
        "layers": [
            {"mediaType": ocispec.MT_LAYER_GZIP, "digest": layer_digest, "size": layer_size}],
    }
    mdesc = ocispec.write_json_blob(blobs, manifest, ocispec.MT_OCI_MANIFEST, sort_keys=True)
    ocispec.write_index(layout, mdesc, oci.STAGING_TAG)
    return oci.ingest_layout(layout, add_blob, progress, tag=oci.STAGING_TAG, what=str(path))


def _copy_range(src: IO[bytes], dst: IO[bytes], size: int) -> None:
    left = size
    while left:
        chunk = src.read(min(left, 1 << 20))
        if not chunk:
            raise Corrupt(f"{getattr(src, 'name', 'SIF')}: truncated partition")
        dst.write(chunk)
        left -= len(chunk)


def _host_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _config(arch: str, diff_id: str, created: int, name: str) -> dict:
    created_s = datetime.datetime.fromtimestamp(max(created, 0), datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    return {
        "created": created_s,
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created_s, "created_by": f"pcocc image import {name} (SIF)"}],
    }


def _tar_rootfs(rootfs: Path, out: Path) -> str:
    """Write rootfs as a reproducible gzip tar layer; return the tar's sha256 (diff_id).

    As non-root, unsquashfs cannot keep owners: files are recorded as root-owned.
    """
    is_root = os.geteuid() == 0

    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uname = info.gname = ""
        if not is_root:
            info.uid = info.gid = 0
        return info

    with write_layer(out) as (tar, hw):
        for name in sorted(os.listdir(rootfs)):
            tar.add(rootfs / name, arcname=name, recursive=True, filter=normalize)
    return hw.digest()
