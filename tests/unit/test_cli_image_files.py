"""``pcocc image list --full``, ``cat-manifest`` and ``extract``/``render`` on a repository of
images committed in-process (layers are tar files written by Python: no process starts).
The comparison with ``umoci unpack`` is in tests/integration/test_image_files.py."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
import yaml

from pcocc import fsutil
from pcocc.cli.main import run_cli
from pcocc.config import RepoConfig
from pcocc.repo.extract import manifest_document, own_layers
from pcocc.repo.model import KIND_CTR, KIND_VM, BlobRef
from pcocc.repo.store import Repository, new_meta
from pcocc.repo.reposet import RepoSet

LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


def tar(entries: list[tuple]) -> bytes:
    """(kind, name[, data_or_target[, mode]]) with kind file, dir or sym."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for kind, name, *rest in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, rest[0] if rest else 0o755
                t.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, rest[0]
                t.addfile(info)
            else:
                data = rest[0] if rest else b""
                info.size, info.mode = len(data), rest[1] if len(rest) > 1 else 0o644
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


BASE = tar([("dir", "etc"), ("file", "etc/hello", b"hello\n"), ("file", "etc/gone", b"x\n"),
            ("dir", "data"), ("file", "data/old", b"old\n"), ("file", "bin", b"#!\n", 0o755)])
TOP = tar([("dir", "etc"), ("file", "etc/.wh.gone"), ("dir", "data"),
           ("file", "data/.wh..wh..opq"), ("file", "data/new", b"new\n"),
           ("sym", "etc/link", "hello")])


def put(repo: Repository, data: bytes) -> BlobRef:
    with repo.staging() as st:
        f = st / "b"
        f.write_bytes(data)
        return BlobRef(repo.add_blob(f), len(data))


def commit_ctr(repo: Repository, name: str, layers: list[bytes]) -> None:
    refs = [put(repo, layer) for layer in layers]
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin"]},
              "rootfs": {"type": "layers",
                         "diff_ids": ["sha256:" + hashlib.sha256(x).hexdigest()
                                      for x in layers]}}
    cfg = put(repo, json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "config": {"digest": cfg.digest, "size": cfg.size},
                "layers": [{"mediaType": LAYER_TYPE, "digest": r.digest, "size": r.size}
                           for r in refs]}
    man = put(repo, json.dumps(manifest).encode())
    oci = {"manifest_digest": man.digest, "manifest": manifest, "config": config}
    repo.commit(new_meta(name, KIND_CTR, [*refs, cfg, man], oci=oci), new_image=True)


def commit_vm(repo: Repository, name: str) -> None:
    base, top = put(repo, b"base layer"), put(repo, b"top layer")
    repo.commit(new_meta(name, KIND_VM, [base, top], parent="disk@0",
                         vm={"layers": [base.digest, top.digest], "virtual_size": 1 << 20}),
                new_image=True)


@pytest.fixture
def env(pcocc_env, tmp_path):
    path = tmp_path / "repo"
    (pcocc_env["user"] / "repos.yaml").write_text(
        yaml.safe_dump({"repos": [{"name": "mine", "path": str(path)}]}))
    repo = RepoSet([RepoConfig("mine", path, "", "user")]).get("mine")
    commit_ctr(repo, "app", [BASE, TOP])
    commit_vm(repo, "disk")
    work = tmp_path / "work"
    work.mkdir()
    return {"repo": repo, "work": work}


def cli(capsys, *args: str) -> tuple[int, str, str]:
    status = run_cli(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def listing(top: Path) -> dict[str, tuple[str, int, str]]:
    out = {}
    for p in sorted(top.rglob("*")):
        st = p.lstat()
        kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
        what = os.readlink(p) if kind == "link" else p.read_text() if kind == "file" else ""
        out[str(p.relative_to(top))] = (kind, st.st_mode & 0o7777 if kind != "link" else 0,
                                        what)
    return out


# --- list --full --------------------------------------------------------------------------


def test_list_shows_short_ids_and_full_ids_with_full(env, capsys):
    ids = {m.name: m.image_id for m in env["repo"].images()}
    status, out, _ = cli(capsys, "image", "list")
    lines = out.splitlines()
    assert status == 0
    assert lines[0].split() == ["NAME", "TYPE", "REVISION", "REPO", "OWNER", "DATE", "ID"]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:]}
    assert rows["app"][-1] == ids["app"][: len("sha256-") + 12]
    assert rows["disk"][-1] == ids["disk"][: len("sha256-") + 12]
    status, out, _ = cli(capsys, "image", "list", "--full")
    rows = {ln.split()[0]: ln.split() for ln in out.splitlines()[2:]}
    assert status == 0 and rows["app"][-1] == ids["app"] and len(ids["app"]) == 7 + 64
    assert rows["app"][:4] == ["app", "cont", "0", "mine"]  # the other columns are kept


# --- cat-manifest -------------------------------------------------------------------------


def test_cat_manifest_of_a_container_is_its_manifest_and_config(env, capsys):
    meta = env["repo"].get("app")
    status, out, _ = cli(capsys, "image", "cat-manifest", "app")
    assert status == 0 and out.count("\n") == 1  # one compact line
    doc = json.loads(out)
    assert doc == {"type": "cont", "manifest_digest": meta.oci["manifest_digest"],
                   "manifest": meta.oci["manifest"], "config": meta.oci["config"]}
    stored = env["repo"].blob_path(doc["manifest_digest"]).read_bytes()
    assert json.loads(stored) == doc["manifest"]
    status, pretty, _ = cli(capsys, "image", "cat-manifest", "--pretty-print", meta.image_id)
    assert status == 0 and json.loads(pretty) == doc and '\n  "manifest": {\n' in pretty


def test_cat_manifest_of_a_vm_is_its_layer_chain_and_metadata(env, capsys):
    meta = env["repo"].get("disk")
    status, out, _ = cli(capsys, "image", "cat-manifest", "mine:disk@0")
    doc = json.loads(out)
    assert status == 0 and doc["type"] == "vm" and doc["id"] == meta.image_id
    assert doc["layers"] == [{"digest": b.digest, "size": b.size} for b in meta.blobs]
    assert (doc["virtual_size"], doc["parent"], doc["name"]) == (1 << 20, "disk@0", "disk")
    assert doc == manifest_document(meta)


def test_cat_manifest_of_an_unknown_image(env, capsys):
    status, out, err = cli(capsys, "image", "cat-manifest", "nope")
    assert status == 1 and out == "" and "image 'nope' not found" in err


def test_own_layers_is_the_top_layer():
    from pcocc.repo.model import OciImage

    img = OciImage("sha256:m", {"layers": [{"digest": "a"}, {"digest": "b"}]}, {}, [])
    assert own_layers(img).manifest["layers"] == [{"digest": "b"}]
    assert img.manifest["layers"] == [{"digest": "a"}, {"digest": "b"}]  # not changed
    assert own_layers(OciImage("m", {"layers": []}, {}, [])).manifest["layers"] == []


# --- extract / render ---------------------------------------------------------------------


def test_render_applies_every_layer_with_whiteouts(env, capsys):
    dest = env["work"] / "out"
    status, _, err = cli(capsys, "image", "render", "app", str(dest))
    assert status == 0, err
    assert sorted(p.name for p in dest.iterdir()) == ["manifest", "rootfs"]
    assert dest.stat().st_mode & 0o777 == 0o700
    doc = json.loads((dest / "manifest").read_text())
    assert doc == manifest_document(env["repo"].get("app"))
    tree = listing(dest / "rootfs")
    assert tree == {
        "bin": ("file", 0o755, "#!\n"), "data": ("dir", 0o755, ""),
        "data/new": ("file", 0o644, "new\n"), "etc": ("dir", 0o755, ""),
        "etc/hello": ("file", 0o644, "hello\n"), "etc/link": ("link", 0, "hello"),
    }
    assert [p.name for p in env["work"].iterdir()] == ["out"]  # no temporary left


def test_extract_writes_the_top_layer_only(env, capsys):
    dest = env["work"] / "own"
    status, _, err = cli(capsys, "image", "extract", "--rootfs-only", "app", str(dest))
    assert status == 0, err
    assert listing(dest) == {
        "data": ("dir", 0o755, ""), "data/new": ("file", 0o644, "new\n"),
        "etc": ("dir", 0o755, ""), "etc/link": ("link", 0, "hello"),
    }
    assert dest.stat().st_mode & 0o777 == 0o700


def test_existing_dir_is_refused_and_kept(env, capsys):
    dest = env["work"] / "out"
    dest.mkdir()
    (dest / "mine").write_text("keep")
    for cmd in ("extract", "render"):
        status, _, err = cli(capsys, "image", cmd, "app", str(dest))
        assert status == 2 and f"{dest} already exists" in err and "--overwrite" in err
    assert [p.name for p in dest.iterdir()] == ["mine"]
    assert sorted(p.name for p in env["work"].iterdir()) == ["out"]


def test_overwrite_replaces_a_directory(env, capsys):
    dest = env["work"] / "out"
    dest.mkdir()
    (dest / "stale").write_text("old")
    (dest / "ro").mkdir()
    (dest / "ro" / "f").write_text("x")
    (dest / "ro").chmod(0o500)  # read-only trees of a previous render go too
    status, _, err = cli(capsys, "image", "render", "--overwrite", "--rootfs-only", "app",
                         str(dest))
    assert status == 0, err
    assert sorted(p.name for p in dest.iterdir()) == ["bin", "data", "etc"]
    assert sorted(p.name for p in env["work"].iterdir()) == ["out"]


def test_overwrite_refuses_a_file_or_a_link(env, capsys):
    afile, alink = env["work"] / "file", env["work"] / "link"
    afile.write_text("data")
    target = env["work"] / "target"
    target.mkdir()
    alink.symlink_to(target)
    for dest in (afile, alink):
        status, _, err = cli(capsys, "image", "render", "--overwrite", "app", str(dest))
        assert status == 2 and "is not a directory" in err
    assert afile.read_text() == "data" and os.readlink(alink) == str(target)
    assert list(target.iterdir()) == []


def test_missing_parent_and_unknown_image(env, capsys):
    status, _, err = cli(capsys, "image", "render", "app", str(env["work"] / "no" / "dir"))
    assert status == 2 and "is not an existing directory" in err
    status, _, err = cli(capsys, "image", "extract", "nope", str(env["work"] / "x"))
    assert status == 1 and "image 'nope' not found" in err
    assert list(env["work"].iterdir()) == []


def test_vm_images_are_refused_with_the_way_to_get_their_disk(env, capsys):
    for cmd in ("extract", "render"):
        status, _, err = cli(capsys, "image", cmd, "disk", str(env["work"] / "d"))
        assert status == 2 and "is a VM image" in err and "pcocc image export" in err
    assert list(env["work"].iterdir()) == []


def test_a_layer_writing_outside_dir_is_refused_and_nothing_is_left(env, capsys):
    commit_ctr(env["repo"], "evil", [BASE, tar([("sym", "escape", "../victim"),
                                                ("file", "escape/owned", b"pwned")])])
    commit_ctr(env["repo"], "dotdot", [tar([("file", "../victim/owned", b"pwned")])])
    victim = env["work"] / "victim"
    victim.mkdir()
    for image in ("evil", "dotdot"):
        for cmd in ("extract", "render"):
            status, _, err = cli(capsys, "image", cmd, image, str(env["work"] / "out"))
            assert status == 1 and "malformed or malicious" in err, err
    assert list(victim.iterdir()) == []
    assert [p.name for p in env["work"].iterdir()] == ["victim"]


# --- fsutil.exchange_or_rename ------------------------------------------------------------


@pytest.fixture(params=["renameat2", "fallback"])
def renames(request, monkeypatch):
    if request.param == "fallback":
        def no_renameat2(src, dst, flags):
            raise OSError(errno.ENOSYS, "no renameat2")

        monkeypatch.setattr(fsutil, "_renameat2", no_renameat2)


def test_exchange_or_rename(tmp_path, renames):
    new, dest = tmp_path / "new", tmp_path / "dest"
    new.mkdir()
    (new / "n").write_text("new")
    fsutil.exchange_or_rename(new, dest, replace=False)
    assert (dest / "n").read_text() == "new" and not new.exists()

    other = tmp_path / "other"
    other.mkdir()
    (other / "o").write_text("other")
    with pytest.raises(FileExistsError):
        fsutil.exchange_or_rename(other, dest, replace=False)
    assert (dest / "n").exists() and (other / "o").exists()

    fsutil.exchange_or_rename(other, dest, replace=True)
    assert [p.name for p in dest.iterdir()] == ["o"]
    assert [p.name for p in other.iterdir()] == ["n"]  # the old tree, for the caller
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "other"]
