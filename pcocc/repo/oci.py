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

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pcocc.errors import Corrupt, NotFound, ToolError, UsageError
from pcocc.repo import ocifast, ocispec, skopeo
from pcocc.repo.digest import is_digest
from pcocc.repo.model import AddBlob, OciImage, Progress, no_progress
from pcocc.repo.ocispec import (
    MT_DOCKER_FOREIGN_TAR,
    MT_DOCKER_LAYER_TAR,
    MT_LAYER_NONDIST_TAR,
    MT_LAYER_TAR,
    MT_OCI_MANIFEST,
    blob_dir,
    blob_ref,
    check_config,
    check_manifest,
    layout_blob,
    parse_json,
    pick_manifest,
    read_json,
    write_index,
    write_json_blob,
)

log = logging.getLogger(__name__)

IMPORT_FORMATS = skopeo.TRANSPORTS
EXPORT_FORMATS = ("docker", "docker-archive", "oci", "oci-archive", "dir")
#: the tag of the image inside our own temporary layouts
STAGING_TAG = "pcocc"


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
    authfile: Path | None = None,
) -> OciImage:
    """Import the container image ``fmt:source`` and return what the store must record.

    :param source: the location after the transport (``busybox:latest`` for ``docker``)
    :param fmt: a skopeo transport: docker, docker-archive, docker-daemon, oci,
        oci-archive, dir, ostree
    :param tls_verify: for ``docker``: False allows plain HTTP registries
    :param authfile: for ``docker``: registry credentials (a containers-auth.json file)
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
    _link_known_blobs(src_ref, layout, add_blob, tls_verify, authfile)
    progress(0, None)
    skopeo.copy(
        src_ref,
        f"oci:{layout}:{STAGING_TAG}",
        policy=policy,
        src_tls_verify=tls_verify,
        src_authfile=authfile,
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
    index = read_json(layout / "index.json", f"{what}: index.json")
    mdesc = pick_manifest(index, tag, what)
    manifest_bytes = _blob_file(layout, mdesc, what, "manifest").read_bytes()
    manifest = parse_json(manifest_bytes, f"{what}: manifest {mdesc['digest']}")
    config_desc, layer_descs = check_manifest(manifest, what)
    config_path = _blob_file(layout, config_desc, what, "config")
    config = parse_json(config_path.read_bytes(), f"{what}: config {config_desc['digest']}")
    check_config(config, len(layer_descs), what)
    layer_paths = [_blob_file(layout, d, what, f"layer {i}") for i, d in enumerate(layer_descs)]
    fixed = corrected_manifest(manifest, layer_paths)
    if fixed is not None:
        log.info("%s: layer media types did not match the layers' data; corrected", what)
        mdesc = write_json_blob(blob_dir(layout), fixed, MT_OCI_MANIFEST)
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

    blobs = [blob_ref(config_desc), *map(blob_ref, layer_descs), blob_ref(mdesc, MT_OCI_MANIFEST)]
    return OciImage(manifest_digest=mdesc["digest"], manifest=manifest, config=config, blobs=blobs)


def _link_known_blobs(
    src_ref: str, layout: Path, add_blob: AddBlob, tls_verify: bool | None,
    authfile: Path | None = None,
) -> None:
    """Link into the layout the source's blobs that the store already has (skopeo reuses them)."""
    has_blob = getattr(add_blob, "has_blob", None)
    blob_path = getattr(add_blob, "blob_path", None)
    if has_blob is None or blob_path is None:
        return
    try:
        raw = skopeo.inspect_raw(src_ref, tls_verify=tls_verify, authfile=authfile)
    except (ToolError, Corrupt) as err:
        log.debug("cannot inspect %s before copying (%s); copying everything", src_ref, err)
        return
    descs = [raw.get("config")] + list(raw.get("layers") or [])
    for desc in descs:
        digest = desc.get("digest") if isinstance(desc, dict) else None
        if not is_digest(digest) or not has_blob(digest):
            continue
        blob_dir(layout).mkdir(parents=True, exist_ok=True)
        link_blob(Path(blob_path(digest)), layout_blob(layout, digest))


# --- layer media types vs layer bytes ------------------------------------------------------

#: Media types of layers by base (without compression suffix); docker's map to OCI's.
_LAYER_BASES = {
    MT_LAYER_TAR: MT_LAYER_TAR,
    MT_LAYER_NONDIST_TAR: MT_LAYER_NONDIST_TAR,
    MT_DOCKER_LAYER_TAR: MT_LAYER_TAR,
    MT_DOCKER_FOREIGN_TAR: MT_LAYER_NONDIST_TAR,
}
_SUFFIXES = {"gzip": ("+gzip", ".gzip"), "zstd": ("+zstd", ".zstd"), "": ("",)}


def layer_compression(path: Path) -> str:
    """The compression of a layer blob from its first bytes: "gzip", "zstd" or "" (tar)."""
    with open(path, "rb") as f:
        return ocispec.compression(f.read(4))


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


# --- blobs of a layout ----------------------------------------------------------------------


def _blob_file(layout: Path, desc: dict[str, Any], what: str, role: str) -> Path:
    path = layout_blob(layout, desc["digest"])
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise Corrupt(f"{what}: {role} blob {desc['digest']} is missing") from None
    if size != desc["size"]:
        raise Corrupt(
            f"{what}: {role} blob {desc['digest']} has {size} bytes, expected {desc['size']}"
        )
    return path


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
    blob_dir(layout).mkdir(parents=True, exist_ok=True)
    config_desc, layer_descs = check_manifest(image.manifest, image.manifest_digest)
    digests = [image.manifest_digest, config_desc["digest"], *(d["digest"] for d in layer_descs)]
    for digest in digests:
        target = layout_blob(layout, digest)
        if not target.exists():
            link_blob(Path(blob_path(digest)), target)
    mdesc = {
        "mediaType": MT_OCI_MANIFEST,
        "digest": image.manifest_digest,
        "size": layout_blob(layout, image.manifest_digest).stat().st_size,
    }
    # Images stored before imports corrected media types may still say +gzip for tar.
    layer_paths = [layout_blob(layout, d["digest"]) for d in layer_descs]
    fixed = corrected_manifest(image.manifest, layer_paths)
    if fixed is not None:
        mdesc = write_json_blob(blob_dir(layout), fixed, MT_OCI_MANIFEST)
    write_index(layout, mdesc, STAGING_TAG)


def link_blob(src: Path, dst: Path) -> None:
    """Hard link ``src`` at ``dst``; a symbolic link when that is impossible."""
    try:
        os.link(src, dst)
    except FileExistsError:
        return
    except OSError:
        # Other file system, or protected_hardlinks for blobs owned by someone else.
        os.symlink(os.path.abspath(src), dst)
