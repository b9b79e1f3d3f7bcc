"""Container cache: prepare (dir and squashfs), concurrency, LRU eviction, list/delete/gc."""

from __future__ import annotations

import dataclasses
import fcntl
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import pytest

from helpers import testimages
from pcocc import proc
from pcocc.config import RepoConfig
from pcocc.errors import NotFound, UsageError
from pcocc.repo import cache as cache_mod
from tests.nonroot import readable_pcocc
from pcocc.repo import oci
from pcocc.repo.cache import ContainerCache
from pcocc.repo.store import Repository


class Store:
    """A real repository; ``path`` is what the cache gets to find blobs."""

    def __init__(self, root: Path):
        self.root = root
        self.repo = Repository(RepoConfig("test", root))
        self.path = self.repo.blob_path


@pytest.fixture(scope="module")
def stored(tmp_path_factory, multilayer_image):
    """The multi-layer test image imported into a repository."""
    store = Store(tmp_path_factory.mktemp("cache-store") / "repo")
    with store.repo.staging() as staging:
        image = oci.import_image(str(multilayer_image.layout) + ":multi", "oci", staging,
                                 store.repo.add_blob)
    return store, image


def variant(image, n: int):
    """The same layers under another manifest digest: a distinct cache key, cheaply."""
    return dataclasses.replace(image, manifest_digest="sha256:" + f"{n:x}" * 64)


def test_prepare_dir_builds_once_and_records_use(tmp_path, stored, multilayer_image):
    store, image = stored
    cache = ContainerCache(tmp_path / "cache")
    rootfs = cache.prepare(image, store.path, "dir")
    assert rootfs.name == "rootfs"
    assert testimages.check_tree(rootfs, multilayer_image) == []
    assert (rootfs.parent / "image-config.json").is_file()
    [entry] = cache.list()
    assert (entry.digest, entry.mode) == (image.manifest_digest, "dir")
    assert entry.size_bytes > len(testimages.BUSYBOX.read_bytes()) // 2
    old = entry.last_used
    os.utime(entry.path / "last-use", (old - 100, old - 100))
    ino = rootfs.stat().st_ino
    assert cache.prepare(image, store.path, "dir") == rootfs
    assert rootfs.stat().st_ino == ino  # not rebuilt
    assert cache.list()[0].last_used > old - 100
    assert list((tmp_path / "cache/tmp").iterdir()) == []


@pytest.mark.skipif(not shutil.which("unsquashfs"), reason="squashfs-tools not installed")
def test_prepare_squashfs(tmp_path, stored):
    store, image = stored
    cache = ContainerCache(tmp_path / "cache")
    sq = cache.prepare(image, store.path, "squashfs")
    assert sq.name == "rootfs.squashfs" and sq.is_file()
    listing = proc.run(["unsquashfs", "-l", sq]).stdout
    assert "squashfs-root/bin/busybox" in listing
    assert "squashfs-root/data/top" in listing
    assert "squashfs-root/etc/gone" not in listing
    assert not (sq.parent / "rootfs").exists()
    assert cache.lookup(image.manifest_digest, "squashfs") == sq
    assert cache.lookup(image.manifest_digest, "dir") is None


def _prepare_in_child(cache_root: str, image, blob_root: str, out: multiprocessing.Queue) -> None:
    path = ContainerCache(Path(cache_root)).prepare(image, Store(Path(blob_root)).path, "dir")
    out.put((str(path), path.stat().st_ino))


def test_concurrent_prepare_shares_one_copy(tmp_path, stored, monkeypatch):
    store, image = stored
    builds = tmp_path / "builds"
    import pcocc.repo.unpack as unpack_mod  # the cache imports it on its cold path only

    real_unpack = unpack_mod.unpack_image

    def slow_counted_unpack(*args, **kw):
        with open(builds, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # keep the build window open while the others arrive
        return real_unpack(*args, **kw)

    monkeypatch.setattr(unpack_mod, "unpack_image", slow_counted_unpack)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    children = [
        ctx.Process(
            target=_prepare_in_child, args=(str(tmp_path / "cache"), image, str(store.root), out)
        )
        for _ in range(4)
    ]
    for c in children:
        c.start()
    results = [out.get(timeout=60) for _ in children]
    for c in children:
        c.join(timeout=30)
        assert c.exitcode == 0
    assert len(set(results)) == 1  # same path, same inode
    assert len(builds.read_text().split()) == 1
    assert len(list((tmp_path / "cache/entries").iterdir())) == 1
    assert list((tmp_path / "cache/tmp").iterdir()) == []


def test_lru_eviction(tmp_path, stored):
    store, image = stored
    probe = ContainerCache(tmp_path / "probe")
    probe.prepare(image, store.path, "dir")
    one = probe.list()[0].size_bytes
    cache = ContainerCache(tmp_path / "cache", max_size_bytes=int(one * 2.5))
    a, b, c = (variant(image, n) for n in (1, 2, 3))
    cache.prepare(a, store.path)
    time.sleep(0.02)
    cache.prepare(b, store.path)
    time.sleep(0.02)
    cache.prepare(a, store.path)  # a is now more recent than b
    time.sleep(0.02)
    cache.prepare(c, store.path)  # over the limit: b, the least recently used, goes
    assert [e.digest for e in cache.list()] == [a.manifest_digest, c.manifest_digest]
    assert cache.total_size_bytes() <= cache.max_size_bytes
    # An entry larger than the limit on its own is still kept while it is the one prepared.
    tiny = ContainerCache(tmp_path / "cache", max_size_bytes=1)
    tiny.prepare(b, store.path)
    assert [e.digest for e in tiny.list()] == [b.manifest_digest]


def test_list_and_delete(tmp_path, stored):
    store, image = stored
    cache = ContainerCache(tmp_path / "cache")
    a, b = variant(image, 4), variant(image, 5)
    for img, mode in ((a, "dir"), (b, "dir"), (a, "squashfs"), (b, "dir")):
        cache.prepare(img, store.path, mode)
        time.sleep(0.02)
    assert [(e.digest, e.mode) for e in cache.list()] == [  # least recently used first
        (a.manifest_digest, "dir"),
        (a.manifest_digest, "squashfs"),
        (b.manifest_digest, "dir"),
    ]
    gone = cache.delete(a.manifest_digest)
    assert sorted(e.mode for e in gone) == ["dir", "squashfs"]
    assert [e.digest for e in cache.list()] == [b.manifest_digest]
    assert not any((tmp_path / "cache/tmp").iterdir())
    with pytest.raises(NotFound, match="not in the container cache"):
        cache.delete(a)
    with pytest.raises(UsageError, match="not an image digest"):
        cache.delete("busybox")
    assert cache_mod.resolve_prefix(cache, b.manifest_digest[7:19]) == b.manifest_digest


def test_gc(tmp_path, stored):
    store, image = stored
    cache = ContainerCache(tmp_path / "cache")
    live, dead = variant(image, 6), variant(image, 7)
    cache.prepare(live, store.path)
    cache.prepare(dead, store.path)
    tmp = tmp_path / "cache/tmp"
    crashed = tmp / f"dir-{'8' * 64}.99999.abcd"
    (crashed / "rootfs/etc").mkdir(parents=True)
    (crashed / "rootfs/etc/x").write_text("half")
    (crashed / "rootfs/etc").chmod(0o555)
    building = tmp / f"dir-{'9' * 64}.12345.beef"
    building.mkdir()
    broken = tmp_path / "cache/entries" / f"dir-{'a' * 64}"
    broken.mkdir()
    lock_path = tmp_path / "cache/locks" / f"dir-{'9' * 64}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process is building entry 9...
        report = cache.gc(live_digests={live.manifest_digest})
    finally:
        os.close(fd)
    assert not crashed.exists()
    assert building.exists()  # ...so its build directory stays
    assert not broken.exists()
    assert [e.digest for e in report.removed_entries] == [dead.manifest_digest]
    assert report.freed_bytes > 0
    assert [e.digest for e in cache.list()] == [live.manifest_digest]
    report2 = cache.gc()
    assert building.name in report2.removed_tmp  # the lock is free now
    assert [e.digest for e in cache.list()] == [live.manifest_digest]


def test_bad_mode_is_a_usage_error(tmp_path, stored):
    store, image = stored
    with pytest.raises(UsageError, match="unknown cache mode 'ext4'"):
        ContainerCache(tmp_path / "c").prepare(image, store.path, "ext4")


NONROOT_SCRIPT = """
import json, sys
from pathlib import Path
from pcocc.config import RepoConfig
from pcocc.repo.cache import ContainerCache
from pcocc.repo.model import OciImage
from pcocc.repo.store import Repository
data = json.loads(Path(sys.argv[1]).read_text())
image = OciImage(data["digest"], data["manifest"], data["config"])
cache = ContainerCache(Path(sys.argv[2]))
repo = Repository(RepoConfig("shared", Path(sys.argv[3]), origin="system"))
out = {m: str(cache.prepare(image, repo.blob_path, m)) for m in ("dir", "squashfs")}
out["deleted"] = len(cache.delete(image.manifest_digest))
out["left"] = [p.name for p in (Path(sys.argv[2]) / "tmp").iterdir()]
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to a throwaway user")
def test_prepare_and_delete_as_non_root_user(stored, multilayer_image):
    """A user's own cache: read-only directories in the image must not block deletion."""
    import json
    import subprocess
    import tempfile

    python = shutil.which("python3", path="/usr/bin:/bin")
    if not shutil.which("setpriv") or python is None:
        pytest.skip("setpriv or a system python3 is missing")
    store, image = stored
    top = Path(tempfile.mkdtemp(prefix="pcocc-cache-nonroot-"))  # pytest's tmp is root-only
    try:
        top.chmod(0o755)
        blobs = top / "blobs"
        shutil.copytree(store.root, blobs)
        cache_dir = top / "cache"
        cache_dir.mkdir()
        os.chown(cache_dir, 65534, 65534)
        spec = top / "image.json"
        spec.write_text(
            json.dumps(
                {
                    "digest": image.manifest_digest,
                    "manifest": image.manifest,
                    "config": image.config,
                }
            )
        )
        for p in [blobs, spec, *blobs.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        res = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                python,
                "-c",
                NONROOT_SCRIPT,
                str(spec),
                str(cache_dir),
                str(blobs),
            ],
            capture_output=True,
            text=True,
            check=False,
            env={
                "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
                "HOME": str(top),
                "PYTHONPATH": str(readable_pcocc(top)),
            },
        )
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["dir"].endswith("/rootfs") and out["squashfs"].endswith(".squashfs")
        assert out["deleted"] == 2
        assert out["left"] == []
        assert list((cache_dir / "entries").iterdir()) == []
    finally:
        shutil.rmtree(top)


def test_the_build_that_takes_over_removes_a_killed_builds_directory(tmp_path, stored):
    store, image = stored
    cache = ContainerCache(tmp_path / "cache")
    key = f"dir-{image.manifest_digest.split(':')[1]}"
    tmp = tmp_path / "cache/tmp"
    tmp.mkdir(parents=True)
    killed = tmp / f"{key}.99999.dead"  # a build SIGKILLed half-way
    (killed / "rootfs/etc").mkdir(parents=True)
    (killed / "rootfs/etc/x").write_text("half")
    (killed / "rootfs/etc").chmod(0o555)
    other = tmp / f"dir-{'c' * 64}.99998.dead"  # another entry's: not ours to judge
    other.mkdir()
    cache.prepare(image, store.path, "dir")
    assert not killed.exists()
    assert other.exists()
