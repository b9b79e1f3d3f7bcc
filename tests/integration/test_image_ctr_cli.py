"""Container images end to end: a real ``pcocc`` process, the real store, skopeo, umoci,
docker-registry and squashfs-tools; nothing faked."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from repo_testlib import assert_one_line_error, ok, pcocc
from test_image_oci import layer_type_mismatches

from helpers import testimages
from pcocc.config import load_config
from pcocc.repo.cache import ContainerCache
from pcocc.repo.reposet import RepoSet
from pcocc.repo.unpack import unpack_image

FILE_FORMATS = {  # format -> location of an image of that format below a directory
    "docker-archive": "img.docker.tar",
    "oci-archive": "img.oci.tar",
    "oci": "layout:img",
    "dir": "img.dir",
}


@pytest.fixture
def env(pcocc_env, tmp_path):
    repos = {"user": tmp_path / "repo-user", "other": tmp_path / "repo-other"}
    (pcocc_env["user"] / "repos.yaml").write_text(yaml.safe_dump({
        "repos": [{"name": n, "path": str(p)} for n, p in repos.items()],
        "cache": {"path": str(tmp_path / "cache"), "max-size": "1G"},
    }))
    work = tmp_path / "work"
    work.mkdir()
    return {**pcocc_env, "repos": repos, "work": work}


def _config(env):
    return load_config(env["system"], env["user"])


def _store(env) -> RepoSet:
    return RepoSet(_config(env).repos)


def _show(pcocc_bin, image: str) -> dict:
    [d] = json.loads(ok(pcocc_bin, "image", "show", "--json", image).stdout)
    return d


def _blob_files(repo: Path) -> dict[str, tuple[int, bytes]]:
    """name -> (inode, content) of every blob: what must not change on a re-import."""
    return {p.name: (p.stat().st_ino, p.read_bytes())
            for p in (repo / "data").rglob("*") if p.is_file()}


def _rootfs(env, image: str, dest: Path) -> Path:
    repo, meta = _store(env).resolve(image)
    dest.mkdir(parents=True)
    unpack_image(meta.oci_image(), repo.blob_path, dest)
    return dest


def _stored_type_mismatches(env, image: str) -> list[str]:
    """Layers of the stored manifest of ``image`` whose media type lies about their bytes."""
    repo, meta = _store(env).resolve(image)
    oci_image = meta.oci_image()
    stored = json.loads(repo.blob_path(oci_image.manifest_digest).read_bytes())
    assert stored == oci_image.manifest
    return layer_type_mismatches(stored, repo.blob_path)


def _fsck_clean(pcocc_bin) -> None:
    res = ok(pcocc_bin, "image", "repo", "fsck")
    assert " 0 problems" in res.stdout and "problems found" not in res.stdout, res.stdout


@pytest.mark.parametrize("fmt", list(FILE_FORMATS))
def test_import_show_export_round_trip(env, pcocc_bin, multilayer_image, fmt):
    work = env["work"]
    (work / "in").mkdir()
    src = testimages.convert(multilayer_image, fmt, str(work / "in" / FILE_FORMATS[fmt]))
    ok(pcocc_bin, "image", "import", src, "multi")
    assert _stored_type_mismatches(env, "multi") == []

    [listed] = json.loads(ok(pcocc_bin, "image", "list", "--json").stdout)
    assert (listed["name"], listed["type"], listed["repo"]) == ("multi", "cont", "user")
    table = ok(pcocc_bin, "image", "list").stdout.splitlines()
    assert table[2].split()[:4] == ["multi", "cont", "0", "user"]
    shown = _show(pcocc_bin, "multi")
    assert shown["cmd"] == ["/bin/cat", "/etc/hello"]
    assert "PCOCC_TEST=multi" in shown["env"]
    assert shown["platform"].startswith("linux/")
    assert len(shown["layers"]) == 3
    assert shown["source"] == src
    text = ok(pcocc_bin, "image", "show", "multi").stdout
    assert "PCOCC_TEST=multi" in text and shown["manifest_digest"] in text
    assert all(layer in text for layer in shown["layers"])

    out = work / "out" / FILE_FORMATS[fmt]
    out.parent.mkdir()
    ok(pcocc_bin, "image", "export", "multi", f"{fmt}:{out}")
    ok(pcocc_bin, "image", "import", f"{fmt}:{out}", "other:back")
    back = _show(pcocc_bin, "other:back")
    assert _stored_type_mismatches(env, "other:back") == []
    for key in ("cmd", "env", "entrypoint", "workdir", "platform", "labels", "layers"):
        assert back[key] == shown[key], key
    t1 = testimages.tree_listing(_rootfs(env, "multi", work / "r1"))
    t2 = testimages.tree_listing(_rootfs(env, "other:back", work / "r2"))
    assert t1 == t2
    assert testimages.check_tree(work / "r2", multilayer_image) == []
    _fsck_clean(pcocc_bin)


def test_reimport_shares_every_blob_and_changes_none(env, pcocc_bin, multilayer_image):
    archive = testimages.convert(multilayer_image, "docker-archive", str(env["work"] / "m.tar"))
    ok(pcocc_bin, "image", "import", archive, "first")
    before = _blob_files(env["repos"]["user"])
    ok(pcocc_bin, "image", "import", archive, "second")
    assert _blob_files(env["repos"]["user"]) == before  # same files, same inodes
    a, b = _show(pcocc_bin, "first"), _show(pcocc_bin, "second")
    assert a["blobs"] == b["blobs"] and a["id"] != b["id"]
    assert not any((env["repos"]["user"] / "tmp").iterdir())


def test_local_registry_pull_and_push(env, pcocc_bin, busybox_image, registry):
    location = registry.ref("pcocc/busybox", "1")
    testimages.convert(busybox_image, "docker", location, tls_verify=False)
    # A registry on this host needs no TLS: no option needed.
    ok(pcocc_bin, "image", "import", f"docker://{location}", "bb")
    shown = _show(pcocc_bin, "bb")
    assert shown["source"] == f"docker://{location}" and shown["cmd"] == ["/bin/sh"]
    assert _stored_type_mismatches(env, "bb") == []
    assert testimages.check_tree(_rootfs(env, "bb", env["work"] / "r"), busybox_image) == []
    # Insisting on verified HTTPS fails, with skopeo's reason on one line.
    res = pcocc(pcocc_bin, "image", "import", "--insecure-options=none",
                f"docker://{location}", "bb2")
    assert_one_line_error(res, 1, f"docker://{location}")
    res = pcocc(pcocc_bin, "image", "import", "--insecure-options=bogus",
                f"docker://{location}", "bb2")
    assert_one_line_error(res, 2, "--insecure-options")
    # Push under another name (explicitly insecure), pull it back: the same image.
    pushed = registry.ref("pcocc/pushed", "2")
    ok(pcocc_bin, "image", "export", "--insecure-options=tls", "bb", f"docker://{pushed}")
    ok(pcocc_bin, "image", "import", "--insecure-options", "tls", f"docker://{pushed}",
       "other:bb")
    again = _show(pcocc_bin, "other:bb")
    assert _stored_type_mismatches(env, "other:bb") == []
    assert again["layers"] == shown["layers"] and again["cmd"] == shown["cmd"]


@pytest.mark.skipif(not shutil.which("mksquashfs"), reason="squashfs-tools not installed")
def test_singularity_import_and_export_refused(env, pcocc_bin, busybox_image):
    work = env["work"]
    ok(pcocc_bin, "image", "import", f"oci:{busybox_image.layout}:{busybox_image.tag}", "bb")
    rootfs = _rootfs(env, "bb", work / "rootfs")
    sqfs = testimages.make_squashfs(rootfs, work / "r.sqfs")
    sif = testimages.build_sif(sqfs, work / "busybox.sif")
    ok(pcocc_bin, "image", "import", sif, "from-sif")  # found from the extension
    shutil.copy(sif, work / "noext")
    ok(pcocc_bin, "image", "import", f"simg:{work / 'noext'}", "from-simg")
    for name in ("from-sif", "from-simg"):
        shown = _show(pcocc_bin, name)
        assert shown["type"] == "cont" and len(shown["layers"]) == 1
        tree = _rootfs(env, name, work / f"tree-{name}")
        assert testimages.check_tree(tree, busybox_image) == []
    res = pcocc(pcocc_bin, "image", "export", "from-sif", work / "out.simg")
    assert_one_line_error(res, 2, "only be imported")
    assert not (work / "out.simg").exists()
    res = pcocc(pcocc_bin, "image", "export", "from-sif", work / "out.tar")
    assert_one_line_error(res, 2, "say which container format")


def test_copy_delete_gc_fsck(env, pcocc_bin, multilayer_image, busybox_image):
    user, other = env["repos"]["user"], env["repos"]["other"]
    ok(pcocc_bin, "image", "import", f"oci:{multilayer_image.layout}:multi", "multi")
    ok(pcocc_bin, "image", "import", f"oci:{busybox_image.layout}:busybox", "bb")
    before = _blob_files(user)
    ok(pcocc_bin, "image", "copy", "multi", "multi-copy")
    assert _blob_files(user) == before  # same repository: only metadata is added
    ok(pcocc_bin, "image", "copy", "multi", "other:multi")
    src, dst = _show(pcocc_bin, "user:multi"), _show(pcocc_bin, "other:multi")
    assert src["blobs"] == dst["blobs"] and src["layers"] == dst["layers"]
    assert {b["digest"][7:] for b in dst["blobs"]} == set(_blob_files(other))
    _fsck_clean(pcocc_bin)

    ok(pcocc_bin, "image", "delete", "user:multi")
    res = ok(pcocc_bin, "image", "repo", "gc", "--grace-period", "0", "user")
    assert "removed 0 blobs" in res.stdout  # multi-copy still uses them
    ok(pcocc_bin, "image", "delete", "user:multi-copy")
    res = ok(pcocc_bin, "image", "repo", "gc", "--grace-period", "0", "user")
    bb_blobs = {b["digest"][7:] for b in _show(pcocc_bin, "bb")["blobs"]}
    only_multi = set(before) - bb_blobs
    assert f"removed {len(only_multi)} blobs" in res.stdout
    assert set(_blob_files(user)) == bb_blobs
    _fsck_clean(pcocc_bin)
    # The other repository's copy is untouched and still exports.
    ok(pcocc_bin, "image", "export", "other:multi", f"oci-archive:{env['work'] / 'o.tar'}")
    assert (env["work"] / "o.tar").stat().st_size > 0


def test_cache_list_delete_gc(env, pcocc_bin, multilayer_image, busybox_image):
    ok(pcocc_bin, "image", "import", f"oci:{multilayer_image.layout}:multi", "multi")
    ok(pcocc_bin, "image", "import", f"oci:{busybox_image.layout}:busybox", "bb")
    config = _config(env)
    assert config.cache.max_size_bytes == 1 << 30
    cache = ContainerCache.from_config(config.cache)
    store = RepoSet(config.repos)
    digests = {}
    for name in ("multi", "bb"):  # what 'pcocc run' does before starting a container
        repo, meta = store.resolve(name)
        cache.prepare(meta.oci_image(), repo.blob_path, "dir")
        digests[name] = meta.oci["manifest_digest"]
    table = ok(pcocc_bin, "image", "cache", "list").stdout
    assert table.count(" dir ") == 2
    # each entry names the image(s) it holds, not only a digest
    assert table.splitlines()[0].split()[-1] == "IMAGES"
    assert sorted(ln.split()[-1] for ln in table.splitlines()[1:]) == ["user:bb@0",
                                                                        "user:multi@0"]
    listed = json.loads(ok(pcocc_bin, "image", "cache", "list", "--json").stdout)
    assert {e["digest"]: e["images"] for e in listed} == {
        digests["multi"]: ["user:multi@0"], digests["bb"]: ["user:bb@0"]}

    ok(pcocc_bin, "image", "cache", "delete", "multi")  # by image name, through the store
    listed = json.loads(ok(pcocc_bin, "image", "cache", "list", "--json").stdout)
    assert [e["digest"] for e in listed] == [digests["bb"]]
    res = pcocc(pcocc_bin, "image", "cache", "delete", "multi")
    assert_one_line_error(res, 1, "not in the container cache")

    ok(pcocc_bin, "image", "cache", "gc")  # bb is still in a repository: kept
    assert len(json.loads(ok(pcocc_bin, "image", "cache", "list", "--json").stdout)) == 1
    ok(pcocc_bin, "image", "delete", "bb")
    res = ok(pcocc_bin, "image", "cache", "gc")
    assert "removed 1 cached images" in res.stderr
    assert json.loads(ok(pcocc_bin, "image", "cache", "list", "--json").stdout) == []
    assert not any(Path(config.cache.path, "entries").iterdir())


def test_cache_gc_enforces_the_configured_size(env, pcocc_bin, multilayer_image,
                                               busybox_image):
    ok(pcocc_bin, "image", "import", f"oci:{multilayer_image.layout}:multi", "multi")
    ok(pcocc_bin, "image", "import", f"oci:{busybox_image.layout}:busybox", "bb")
    config = _config(env)
    cache = ContainerCache.from_config(config.cache)
    store = RepoSet(config.repos)
    for name in ("multi", "bb"):
        repo, meta = store.resolve(name)
        cache.prepare(meta.oci_image(), repo.blob_path, "dir")
        os.utime(cache.list()[-1].path / "last-use", (1000, 1000) if name == "multi" else None)
    newest = cache.list()[-1]
    conf = yaml.safe_load((env["user"] / "repos.yaml").read_text())
    conf["cache"]["max-size"] = str(newest.size_bytes + 1024)
    (env["user"] / "repos.yaml").write_text(yaml.safe_dump(conf))
    ok(pcocc_bin, "image", "cache", "gc")  # over the limit: the least recently used goes
    listed = json.loads(ok(pcocc_bin, "image", "cache", "list", "--json").stdout)
    assert [e["digest"] for e in listed] == [newest.digest]


def test_cache_delete_of_a_vm_image_is_refused(env, pcocc_bin, tmp_path):
    if shutil.which("qemu-img") is None:
        pytest.skip("qemu-img missing")
    raw = tmp_path / "d.raw"
    raw.write_bytes(b"\0" * 65536)
    ok(pcocc_bin, "image", "import", raw, "vm")
    res = pcocc(pcocc_bin, "image", "cache", "delete", "vm")
    assert_one_line_error(res, 2, "VM image")
