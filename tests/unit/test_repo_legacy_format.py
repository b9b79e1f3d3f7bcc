"""Reading pcocc 0.7 repositories (no qemu-img here: see tests/integration/test_repo_legacy.py),
and the store's whole-image commit that import-legacy relies on."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import pytest

from pcocc.config import RepoConfig
from pcocc.errors import AlreadyExists, Corrupt, PcoccError, PermissionDenied
from pcocc.repo.legacy import LegacyRepo, parse_meta
from pcocc.repo.model import KIND_CTR, KIND_VM, BlobRef
from pcocc.repo.qemu_img import ImageInfo, layer_problem
from pcocc.repo.store import Repository, new_meta

HEX = "ab" * 32


def _meta(**over) -> bytes:
    d = {"name": "centos", "revision": 1, "kind": "vm", "owner": "ann", "timestamp": 1.5,
         "data_blobs": [HEX, "sha256:" + "cd" * 32], "custom_meta": {}}
    d.update(over)
    return json.dumps({k: v for k, v in d.items() if v is not ...}).encode()


def test_parse_meta_takes_both_digest_spellings():
    m = parse_meta(_meta(description="d"), "f")
    assert (m.name, m.revision, m.kind, m.owner, m.timestamp) == ("centos", 1, KIND_VM, "ann",
                                                                  1.5)
    assert m.blobs == (HEX, "cd" * 32) and m.description == "d"
    ctr = parse_meta(_meta(kind="ctr", custom_meta={"oci_index": {"x": 1}}), "f")
    assert ctr.kind == KIND_CTR and ctr.oci_index == {"x": 1}


@pytest.mark.parametrize("over,why", [
    ({"extra": 1}, "unknown keys ['extra']"),
    ({"owner": ...}, "missing keys ['owner']"),
    ({"revision": True}, "invalid revision"),
    ({"revision": -1}, "invalid revision"),
    ({"data_blobs": []}, "data_blobs is not a non-empty list"),
    ({"data_blobs": ["../../etc/passwd"]}, "is not a sha256 digest"),
    ({"data_blobs": ["sha512:" + HEX]}, "is not a sha256 digest"),
    ({"kind": "docker"}, "unknown image kind 'docker'"),
    ({"name": "a/b"}, "invalid name"),
    ({"custom_meta": []}, "custom_meta is not an object"),
])
def test_parse_meta_is_strict(over, why):
    with pytest.raises(Corrupt, match="^f: ") as err:
        parse_meta(_meta(**over), "f")
    assert why in str(err.value)


def _legacy(root: Path, version: str = "2") -> Path:
    for d in ("data", "meta"):
        (root / d).mkdir(parents=True)
    (root / ".config").write_text(f"version: {version}\n")
    return root


def test_repository_markers(tmp_path):
    with pytest.raises(PcoccError, match="is not a pcocc 0.7 repository") as err:
        LegacyRepo(tmp_path)
    assert "holds .config" in err.value.hint
    with pytest.raises(PcoccError, match="format version 1") as err:
        LegacyRepo(_legacy(tmp_path / "v1", "1"))
    assert "pcocc 0.7 first" in err.value.hint
    with pytest.raises(Corrupt, match="unknown repository format version 3"):
        LegacyRepo(_legacy(tmp_path / "v3", "3"))


def test_metadata_entries_and_their_problems(tmp_path):
    root = _legacy(tmp_path / "r")
    (root / "meta" / "centos@0").write_bytes(_meta(revision=0))
    (root / "meta" / "centos@1").write_bytes(_meta())
    (root / "meta" / "liar@0").write_bytes(_meta(revision=0))  # says it is centos@0
    (root / "meta" / "junk").write_text("{}")
    secret = tmp_path / "secret"
    secret.write_bytes(_meta(name="linked", revision=0))
    (root / "meta" / "linked@0").symlink_to(secret)
    with LegacyRepo(root) as legacy:
        images, problems = legacy.revisions()
    assert [m.revision for m in images["centos"]] == [0, 1]
    assert set(images) == {"centos"}
    assert "it describes centos@0" in problems["liar"]
    assert "not a metadata file name" in problems["junk"]
    assert "is a symbolic link: refused" in problems["linked"]


def test_blobs_are_checked_and_read_inside_the_repository_only(tmp_path):
    root = _legacy(tmp_path / "r")
    data = b"layer"
    good = hashlib.sha256(data).hexdigest()
    (root / "data" / good[:2]).mkdir()
    (root / "data" / good[:2] / good).write_bytes(data)
    bad = "0" * 64
    (root / "data" / "00").mkdir()
    (root / "data" / "00" / bad).write_bytes(data)
    outside = tmp_path / "outside"
    outside.mkdir()
    linked = hashlib.sha256(b"secret").hexdigest()
    (outside / linked).write_bytes(b"secret")
    (root / "data" / linked[:2]).symlink_to(outside)  # a directory link out of the repo
    with LegacyRepo(root) as legacy:
        assert legacy.copy_blob(good, tmp_path / "a") == len(data)
        assert (tmp_path / "a").read_bytes() == data
        with pytest.raises(Corrupt, match="is damaged: its content hashes to sha256:"):
            legacy.copy_blob(bad, tmp_path / "b")
        assert not (tmp_path / "b").exists()
        with pytest.raises(PermissionDenied, match="is a symbolic link: refused"):
            legacy.copy_blob(linked, tmp_path / "c")
        assert not (tmp_path / "c").exists()


def _info(**over) -> ImageInfo:
    base = ImageInfo(path="x", format="qcow2", virtual_size=1, actual_size=1,
                     backing_filename="../../data/ab/" + HEX, full_backing_filename=None,
                     backing_format=None)
    return dataclasses.replace(base, **over)


def test_layer_without_backing_format_only_where_allowed():
    want = "../../data/ab/" + HEX
    assert layer_problem(_info(), want, backing_format_optional=True) is None
    assert "backing format None" in layer_problem(_info(), want)
    assert layer_problem(_info(backing_format="raw"), want, backing_format_optional=True)
    assert "has backing file '/etc/shadow'" in layer_problem(
        _info(backing_filename="/etc/shadow"), want, backing_format_optional=True)


@pytest.fixture
def repo(tmp_path) -> Repository:
    return Repository(RepoConfig("user", tmp_path / "user", "", "user"))


def _blob(repo: Repository, data: bytes) -> BlobRef:
    with repo.staging() as st:
        (st / "b").write_bytes(data)
        return BlobRef(repo.add_blob(st / "b"), len(data))


def _ctr(repo, name, rev, blob):
    oci = {"manifest_digest": blob.digest, "manifest": {"layers": []}, "config": {}}
    return dataclasses.replace(new_meta(name, KIND_CTR, [blob], oci=oci), revision=rev)


def test_commit_image_keeps_revision_numbers(repo):
    blob = _blob(repo, b"x")
    stored = repo.commit_image([_ctr(repo, "img", 3, blob), _ctr(repo, "img", 0, blob)])
    assert [m.revision for m in stored] == [0, 3]
    assert repo.layout.revisions("img") == [0, 3]
    assert list(repo.layout.tmp_dir.iterdir()) == []
    with pytest.raises(AlreadyExists):
        repo.commit_image([_ctr(repo, "img", 0, blob)])


def test_commit_image_is_all_or_nothing(repo):
    blob = _blob(repo, b"x")
    gone = BlobRef("sha256:" + "0" * 64, 1)
    with pytest.raises(Corrupt, match="vanished"):
        repo.commit_image([_ctr(repo, "img", 0, blob), _ctr(repo, "img", 1, gone)])
    assert repo.layout.revisions("img") == []
    assert not repo.layout.image_dir("img").exists()


def test_a_pcocc_07_repository_is_not_used_in_place(tmp_path):
    root = _legacy(tmp_path / "old")
    repo = Repository(RepoConfig("old", root, "", "user"))
    with pytest.raises(PcoccError, match="holds a pcocc 0.7 repository") as err:
        repo.has_image("x")
    assert "import-legacy" in err.value.hint
    with pytest.raises(PcoccError, match="holds a pcocc 0.7 repository"):
        repo.layout.initialize()
    assert sorted(os.listdir(root)) == [".config", "data", "meta"]
