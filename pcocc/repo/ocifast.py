"""Re-import of a local container image archive without skopeo.

A skopeo-based import of ``docker-archive``, ``oci`` or ``oci-archive`` gives a result
that depends only on the source's metadata:

- docker-archive: skopeo converts the docker manifest and config to OCI ones; each layer
  is stored uncompressed, so its digest is the config's diff_id;
- oci / oci-archive: the manifest is copied as it is (layer and config digests kept).

So the source's small metadata (``manifest.json`` + config of a docker-archive, the image
manifest of an OCI layout), read here with ``json``/``tarfile`` and never extracted, gives
a *source key*. After a skopeo-based import whose stored image matches what the metadata
predicts (layer digests; config digest for OCI layouts, diff_ids for a docker-archive,
whose config skopeo rewrites), the repository's import index records
``key -> stored manifest digest``. A later import of a source with the same key takes the
stored manifest, checks it again (digest of its bytes, same prediction, every blob
stored) and returns it: no skopeo run, no new blob, the identical manifest digest.

The index is only a hint: a missing, stale or damaged entry, or any source this module
does not fully understand (gzip-compressed archive, several images, docker manifest in a
layout, ...), means the normal skopeo import. The source's layer blobs are not read on
this path: the stored layers are the ones whose digests the source's metadata names.
The stored image is the one the skopeo of the first import made of that source.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pcocc.errors import Corrupt
from pcocc.fsutil import write_atomic
from pcocc.repo import ocispec
from pcocc.repo.digest import digest_hex, is_digest, sha256_bytes, sha256_hex
from pcocc.repo.model import AddBlob, BlobRef, OciImage

log = logging.getLogger(__name__)

#: metadata files larger than this are not read here (skopeo handles them)
_MAX_META = 4 << 20
#: entries kept in the import index (the oldest are dropped)
_MAX_ENTRIES = 512
FORMATS = ("docker-archive", "oci", "oci-archive")


@dataclass(frozen=True)
class SourceProbe:
    """What the source's metadata says a skopeo import of it stores."""

    key: str  #: hex sha256 of the format and the source's metadata
    #: None for docker-archive: skopeo rewrites the config when it converts the manifest
    config_digest: str | None
    layer_digests: tuple[str, ...]

    def matches(self, manifest: dict[str, Any], config: dict[str, Any]) -> bool:
        """Whether a stored manifest and config are what importing this source gives."""
        mconfig = manifest.get("config") or {}
        layers = manifest.get("layers") or []
        if self.config_digest is not None and mconfig.get("digest") != self.config_digest:
            return False
        diff_ids = (config.get("rootfs") or {}).get("diff_ids")
        if self.config_digest is None and tuple(diff_ids or ()) != self.layer_digests:
            return False
        return len(layers) == len(self.layer_digests) and tuple(
            d.get("digest") for d in layers if isinstance(d, dict)) == self.layer_digests


class _Unusable(Exception):
    """The source is not one this module reads; the skopeo path handles it."""


def probe(fmt: str, location: str) -> SourceProbe | None:
    """The probe of a local source, or None when the fast path does not apply."""
    if fmt not in FORMATS:
        return None
    try:
        if fmt == "docker-archive":
            return _probe_docker_archive(location)
        if fmt == "oci":
            path, tag = _split_ref(location, want_dir=True)
            return _probe_layout(fmt, lambda name: _read_dir(path, name), tag)
        path, tag = _split_ref(location, want_dir=False)
        with _open_tar(path) as tar:
            return _probe_layout(fmt, lambda name: _read_member(tar, name), tag)
    except (_Unusable, Corrupt, OSError, tarfile.TarError, ValueError, KeyError,
            TypeError, RecursionError) as err:
        log.debug("%s:%s: no fast re-import (%s)", fmt, location, err)
        return None


def lookup(src: SourceProbe, add_blob: AddBlob) -> OciImage | None:
    """The image a previous import of the same source stored, when all of it is still
    stored and checks out; None otherwise."""
    has_blob = getattr(add_blob, "has_blob", None)
    blob_path = getattr(add_blob, "blob_path", None)
    index_path = getattr(add_blob, "import_index", None)
    if has_blob is None or blob_path is None or index_path is None:
        return None
    mdigest = _read_index(Path(index_path)).get(src.key)
    if not is_digest(mdigest) or not has_blob(mdigest):
        return None
    try:
        data = _read_small(Path(blob_path(mdigest)))
        if sha256_bytes(data) != mdigest:
            return None
        manifest = ocispec.parse_json(data, mdigest)
        config_desc, layer_descs = ocispec.check_manifest(manifest, mdigest)
        if not has_blob(config_desc["digest"]):
            return None
        config_bytes = _read_small(Path(blob_path(config_desc["digest"])))
        if sha256_bytes(config_bytes) != config_desc["digest"]:
            return None
        config = ocispec.parse_json(config_bytes, config_desc["digest"])
        ocispec.check_config(config, len(layer_descs), mdigest)
        if not src.matches(manifest, config):
            return None
        if not all(has_blob(d["digest"]) for d in layer_descs):
            return None
    except (Corrupt, OSError, _Unusable, RecursionError) as err:
        log.debug("import index entry %s unusable: %s", mdigest, err)
        return None
    blobs = [ocispec.blob_ref(config_desc), *map(ocispec.blob_ref, layer_descs)]
    blobs.append(BlobRef(mdigest, len(data), ocispec.MT_OCI_MANIFEST))
    return OciImage(manifest_digest=mdigest, manifest=manifest, config=config, blobs=blobs)


def remember(src: SourceProbe, image: OciImage, add_blob: AddBlob) -> None:
    """Record ``src -> image`` after a skopeo import, if the image is what ``src`` predicts.
    Best effort: a failure to write the index only costs the next import its speed."""
    index_path = getattr(add_blob, "import_index", None)
    if index_path is None or not src.matches(image.manifest, image.config):
        if index_path is not None:
            log.debug("import of %s did not give what its metadata predicts; not indexed",
                      src.key)
        return
    index_path = Path(index_path)
    index = _read_index(index_path)
    if index.get(src.key) == image.manifest_digest:
        return
    index.pop(src.key, None)
    index[src.key] = image.manifest_digest
    while len(index) > _MAX_ENTRIES:
        index.pop(next(iter(index)))
    try:
        write_atomic(index_path, json.dumps(index, indent=0, sort_keys=False))
    except Exception as err:  # noqa: BLE001 - a cache, never a reason to fail an import
        log.debug("cannot write %s: %s", index_path, err)


# --- reading sources -------------------------------------------------------------------


def _probe_docker_archive(location: str) -> SourceProbe:
    if not os.path.isfile(location):  # FILE:REF or FILE@INDEX pick an image: skopeo does
        raise _Unusable("not a plain file name")
    with _open_tar(location) as tar:
        manifest_bytes = _read_member(tar, "manifest.json")
        entries = ocispec.parse_json(manifest_bytes, "manifest.json")
        if not isinstance(entries, list) or len(entries) != 1 or not isinstance(
                entries[0], dict):
            raise _Unusable("manifest.json does not list exactly one image")
        config_name, layers = entries[0].get("Config"), entries[0].get("Layers")
        if not isinstance(config_name, str) or not isinstance(layers, list) or not all(
                isinstance(x, str) for x in layers):
            raise _Unusable("manifest.json entry lacks Config or Layers")
        config_bytes = _read_member(tar, config_name)
    config = ocispec.parse_json(config_bytes, config_name)
    ocispec.check_config(config, len(layers), config_name)
    diff_ids = tuple(config["rootfs"]["diff_ids"])
    if not all(is_digest(d) for d in diff_ids):
        raise _Unusable("config has diff_ids that are not sha256 digests")
    key = sha256_hex(b"docker-archive\0" + manifest_bytes + b"\0" + config_bytes)
    return SourceProbe(key, None, diff_ids)


def _probe_layout(fmt: str, read: Callable[[str], bytes], tag: str | None) -> SourceProbe:
    index = ocispec.parse_json(read("index.json"), "index.json")
    mdesc = ocispec.pick_manifest(index, tag, "layout", exact_tag=True)
    data = read(f"{ocispec.BLOBS_DIR}/{digest_hex(mdesc['digest'])}")
    if len(data) != mdesc["size"] or sha256_bytes(data) != mdesc["digest"]:
        raise _Unusable("manifest blob does not match its descriptor")
    manifest = ocispec.parse_json(data, mdesc["digest"])
    config_desc, layer_descs = ocispec.check_manifest(manifest, mdesc["digest"])
    key = sha256_hex(fmt.encode() + b"\0" + data)
    return SourceProbe(key, config_desc["digest"], tuple(d["digest"] for d in layer_descs))


def _split_ref(location: str, *, want_dir: bool) -> tuple[str, str | None]:
    """``PATH[:TAG]`` as skopeo reads it for oci / oci-archive."""
    def fits(p: str) -> bool:
        return os.path.isdir(p) if want_dir else os.path.isfile(p)

    if fits(location):
        return location, None
    path, sep, tag = location.rpartition(":")
    if sep and path and tag and fits(path):
        return path, tag
    raise _Unusable("not a local layout")


def _open_tar(path: str) -> tarfile.TarFile:
    with open(path, "rb") as f:
        magic = f.read(6)
    if ocispec.compression(magic) or magic[:3] == b"BZh" or magic == b"\xfd7zXZ\x00":
        raise _Unusable("compressed archive")  # reading its index costs a decompression
    return tarfile.open(path, "r:")


def _member_name(name: str) -> str:
    return name[2:] if name.startswith("./") else name


def _read_member(tar: tarfile.TarFile, name: str) -> bytes:
    """A small regular file of the archive, read in memory (nothing is extracted)."""
    want = _member_name(name)
    found = [m for m in tar.getmembers() if _member_name(m.name) == want]
    if len(found) != 1 or not found[0].isfile() or found[0].size > _MAX_META:
        raise _Unusable(f"{name}: not one small regular file in the archive")
    f = tar.extractfile(found[0])
    if f is None:
        raise _Unusable(f"{name}: unreadable")
    return f.read()


def _read_dir(layout: str, name: str) -> bytes:
    path = Path(layout) / name
    if path.is_symlink() or not path.is_file():
        raise _Unusable(f"{name}: not a regular file")
    return _read_small(path)


def _read_small(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read(_MAX_META + 1)
    if len(data) > _MAX_META:
        raise _Unusable(f"{path.name}: too large")
    return data


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return index if isinstance(index, dict) else {}
