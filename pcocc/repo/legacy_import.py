"""``pcocc image repo import-legacy``: every image and revision of a pcocc 0.7 repository
(:mod:`pcocc.repo.legacy`) into a repository of ours.

Per image: every blob is copied out of the old repository and checked against its digest;
each VM layer must be a qcow2 whose backing file is exactly its parent blob in the old
layout (``../../data/XX/HEX``), never anything else (another path would make us read a file
outside the repository with our rights); the header of each layer after the first is then
rewritten to our own relative name (``../XX/HEX``) of its converted parent, without opening
either. Container revisions keep their OCI blobs as they are. Once all of an image's blobs
are stored, its revisions are committed at once (``Repository.commit_image``): an image
that fails a check is reported and skipped whole, the others are imported.

Revision numbers, owners, dates and descriptions are kept; ``source`` records the old
repository, which makes a second run skip what it already imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pcocc.errors import Corrupt, PcoccError, PermissionDenied, ToolError
from pcocc.repo import ocispec, qemu_img
from pcocc.repo.digest import digest_hex, from_hex
from pcocc.repo.layout import NAME_RE
from pcocc.repo.legacy import LegacyRepo, LegacyRevision, relpath_from_blob
from pcocc.repo.meta import ImageMeta
from pcocc.repo.model import KIND_VM, BlobRef
from pcocc.repo.store import Repository
from pcocc.repo.vm import QCOW2_MEDIA_TYPE

SOURCE_PREFIX = "pcocc-0.7:"


@dataclass
class LegacyImportReport:
    imported: list[tuple[str, int]] = field(default_factory=list)  # (name, revisions)
    already: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)


#: a converted VM layer: (its legacy digest, its legacy parent) -> (stored blob, virtual size)
_LayerCache = dict[tuple[str, str | None], tuple[BlobRef, int]]


def import_legacy(path: Path, repo: Repository, *,
                  notify: Callable[[str], None] = lambda message: None
                  ) -> LegacyImportReport:
    """Import every image of the pcocc 0.7 repository ``path`` into ``repo``.

    :param notify: called with one line per image imported or found imported already
        (the skipped ones, with the reason, are in the report)
    """
    repo.require_writable()
    report = LegacyImportReport()
    with LegacyRepo(path) as legacy:
        source = SOURCE_PREFIX + str(legacy.root)
        images, problems = legacy.revisions()
        for name, why in problems.items():
            report.skipped.append((name, why))
        cache: _LayerCache = {}
        for name, revs in sorted(images.items()):
            try:
                done = _import_image(legacy, repo, name, revs, source, cache)
            except PcoccError as err:
                report.skipped.append((name, str(err)))
                continue
            if done:
                report.imported.append((name, len(revs)))
                notify(f"{name}: imported {len(revs)} revisions into {repo.name}:{name}")
            else:
                report.already.append(name)
                notify(f"{name}: already imported into {repo.name}:{name}")
    return report


def _import_image(legacy: LegacyRepo, repo: Repository, name: str,
                  revs: list[LegacyRevision], source: str, cache: _LayerCache) -> bool:
    """Import one image; False when a previous run imported it already."""
    if not NAME_RE.match(name):
        raise PermissionDenied(f"image name {name!r} is not valid here",
                               hint="names start with a letter or digit")
    if repo.has_image(name):
        stored = [repo.read_meta(name, r) for r in repo.layout.revisions(name)]
        have, want = [m.revision for m in stored], [r.revision for r in revs]
        if all(m.source == source for m in stored):
            if have == want:
                return False
            raise PermissionDenied(
                f"image '{repo.name}:{name}' was imported from {legacy.root} with revisions "
                f"{have}, which now has {want}",
                hint=f"delete '{repo.name}:{name}' to import it again")
        raise PermissionDenied(
            f"image '{repo.name}:{name}' already exists and was not imported from "
            f"{legacy.root}", hint="delete it, or import into another repository with --repo")
    if len({r.kind for r in revs}) != 1:
        raise Corrupt(f"image {name} of {legacy.root} mixes VM and container revisions")
    with repo.staging("legacy") as staging:
        metas = []
        previous: LegacyRevision | None = None
        for rev in revs:
            if rev.kind == KIND_VM:
                layers, vsize = _vm_layers(legacy, repo, rev, staging, cache)
                blobs = layers
                fields = {"vm": {"layers": [b.digest for b in layers], "virtual_size": vsize}}
            else:
                blobs, oci = _container_blobs(legacy, repo, rev, staging / f"r{rev.revision}")
                fields = {"oci": oci}
            parent = None
            if (rev.kind == KIND_VM and previous is not None and previous.kind == KIND_VM
                    and rev.blobs[:-1] == previous.blobs):
                parent = f"{name}@{previous.revision}"
            metas.append(ImageMeta(
                name=name, revision=rev.revision, kind=rev.kind, owner=rev.owner,
                created=round(rev.timestamp, 3), blobs=tuple(blobs),
                description=rev.description, source=source, parent=parent, **fields))
            previous = rev
        repo.commit_image(metas)
    return True


def _vm_layers(legacy: LegacyRepo, repo: Repository, rev: LegacyRevision, staging: Path,
               cache: _LayerCache) -> tuple[list[BlobRef], int]:
    layers: list[BlobRef] = []
    parent: str | None = None
    vsize = 0
    for hexd in rev.blobs:
        key = (hexd, parent)
        if key not in cache:
            cache[key] = _vm_layer(legacy, repo, hexd, parent,
                                   layers[-1].digest if layers else None, staging)
        ref, vsize = cache[key]
        layers.append(ref)
        parent = hexd
    return layers, vsize


def _vm_layer(legacy: LegacyRepo, repo: Repository, hexd: str, parent: str | None,
              new_parent: str | None, staging: Path) -> tuple[BlobRef, int]:
    """Copy, check and store one layer; its header is rewritten to name ``new_parent``."""
    staged = staging / f"{hexd}.{parent or 'base'}"
    legacy.copy_blob(hexd, staged)
    where = legacy.blob_where(hexd)
    try:
        info = qemu_img.info(staged, "qcow2", where=str(where))
    except ToolError as err:
        raise Corrupt(f"VM layer {where} is not a readable qcow2 image ({err})") from err
    want = None if parent is None else relpath_from_blob(parent)
    problem = qemu_img.layer_problem(info, want, backing_format_optional=True)
    if problem:
        raise PermissionDenied(
            f"VM layer {where} is refused: it {problem}",
            hint="pcocc follows a backing file only to the parent layer inside the same "
                 "pcocc 0.7 repository, never elsewhere")
    if new_parent is not None:
        qemu_img.set_backing(staged, repo.layout.blob_relpath_from_blob(new_parent))
    size = staged.stat().st_size
    # A base layer is stored unchanged: the store checks it still has its old digest.
    digest = repo.add_blob(staged, expected_digest=from_hex(hexd) if parent is None else None)
    return BlobRef(digest, size, QCOW2_MEDIA_TYPE), info.virtual_size


def _container_blobs(legacy: LegacyRepo, repo: Repository, rev: LegacyRevision, staging: Path
                     ) -> tuple[list[BlobRef], dict]:
    """Copy and check the blobs of a container revision; return what the store records."""
    what = f"{legacy.root}/meta/{rev.name}@{rev.revision}"
    staging.mkdir()
    staged: dict[str, Path] = {}
    for hexd in rev.blobs:  # every listed blob is checked, also unreferenced ones
        if hexd not in staged:
            staged[hexd] = staging / hexd
            legacy.copy_blob(hexd, staged[hexd])

    def blob_file(desc: dict, role: str) -> Path:
        path = staged.get(digest_hex(desc["digest"]))
        if path is None:
            raise Corrupt(f"{what}: its {role} {desc['digest']} is not in its data_blobs")
        if path.stat().st_size != desc["size"]:
            raise Corrupt(f"{what}: its {role} {desc['digest']} is not {desc['size']} bytes")
        return path

    mdesc = ocispec.pick_manifest(rev.oci_index, None, what)
    manifest = ocispec.parse_json(blob_file(mdesc, "manifest").read_bytes(), what)
    config_desc, layer_descs = ocispec.check_manifest(manifest, what)
    config = ocispec.parse_json(blob_file(config_desc, "config").read_bytes(), what)
    ocispec.check_config(config, len(layer_descs), what)
    for i, desc in enumerate(layer_descs):
        blob_file(desc, f"layer {i}")
    refs = [ocispec.blob_ref(config_desc), *map(ocispec.blob_ref, layer_descs),
            ocispec.blob_ref(mdesc, ocispec.MT_OCI_MANIFEST)]
    stored: set[str] = set()
    for ref in refs:
        if ref.digest not in stored:
            repo.add_blob(staged[digest_hex(ref.digest)], expected_digest=ref.digest)
            stored.add(ref.digest)
    oci = {"manifest_digest": mdesc["digest"], "manifest": manifest, "config": config}
    return refs, oci


__all__ = ["LegacyImportReport", "import_legacy"]
