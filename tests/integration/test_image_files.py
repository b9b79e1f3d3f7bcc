"""``pcocc image extract|render`` against ``umoci unpack`` of the same image: same paths,
types, modes, owners, contents, symbolic link targets and hard links. Real pcocc processes,
images built with umoci and imported with skopeo."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
import yaml
from repo_testlib import assert_one_line_error, ok, pcocc

from helpers import testimages
from pcocc import proc


@pytest.fixture
def env(pcocc_env, tmp_path):
    (pcocc_env["user"] / "repos.yaml").write_text(yaml.safe_dump(
        {"repos": [{"name": "user", "path": str(tmp_path / "repo")}]}))
    work = tmp_path / "work"
    work.mkdir()
    return {**pcocc_env, "work": work}


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in members:
            info.mtime = testimages.MTIME
            info.size = len(data) if info.isreg() else 0
            t.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, *, link: str = "",
          uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.uid, info.gid = kind, mode, link, uid, gid
    return info


def _add_raw_layer(layout: Path, tag: str, data: bytes, workdir: Path) -> None:
    layer = workdir / f"layer-{hashlib.sha256(data).hexdigest()[:8]}.tar"
    layer.write_bytes(data)
    proc.run(["umoci", "raw", "add-layer", "--image", f"{layout}:{tag}", layer],
             what="umoci raw add-layer")


@pytest.fixture(scope="module")
def richer_image(tmp_path_factory, multilayer_image) -> testimages.TestImage:
    """multilayer_image plus a top layer with whiteouts, an opaque directory, a setuid file,
    a hard link and owners other than root."""
    work = tmp_path_factory.mktemp("richer")
    layout = work / "layout"
    shutil.copytree(multilayer_image.layout, layout)
    top = _tar([
        (_info("etc", tarfile.DIRTYPE, 0o755), b""),
        (_info("etc/.wh.hello"), b""),
        (_info("data", tarfile.DIRTYPE, 0o755), b""),
        (_info("data/.wh..wh..opq"), b""),
        (_info("data/fresh", mode=0o640, uid=1234, gid=5678), b"fresh\n"),
        (_info("bin", tarfile.DIRTYPE, 0o755), b""),
        (_info("bin/suid", mode=0o4755), b"#!/bin/sh\n"),
        (_info("bin/hard", tarfile.LNKTYPE, link="bin/suid"), b""),
        (_info("opt", tarfile.DIRTYPE, 0o750, uid=1234, gid=5678), b""),
        (_info("opt/tool", tarfile.SYMTYPE, link="../bin/busybox"), b""),
    ])
    _add_raw_layer(layout, multilayer_image.tag, top, work)
    return testimages.TestImage(f"oci:{layout}:{multilayer_image.tag}", layout,
                                multilayer_image.tag)


def _top_layer_only(image: testimages.TestImage, tag: str) -> str:
    """Tag ``tag`` in the image's layout: the same image restricted to its top layer (its
    config says so too, as umoci checks the diff IDs)."""
    layout = image.layout
    index = json.loads((layout / "index.json").read_text())
    [entry] = [m for m in index["manifests"]
               if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == image.tag]

    def blob(digest: str) -> Path:
        return layout / "blobs" / "sha256" / digest.split(":", 1)[1]

    def put(doc: dict) -> dict:
        data = json.dumps(doc).encode()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blob(digest).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    manifest = json.loads(blob(entry["digest"]).read_text())
    config = json.loads(blob(manifest["config"]["digest"]).read_text())
    config["rootfs"]["diff_ids"] = config["rootfs"]["diff_ids"][-1:]
    config.pop("history", None)
    manifest["config"].update(put(config))
    manifest["layers"] = manifest["layers"][-1:]
    new_entry = {**entry, **put(manifest),
                 "annotations": {"org.opencontainers.image.ref.name": tag}}
    index["manifests"].append(new_entry)
    (layout / "index.json").write_text(json.dumps(index))
    return tag


def _umoci_rootfs(layout: Path, tag: str, bundle: Path) -> Path:
    proc.run(["umoci", "unpack", "--image", f"{layout}:{tag}", bundle], what="umoci unpack")
    return bundle / "rootfs"


def _tree(rootfs: Path) -> dict[str, tuple]:
    """path -> (type, mode, uid, gid, content or link target, hard link group)."""
    out: dict[str, tuple] = {}
    first_of_inode: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(rootfs))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what: tuple = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                what = ("dir", "")
            elif stat.S_ISREG(st.st_mode):
                what = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                what = ("other", stat.S_IFMT(st.st_mode))
            group = first_of_inode.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None
            mode = 0 if what[0] == "link" else st.st_mode & 0o7777
            out[rel] = (what[0], mode, st.st_uid, st.st_gid, what[1], group)
    return out


def test_render_is_what_umoci_unpacks(env, pcocc_bin, multilayer_image, richer_image):
    work = env["work"]
    for name, image in (("multi", multilayer_image), ("richer", richer_image)):
        ok(pcocc_bin, "image", "import", image.ref, name)
        ok(pcocc_bin, "image", "render", name, work / name)
        theirs = _tree(_umoci_rootfs(image.layout, image.tag, work / f"umoci-{name}"))
        ours = _tree(work / name / "rootfs")
        assert ours == theirs, name
        manifest = json.loads((work / name / "manifest").read_text())
        shown = json.loads(ok(pcocc_bin, "image", "cat-manifest", name).stdout)
        assert manifest == shown and len(manifest["manifest"]["layers"]) >= 3
    multi = _tree(work / "multi" / "rootfs")
    assert testimages.check_tree(work / "multi" / "rootfs", multilayer_image) == []
    richer = _tree(work / "richer" / "rootfs")
    assert richer["bin/suid"][1] == 0o4755 and richer["bin/hard"][5] == "bin/suid"
    assert richer["data/fresh"][2:4] == (1234, 5678) and "etc/hello" not in richer
    assert "etc/hello" in multi and "data/new" in multi and "data/new" not in richer


def test_extract_is_what_umoci_unpacks_of_the_top_layer(env, pcocc_bin, richer_image):
    work = env["work"]
    ok(pcocc_bin, "image", "import", richer_image.ref, "richer")
    ok(pcocc_bin, "image", "extract", "--rootfs-only", "richer", work / "own")
    tag = _top_layer_only(richer_image, "top-only")
    theirs = _tree(_umoci_rootfs(richer_image.layout, tag, work / "umoci-top"))
    ours = _tree(work / "own")
    assert ours == theirs
    assert sorted(ours) == ["bin", "bin/hard", "bin/suid", "data", "data/fresh", "etc",
                            "opt", "opt/tool"]


def test_overwrite_existing_and_unknown(env, pcocc_bin, busybox_image, multilayer_image):
    work = env["work"]
    ok(pcocc_bin, "image", "import", busybox_image.ref, "bb")
    ok(pcocc_bin, "image", "import", multilayer_image.ref, "multi")
    dest = work / "out"
    ok(pcocc_bin, "image", "render", "--rootfs-only", "multi", dest)
    before = _tree(dest)
    res = pcocc(pcocc_bin, "image", "render", "--rootfs-only", "bb", dest)
    assert_one_line_error(res, 2, f"{dest} already exists")
    assert _tree(dest) == before
    ok(pcocc_bin, "image", "render", "--rootfs-only", "--overwrite", "bb", dest)
    assert testimages.check_tree(dest, busybox_image) == []
    assert "data" not in _tree(dest)
    assert sorted(p.name for p in work.iterdir()) == ["out"]  # no temporary left
    res = pcocc(pcocc_bin, "image", "extract", "no-such-image", work / "x")
    assert_one_line_error(res, 1, "no-such-image", "not found")
    assert not (work / "x").exists()


def test_archive_writing_outside_dir_is_refused(env, pcocc_bin, busybox_image, tmp_path):
    """A layer that makes a link to '..' and writes through it: refused, nothing written
    outside DIR, no DIR, no temporary left next to it."""
    work = env["work"]
    layout = tmp_path / "evil-layout"
    shutil.copytree(busybox_image.layout, layout)
    _add_raw_layer(layout, busybox_image.tag, _tar([
        (_info("escape", tarfile.SYMTYPE, link="../victim"), b""),
        (_info("escape/owned"), b"pwned\n"),
    ]), tmp_path)
    ok(pcocc_bin, "image", "import", f"oci:{layout}:{busybox_image.tag}", "evil")
    victim = work / "victim"
    victim.mkdir()
    for cmd in ("render", "extract"):
        res = pcocc(pcocc_bin, "image", cmd, "evil", work / "out")
        assert_one_line_error(res, 1, "escape/owned", "symbolic link")
    assert list(victim.iterdir()) == []
    assert sorted(p.name for p in work.iterdir()) == ["victim"]
