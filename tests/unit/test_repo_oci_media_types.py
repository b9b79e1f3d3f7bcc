"""Layer media types against the layers' bytes (pcocc.repo.oci): the pure parts. The
integration tests (tests/integration/test_image_oci.py) check them with real skopeo."""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from pcocc.repo import oci, ocispec

OCI = "application/vnd.oci.image.layer.v1.tar"
NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
ZSTD_FRAME = bytes.fromhex("28b52ffd") + b"\0" * 16  # the magic is all that is read


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    return buf.getvalue()


@pytest.fixture
def blobs(tmp_path) -> dict[str, Path]:
    out = {}
    for kind, data in (("tar", _tar()), ("gzip", gzip.compress(_tar())), ("zstd", ZSTD_FRAME),
                       ("empty", b"")):
        out[kind] = tmp_path / kind
        out[kind].write_bytes(data)
    return out


def test_compression_from_magic_bytes(blobs):
    assert oci.layer_compression(blobs["tar"]) == ""
    assert oci.layer_compression(blobs["gzip"]) == "gzip"
    assert oci.layer_compression(blobs["zstd"]) == "zstd"
    assert oci.layer_compression(blobs["empty"]) == ""


@pytest.mark.parametrize(
    ("media_type", "compression", "expected"),
    [
        (OCI + "+gzip", "", OCI),  # what skopeo 1.9 writes for docker-archive layers
        (OCI + "+gzip", "gzip", OCI + "+gzip"),
        (OCI, "gzip", OCI + "+gzip"),
        (OCI + "+gzip", "zstd", OCI + "+zstd"),
        (OCI + "+zstd", "", OCI),
        (OCI, "", OCI),
        (NONDIST + "+gzip", "", NONDIST),
        (NONDIST, "zstd", NONDIST + "+zstd"),
        (DOCKER_GZIP, "gzip", DOCKER_GZIP),  # right already: kept as it is
        (DOCKER_GZIP, "", OCI),
        (DOCKER_FOREIGN, "", NONDIST),
        ("application/vnd.docker.image.rootfs.diff.tar", "gzip", OCI + "+gzip"),
        ("application/x-something-else", "", None),  # not a tar layer: left alone
        ("", "gzip", None),
    ],
)
def test_layer_media_type(media_type, compression, expected):
    assert oci.layer_media_type(media_type, compression) == expected


def _manifest(*layers: tuple[str, Path]) -> dict:
    return {
        "schemaVersion": 2,
        "mediaType": ocispec.MT_OCI_MANIFEST,
        "config": {"mediaType": ocispec.MT_OCI_CONFIG, "digest": "sha256:" + "0" * 64, "size": 2},
        "layers": [
            {"mediaType": mt, "digest": "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest(),
             "size": p.stat().st_size}
            for mt, p in layers
        ],
        "annotations": {"keep": "me"},
    }


def test_corrected_manifest_fixes_only_wrong_layers(blobs):
    manifest = _manifest((OCI + "+gzip", blobs["tar"]), (OCI + "+gzip", blobs["gzip"]))
    before = copy.deepcopy(manifest)
    fixed = oci.corrected_manifest(manifest, [blobs["tar"], blobs["gzip"]])
    assert manifest == before  # the input is not changed
    assert [d["mediaType"] for d in fixed["layers"]] == [OCI, OCI + "+gzip"]
    fixed["layers"][0]["mediaType"] = OCI + "+gzip"
    assert fixed == before  # nothing else differs
    assert list(oci.corrected_manifest(manifest, [blobs["tar"], blobs["gzip"]])) == list(before)


def test_corrected_manifest_is_none_when_all_agree(blobs):
    manifest = _manifest((OCI, blobs["tar"]), (OCI + "+gzip", blobs["gzip"]),
                         ("application/x-foreign", blobs["zstd"]))
    assert oci.corrected_manifest(manifest, [blobs["tar"], blobs["gzip"], blobs["zstd"]]) is None


def _layout(root: Path, manifest: dict, layer_paths: list[Path]) -> Path:
    blob_dir = root / "blobs" / "sha256"
    blob_dir.mkdir(parents=True)
    for desc, path in zip(manifest["layers"], layer_paths):
        (blob_dir / desc["digest"][7:]).write_bytes(path.read_bytes())
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": ["x"] * len(layer_paths)}})
    cdigest = "sha256:" + hashlib.sha256(config.encode()).hexdigest()
    (blob_dir / cdigest[7:]).write_text(config)
    manifest["config"] = {**manifest["config"], "digest": cdigest, "size": len(config)}
    data = json.dumps(manifest).encode()
    mdigest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blob_dir / mdigest[7:]).write_bytes(data)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": ocispec.MT_OCI_MANIFEST, "digest": mdigest, "size": len(data)}]}))
    return root


class _Store:
    """Keeps what it is given, checking digests as the real store does."""

    def __init__(self):
        self.blobs: dict[str, bytes] = {}

    def __call__(self, path: Path, expected: str | None = None) -> str:
        data = Path(path).read_bytes()
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        assert expected in (None, digest)
        self.blobs[digest] = data
        return digest


def test_ingest_stores_the_corrected_manifest(tmp_path, blobs):
    manifest = _manifest((OCI + "+gzip", blobs["tar"]), (OCI, blobs["gzip"]))
    layout = _layout(tmp_path / "layout", manifest, [blobs["tar"], blobs["gzip"]])
    store = _Store()
    image = oci.ingest_layout(layout, store)
    assert [d["mediaType"] for d in image.manifest["layers"]] == [OCI, OCI + "+gzip"]
    assert json.loads(store.blobs[image.manifest_digest]) == image.manifest
    assert image.blobs[-1].digest == image.manifest_digest
    assert [b.media_type for b in image.blobs[1:-1]] == [OCI, OCI + "+gzip"]
    original = "sha256:" + hashlib.sha256(json.dumps(manifest).encode()).hexdigest()
    assert original not in store.blobs  # the wrong manifest is not kept
    # The same layout again gives the same manifest: a re-import dedups it.
    assert oci.ingest_layout(layout, _Store()).manifest_digest == image.manifest_digest
