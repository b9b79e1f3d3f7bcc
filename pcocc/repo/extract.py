"""``pcocc image cat-manifest`` and ``extract``/``render``: what an image is made of, and its
files written to a new directory for inspection.

- ``render`` applies every layer of a container image in order, whiteouts included: the
  root filesystem a container of the image starts from.
- ``extract`` writes the image's own content: its top layer, the change set it adds over the
  layers below it (which, like the dependencies of an image in other stores, are not its
  own), applied to an empty directory.

Both go through the safe unpacker (:mod:`pcocc.repo.unpack`): no write outside the target,
no device nodes, setuid/setgid dropped for non-root users. The tree is built in a hidden
0700 sibling of the target and renamed into place only once complete, so the target either
does not exist or is whole; with ``overwrite`` an existing target directory is exchanged
with the new tree in one rename. The target stays 0700, like a bundle made by umoci: as
root it holds the image's setuid programs, which other users must not reach.

VM images have no file tree outside a guest: both commands refuse them, pointing at
``pcocc image export`` (one flattened disk file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pcocc.errors import PcoccError, UsageError
from pcocc.fsutil import exchange_or_rename, os_error, remove_tree, tmp_name, write_atomic
from pcocc.repo.meta import ImageMeta
from pcocc.repo.model import KIND_VM, OciImage
from pcocc.repo.reposet import RepoSet
from pcocc.repo.unpack import unpack_image

#: the file next to ``rootfs/`` that holds :func:`manifest_document` (unless rootfs only)
MANIFEST_FILE = "manifest"
ROOTFS_DIR = "rootfs"


def manifest_document(meta: ImageMeta) -> dict[str, Any]:
    """What ``cat-manifest`` prints: the OCI manifest and config of a container image; the
    layer chain (base first) and metadata of a VM image."""
    if meta.kind == KIND_VM:
        layers = meta.vm_layers()
        return {
            "type": meta.type_label, "name": meta.name, "repo": meta.repo,
            "revision": meta.revision, "id": meta.image_id, "owner": meta.owner,
            "created": meta.created, "description": meta.description, "source": meta.source,
            "parent": meta.parent, "virtual_size": layers.virtual_size,
            "layers": [{"digest": b.digest, "size": b.size} for b in layers.layers],
        }
    oci = meta.oci_image()
    return {"type": meta.type_label, "manifest_digest": oci.manifest_digest,
            "manifest": oci.manifest, "config": oci.config}


def format_json(doc: dict[str, Any], *, pretty: bool) -> str:
    """One compact line, or indented with ``pretty``; key order is kept."""
    return json.dumps(doc, indent=2) if pretty else json.dumps(doc, separators=(",", ":"))


def own_layers(image: OciImage) -> OciImage:
    """The image restricted to its top layer (what ``extract`` writes); none if it has none."""
    manifest = dict(image.manifest)
    manifest["layers"] = list(image.manifest.get("layers", []))[-1:]
    return OciImage(image.manifest_digest, manifest, image.config, image.blobs)


def check_target(dest: Path, *, overwrite: bool) -> None:
    """Refuse a target that exists (unless ``overwrite`` and it is a real directory), or
    whose parent is not a directory; UsageError names the path and what to do."""
    if not dest.name or dest.name in (".", ".."):
        raise UsageError(f"{dest}: give the path of a new directory, e.g. ./image-files")
    try:
        os.lstat(dest)
    except FileNotFoundError:
        if not dest.parent.is_dir():
            raise UsageError(f"{dest.parent} is not an existing directory",
                             hint=f"create it first, then write {dest.name} inside it"
                             ) from None
        return
    except OSError as err:
        raise os_error(err, f"cannot check {dest}") from err
    if not overwrite:
        raise _exists(dest)
    if not os.path.isdir(dest) or os.path.islink(dest):
        raise UsageError(f"{dest} exists and is not a directory: --overwrite only replaces "
                         "a directory", hint="remove it yourself or choose a new path")


def _exists(dest: Path) -> UsageError:
    return UsageError(f"{dest} already exists",
                      hint="choose a new path, or replace it with --overwrite")


def write_tree(repos: RepoSet, image: str, dest: Path, *, render: bool,
               rootfs_only: bool = False, overwrite: bool = False) -> tuple[ImageMeta, list[str]]:
    """Write the files of container image ``image`` to the new directory ``dest``.

    :param render: every layer (the runnable root filesystem); else the top layer only
    :param rootfs_only: ``dest`` is the root filesystem; else it holds ``manifest`` and
        ``rootfs/``
    :param overwrite: replace an existing directory ``dest`` (in one rename)
    :return: the image, and the members the unpacker skipped (device nodes)
    :raise UsageError: a VM image, or ``dest`` exists (without ``overwrite``)
    :raise UnsafeLayer: a layer tries to write outside ``dest``; nothing is left behind
    """
    dest = Path(os.path.abspath(dest))
    repo, meta = repos.resolve(image)
    verb = "render" if render else "extract"
    if meta.kind == KIND_VM:
        raise UsageError(f"{meta.ref} is a VM image: {verb} writes the files of a container "
                         "image", hint=f"'pcocc image export {image} FILE.qcow2' writes its "
                         "disk as one file; 'pcocc image cat-manifest' shows its layers")
    check_target(dest, overwrite=overwrite)
    oci = meta.oci_image()
    if not render:
        oci = own_layers(oci)
    work = tmp_name(dest)
    try:
        try:
            os.mkdir(work, 0o700)
        except OSError as err:
            raise os_error(err, f"cannot create a directory next to {dest}") from err
        rootfs = work if rootfs_only else work / ROOTFS_DIR
        if not rootfs_only:
            rootfs.mkdir(0o755)
            write_atomic(work / MANIFEST_FILE,
                         format_json(manifest_document(meta), pretty=True) + "\n",
                         sync_dir=False)
        skipped = unpack_image(oci, repo.blob_path, rootfs)  # keeps the mode of its root
        try:
            exchange_or_rename(work, dest, replace=overwrite)
        except FileExistsError:
            raise _exists(dest) from None  # created since check_target
    except BaseException as err:
        remove_tree(work)
        if isinstance(err, OSError) and not isinstance(err, PcoccError):
            raise os_error(err, f"cannot write {dest}") from err
        raise
    remove_tree(work)  # after an exchange: the tree that was replaced
    return meta, skipped
