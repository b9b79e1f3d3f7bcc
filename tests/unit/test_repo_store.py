"""The store: blobs, commits, look-ups, delete, copy, gc, fsck, and container paths through
a fake driver (the real container drivers have their own integration tests)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import types
from pathlib import Path

import pytest

from pcocc.config import RepoConfig
from pcocc.errors import AlreadyExists, Corrupt, NotFound, PcoccError, PermissionDenied, UsageError
from pcocc.repo import drivers, ops
from pcocc.repo.maintenance import fsck, gc
from pcocc.repo.model import KIND_CTR, BlobRef, OciImage
from pcocc.repo.store import Repository, new_meta
from pcocc.repo.reposet import RepoSet


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def repos(tmp_path) -> RepoSet:
    return RepoSet([
        RepoConfig("global", tmp_path / "global", "admins", "system"),
        RepoConfig("user", tmp_path / "user", "mine", "user"),
        RepoConfig("other", tmp_path / "other", "more", "user"),
    ])


def put(repo: Repository, data: bytes) -> BlobRef:
    with repo.staging() as st:
        f = st / "b"
        f.write_bytes(data)
        return BlobRef(repo.add_blob(f), len(data))


def commit_ctr(repo: Repository, name: str, *datas: bytes, new: bool = True):
    blobs = [put(repo, d) for d in datas]
    oci = {"manifest_digest": blobs[0].digest, "manifest": {"layers": []}, "config": {}}
    return repo.commit(new_meta(name, KIND_CTR, blobs, oci=oci), new_image=new)


def test_add_blob_verifies_dedups_and_makes_read_only(repos):
    repo = repos.get("user")
    ref = put(repo, b"hello")
    path = repo.blob_path(ref.digest)
    assert ref.digest == sha(b"hello")
    assert path.read_bytes() == b"hello" and (path.stat().st_mode & 0o777) == 0o444
    assert put(repo, b"hello").digest == ref.digest  # deduplicated
    assert len(list((repo.path / "data").rglob("*"))) == 2  # one subdir, one blob
    with repo.staging() as st:
        (st / "x").write_bytes(b"other")
        with pytest.raises(Corrupt, match="does not match"):
            repo.add_blob(st / "x", expected_digest=sha(b"not it"))
        assert not (st / "x").exists()
    assert list((repo.path / "tmp").iterdir()) == []  # staging dirs are removed


def test_revisions_name_clash_and_lookup_order(repos):
    user, other = repos.get("user"), repos.get("other")
    m0 = commit_ctr(user, "img", b"a")
    m1 = commit_ctr(user, "img", b"b", new=False)
    assert (m0.revision, m1.revision) == (0, 1)
    with pytest.raises(AlreadyExists, match="'user:img' already exists"):
        commit_ctr(user, "img", b"c")
    commit_ctr(other, "img", b"z")
    repo, meta = repos.resolve("img")  # first repository in order wins, latest revision
    assert (repo.name, meta.revision, meta.image_id) == ("user", 1, m1.image_id)
    assert repos.resolve("other:img")[1].repo == "other"
    assert repos.resolve("img@0")[1].image_id == m0.image_id
    with pytest.raises(NotFound):
        repos.resolve("img@7")
    with pytest.raises(NotFound, match="repository 'nope' is not configured"):
        repos.resolve("nope:img")


def test_image_id_is_digest_of_stored_metadata_and_prefix_lookup(repos):
    user = repos.get("user")
    meta = commit_ctr(user, "img", b"a")
    stored = user.layout.meta_path("img", 0).read_bytes()
    assert meta.image_id == "sha256-" + hashlib.sha256(stored).hexdigest()
    assert json.loads(stored)["name"] == "img"
    assert repos.resolve(meta.image_id[:15])[1].image_id == meta.image_id
    ids = [meta.image_id] + [commit_ctr(user, f"i{n}", bytes([n])).image_id for n in range(16)]
    first = [i[7] for i in ids]  # 17 IDs, 16 hex digits: two share their first digit
    shared = next(c for c in first if first.count(c) > 1)
    with pytest.raises(UsageError, match="ambiguous"):
        repos.resolve("sha256-" + shared)
    with pytest.raises(UsageError, match="invalid image ID"):
        repos.resolve("sha256-")
    with pytest.raises(NotFound):
        repos.resolve("sha256-" + "f" * 64)


def test_list_filters_and_shows_latest_revision(repos):
    user = repos.get("user")
    for i in range(5):
        commit_ctr(user, f"img{i}", bytes([i]))
    commit_ctr(user, "img3", b"new", new=False)
    images = repos.images(regex=r"img[1-3]")
    assert [(m.name, m.revision) for m in images] == [("img1", 0), ("img2", 0), ("img3", 1)]
    assert len(repos.images("user")) == 5
    assert repos.images("other") == []
    with pytest.raises(UsageError, match="invalid regular expression"):
        repos.images(regex="(")


def test_delete_one_revision_or_all(repos):
    user = repos.get("user")
    commit_ctr(user, "img", b"a")
    commit_ctr(user, "img", b"b", new=False)
    assert [m.revision for m in repos.delete("img@0")] == [0]
    assert user.layout.revisions("img") == [1]
    assert [m.revision for m in repos.delete("user:img")] == [1]
    assert not user.layout.image_dir("img").exists()
    with pytest.raises(NotFound):
        repos.delete("img")


def test_system_repository_is_read_only(repos):
    glob = repos.get("global")
    with pytest.raises(PermissionDenied, match="read-only"):
        glob.require_writable()
    with pytest.raises(PermissionDenied):
        repos.for_write("global")
    assert repos.for_write(None).name == "user"  # first writable one


def test_gc_keeps_referenced_and_young_removes_the_rest(repos):
    user = repos.get("user")
    kept = commit_ctr(user, "img", b"referenced")
    orphan = put(user, b"orphan" * 1000)
    stale = user.layout.tmp_dir / "import-1-dead"
    stale.mkdir()
    (stale / "part").write_bytes(b"x" * 500)
    report = gc(user, grace_period_s=3600)
    assert (report.blobs_removed, report.tmp_removed) == (0, 0)
    assert report.kept_young == 2
    old = time.time() - 7200
    os.utime(user.blob_path(orphan.digest), (old, old))
    for p in (stale / "part", stale):
        os.utime(p, (old, old))
    report = gc(user, grace_period_s=3600)
    assert (report.blobs_removed, report.tmp_removed) == (1, 1)
    assert report.bytes_freed == 6000 + 500
    assert not user.blob_path(orphan.digest).exists()
    for b in kept.blobs:
        assert user.blob_path(b.digest).exists()
    repos.delete("img")
    assert gc(user, grace_period_s=0).blobs_removed == 1


def test_fsck_finds_damage_and_quarantines(repos):
    user = repos.get("user")
    meta = commit_ctr(user, "img", b"good", b"victim")
    assert fsck(user).is_clean
    victim = user.blob_path(meta.blobs[1].digest)
    os.chmod(victim, 0o644)
    victim.write_bytes(b"bitrot")
    report = fsck(user)
    assert len(report.problems) == 2  # the blob itself, and the image that uses it
    assert any("user:img@0" in p and "damaged" in p for p in report.problems)
    report = fsck(user, quarantine=True)
    assert report.quarantined == [meta.blobs[1].digest]
    assert not victim.exists() and list(user.layout.quarantine_dir.iterdir())
    report = fsck(user)
    assert any("missing" in p for p in report.problems)


def test_fsck_reports_unreadable_metadata(repos):
    user = repos.get("user")
    commit_ctr(user, "img", b"a")
    path = user.layout.meta_path("img", 0)
    os.chmod(path, 0o644)
    path.write_text("{not json")
    assert any("invalid image metadata" in p for p in fsck(user).problems)
    commit_ctr(user, "fine", b"b")
    assert [m.name for m in user.images()] == ["fine"]  # listing skips the damaged one
    with pytest.raises(Corrupt):
        gc(user, grace_period_s=0)  # never collect when references are unknown


# -- container paths through a fake driver -----------------------------------------------


@pytest.fixture
def fake_driver(monkeypatch):
    mod = types.ModuleType("fake_oci_driver")
    calls = {}

    def import_image(source, fmt, staging, add_blob, progress):
        calls["import"] = (source, fmt, Path(staging).parent.name)
        blobs = []
        for i, data in enumerate([b'{"config": {"Env": ["A=1"]}}', b"layer-" + source.encode()]):
            f = Path(staging) / f"b{i}"
            f.write_bytes(data)
            blobs.append(BlobRef(add_blob(f, expected_digest=sha(data)), len(data), "x"))
            progress(i + 1, 2)
        return OciImage(blobs[0].digest, {"layers": [{"digest": blobs[1].digest}]},
                        {"config": {"Env": ["A=1"], "Entrypoint": ["/bin/sh"]}}, blobs)

    def export_image(image, blob_path, dest, fmt, workdir, progress):
        calls["export"] = (dest, fmt, [blob_path(b.digest).read_bytes() for b in image.blobs])
        assert Path(workdir).is_dir()

    mod.import_image, mod.export_image = import_image, export_image
    monkeypatch.setitem(sys.modules, "fake_oci_driver", mod)
    for fmt in drivers.CONTAINER_FORMATS:
        monkeypatch.setitem(drivers.DRIVER_MODULES, fmt, "fake_oci_driver")
    return calls


def test_container_import_export_copy_through_driver(repos, fake_driver):
    meta = ops.import_image(repos, "docker://busybox:latest", "user:bb", description="d")
    assert fake_driver["import"] == ("//busybox:latest", "docker", "tmp")
    assert (meta.kind, meta.source, meta.description) == ("ctr", "docker://busybox:latest", "d")
    assert meta.oci_image().config["config"]["Entrypoint"] == ["/bin/sh"]
    ops.export_image(repos, "bb", "docker-archive:/x/out.tar")
    dest, fmt, contents = fake_driver["export"]
    assert (dest, fmt) == ("/x/out.tar", "docker-archive")
    assert contents[1] == b"layer-//busybox:latest"
    with pytest.raises(UsageError, match="container image"):
        ops.export_image(repos, "bb", "out.qcow2")
    with pytest.raises(UsageError, match="only VM images"):
        ops.resize_image(repos, "bb", 1 << 30)
    copied = ops.copy_image(repos, "user:bb", "other:bb2")
    other = repos.get("other")
    assert [b.digest for b in copied.blobs] == [b.digest for b in meta.blobs]
    for b in copied.blobs:
        assert other.blob_path(b.digest).read_bytes() == repos.get("user").blob_path(
            b.digest).read_bytes()
    same = ops.copy_image(repos, "user:bb", "user:bb3")  # same repo: blobs shared
    assert same.blobs == meta.blobs
    assert fsck(other).is_clean and fsck(repos.get("user")).is_clean


def test_missing_container_driver_is_a_clear_error(repos, monkeypatch):
    monkeypatch.setitem(drivers.DRIVER_MODULES, "docker-archive", "pcocc.repo.no_such_driver")
    with pytest.raises(PcoccError, match="container formats need the container drivers"):
        ops.import_image(repos, "docker-archive:x.tar", "user:x")
    assert repos.images() == []


def test_parse_size():
    assert ops.parse_size("20G") == 20 << 30
    assert ops.parse_size("512MiB") == 512 << 20
    assert ops.parse_size("1.5K") == 1536
    assert ops.parse_size("4096") == 4096
    for bad in ("", "-1G", "12X", "0"):
        with pytest.raises(UsageError):
            ops.parse_size(bad)


def test_unknown_repository_format_is_refused_on_every_path(repos):
    user = repos.get("user")
    commit_ctr(user, "img", b"a")
    user.layout.marker.chmod(0o644)
    user.layout.marker.write_text('{"format": "pcocc-repo", "version": 2}')
    fresh = RepoSet([RepoConfig("user", user.path)])
    for call in (fresh.images, lambda: fresh.resolve("img"),
                 lambda: commit_ctr(fresh.get("user"), "new", b"b")):
        with pytest.raises(PcoccError, match="format version 2 is not supported"):
            call()


def test_gc_progress_counts_bytes(repos):
    user = repos.get("user")
    commit_ctr(user, "img", b"x" * 300, b"y" * 700)
    seen = []
    gc(user, 0, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (1000, 1000) and len(seen) == 2


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (3 << 20) + 17])
def test_hash_file_digest_and_progress_across_read_buffers(tmp_path, size):
    from pcocc.repo.digest import hash_file

    data = os.urandom(size)
    f = tmp_path / "blob"
    f.write_bytes(data)
    seen: list[tuple[int, int | None]] = []
    assert hash_file(f, lambda done, total: seen.append((done, total)), 5, size + 5) == sha(data)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert (seen[-1][0] if seen else 5) == size + 5
    assert hash_file(f, fsync=False) == sha(data)
