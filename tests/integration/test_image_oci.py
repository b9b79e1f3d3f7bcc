"""Container image import/export with the real skopeo, umoci and docker-registry, into
the real repository store (driver level; tests/integration/test_image_ctr_cli.py goes
through the pcocc command)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import testimages
from pcocc.config import RepoConfig
from pcocc.errors import Corrupt, NotFound, ToolError, UsageError
from pcocc.repo import oci, ocispec, ops, sif, skopeo
from pcocc.repo.store import Repository
from pcocc.repo.reposet import RepoSet
from pcocc.repo.unpack import unpack_image

FILE_FORMATS = ["oci", "oci-archive", "docker-archive", "dir"]


def _location(tmp_path: Path, fmt: str) -> str:
    return str(
        tmp_path
        / {
            "oci": "layout:img",
            "oci-archive": "img.oci.tar",
            "docker-archive": "img.docker.tar",
            "dir": "img.dir",
        }[fmt]
    )


class Store:
    """A real repository, seen through what the driver gets (``add_blob``), counting the
    blobs it hashes. Without ``hooks``, the driver gets a plain function: no has_blob or
    blob_path to probe, as from a store that does not offer them."""

    def __init__(self, root: Path, *, hooks: bool = True):
        self.repo = Repository(RepoConfig("test", root))
        self.repo.ensure()
        self.added: list[str] = []  #: digests hashed by add_blob
        if hooks:
            self.has_blob = self.repo.add_blob.has_blob
            self.blob_path = self.repo.add_blob.blob_path
            self.import_index = self.repo.add_blob.import_index

    def __call__(self, path: Path, expected_digest: str | None = None) -> str:
        digest = self.repo.add_blob(path, expected_digest)
        self.added.append(digest)
        return digest

    def path(self, digest: str) -> Path:
        return self.repo.blob_path(digest)

    def files(self) -> list[Path]:
        return sorted(p for p in (self.repo.path / "data").rglob("*") if p.is_file())

    def digests(self) -> set[str]:
        return {f"sha256:{p.name}" for p in self.files()}


def import_into(store: Store, tmp_path: Path, source: str, fmt: str, **kw):
    with store.repo.staging("import") as staging:
        return oci.import_image(source, fmt, staging, store, lambda d, t: None, **kw)


def unpacked(store: Store, image, dest: Path) -> Path:
    dest.mkdir(parents=True)
    unpack_image(image, store.path, dest)
    return dest


#: compression suffix a layer media type must have, by the first bytes of the layer
_MAGIC_SUFFIXES = ((b"\x1f\x8b", ("+gzip", ".gzip")), (b"\x28\xb5\x2f\xfd", ("+zstd",)))


def layer_type_mismatches(manifest: dict, blob_path) -> list[str]:
    """Layers whose media type does not say the compression their bytes have."""
    bad = []
    for desc in manifest["layers"]:
        head = Path(blob_path(desc["digest"])).read_bytes()[:4]
        suffixes = next((sfx for magic, sfx in _MAGIC_SUFFIXES if head.startswith(magic)), ())
        mt = desc["mediaType"]
        ok = mt.endswith(suffixes) if suffixes else mt.endswith(".tar")
        if not ok:
            bad.append(f"{desc['digest'][:19]}: {mt} but starts with {head.hex()}")
    return bad


def layout_type_mismatches(layout: Path) -> list[str]:
    """The same check on every image of an OCI layout, plus its manifests' digests."""
    blob = lambda d: layout / "blobs" / "sha256" / d.split(":", 1)[1]  # noqa: E731
    bad = []
    for mdesc in json.loads((layout / "index.json").read_text())["manifests"]:
        data = blob(mdesc["digest"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == mdesc["digest"].split(":", 1)[1]
        assert mdesc["mediaType"] == ocispec.MT_OCI_MANIFEST
        bad += layer_type_mismatches(json.loads(data), blob)
    return bad


def _check_imported(store: Store, image, test_image, rootfs: Path) -> None:
    assert {b.digest for b in image.blobs} <= store.digests()
    assert image.manifest_digest in store.digests()
    stored_manifest = json.loads(store.path(image.manifest_digest).read_bytes())
    assert stored_manifest == image.manifest
    assert layer_type_mismatches(stored_manifest, store.path) == []
    assert [b.media_type for b in image.blobs[1:-1]] == [
        d["mediaType"] for d in stored_manifest["layers"]
    ]
    assert len(image.manifest["layers"]) == len(image.config["rootfs"]["diff_ids"])
    assert testimages.check_tree(unpacked(store, image, rootfs), test_image) == []


@pytest.mark.parametrize("fmt", FILE_FORMATS)
def test_import_from_file_formats(tmp_path, multilayer_image, fmt):
    ref = testimages.convert(multilayer_image, fmt, _location(tmp_path, fmt))
    store = Store(tmp_path / "store")
    image = import_into(store, tmp_path, ref.split(":", 1)[1], fmt)
    assert image.config["config"]["Cmd"] == ["/bin/cat", "/etc/hello"]
    assert "PCOCC_TEST=multi" in image.config["config"]["Env"]
    assert len(image.manifest["layers"]) == 3
    _check_imported(store, image, multilayer_image, tmp_path / "rootfs")


def test_import_from_local_registry(tmp_path, busybox_image, registry):
    location = registry.ref("pcocc/busybox", "1")
    testimages.convert(busybox_image, "docker", location, tls_verify=False)
    store = Store(tmp_path / "store")
    image = import_into(store, tmp_path, "//" + location, "docker", tls_verify=False)
    assert image.config["config"]["Cmd"] == ["/bin/sh"]
    _check_imported(store, image, busybox_image, tmp_path / "rootfs")
    # Push it back under another name, pull that: same image.
    work = tmp_path / "push"
    work.mkdir()
    pushed = registry.ref("pcocc/again", "2")
    oci.export_image(image, store.path, pushed, "docker", work, lambda d, t: None, tls_verify=False)
    again = import_into(Store(tmp_path / "s3"), tmp_path, pushed, "docker", tls_verify=False)
    assert again.config == image.config
    assert [d["digest"] for d in again.manifest["layers"]] == [
        d["digest"] for d in image.manifest["layers"]
    ]
    # A loopback registry needs no TLS by default; insisting on it fails, and says so.
    plain = import_into(Store(tmp_path / "s4"), tmp_path, location, "docker")
    assert plain.manifest_digest == image.manifest_digest
    with pytest.raises(ToolError, match="copying docker://"):
        import_into(Store(tmp_path / "s2"), tmp_path, location, "docker", tls_verify=True)


def test_docker_archive_tar_layers_are_labelled_tar(tmp_path, multilayer_image):
    """skopeo 1.9 copies a docker-archive's plain tar layers as '+gzip': corrected."""
    ref = testimages.convert(multilayer_image, "docker-archive", str(tmp_path / "m.tar"))
    store = Store(tmp_path / "store")
    image = import_into(store, tmp_path, ref.split(":", 1)[1], "docker-archive")
    assert {d["mediaType"] for d in image.manifest["layers"]} == {ocispec.MT_LAYER_TAR}
    # plain tar layers: their digests are the config's diff_ids, and the config says so
    assert [d["digest"] for d in image.manifest["layers"]] == image.config["rootfs"]["diff_ids"]
    assert image.manifest["config"]["digest"] == image.blobs[0].digest
    assert image.blobs[-1].digest == image.manifest_digest


@pytest.mark.parametrize("src_fmt", ["docker-archive", "oci"])
def test_exported_layout_media_types_match_bytes(tmp_path, multilayer_image, src_fmt):
    ref = testimages.convert(multilayer_image, src_fmt, _location(tmp_path, src_fmt))
    store = Store(tmp_path / "store")
    image = import_into(store, tmp_path, ref.split(":", 1)[1], src_fmt)
    for fmt in ("oci", "oci-archive"):
        work = tmp_path / f"work-{fmt}"
        work.mkdir()
        dest = _location(tmp_path / f"out-{fmt}", fmt)
        (tmp_path / f"out-{fmt}").mkdir()
        oci.export_image(image, store.path, dest, fmt, work)
        layout = Path(dest.rpartition(":")[0]) if fmt == "oci" else tmp_path / "unpacked-archive"
        if fmt == "oci-archive":
            shutil.unpack_archive(dest, layout, "tar")
        assert layout_type_mismatches(layout) == []


def test_export_corrects_an_image_stored_with_wrong_media_types(tmp_path, multilayer_image):
    """Images imported before the correction existed still export with the right types."""
    ref = testimages.convert(multilayer_image, "docker-archive", str(tmp_path / "m.tar"))
    store = Store(tmp_path / "store")
    good = import_into(store, tmp_path, ref.split(":", 1)[1], "docker-archive")
    wrong = {**good.manifest, "layers": [{**d, "mediaType": ocispec.MT_LAYER_GZIP}
                                         for d in good.manifest["layers"]]}
    (tmp_path / "wrong.json").write_bytes(json.dumps(wrong).encode())
    old = oci.OciImage(manifest_digest=store(tmp_path / "wrong.json"), manifest=wrong,
                       config=good.config, blobs=good.blobs)
    assert layer_type_mismatches(old.manifest, store.path) != []  # the test can fail
    # dir: keeps layers and manifest as they come (oci compresses what is not gzip)
    work = tmp_path / "work-dir"
    work.mkdir()
    oci.export_image(old, store.path, str(tmp_path / "out.dir"), "dir", work)
    manifest = json.loads((tmp_path / "out.dir" / "manifest.json").read_text())
    dir_blob = lambda d: tmp_path / "out.dir" / d.split(":", 1)[1]  # noqa: E731
    assert layer_type_mismatches(manifest, dir_blob) == []
    work = tmp_path / "work"
    work.mkdir()
    oci.export_image(old, store.path, str(tmp_path / "out:img"), "oci", work)
    assert layout_type_mismatches(tmp_path / "out") == []
    back = import_into(Store(tmp_path / "s2"), tmp_path, str(tmp_path / "out:img"), "oci")
    # skopeo compressed the (now rightly labelled) tar layers, as for a fresh import's export
    (tmp_path / "work2").mkdir()
    oci.export_image(good, store.path, str(tmp_path / "out2:img"), "oci", tmp_path / "work2")
    fresh = import_into(Store(tmp_path / "s3"), tmp_path, str(tmp_path / "out2:img"), "oci")
    assert back.manifest_digest == fresh.manifest_digest
    assert back.config == good.config
    assert json.loads(store.path(old.manifest_digest).read_bytes()) == wrong  # store untouched


def test_registry_push_and_pull_of_tar_layers(tmp_path, multilayer_image, registry):
    ref = testimages.convert(multilayer_image, "docker-archive", str(tmp_path / "m.tar"))
    store = Store(tmp_path / "store")
    image = import_into(store, tmp_path, ref.split(":", 1)[1], "docker-archive")
    work = tmp_path / "work"
    work.mkdir()
    pushed = registry.ref("pcocc/multi-tar", "1")
    oci.export_image(image, store.path, pushed, "docker", work, tls_verify=False)
    # What the registry serves, byte for byte (dir: keeps the manifest as it is).
    pulled = tmp_path / "pulled"
    skopeo.copy(f"docker://{pushed}", f"dir:{pulled}")  # loopback registry: plain HTTP
    manifest = json.loads((pulled / "manifest.json").read_text())
    assert layer_type_mismatches(manifest, lambda d: pulled / d.split(":", 1)[1]) == []
    store2 = Store(tmp_path / "store2")
    back = import_into(store2, tmp_path, "//" + pushed, "docker", tls_verify=False)
    assert layer_type_mismatches(back.manifest, store2.path) == []
    assert back.config["rootfs"] == image.config["rootfs"]
    t1 = testimages.tree_listing(unpacked(store, image, tmp_path / "r1"))
    assert testimages.tree_listing(unpacked(store2, back, tmp_path / "r2")) == t1


def test_identical_layers_are_stored_once(tmp_path, multilayer_image):
    store = Store(tmp_path / "store", hooks=False)
    a = import_into(store, tmp_path, str(multilayer_image.layout) + ":multi", "oci")
    ref = testimages.convert(multilayer_image, "oci-archive", str(tmp_path / "m.tar"))
    b = import_into(store, tmp_path, ref.split(":", 1)[1], "oci-archive")
    layers = [[d["digest"] for d in x.manifest["layers"]] for x in (a, b)]
    assert layers[0] == layers[1]
    files = sorted(p.name for p in store.files())
    assert len(files) == len({x.digest for x in a.blobs + b.blobs})


@pytest.mark.parametrize("hooks", [True, False])
def test_reimport_changes_no_blob(tmp_path, multilayer_image, hooks):
    ref = testimages.convert(multilayer_image, "docker-archive", str(tmp_path / "m.tar"))
    store = Store(tmp_path / "store", hooks=hooks)
    first = import_into(store, tmp_path, ref.split(":", 1)[1], "docker-archive")
    before = {p.name: (p.stat().st_ino, p.read_bytes()) for p in store.files()}
    hashed = len(store.added)
    second = import_into(store, tmp_path, ref.split(":", 1)[1], "docker-archive")
    after = {p.name: (p.stat().st_ino, p.read_bytes()) for p in store.files()}
    assert second.manifest_digest == first.manifest_digest
    assert second.blobs == first.blobs
    assert after == before
    if hooks:
        assert len(store.added) == hashed  # nothing re-hashed: the store had every blob


@pytest.mark.parametrize("src_fmt", ["oci", "docker-archive"])
@pytest.mark.parametrize("fmt", FILE_FORMATS)
def test_export_round_trip(tmp_path, multilayer_image, fmt, src_fmt):
    store = Store(tmp_path / "store")
    (tmp_path / "in").mkdir()
    ref = testimages.convert(multilayer_image, src_fmt, _location(tmp_path / "in", src_fmt))
    src = import_into(store, tmp_path, ref.split(":", 1)[1], src_fmt)
    work = tmp_path / "export-work"
    work.mkdir()
    dest = _location(tmp_path / "out", fmt)
    (tmp_path / "out").mkdir()
    oci.export_image(src, store.path, dest, fmt, work, lambda d, t: None)
    store2 = Store(tmp_path / "store2")
    back = import_into(store2, tmp_path, dest, fmt)
    assert layer_type_mismatches(back.manifest, store2.path) == []
    for key in ("architecture", "os", "config"):
        assert back.config[key] == src.config[key]
    assert back.config["rootfs"]["diff_ids"] == src.config["rootfs"]["diff_ids"]
    t1 = testimages.tree_listing(unpacked(store, src, tmp_path / "r1"))
    t2 = testimages.tree_listing(unpacked(store2, back, tmp_path / "r2"))
    assert t1 == t2
    assert testimages.check_tree(tmp_path / "r2", multilayer_image) == []


def test_export_refuses_sif_and_unknown(tmp_path, busybox_image):
    store = Store(tmp_path / "store")
    img = import_into(store, tmp_path, str(busybox_image.layout) + ":busybox", "oci")
    for fmt in ("simg", "sif"):
        with pytest.raises(UsageError, match="cannot be exported to Singularity"):
            oci.export_image(img, store.path, str(tmp_path / "x"), fmt, tmp_path, lambda d, t: None)
    with pytest.raises(UsageError, match="format 'qcow2'"):
        oci.export_image(img, store.path, str(tmp_path / "x"), "qcow2", tmp_path, lambda d, t: None)


def test_unknown_or_missing_transport(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match="unknown container image format 'tarball'"):
        import_into(Store(tmp_path / "s"), tmp_path, "x", "tarball")
    monkeypatch.setattr(skopeo, "transports", lambda: frozenset({"docker"}))
    with pytest.raises(ToolError, match="does not support the 'ostree' transport"):
        import_into(Store(tmp_path / "s"), tmp_path, "/nonexistent", "ostree")


def test_transport_missing_from_the_build(tmp_path):
    """Debian's skopeo lists ostree in its help but is built without it."""
    with pytest.raises(ToolError, match="'ostree'") as info:
        import_into(Store(tmp_path / "s"), tmp_path, f"img@{tmp_path}/repo", "ostree")
    if "not supported" in info.value.stderr:
        assert str(info.value).startswith("this skopeo does not support the 'ostree' transport")


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(NotFound, match=r"docker-archive:.*nope\.tar: no such file"):
        import_into(Store(tmp_path / "s"), tmp_path, str(tmp_path / "nope.tar"), "docker-archive")


def test_tampered_blob_is_refused(tmp_path, busybox_image):
    layout = tmp_path / "layout"
    shutil.copytree(busybox_image.layout, layout)
    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs/sha256" / mdigest.split(":")[1]).read_text())
    cfg = layout / "blobs/sha256" / manifest["config"]["digest"].split(":")[1]
    data = bytearray(cfg.read_bytes())
    data[data.index(b"busybox")] = ord("B")  # same size, different digest
    cfg.chmod(0o644)
    cfg.write_bytes(bytes(data))
    store = Store(tmp_path / "store", hooks=False)
    with pytest.raises(Corrupt, match="digest"):
        oci.ingest_layout(layout, store, tag=busybox_image.tag)
    assert manifest["config"]["digest"] not in store.digests()


def test_malformed_manifest_is_refused(tmp_path, busybox_image):
    layout = tmp_path / "layout"
    shutil.copytree(busybox_image.layout, layout)
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {"mediaType": ocispec.MT_OCI_MANIFEST, "digest": "md5:abc", "size": 3}],
            }
        )
    )
    with pytest.raises(Corrupt, match="invalid or unsupported digest"):
        oci.ingest_layout(layout, Store(tmp_path / "s"))


@pytest.mark.skipif(not shutil.which("mksquashfs"), reason="squashfs-tools not installed")
def test_sif_import_of_busybox_rootfs(tmp_path, busybox_image):
    store = Store(tmp_path / "store")
    img = import_into(store, tmp_path, str(busybox_image.layout) + ":busybox", "oci")
    rootfs = unpacked(store, img, tmp_path / "rootfs")
    image = testimages.build_sif(
        testimages.make_squashfs(rootfs, tmp_path / "r.sqfs"), tmp_path / "busybox.sif"
    )
    with store.repo.staging("sif") as staging:
        from_sif = sif.import_sif(image, staging, store)
    assert testimages.check_tree(unpacked(store, from_sif, tmp_path / "r2"), busybox_image) == []
    assert from_sif.config["architecture"] == "amd64"


def test_export_through_symlinks(tmp_path, busybox_image, monkeypatch):
    """Hard links are impossible across file systems: the export layout uses symlinks."""
    store = Store(tmp_path / "store")
    img = import_into(store, tmp_path, str(busybox_image.layout) + ":busybox", "oci")

    def no_link(src, dst, *a, **kw):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(oci.os, "link", no_link)
    work = tmp_path / "work"
    work.mkdir()
    oci.export_image(img, store.path, str(tmp_path / "o.tar"), "oci-archive", work)
    blobs = list((work / "oci-export/blobs/sha256").iterdir())
    assert blobs and all(p.is_symlink() for p in blobs)
    monkeypatch.undo()
    back = import_into(Store(tmp_path / "s2"), tmp_path, str(tmp_path / "o.tar"), "oci-archive")
    assert back.manifest_digest == img.manifest_digest


# --- re-import without skopeo (ocifast) --------------------------------------------------

FAST_FORMATS = ["docker-archive", "oci", "oci-archive"]


def _no_skopeo(monkeypatch) -> None:
    def refuse(*a, **kw):
        raise AssertionError("skopeo ran")

    monkeypatch.setattr(skopeo, "copy", refuse)
    monkeypatch.setattr(skopeo, "inspect_raw", refuse)


@pytest.mark.parametrize("fmt", FAST_FORMATS)
def test_reimport_of_a_local_source_skips_skopeo(tmp_path, multilayer_image, fmt, monkeypatch):
    ref = testimages.convert(multilayer_image, fmt, _location(tmp_path, fmt))
    src = ref.split(":", 1)[1]
    store = Store(tmp_path / "store")
    first = import_into(store, tmp_path, src, fmt)
    before = {p.name: (p.stat().st_ino, p.read_bytes()) for p in store.files()}
    hashed = len(store.added)
    _no_skopeo(monkeypatch)
    second = import_into(store, tmp_path, src, fmt)
    assert second == first  # manifest digest, manifest, config and blob list
    assert len(store.added) == hashed
    assert {p.name: (p.stat().st_ino, p.read_bytes()) for p in store.files()} == before
    # ... and it is what skopeo gives into a store that never saw the image
    monkeypatch.undo()
    fresh = import_into(Store(tmp_path / "fresh", hooks=False), tmp_path, src, fmt)
    assert fresh.manifest_digest == second.manifest_digest
    assert fresh.blobs == second.blobs


def test_reimport_under_a_second_name_shares_every_blob(tmp_path, multilayer_image,
                                                        monkeypatch):
    archive = testimages.convert(multilayer_image, "docker-archive", str(tmp_path / "m.tar"))
    repos = RepoSet([RepoConfig("test", tmp_path / "repo")])
    a = ops.import_image(repos, archive, "first")
    files = sorted((tmp_path / "repo" / "data").rglob("*"))
    _no_skopeo(monkeypatch)
    b = ops.import_image(repos, archive, "second")
    assert b.name == "second" and a.name == "first"
    assert [x.digest for x in b.blobs] == [x.digest for x in a.blobs]
    assert b.oci == a.oci
    assert sorted((tmp_path / "repo" / "data").rglob("*")) == files


@pytest.mark.parametrize("damage", ["missing layer", "stale index", "garbage index"])
def test_reimport_falls_back_to_skopeo(tmp_path, multilayer_image, damage, monkeypatch):
    ref = testimages.convert(multilayer_image, "docker-archive", str(tmp_path / "m.tar"))
    src = ref.split(":", 1)[1]
    store = Store(tmp_path / "store")
    first = import_into(store, tmp_path, src, "docker-archive")
    index = Path(store.import_index)
    if damage == "missing layer":
        layer = first.manifest["layers"][-1]["digest"]
        store.path(layer).unlink()
    elif damage == "stale index":  # points to a manifest that is stored but not this image
        other = import_into(store, tmp_path, str(multilayer_image.layout) + ":multi", "oci")
        entries = json.loads(index.read_text())
        entries = {k: other.manifest_digest for k in entries}
        index.write_text(json.dumps(entries))
    else:
        index.write_text("{not json")
    calls = []
    real_copy = skopeo.copy
    monkeypatch.setattr(skopeo, "copy", lambda *a, **kw: (calls.append(a), real_copy(*a, **kw))[1])
    again = import_into(store, tmp_path, src, "docker-archive")
    assert calls, "the import must have gone through skopeo"
    assert again.manifest_digest == first.manifest_digest
    assert {b.digest for b in again.blobs} <= store.digests()
    assert first.manifest_digest in json.loads(index.read_text()).values()


def test_pcocc_image_import_again_runs_no_skopeo(tmp_path, pcocc_env, pcocc_bin,
                                                 multilayer_image):
    """Through the command: the second import of an archive succeeds with a skopeo that
    can only fail first in PATH, and stores nothing but the new image's metadata."""
    repo = tmp_path / "repo"
    (pcocc_env["user"] / "repos.yaml").write_text(
        yaml.safe_dump({"repos": [{"name": "r", "path": str(repo)}]}))
    archive = testimages.convert(multilayer_image, "docker-archive", str(tmp_path / "m.tar"))

    def pcocc(*argv, path=None):
        env = {**os.environ, **({"PATH": path} if path else {})}
        return subprocess.run([pcocc_bin, *argv], env=env, capture_output=True, text=True)

    assert pcocc("image", "import", archive, "first").returncode == 0
    blobs = sorted((p.name, p.stat().st_ino) for p in (repo / "data").rglob("*") if p.is_file())
    broken = tmp_path / "broken-bin"
    broken.mkdir()
    (broken / "skopeo").write_text("#!/bin/sh\necho 'skopeo must not run' >&2\nexit 1\n")
    (broken / "skopeo").chmod(0o755)
    res = pcocc("image", "import", archive, "second", path=f"{broken}:{os.environ['PATH']}")
    assert res.returncode == 0, res.stderr
    after = sorted((p.name, p.stat().st_ino) for p in (repo / "data").rglob("*") if p.is_file())
    assert after == blobs
    shown = {}
    for name in ("first", "second"):
        out = pcocc("image", "show", "--json", name)
        assert out.returncode == 0, out.stderr
        [shown[name]] = json.loads(out.stdout)
    assert shown["first"]["blobs"] == shown["second"]["blobs"]
    # a changed archive is a new source: the broken skopeo is then reached, and fails
    other = testimages.convert(multilayer_image, "oci-archive", str(tmp_path / "m.oci.tar"))
    res = pcocc("image", "import", other, "third", path=f"{broken}:{os.environ['PATH']}")
    assert res.returncode != 0
