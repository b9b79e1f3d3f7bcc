"""SIF reader: header and descriptors parsed by hand, squashfs partition imported as OCI."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from helpers.testimages import BlobDir, build_sif, make_squashfs
from pcocc.errors import Corrupt
from pcocc.repo import sif

pytestmark = pytest.mark.skipif(
    not (shutil.which("mksquashfs") and shutil.which("unsquashfs")),
    reason="squashfs-tools not installed",
)


@pytest.fixture
def tree(tmp_path) -> Path:
    t = tmp_path / "tree"
    (t / "bin").mkdir(parents=True)
    (t / "bin/hello").write_bytes(b"#!/bin/sh\necho hello\n")
    (t / "bin/hello").chmod(0o755)
    (t / "etc").mkdir()
    (t / "etc/os-release").write_text("ID=pcocc-test\n")
    os.symlink("hello", t / "bin/hi")
    (t / "empty").mkdir()
    return t


def test_header_and_descriptors_are_parsed(tmp_path, tree):
    squash = make_squashfs(tree, tmp_path / "r.sqfs")
    image = build_sif(squash, tmp_path / "img.sif", arch="04")
    hdr, descs = sif.read_sif(image)
    assert hdr.version == "01"
    assert hdr.arch == "04"
    assert hdr.descriptors_total == 4
    assert [d.data_type for d in descs] == [0x4001, sif.DATA_PARTITION]
    part = sif.system_partition(image, descs)
    assert (part.fs_type, part.part_type, part.arch) == (1, 2, "04")
    assert part.size == squash.stat().st_size
    with open(image, "rb") as f:
        f.seek(part.offset)
        assert f.read(part.size) == squash.read_bytes()


def test_import_gives_a_one_layer_oci_image(tmp_path, tree):
    image = build_sif(make_squashfs(tree, tmp_path / "r.sqfs"), tmp_path / "img.sif")
    store = BlobDir(tmp_path / "store")
    staging = tmp_path / "staging"
    staging.mkdir()
    seen = []
    img = sif.import_sif(image, staging, store, lambda d, t: seen.append((d, t)))
    assert img.config["architecture"] == "amd64"
    assert img.config["os"] == "linux"
    assert len(img.manifest["layers"]) == 1
    assert {b.digest for b in img.blobs} == store.digests()
    assert img.manifest_digest in store.digests()
    assert seen and seen[-1][0] == seen[-1][1]
    # The layer holds the tree; the diff_id is the digest of the uncompressed tar.
    layer = store.path(img.manifest["layers"][0]["digest"]).read_bytes()
    raw = gzip.decompress(layer)
    import hashlib

    assert img.config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(raw).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert names["bin/hello"].mode & 0o777 == 0o755
    assert names["bin/hi"].issym() and names["bin/hi"].linkname == "hello"
    assert names["empty"].isdir()
    manifest = json.loads(store.path(img.manifest_digest).read_bytes())
    assert manifest == img.manifest


def test_reimport_is_reproducible(tmp_path, tree):
    image = build_sif(make_squashfs(tree, tmp_path / "r.sqfs"), tmp_path / "img.sif")
    store = BlobDir(tmp_path / "store")
    digests = []
    for i in range(2):
        staging = tmp_path / f"staging{i}"
        staging.mkdir()
        digests.append(sif.import_sif(image, staging, store).manifest_digest)
    assert digests[0] == digests[1]
    assert len(store.digests()) == 3


def test_not_a_sif_file(tmp_path):
    bad = tmp_path / "bad.simg"
    bad.write_bytes(b"#!/bin/sh\n" + b"\0" * 300)
    with pytest.raises(Corrupt, match=r"bad\.simg: not a SIF image"):
        sif.read_sif(bad)
    short = tmp_path / "short.sif"
    short.write_bytes(b"abc")
    with pytest.raises(Corrupt, match="too short"):
        sif.read_sif(short)


def test_truncated_descriptor_table(tmp_path, tree):
    image = build_sif(make_squashfs(tree, tmp_path / "r.sqfs"), tmp_path / "img.sif")
    data = image.read_bytes()
    (tmp_path / "cut.sif").write_bytes(data[:600])
    with pytest.raises(Corrupt, match="outside the file"):
        sif.read_sif(tmp_path / "cut.sif")


def test_no_system_partition_or_not_squashfs(tmp_path, tree):
    squash = make_squashfs(tree, tmp_path / "r.sqfs")
    data_only = build_sif(squash, tmp_path / "d.sif", part_type=3)
    with pytest.raises(Corrupt, match="no system partition"):
        sif.system_partition(data_only, sif.read_sif(data_only)[1])
    ext3 = build_sif(squash, tmp_path / "e.sif", fs_type=2)
    with pytest.raises(Corrupt, match="not squashfs"):
        sif.system_partition(ext3, sif.read_sif(ext3)[1])


def test_partition_without_squashfs_magic(tmp_path):
    fake = tmp_path / "fake.sqfs"
    fake.write_bytes(b"notsquash" * 100)
    image = build_sif(fake, tmp_path / "f.sif")
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(Corrupt, match="does not hold a squashfs"):
        sif.import_sif(image, staging, BlobDir(tmp_path / "store"))
