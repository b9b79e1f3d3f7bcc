"""The skopeo-free re-import of local sources (pcocc.repo.ocifast), on hand-made archives
and a fake store. The real skopeo round trip is in tests/integration/test_image_oci.py."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from pcocc.repo import ocifast
from pcocc.repo.model import BlobRef, OciImage

MT_TAR = "application/vnd.oci.image.layer.v1.tar"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


LAYERS = [b"layer-one" * 100, b"layer-two" * 100]
DIFF_IDS = [sha(x) for x in LAYERS]
CONFIG = json.dumps({"architecture": "amd64", "os": "linux",
                     "rootfs": {"type": "layers", "diff_ids": DIFF_IDS}}).encode()


def write_tar(path: Path, members: dict[str, bytes], *, symlink: str | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "elsewhere"
            tar.addfile(info)
    return path


def docker_archive(path: Path, entries: list | None = None, config: bytes = CONFIG,
                   **kw) -> Path:
    entries = entries if entries is not None else [
        {"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["l0.tar", "l1.tar"]}]
    members = {"l0.tar": LAYERS[0], "l1.tar": LAYERS[1], "c.json": config,
               "manifest.json": json.dumps(entries).encode()}
    return write_tar(path, members, **kw)


class FakeStore:
    """add_blob with the hooks, over a directory of blobs named by digest."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir()
        self.import_index = root / "index.json"
        self.added: list[str] = []

    def put(self, data: bytes) -> str:
        digest = sha(data)
        self.blob_path(digest).write_bytes(data)
        return digest

    def blob_path(self, digest: str) -> Path:
        return self.root / digest.split(":", 1)[1]

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def __call__(self, path, expected=None):  # pragma: no cover - never called here
        raise AssertionError("the fast path stores nothing")


def stored_image(store: FakeStore, layer_digests=DIFF_IDS, config: bytes = CONFIG) -> OciImage:
    """What a skopeo import would have stored: the blobs and an OCI manifest."""
    for data in LAYERS:
        store.put(data)
    cdigest = store.put(config)
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": cdigest, "size": len(config)},
                "layers": [{"mediaType": MT_TAR, "digest": d, "size": 900}
                           for d in layer_digests]}
    data = json.dumps(manifest).encode()
    mdigest = store.put(data)
    blobs = [BlobRef(cdigest, len(config), "application/vnd.oci.image.config.v1+json")]
    blobs += [BlobRef(d, 900, MT_TAR) for d in layer_digests]
    blobs.append(BlobRef(mdigest, len(data), "application/vnd.oci.image.manifest.v1+json"))
    return OciImage(mdigest, manifest, json.loads(config), blobs)


def test_docker_archive_round_trip(tmp_path):
    archive = docker_archive(tmp_path / "a.tar")
    store = FakeStore(tmp_path / "store")
    src = ocifast.probe("docker-archive", str(archive))
    assert src is not None and src.layer_digests == tuple(DIFF_IDS)
    assert ocifast.lookup(src, store) is None  # never imported
    image = stored_image(store)
    ocifast.remember(src, image, store)
    assert ocifast.lookup(src, store) == image
    # the same archive under another name of file: same key
    again = ocifast.probe("docker-archive", str(docker_archive(tmp_path / "b.tar")))
    assert again == src


def test_a_different_config_is_a_different_source(tmp_path):
    store = FakeStore(tmp_path / "store")
    src = ocifast.probe("docker-archive", str(docker_archive(tmp_path / "a.tar")))
    ocifast.remember(src, stored_image(store), store)
    config = json.loads(CONFIG)
    config["config"] = {"Env": ["X=1"]}
    other = ocifast.probe("docker-archive", str(docker_archive(
        tmp_path / "b.tar", config=json.dumps(config).encode())))
    assert other is not None and other.key != src.key
    assert ocifast.lookup(other, store) is None


def test_an_image_that_does_not_match_the_source_is_not_indexed(tmp_path):
    store = FakeStore(tmp_path / "store")
    src = ocifast.probe("docker-archive", str(docker_archive(tmp_path / "a.tar")))
    wrong = stored_image(store, layer_digests=[DIFF_IDS[1], DIFF_IDS[0]])
    ocifast.remember(src, wrong, store)
    assert not store.import_index.exists()
    # nor used when an index says so
    store.import_index.write_text(json.dumps({src.key: wrong.manifest_digest}))
    assert ocifast.lookup(src, store) is None


@pytest.mark.parametrize("damage", ["layer gone", "config gone", "manifest changed",
                                    "index garbage", "index not a digest"])
def test_lookup_refuses_what_does_not_check_out(tmp_path, damage):
    store = FakeStore(tmp_path / "store")
    src = ocifast.probe("docker-archive", str(docker_archive(tmp_path / "a.tar")))
    image = stored_image(store)
    ocifast.remember(src, image, store)
    if damage == "layer gone":
        store.blob_path(DIFF_IDS[1]).unlink()
    elif damage == "config gone":
        store.blob_path(image.manifest["config"]["digest"]).unlink()
    elif damage == "manifest changed":
        path = store.blob_path(image.manifest_digest)
        path.write_bytes(path.read_bytes() + b" ")
    elif damage == "index garbage":
        store.import_index.write_text("[1, 2")
    else:
        store.import_index.write_text(json.dumps({src.key: "../../etc/passwd"}))
    assert ocifast.lookup(src, store) is None


def test_a_store_without_the_hooks_gets_no_fast_path(tmp_path):
    src = ocifast.probe("docker-archive", str(docker_archive(tmp_path / "a.tar")))
    assert ocifast.lookup(src, lambda path, digest=None: digest) is None


def test_unusual_docker_archives_are_left_to_skopeo(tmp_path):
    two = [{"Config": "c.json", "Layers": ["l0.tar", "l1.tar"]}] * 2
    cases = {
        "two images": docker_archive(tmp_path / "two.tar", two),
        "no Layers": docker_archive(tmp_path / "nol.tar", [{"Config": "c.json"}]),
        "config outside": docker_archive(
            tmp_path / "out.tar", [{"Config": "../c.json", "Layers": ["l0.tar", "l1.tar"]}]),
        "layer count": docker_archive(tmp_path / "cnt.tar", [{"Config": "c.json",
                                                              "Layers": ["l0.tar"]}]),
        "bad diff_ids": docker_archive(tmp_path / "ids.tar", config=json.dumps(
            {"architecture": "amd64", "os": "linux",
             "rootfs": {"diff_ids": ["md5:00", "md5:11"]}}).encode()),
        "config is a symlink": write_tar(
            tmp_path / "sym.tar",
            {"manifest.json": json.dumps([{"Config": "c.json",
                                           "Layers": ["l0.tar", "l1.tar"]}]).encode()},
            symlink="c.json"),
        "not a tar": tmp_path / "junk.tar",
    }
    cases["not a tar"].write_bytes(b"\0junk" * 100)
    cases["deep JSON"] = write_tar(tmp_path / "deep.tar",
                                   {"manifest.json": b"[" * 100000 + b"]" * 100000})
    gz = tmp_path / "gz.tar"
    gz.write_bytes(gzip.compress(docker_archive(tmp_path / "plain.tar").read_bytes()))
    cases["gzip"] = gz
    for what, path in cases.items():
        assert ocifast.probe("docker-archive", str(path)) is None, what
    # a FILE:REF source picks an image: skopeo's business
    assert ocifast.probe("docker-archive", f"{tmp_path / 'plain.tar'}:x:1") is None
    assert ocifast.probe("docker", "//busybox") is None


def oci_layout(root: Path, tags: list[str]) -> tuple[Path, dict]:
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    store = {}
    for data in [*LAYERS, CONFIG]:
        (blobs / sha(data).split(":", 1)[1]).write_bytes(data)
        store[sha(data)] = data
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": sha(CONFIG), "size": len(CONFIG)},
                "layers": [{"mediaType": MT_TAR, "digest": d, "size": 900} for d in DIFF_IDS]}
    data = json.dumps(manifest).encode()
    (blobs / sha(data).split(":", 1)[1]).write_bytes(data)
    index = {"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha(data),
         "size": len(data), "annotations": {"org.opencontainers.image.ref.name": t}}
        for t in tags]}
    (root / "index.json").write_text(json.dumps(index))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return root, manifest


def test_oci_layout_and_archive_probes(tmp_path):
    layout, manifest = oci_layout(tmp_path / "lay", ["v1"])
    for loc in (str(layout), f"{layout}:v1"):
        src = ocifast.probe("oci", loc)
        assert src is not None and src.config_digest == sha(CONFIG)
        assert src.layer_digests == tuple(DIFF_IDS)
    assert ocifast.probe("oci", f"{layout}:v2") is None  # no such tag
    archive = tmp_path / "lay.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    src = ocifast.probe("oci-archive", str(archive))
    assert src is not None and src.layer_digests == tuple(DIFF_IDS)
    assert src.key != ocifast.probe("oci", str(layout)).key  # the format is in the key


def test_oci_layout_with_two_images_needs_a_tag(tmp_path):
    layout, _ = oci_layout(tmp_path / "lay", ["a", "b"])
    assert ocifast.probe("oci", str(layout)) is None
    assert ocifast.probe("oci", f"{layout}:a") is not None


def test_oci_layout_whose_manifest_does_not_match_its_descriptor(tmp_path):
    layout, _ = oci_layout(tmp_path / "lay", ["v1"])
    index = json.loads((layout / "index.json").read_text())
    blob = layout / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":", 1)[1]
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes().replace(b"amd64", b"arm64") + b" ")
    assert ocifast.probe("oci", str(layout)) is None


def test_the_index_keeps_a_bounded_number_of_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(ocifast, "_MAX_ENTRIES", 3)
    store = FakeStore(tmp_path / "store")
    image = stored_image(store)
    for i in range(5):
        src = ocifast.SourceProbe(f"{i:064x}", None, tuple(DIFF_IDS))
        ocifast.remember(src, image, store)
    assert list(json.loads(store.import_index.read_text())) == [f"{i:064x}" for i in (2, 3, 4)]
