"""Import and export of OCI container images through skopeo.

Import: skopeo copies the source into an OCI layout inside the staging directory the store
gives us; we check index, manifest and config, then hand every blob (layers, config, and
the manifest itself) to ``add_blob`` with its expected digest, so the store verifies each
one on the way in. Layers keep the compression they had at the source (skopeo runs with
``--dest-oci-accept-uncompressed-layers``): digests then match the source's, which lets
identical layers dedup across imports and lets a re-import skip the work.

The manifest's layer media types are checked against the layers' bytes (gzip, zstd or
plain tar, from their magic numbers): some skopeo versions (1.9 of Debian 12) copy the
uncompressed layers of a docker-archive with a ``+gzip`` media type. A wrong type is
corrected, and the corrected manifest (a new digest) is what the store keeps. Exports
apply the same check, for images stored before this correction existed.

Optional store hooks, looked up as attributes of ``add_blob``:

- ``add_blob.has_blob(digest) -> bool``: blobs the store already has are not re-hashed;
- ``add_blob.blob_path(digest) -> Path``: with ``has_blob``, blobs the store already has
  are linked into the staging layout before skopeo runs, so skopeo does not copy them again.
- ``add_blob.import_index -> Path``: with both, a file where imports of local archives
  and layouts are indexed by their metadata, so that importing the same source again takes
  the stored image without running skopeo (see ``ocifast``).

Export: an OCI layout is assembled in a work directory from store blobs (hard links, or
symbolic links across file systems), then skopeo copies it to the destination.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pcocc.errors import Corrupt, NotFound, ToolError, UsageError
from pcocc.repo import ocifast, skopeo
from pcocc.repo.model import AddBlob, BlobRef, OciImage, Progress, no_progress

log = logging.getLogger(__name__)

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_LAYER_NONDIST_TAR = "application/vnd.oci.image.layer.nondistributable.v1.tar"
REF_ANNOTATION = "org.opencontainers.image.ref.name"

IMPORT_FORMATS = skopeo.TRANSPORTS
EXPORT_FORMATS = ("docker", "docker-archive", "oci", "oci-archive", "dir")
#: the tag of the image inside our own temporary layouts
STAGING_TAG = "pcocc"

_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


# --- import -------------------------------------------------------------------------------


def import_image(
    source: str,
    fmt: str,
    staging: Path,
    add_blob: AddBlob,
    progress: Progress = no_progress,
    *,
    tls_verify: bool | None = None,
    policy: Path | None = None,
) -> OciImage:
    """Import the container image ``fmt:source`` and return what the store must record.

    :param source: the location after the transport (``busybox:latest`` for ``docker``)
    :param fmt: a skopeo transport: docker, docker-archive, docker-daemon, oci,
        oci-archive, dir, ostree
    :param tls_verify: for ``docker``: False allows plain HTTP registries
    :raise UsageError: unknown format
    :raise ToolError: skopeo lacks the transport or failed
    :raise Corrupt: the copied image is malformed or a blob fails its digest
    """
    src_ref = skopeo.image_ref(fmt, source)
    _check_local_source(fmt, source)
    known = ocifast.probe(fmt, source) if hasattr(add_blob, "import_index") else None
    if known is not None:
        img = ocifast.lookup(known, add_blob)
        if img is not None:
            log.debug("%s: imported before as %s; all its blobs are stored", src_ref,
                      img.manifest_digest)
            progress(img.size, img.size)
            return img
    skopeo.require_transport(fmt)
    layout = staging / "oci-layout"
    layout.mkdir(parents=True, exist_ok=True)
    _link_known_blobs(src_ref, layout, add_blob, tls_verify)
    progress(0, None)
    skopeo.copy(
        src_ref,
        f"oci:{layout}:{STAGING_TAG}",
        policy=policy,
        src_tls_verify=tls_verify,
        extra=["--dest-oci-accept-uncompressed-layers"],
    )
    img = ingest_layout(layout, add_blob, progress, tag=STAGING_TAG, what=src_ref)
    if known is not None:
        ocifast.remember(known, img, add_blob)
    return img


def _check_local_source(fmt: str, source: str) -> None:
    """A missing local source fails with a short message, before skopeo's long one."""
    if fmt in ("docker", "docker-daemon", "ostree"):
        return
    # docker-archive:FILE[:REF], oci:DIR[:TAG], oci-archive:FILE[:TAG], dir:DIR
    if not os.path.exists(source) and not os.path.exists(source.rpartition(":")[0] or source):
        raise NotFound(f"source image {fmt}:{source}: no such file or directory")


def ingest_layout(
    layout: Path,
    add_blob: AddBlob,
    progress: Progress = no_progress,
    *,
    tag: str | None = None,
    what: str | None = None,
) -> OciImage:
    """Check the image ``tag`` of an OCI layout and move its blobs into the store.

    Layers first, then config, then the manifest: a store that sees the manifest has all
    it references.
    """
    what = what or str(layout)
    index = _read_json(layout / "index.json", f"{what}: index.json")
    mdesc = _pick_manifest(index, tag, what)
    manifest_bytes = _blob_file(layout, mdesc, what, "manifest").read_bytes()
    manifest = _parse_json(manifest_bytes, f"{what}: manifest {mdesc['digest']}")
    config_desc, layer_descs = check_manifest(manifest, what)
    config_path = _blob_file(layout, config_desc, what, "config")
    config = _parse_json(config_path.read_bytes(), f"{what}: config {config_desc['digest']}")
    check_config(config, len(layer_descs), what)
    layer_paths = [_blob_file(layout, d, what, f"layer {i}") for i, d in enumerate(layer_descs)]
    fixed = corrected_manifest(manifest, layer_paths)
    if fixed is not None:
        log.info("%s: layer media types did not match the layers' data; corrected", what)
        mdesc = _write_manifest(layout / "blobs" / "sha256", fixed)
        manifest = fixed
        config_desc, layer_descs = check_manifest(manifest, what)

    has_blob = getattr(add_blob, "has_blob", None)
    total = sum(d["size"] for d in layer_descs) + config_desc["size"] + mdesc["size"]
    done = 0
    todo = [
        *zip(layer_descs, layer_paths),
        (config_desc, config_path),
        (mdesc, _blob_file(layout, mdesc, what, "manifest")),
    ]
    for desc, path in todo:
        digest = desc["digest"]
        if has_blob is not None and has_blob(digest):
            log.debug("%s: blob %s already stored", what, digest)
        else:
            got = add_blob(path, digest)
            if got != digest:
                raise Corrupt(f"{what}: blob {digest} was stored as {got}")
        done += desc["size"]
        progress(done, total)

    blobs = [_ref(config_desc)] + [_ref(d) for d in layer_descs] + [_ref(mdesc, MT_OCI_MANIFEST)]
    return OciImage(manifest_digest=mdesc["digest"], manifest=manifest, config=config, blobs=blobs)


def _link_known_blobs(
    src_ref: str, layout: Path, add_blob: AddBlob, tls_verify: bool | None
) -> None:
    """Link into the layout the source's blobs that the store already has (skopeo reuses them)."""
    has_blob = getattr(add_blob, "has_blob", None)
    blob_path = getattr(add_blob, "blob_path", None)
    if has_blob is None or blob_path is None:
        return
    try:
        raw = skopeo.inspect_raw(src_ref, tls_verify=tls_verify)
    except (ToolError, Corrupt) as err:
        log.debug("cannot inspect %s before copying (%s); copying everything", src_ref, err)
        return
    descs = [raw.get("config")] + list(raw.get("layers") or [])
    blob_dir = layout / "blobs" / "sha256"
    for desc in descs:
        digest = desc.get("digest") if isinstance(desc, dict) else None
        if not isinstance(digest, str) or not _DIGEST_RE.match(digest) or not has_blob(digest):
            continue
        blob_dir.mkdir(parents=True, exist_ok=True)
        link_blob(Path(blob_path(digest)), blob_dir / digest.split(":", 1)[1])


# --- layer media types vs layer bytes ------------------------------------------------------

#: Media types of layers by base (without compression suffix); docker's map to OCI's.
_LAYER_BASES = {
    MT_LAYER_TAR: MT_LAYER_TAR,
    MT_LAYER_NONDIST_TAR: MT_LAYER_NONDIST_TAR,
    "application/vnd.docker.image.rootfs.diff.tar": MT_LAYER_TAR,
    "application/vnd.docker.image.rootfs.foreign.diff.tar": MT_LAYER_NONDIST_TAR,
}
_SUFFIXES = {"gzip": ("+gzip", ".gzip"), "zstd": ("+zstd", ".zstd"), "": ("",)}


def layer_compression(path: Path) -> str:
    """The compression of a layer blob from its first bytes: "gzip", "zstd" or "" (tar)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return ""


def layer_media_type(media_type: str, compression: str) -> str | None:
    """The layer media type that says ``compression`` for the same kind of layer as
    ``media_type``; None for media types that are not known tar layers (left alone)."""
    for base, oci_base in _LAYER_BASES.items():
        for comp, suffixes in _SUFFIXES.items():
            if any(media_type == base + sfx for sfx in suffixes):
                if comp == compression:
                    return media_type  # already right: docker's names are kept as they are
                return oci_base + _SUFFIXES[compression][0]
    return None


def corrected_manifest(manifest: dict[str, Any], layer_paths: list[Path]) -> dict[str, Any] | None:
    """A copy of ``manifest`` whose layer media types say the layers' real compression,
    or None when every known layer media type already does."""
    layers = []
    changed = False
    for desc, path in zip(manifest["layers"], layer_paths, strict=True):
        right = layer_media_type(desc.get("mediaType", ""), layer_compression(path))
        if right is not None and right != desc.get("mediaType"):
            desc = {**desc, "mediaType": right}
            changed = True
        layers.append(desc)
    return {**manifest, "layers": layers} if changed else None


def _write_manifest(blob_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``manifest`` as a blob of ``blob_dir``; return its descriptor."""
    data = json.dumps(manifest, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = blob_dir / digest.split(":", 1)[1]
    if path.is_symlink() or path.exists():
        path.unlink()  # a link to a store blob must not be written through
    path.write_bytes(data)
    return {"mediaType": MT_OCI_MANIFEST, "digest": digest, "size": len(data)}


# --- checks of data from the outside --------------------------------------------------------


def _read_json(path: Path, what: str) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise Corrupt(f"{what} is missing") from None
    return _parse_json(data, what)


def _parse_json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise Corrupt(f"{what} is not valid JSON: {err}") from err


def check_descriptor(desc: Any, what: str) -> dict[str, Any]:
    """A content descriptor must have a sha256 digest and a size."""
    if not isinstance(desc, dict):
        raise Corrupt(f"{what}: descriptor is not an object")
    digest, size = desc.get("digest"), desc.get("size")
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise Corrupt(f"{what}: invalid or unsupported digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise Corrupt(f"{what}: invalid size {size!r}")
    if "mediaType" in desc and not isinstance(desc["mediaType"], str):
        raise Corrupt(f"{what}: invalid mediaType")
    return desc


def _pick_manifest(index: Any, tag: str | None, what: str) -> dict[str, Any]:
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
        if tagged:
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


def _blob_file(layout: Path, desc: dict[str, Any], what: str, role: str) -> Path:
    path = layout / "blobs" / "sha256" / desc["digest"].split(":", 1)[1]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise Corrupt(f"{what}: {role} blob {desc['digest']} is missing") from None
    if size != desc["size"]:
        raise Corrupt(
            f"{what}: {role} blob {desc['digest']} has {size} bytes, expected {desc['size']}"
        )
    return path


def _ref(desc: dict[str, Any], media_type: str | None = None) -> BlobRef:
    return BlobRef(desc["digest"], desc["size"], media_type or desc.get("mediaType", ""))


# --- export -------------------------------------------------------------------------------


def export_image(
    image: OciImage,
    blob_path: Callable[[str], Path],
    dest: str,
    fmt: str,
    workdir: Path,
    progress: Progress = no_progress,
    *,
    tls_verify: bool | None = None,
    policy: Path | None = None,
) -> None:
    """Write ``image`` to ``fmt:dest`` (docker-archive, oci, oci-archive, dir, docker).

    :raise UsageError: the format cannot be exported (simg/sif) or is unknown
    """
    if fmt in ("simg", "sif"):
        raise UsageError(
            "container images cannot be exported to Singularity images (simg/sif)",
            hint="export to docker-archive or oci-archive; Singularity can build from those",
        )
    if fmt not in EXPORT_FORMATS:
        raise UsageError(
            f"cannot export a container image to format '{fmt}'",
            hint=f"use one of: {', '.join(EXPORT_FORMATS)}",
        )
    skopeo.require_transport(fmt)
    layout = workdir / "oci-export"
    write_layout(image, blob_path, layout)
    progress(0, image.size)
    skopeo.copy(
        f"oci:{layout}:{STAGING_TAG}",
        skopeo.image_ref(fmt, dest),
        policy=policy,
        dest_tls_verify=tls_verify,
    )
    progress(image.size, image.size)


def write_layout(image: OciImage, blob_path: Callable[[str], Path], layout: Path) -> None:
    """An OCI layout holding ``image`` whose blobs are links to the store's files."""
    blob_dir = layout / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    config_desc, layer_descs = check_manifest(image.manifest, image.manifest_digest)
    digests = [image.manifest_digest, config_desc["digest"], *(d["digest"] for d in layer_descs)]
    for digest in digests:
        target = blob_dir / digest.split(":", 1)[1]
        if not target.exists():
            link_blob(Path(blob_path(digest)), target)
    mdesc = {
        "mediaType": MT_OCI_MANIFEST,
        "digest": image.manifest_digest,
        "size": (blob_dir / image.manifest_digest.split(":", 1)[1]).stat().st_size,
    }
    # Images stored before imports corrected media types may still say +gzip for tar.
    layer_paths = [blob_dir / d["digest"].split(":", 1)[1] for d in layer_descs]
    fixed = corrected_manifest(image.manifest, layer_paths)
    if fixed is not None:
        mdesc = _write_manifest(blob_dir, fixed)
    index = {
        "schemaVersion": 2,
        "manifests": [{**mdesc, "annotations": {REF_ANNOTATION: STAGING_TAG}}],
    }
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps(index))


def link_blob(src: Path, dst: Path) -> None:
    """Hard link ``src`` at ``dst``; a symbolic link when that is impossible."""
    try:
        os.link(src, dst)
    except FileExistsError:
        return
    except OSError:
        # Other file system, or protected_hardlinks for blobs owned by someone else.
        os.symlink(os.path.abspath(src), dst)
