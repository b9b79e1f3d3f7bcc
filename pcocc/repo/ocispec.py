"""The OCI image format as pcocc reads and writes it: media types, the checks of documents
that come from outside (index, manifest, config, descriptors), and OCI image layouts
(``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``).

Shared by the skopeo import/export (``oci``), its re-import shortcut (``ocifast``), the SIF
import (``sif``) and layer extraction (``unpack``). Checks raise ``Corrupt`` naming
``what`` (the source being read) and the part that is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pcocc.errors import Corrupt
from pcocc.repo.digest import digest_hex, is_digest, sha256_bytes
from pcocc.repo.model import BlobRef

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZIP = MT_LAYER_TAR + "+gzip"
MT_LAYER_ZSTD = MT_LAYER_TAR + "+zstd"
MT_LAYER_NONDIST_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
MT_DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
MT_DOCKER_FOREIGN_TAR = "application/vnd.docker.image.rootfs.foreign.diff.tar"
REF_ANNOTATION = "org.opencontainers.image.ref.name"

#: Layer media types that can be unpacked (the compression is read from the data itself).
LAYER_MEDIA_TYPES = frozenset({
    MT_LAYER_TAR,
    MT_LAYER_GZIP,
    MT_LAYER_ZSTD,
    MT_LAYER_NONDIST_TAR,
    MT_LAYER_NONDIST_TAR + "+gzip",
    MT_LAYER_NONDIST_TAR + "+zstd",
    MT_DOCKER_LAYER_TAR + ".gzip",
    MT_DOCKER_FOREIGN_TAR + ".gzip",
})

#: Where a layout keeps its blobs, relative to the layout's root.
BLOBS_DIR = "blobs/sha256"


def compression(magic: bytes) -> str:
    """The compression of a layer from its first four bytes: "gzip", "zstd" or "" (tar)."""
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return ""


# --- checks of documents from the outside ---------------------------------------------------


def read_json(path: Path, what: str) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise Corrupt(f"{what} is missing") from None
    return parse_json(data, what)


def parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise Corrupt(f"{what} is not valid JSON: {err}") from err


def check_descriptor(desc: Any, what: str) -> dict[str, Any]:
    """A content descriptor must have a sha256 digest and a size."""
    if not isinstance(desc, dict):
        raise Corrupt(f"{what}: descriptor is not an object")
    digest, size = desc.get("digest"), desc.get("size")
    if not is_digest(digest):
        raise Corrupt(f"{what}: invalid or unsupported digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise Corrupt(f"{what}: invalid size {size!r}")
    if "mediaType" in desc and not isinstance(desc["mediaType"], str):
        raise Corrupt(f"{what}: invalid mediaType")
    return desc


def pick_manifest(index: Any, tag: str | None, what: str, *,
                  exact_tag: bool = False) -> dict[str, Any]:
    """The descriptor of the one image manifest of a layout's ``index.json``.

    :param tag: keep the manifests with this ref name; when none has it, all are kept,
        unless ``exact_tag``
    """
    if not isinstance(index, dict) or index.get("schemaVersion") != 2:
        raise Corrupt(f"{what}: index.json is not an OCI index (schemaVersion 2)")
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise Corrupt(f"{what}: index.json lists no manifest")
    if tag is not None:
        tagged = [
            m
            for m in manifests
            if isinstance(m, dict) and (m.get("annotations") or {}).get(REF_ANNOTATION) == tag
        ]
        if tagged or exact_tag:
            manifests = tagged
    if len(manifests) != 1:
        raise Corrupt(f"{what}: expected one image in the layout, found {len(manifests)}")
    desc = check_descriptor(manifests[0], f"{what}: index.json manifest")
    if desc.get("mediaType", MT_OCI_MANIFEST) != MT_OCI_MANIFEST:
        raise Corrupt(f"{what}: unsupported manifest media type {desc.get('mediaType')!r}")
    return desc


def check_manifest(manifest: Any, what: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Config and layer descriptors of an OCI image manifest, checked."""
    if not isinstance(manifest, dict) or manifest.get("schemaVersion") != 2:
        raise Corrupt(f"{what}: manifest is not an OCI image manifest (schemaVersion 2)")
    if manifest.get("mediaType", MT_OCI_MANIFEST) != MT_OCI_MANIFEST:
        raise Corrupt(f"{what}: unsupported manifest media type {manifest.get('mediaType')!r}")
    config = check_descriptor(manifest.get("config"), f"{what}: manifest config")
    if config.get("mediaType") != MT_OCI_CONFIG:
        raise Corrupt(f"{what}: unsupported config media type {config.get('mediaType')!r}")
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise Corrupt(f"{what}: manifest has no layer list")
    return config, [check_descriptor(d, f"{what}: layer {i}") for i, d in enumerate(layers)]


def check_config(config: Any, n_layers: int, what: str) -> None:
    """An image config: architecture, os, and one rootfs diff_id per manifest layer."""
    if not isinstance(config, dict):
        raise Corrupt(f"{what}: image config is not an object")
    for key in ("architecture", "os"):
        if not isinstance(config.get(key), str):
            raise Corrupt(f"{what}: image config has no '{key}'")
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
        raise Corrupt(f"{what}: image config has no rootfs.diff_ids")
    if len(rootfs["diff_ids"]) != n_layers:
        raise Corrupt(f"{what}: config lists {len(rootfs['diff_ids'])} layers, manifest {n_layers}")
    if (
        "config" in config
        and config["config"] is not None
        and not isinstance(config["config"], dict)
    ):
        raise Corrupt(f"{what}: image config 'config' is not an object")


def blob_ref(desc: dict[str, Any], media_type: str | None = None) -> BlobRef:
    """The store's record of the blob a (checked) descriptor names."""
    return BlobRef(desc["digest"], desc["size"], media_type or desc.get("mediaType", ""))


def stack_layer(manifest: dict[str, Any], config: dict[str, Any], layer: dict[str, Any],
                diff_id: str, *, created: str, created_by: str) -> tuple[dict, dict]:
    """(manifest, config) of the image ``manifest``/``config`` with the layer descriptor
    ``layer`` (uncompressed digest ``diff_id``) on top. The manifest's config descriptor
    still names the old config: the caller stores the new one and points it there."""
    config = json.loads(json.dumps(config))
    config["created"] = created
    config.setdefault("rootfs", {"type": "layers"}).setdefault("diff_ids", []).append(diff_id)
    config.setdefault("history", []).append({"created": created, "created_by": created_by})
    manifest = json.loads(json.dumps(manifest))
    manifest["layers"] = [*manifest.get("layers", []), layer]
    return manifest, config


# --- image layouts ----------------------------------------------------------------------------


def blob_dir(layout: Path) -> Path:
    return layout / BLOBS_DIR


def layout_blob(layout: Path, digest: str) -> Path:
    """The file of the blob ``digest`` in the layout at ``layout``."""
    return blob_dir(layout) / digest_hex(digest)


def write_json_blob(blobs: Path, obj: dict[str, Any], media_type: str, *,
                    sort_keys: bool = False) -> dict[str, Any]:
    """Write ``obj`` as compact JSON into the blob directory ``blobs``; return its
    descriptor. What was there is replaced, never written through (it may be a link to a
    store blob)."""
    data = json.dumps(obj, sort_keys=sort_keys, separators=(",", ":")).encode()
    digest = sha256_bytes(data)
    path = blobs / digest_hex(digest)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(data)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def write_index(layout: Path, manifest_desc: dict[str, Any], tag: str) -> None:
    """Make ``layout`` an OCI layout whose one image is ``manifest_desc``, named ``tag``."""
    index = {
        "schemaVersion": 2,
        "manifests": [{**manifest_desc, "annotations": {REF_ANNOTATION: tag}}],
    }
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps(index))
