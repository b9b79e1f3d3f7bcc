"""Image operations that combine the store and the drivers: import, export, copy, resize.

Library functions with plain values; the CLI only parses arguments and prints results.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pcocc import timing
from pcocc.errors import (
    AlreadyExists,
    Corrupt,
    NotFound,
    PermissionDenied,
    ToolError,
    UsageError,
)
from pcocc.fsutil import os_error
from pcocc.repo import drivers, ocispec, qemu_img, vm
from pcocc.repo.digest import digest_hex
from pcocc.repo.meta import ImageMeta
from pcocc.repo.model import (
    KIND_CTR,
    KIND_VM,
    BlobRef,
    OciImage,
    Progress,
    VmLayers,
    no_progress,
)
from pcocc.repo.store import Repository, new_meta
from pcocc.repo.reposet import RepoSet
from pcocc.repo.uri import ImageUri


def _dest(repos: RepoSet, dest: str, new_image: bool = True) -> tuple[Repository, ImageUri]:
    uri = ImageUri.parse(dest)
    repo = repos.for_write(uri.repo)
    if new_image and repo.layout.is_initialized() and repo.has_image(uri.name):
        raise_exists(repo, uri.name)
    return repo, uri


def raise_exists(repo: Repository, name: str) -> None:
    raise AlreadyExists(f"image '{repo.name}:{name}' already exists",
                        hint="choose another name, or delete it first with 'pcocc image delete'")


def _vm_fields(layers: VmLayers) -> dict:
    return {"layers": [b.digest for b in layers.layers], "virtual_size": layers.virtual_size}


def _oci_fields(img: OciImage) -> dict:
    return {"manifest_digest": img.manifest_digest, "manifest": img.manifest,
            "config": img.config}


#: Container formats whose location is not a local path (recorded as given).
_REMOTE_FORMATS = ("docker", "docker-daemon", "ostree")


def _container_source(spec: drivers.FormatSpec) -> str:
    """What ``source`` records: the skopeo-style reference, local paths made absolute."""
    if spec.fmt in _REMOTE_FORMATS:
        return f"{spec.fmt}:{spec.location}"
    return f"{spec.fmt}:{os.path.abspath(spec.location)}"


def _tls_kw(tls_verify: bool | None) -> dict:
    # Only passed when set, so drivers without registry access need not accept it.
    return {} if tls_verify is None else {"tls_verify": tls_verify}


def import_image(repos: RepoSet, source: str, dest: str, *, fmt: str | None = None,
                 description: str = "", progress: Progress = no_progress,
                 tls_verify: bool | None = None, allow_backing_in_repo: bool = False,
                 new_image: bool = True, authfile: Path | None = None) -> ImageMeta:
    """Import ``[FORMAT:]SOURCE`` as revision 0 of the new image ``dest`` ([REPO:]NAME)
    (with ``new_image`` false: as the next revision of that image, which must exist).

    Container sources reach the driver as ``(location, fmt)`` with the format prefix cut
    off: ``docker://busybox`` is ``("//busybox", "docker")``; the driver rebuilds the
    skopeo reference (``skopeo.image_ref``).

    :param tls_verify: registries (docker://): False allows plain HTTP and unverified
        certificates, True insists on verified HTTPS, None lets skopeo decide (its
        registries.conf), except for loopback registries, which need no TLS
    :param authfile: registries (docker://): credentials, a containers-auth.json file
    :param allow_backing_in_repo: (root only) a VM image may have a backing file that is a
        blob of the destination repository; the chain is flattened into the new image
    """
    spec = drivers.parse_format(source, fmt)
    repo, uri = _dest(repos, dest, new_image)
    if not spec.is_container:
        path = Path(spec.location)
        if not path.exists():
            raise NotFound(f"source image file {path} does not exist")
        if not path.is_file():
            raise UsageError(f"source image {path} is not a regular file")
        backing_repo = None
        if allow_backing_in_repo:
            if os.geteuid() != 0:
                raise PermissionDenied("--allow-backing-in-repo is for administrators (root)",
                                       hint="flatten the image with 'qemu-img convert' first")
            backing_repo = repo.layout.data_dir
        with repo.staging("import") as staging:
            fmt_, layers = vm.import_vm(path, spec.fmt, spec.origin, staging, repo.add_blob,
                                        progress, backing_repo=backing_repo)
            meta = new_meta(uri.name, KIND_VM, layers.layers, description=description,
                            source=f"{fmt_}:{os.path.abspath(path)}", vm=_vm_fields(layers))
            return repo.commit(meta, new_image=new_image)
    driver = drivers.load_driver(spec.fmt)  # type: ignore[arg-type]
    with repo.staging("import") as staging:
        if spec.fmt in drivers.SIF_FORMATS:
            path = Path(spec.location)
            if not path.is_file():
                raise NotFound(f"source image file {path} does not exist")
            img = driver.import_sif(path, staging, repo.add_blob, progress)
        else:
            img = driver.import_image(spec.location, spec.fmt, staging, repo.add_blob, progress,
                                      **_tls_kw(tls_verify),
                                      **({} if authfile is None else {"authfile": authfile}))
        meta = new_meta(uri.name, KIND_CTR, img.blobs, description=description,
                        source=_container_source(spec), oci=_oci_fields(img))
        return repo.commit(meta, new_image=new_image)


def import_hashed(repos: RepoSet, path: Path, digest: str, fmt: str, dest: str, *,
                  description: str = "", new_image: bool = True) -> ImageMeta:
    """:func:`import_image` of ``path``, a file of format ``fmt`` that we wrote into the
    staging directory of ``dest``'s repository (:func:`staging_for`) and whose sha256
    ``digest`` we computed while writing it (a download). A qcow2 that already is a base
    layer becomes the layer as is, without a rewrite or a second read
    (:func:`pcocc.repo.vm.adopt_base_layer`); anything else is imported as usual."""
    if fmt == "qcow2":
        repo, uri = _dest(repos, dest, new_image)
        layers = vm.adopt_base_layer(path, digest, repo.store_hashed_blob)
        if layers is not None:
            meta = new_meta(uri.name, KIND_VM, layers.layers, description=description,
                            source=f"qcow2:{os.path.abspath(path)}", vm=_vm_fields(layers))
            return repo.commit(meta, new_image=new_image)
    return import_image(repos, f"{fmt}:{path}", dest, description=description,
                        new_image=new_image)


def import_received(repos: RepoSet, layout: Path, written: dict[str, Path], dest: str, *,
                    description: str = "", new_image: bool = True) -> ImageMeta:
    """Import the OCI layout ``layout`` that a download wrote in the staging directory of
    ``dest``'s repository (:class:`pcocc.repo.ocistream.LayoutReceiver`): its blobs are
    stored by a rename, ``written`` giving the digest each one hashed to as it arrived."""
    from pcocc.repo import oci, ocistream

    repo, uri = _dest(repos, dest, new_image)
    img = oci.ingest_layout(layout, ocistream.WrittenBlobs(repo.add_blob, written),
                            what=description or str(layout))
    meta = new_meta(uri.name, KIND_CTR, img.blobs, description=description,
                    source=f"oci:{layout}", oci=_oci_fields(img))
    return repo.commit(meta, new_image=new_image)


@contextlib.contextmanager
def staging_for(repos: RepoSet, dest: str):
    """A private directory in the repository ``dest`` ([REPO:]NAME) goes to, removed on
    exit: a download written there can become a blob by a rename."""
    with repos.for_write(ImageUri.parse(dest).repo).staging("fetch") as d:
        yield d


def export_image(repos: RepoSet, image: str, dest: str, *, fmt: str | None = None,
                 progress: Progress = no_progress, tls_verify: bool | None = None
                 ) -> ImageMeta:
    """Export an image to ``[FORMAT:]DEST``; VM images default to qcow2, container images
    need a format (docker-archive, oci, oci-archive, dir, docker)."""
    repo, meta = repos.resolve(image)
    spec = drivers.parse_format(dest, fmt)
    if meta.kind == KIND_VM:
        if spec.is_container:
            raise UsageError(f"{meta.ref} is a VM image: it cannot be exported as {spec.fmt}",
                             hint="VM formats: raw, qcow2, qed, vdi, vmdk")
        vm.export_vm(meta.vm_layers(), repo.blob_path, Path(spec.location),
                     spec.fmt or "qcow2", progress)
        return meta
    hint = ("use docker-archive:FILE, oci:DIR[:TAG], oci-archive:FILE, dir:DIR "
            "or docker://REGISTRY/NAME[:TAG]")
    if spec.fmt is None:
        raise UsageError(f"say which container format to export {meta.ref} to", hint=hint)
    if spec.fmt in drivers.SIF_FORMATS:
        raise UsageError(f"{meta.ref} cannot be exported as {spec.fmt}: Singularity images "
                         "can only be imported", hint=hint + " (Singularity builds from those)")
    if not spec.is_container:
        raise UsageError(f"{meta.ref} is a container image: it cannot be exported as {spec.fmt}",
                         hint=hint)
    driver = drivers.load_driver(spec.fmt)
    with _workdir(repo) as work:
        driver.export_image(meta.oci_image(), repo.blob_path, spec.location, spec.fmt, work,
                            progress, **_tls_kw(tls_verify))
    return meta


@contextlib.contextmanager
def _workdir(repo: Repository):
    if repo.is_writable:
        with repo.staging("export") as d:
            yield d
    else:
        with tempfile.TemporaryDirectory(prefix="pcocc-export-") as d:
            yield Path(d)


def copy_image(repos: RepoSet, src: str, dest: str, *, progress: Progress = no_progress
               ) -> ImageMeta:
    """Copy one revision to a new image; blobs are shared in one repo, and across
    repositories hard-linked when we own both the blob and the destination, else copied.
    Either way the new blob is verified against its digest, and a VM image's layers must
    form a chain that names no other file (:func:`_check_vm_chain`)."""
    src_repo, meta = repos.resolve(src)
    dst_repo, uri = _dest(repos, dest)
    new = new_meta(uri.name, meta.kind, meta.blobs, description=meta.description,
                   source=meta.source, parent=None, vm=meta.vm, oci=meta.oci)
    if src_repo.path.resolve() == dst_repo.path.resolve():
        return dst_repo.commit(new, new_image=True)
    total = meta.size
    done = 0
    with dst_repo.staging("copy") as staging:
        staged: dict[str, Path] = {}
        for b in meta.blobs:
            if b.digest not in staged and not dst_repo.blob_path(b.digest).exists():
                staged[b.digest] = _stage_blob(src_repo.blob_path(b.digest), dst_repo,
                                               staging / digest_hex(b.digest))
            done += b.size
            progress(done, total)
        if meta.kind == KIND_VM:
            _check_vm_chain(meta, dst_repo, staged)
        for digest, path in staged.items():
            dst_repo.add_blob(path, expected_digest=digest)
        return dst_repo.commit(new, new_image=True)


def _stage_blob(src: Path, dst_repo: Repository, tmp: Path) -> Path:
    """Put a blob of another repository at ``tmp`` (in ``dst_repo``'s staging directory).

    A hard link shares the inode, and so its owner's right to chmod and rewrite it: we link
    only a blob we own into a repository we own. Anything else is copied into a new file of
    ours; the source is opened without following a symlink and must be a regular file.
    """
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise os_error(err, f"cannot read blob {src}") from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Corrupt(f"blob {src} is not a regular file",
                          hint="run 'pcocc image repo fsck' on the source repository")
        me = os.geteuid()
        if st.st_uid == me and dst_repo.path.stat().st_uid == me:
            with contextlib.suppress(OSError):
                os.link(src, tmp, follow_symlinks=False)
                if os.path.samestat(os.lstat(tmp), st):
                    return tmp
                tmp.unlink()  # replaced meanwhile: copy what we opened
        with open(tmp, "xb") as out, os.fdopen(os.dup(fd), "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
    except OSError as err:
        raise os_error(err, f"cannot copy blob {src}") from err
    finally:
        os.close(fd)
    return tmp


def _check_vm_chain(meta: ImageMeta, dst_repo: Repository, staged: dict[str, Path]) -> None:
    """Refuse to copy a VM image whose layers are not a repository chain (base without a
    backing file, each layer backed by the previous blob, no data file)."""
    parent = None
    for layer in meta.vm_layers().layers:
        path = staged.get(layer.digest) or dst_repo.blob_path(layer.digest)
        want = None if parent is None else dst_repo.layout.blob_relpath_from_blob(parent)
        try:
            info = qemu_img.info(path, "qcow2")
        except ToolError as err:
            raise Corrupt(f"cannot copy {meta.ref}: layer {layer.digest} is not a readable "
                          f"qcow2 ({err})") from err
        problem = qemu_img.layer_problem(info, want)
        if problem:
            raise Corrupt(f"cannot copy {meta.ref}: layer {layer.digest} {problem}",
                          hint="run 'pcocc image repo fsck' on the source repository")
        parent = layer.digest


def resize_image(repos: RepoSet, image: str, new_size_bytes: int, *, shrink: bool = False
                 ) -> ImageMeta:
    """A new revision of a VM image with a new virtual size (grow only unless ``shrink``)."""
    repo, meta = repos.resolve(image)
    if meta.kind != KIND_VM:
        raise UsageError(f"{meta.ref} is a container image: only VM images can be resized")
    repo.require_writable()
    layers = meta.vm_layers()
    if new_size_bytes == layers.virtual_size:
        raise UsageError(f"{meta.ref} already has a size of {new_size_bytes} bytes")
    with repo.staging("resize") as staging:
        new = vm.add_layer(layers, repo.blob_path, repo.layout.blob_relpath_from_blob, staging,
                           repo.add_blob, new_size=new_size_bytes, shrink=shrink)
        rev = new_meta(meta.name, KIND_VM, new.layers, description=meta.description,
                       source=meta.source, parent=f"{meta.name}@{meta.revision}",
                       vm=_vm_fields(new))
        return repo.commit(rev, new_image=False)


def save_destination(repos: RepoSet, src_repo: Repository, booted: ImageMeta,
                     dest: str | None) -> tuple[Repository, str, bool]:
    """Where ``pcocc save`` writes: (repository, image name, is a new image). Without
    ``dest``, a new revision of the image the VM booted from, in its own repository.

    :raise PermissionDenied: that repository is read-only for us
    :raise AlreadyExists: ``dest`` names an existing image
    """
    if dest is None:
        if not src_repo.is_writable:
            raise PermissionDenied(
                f"cannot add a revision to {booted.ref}: repository '{src_repo.name}' is "
                "read-only for you", hint="save into an image of your own with -d [REPO:]NAME")
        return src_repo, booted.name, False
    if ImageUri.parse(dest).revision is not None:
        raise UsageError(f"-d {dest}: name a new image, without @REVISION",
                         hint="pcocc picks the revision (0 for a new image)")
    repo, uri = _dest(repos, dest)
    return repo, uri.name, True


def commit_saved_disk(src_repo: Repository, booted: ImageMeta, layer: Path,
                      dst_repo: Repository, name: str, *, new_image: bool, full: bool,
                      virtual_size: int, description: str, digest: str | None = None
                      ) -> ImageMeta:
    """Store ``layer`` (in ``dst_repo``'s staging directory) and commit the revision.
    ``digest``: the layer's, known from writing it (it is then fsynced, not read again).

    ``full``: ``layer`` is a whole disk, the revision's only layer. Otherwise it is a layer
    over the top of ``booted`` (its backing file names that blob by relative path), and the
    revision is ``booted``'s layers plus it; the lower layers are copied from ``src_repo``
    when ``dst_repo`` is another repository.
    """
    if full:
        lower: list[BlobRef] = []
    else:
        lower = booted.vm_layers().layers
        if src_repo.path.resolve() != dst_repo.path.resolve():
            for b in lower:
                if not dst_repo.blob_path(b.digest).exists():
                    staged = _stage_blob(src_repo.blob_path(b.digest), dst_repo,
                                         layer.parent / digest_hex(b.digest))
                    dst_repo.add_blob(staged, expected_digest=b.digest)
    size = layer.stat().st_size
    stored = (dst_repo.add_blob(layer) if digest is None
              else dst_repo.store_hashed_blob(layer, digest))
    top = BlobRef(stored, size, vm.QCOW2_MEDIA_TYPE)
    timing.mark("save: blob hashed, fsynced and stored")
    layers = VmLayers([*lower, top], virtual_size)
    meta = new_meta(name, KIND_VM, layers.layers, description=description or booted.description,
                    source=booted.source, parent=booted.ref, vm=_vm_fields(layers))
    return dst_repo.commit(meta, new_image=new_image)


def commit_ctr_layer(repos: RepoSet, base_repo: Repository, base: ImageMeta,
                     write_layer: Callable[[Path], str], dest: str, *, created_by: str,
                     description: str = "") -> ImageMeta:
    """Commit the new container image ``dest`` ([REPO:]NAME): ``base`` with one more layer,
    which ``write_layer(path)`` writes as a gzip tar at the new file ``path`` (returning its
    diff_id). The blobs of ``base`` are linked or copied into the destination when it is
    another repository; nothing is committed if any step fails.

    :raise AlreadyExists: ``dest`` names an existing image (checked before any work)
    """
    if ImageUri.parse(dest).revision is not None:
        raise UsageError(f"{dest}: name a new image, without @REVISION")
    repo, uri = _dest(repos, dest)
    img = base.oci_image()
    with repo.staging("layer") as staging:
        if base_repo.path.resolve() != repo.path.resolve():
            for b in base.blobs:
                if not repo.blob_path(b.digest).exists():
                    staged = _stage_blob(base_repo.blob_path(b.digest), repo,
                                         staging / digest_hex(b.digest))
                    repo.add_blob(staged, expected_digest=b.digest)
        layer_path = staging / "layer.tar.gz"
        diff_id = write_layer(layer_path)
        size = layer_path.stat().st_size
        layer = {"mediaType": ocispec.MT_LAYER_GZIP, "digest": repo.add_blob(layer_path),
                 "size": size}
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest, config = ocispec.stack_layer(img.manifest, img.config, layer, diff_id,
                                               created=created, created_by=created_by)
        manifest["config"] = _store_json(repo, staging, config, ocispec.MT_OCI_CONFIG)
        mdesc = _store_json(repo, staging, manifest, ocispec.MT_OCI_MANIFEST)
        blobs = [ocispec.blob_ref(manifest["config"]), *map(ocispec.blob_ref, manifest["layers"]),
                 ocispec.blob_ref(mdesc, ocispec.MT_OCI_MANIFEST)]
        new = OciImage(mdesc["digest"], manifest, config, blobs)
        meta = new_meta(uri.name, KIND_CTR, blobs, description=description or base.description,
                        source=base.source, parent=base.ref, oci=_oci_fields(new))
        return repo.commit(meta, new_image=True)


def _store_json(repo: Repository, staging: Path, obj: dict, media_type: str) -> dict:
    desc = ocispec.write_json_blob(staging, obj, media_type, sort_keys=True)
    repo.add_blob(staging / digest_hex(desc["digest"]), expected_digest=desc["digest"])
    return desc


def parse_size(text: str) -> int:
    """``20G``, ``512M``, ``1.5T``, ``10GiB`` or a byte count; binary units."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise UsageError(f"invalid size {text!r}", hint="write e.g. 20G, 512M or 1073741824")
    mult = 1024 ** " KMGTP".index(m.group(2).upper() or " ")
    size = int(float(m.group(1)) * mult)
    if size <= 0:
        raise UsageError(f"invalid size {text!r}: must be positive")
    return size


__all__ = ["commit_ctr_layer", "commit_saved_disk", "copy_image", "export_image", "import_image", "parse_size",
           "resize_image", "save_destination"]
