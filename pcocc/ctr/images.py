"""From an image reference of ``pcocc run`` to a root filesystem and its OCI image config.

A reference is, in this order:

1. a local directory: a rootfs, or a bundle-like directory holding ``rootfs/`` and
   ``config.json`` (used in place, nothing is cached);
2. an image source with a transport prefix (``docker://...``, ``oci-archive:F``,
   ``docker-archive:F``, ``oci:DIR[:TAG]``, ``sif:F``...) or an image file (``.sif``,
   ``.simg``, an ``oci-archive`` or ``docker-archive`` tarball): it is *imported into the
   user repository first* under a derived name (``run-<base>-<hash>``), and later runs
   reuse that image instead of fetching again. Importing (rather than unpacking the file
   directly) gives every node the same content-addressed blobs and one cache entry per
   digest, and makes the image visible to ``pcocc image list/delete``;
3. an image of the repositories: ``[repo:]name[@rev]`` or an image ID prefix
   (``sha256-1a2b...``).

Repository images are then taken from the container cache (``repos.yaml: cache``): the
first start on a node unpacks the image (mode ``dir``) or builds a squashfs (mode
``squashfs``); later starts reuse the entry, and concurrent first starts share one build
(the cache serialises them on the entry's lock). A squashfs is mounted with squashfuse in
the user's runtime directory for the life of the pod; when FUSE is not usable, the image
falls back to mode ``dir`` with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcocc.errors import AlreadyExists, Corrupt, NotFound, PcoccError, UsageError

if TYPE_CHECKING:
    from pcocc.config import Config
    from pcocc.ctr.fanout import Fanout
    from pcocc.repo.meta import ImageMeta
    from pcocc.repo.store import Repository
    from pcocc.repo.reposet import RepoSet

log = logging.getLogger(__name__)

CONFIG_KEYS = ("Env", "Entrypoint", "Cmd", "WorkingDir", "User")
#: transports that ``pcocc run`` imports before running (skopeo's and the SIF reader's)
IMPORT_FORMATS = (
    "docker", "docker-archive", "docker-daemon", "oci", "oci-archive", "dir", "ostree",
    "simg", "sif",
)  # fmt: skip
#: prefix of the names of images imported by ``pcocc run``
IMPORTED_PREFIX = "run-"

Notify = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def image_config_from(data: Any, where: str) -> dict[str, Any]:
    """The ``config`` part of an OCI image config, an OCI runtime spec, or the part itself."""
    if not isinstance(data, dict):
        raise Corrupt(f"{where}: expected a JSON object")
    if isinstance(data.get("config"), dict):
        data = data["config"]
    elif isinstance(data.get("process"), dict):  # a runtime spec: take its process
        p = data["process"]
        data = {"Env": p.get("env"), "Cmd": p.get("args"), "WorkingDir": p.get("cwd")}
    return {k: data[k] for k in CONFIG_KEYS if data.get(k) is not None}


def _load_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise Corrupt(f"{path}: invalid JSON: {err}") from err
    return image_config_from(data, str(path))


def is_path(ref: str) -> bool:
    """A reference that names a directory: it has a ``/`` (``./big``, ``/x/big``), starts
    with ``~``, or is ``.``/``..``. A bare name (``big``) is always an image, even where a
    directory of that name is in the current directory."""
    return "/" in ref or ref.startswith("~") or ref in (".", "..")


def resolve_directory(ref: str) -> tuple[Path, dict[str, Any]] | None:
    if not is_path(ref):
        return None
    path = Path(ref).expanduser()
    if not path.is_dir():
        return None
    path = path.resolve()
    if (path / "rootfs").is_dir():
        return path / "rootfs", _load_config(path / "config.json")
    return path, _load_config(path.parent / "config.json")


def resolve_rootfs(
    config: Config | None,
    image_ref: str,
    *,
    mounts: contextlib.ExitStack | None = None,
    notify: Notify = _quiet,
    fanout: Fanout | None = None,
) -> tuple[Path, dict[str, Any]]:
    """(rootfs directory, OCI image config) of ``image_ref`` (see :func:`resolve_image`)."""
    rootfs, image_config, _ = resolve_image(config, image_ref, mounts=mounts, notify=notify,
                                            fanout=fanout)
    return rootfs, image_config


def resolve_image(
    config: Config | None,
    image_ref: str,
    *,
    mounts: contextlib.ExitStack | None = None,
    notify: Notify = _quiet,
    fanout: Fanout | None = None,
) -> tuple[Path, dict[str, Any], str]:
    """(rootfs directory, OCI image config, pinned reference) of ``image_ref``: the
    reference names the revision found (``REPO:NAME@REV``; "" for a directory).

    :param config: where the repositories and the container cache are; None allows only
        directories
    :param mounts: receives the unmount of a squashfs mounted for this run, and the lease
        that keeps the cache entry from eviction; without it, squashfs-mode caches fall
        back to an unpacked directory
    :param fanout: a cold image comes from another node of the run (:mod:`pcocc.ctr.fanout`)
    :param notify: told, in one line, about slow steps (an import, a first preparation)
    :raise NotFound: neither a directory nor an image (exit 1)
    :raise UsageError: a malformed reference or image ID prefix (exit 2)
    """
    found = resolve_directory(image_ref)
    if found is not None:
        return (*found, "")
    if config is None:
        raise NotFound(
            f"image '{image_ref}' not found",
            hint="give an image of 'pcocc image list' or the path of a root filesystem directory",
        )
    from pcocc.repo.reposet import RepoSet

    repos = RepoSet(config.repos)
    try:
        repo, meta = find_image(repos, image_ref, notify=notify)
    except NotFound as err:
        if Path(image_ref).is_dir():
            raise NotFound(err.message, hint=f"to run the directory {image_ref} of the current "
                           f"directory, write ./{image_ref}") from None
        raise
    rootfs, image_config = prepare_rootfs(config, repo, meta, mounts=mounts, notify=notify,
                                          fanout=fanout)
    return rootfs, image_config, meta.ref


# -- finding (and importing) the image ---------------------------------------------------
def find_image(
    repos: RepoSet, image_ref: str, *, notify: Notify = _quiet
) -> tuple[Repository, ImageMeta]:
    """The container image of the repositories that ``image_ref`` names, importing it
    first when it is an image source (file or transport reference)."""
    source = import_source(image_ref, repos.names())
    if source is not None:
        return _imported(repos, image_ref, source, notify)
    if "/" in image_ref or image_ref.startswith((".", "~")):  # a path: URIs have no '/'
        raise NotFound(
            f"image '{image_ref}' not found: no such file or directory",
            hint="give an existing rootfs directory or image file, or an image name",
        )
    try:
        repo, meta = repos.resolve(image_ref)  # NotFound says where it looked
    except UsageError as err:
        if image_ref.startswith("sha256-"):
            raise
        raise UsageError(
            f"'{image_ref}' is neither a directory, an image file nor an image name",
            hint="give [REPO:]NAME[@REV], an image ID prefix, a file, or docker://REF",
        ) from err
    if meta.kind != "ctr":
        raise UsageError(
            f"image '{meta.ref}' is a VM image, not a container image",
            hint="start VM images with 'pcocc alloc'",
        )
    return repo, meta


def import_source(image_ref: str, repo_names: list[str]) -> str | None:
    """``FORMAT:LOCATION`` to import for ``image_ref``, or None if it is not a source."""
    fmt, sep, _ = image_ref.partition(":")
    if sep and fmt in IMPORT_FORMATS and fmt not in repo_names:
        return image_ref
    path = Path(image_ref).expanduser()
    if not path.is_file():
        return None
    return f"{file_format(path)}:{path.resolve()}"


def file_format(path: Path) -> str:
    """The import format of an image file: sif by extension, else the kind of tarball."""
    import tarfile

    if path.suffix in (".sif", ".simg"):
        return path.suffix[1:]
    try:
        with tarfile.open(path) as tar:
            names = set()
            for member in tar:
                names.add(member.name.lstrip("./"))
                if "oci-layout" in names:
                    return "oci-archive"
            if "manifest.json" in names:
                return "docker-archive"
    except (tarfile.TarError, OSError) as err:
        raise UsageError(
            f"{path}: not an image file pcocc knows ({err})",
            hint="give a .sif/.simg file or an oci-archive/docker-archive tarball",
        ) from err
    raise UsageError(
        f"{path}: a tarball that is neither an oci-archive nor a docker-archive",
        hint="prefix it with its format, e.g. oci-archive:FILE",
    )


def imported_name(source: str) -> str:
    """The repository name under which ``pcocc run`` keeps an imported source.

    Files are keyed by path, size and modification time (a changed file is imported
    again); transport references by their text.
    """
    fmt, _, location = source.partition(":")
    key = source
    if fmt not in ("docker", "docker-daemon", "ostree"):
        path = Path(location.split(":", 1)[0] if fmt == "oci" else location)
        with contextlib.suppress(OSError):
            st = path.stat()
            key = f"{source}:{st.st_size}:{st.st_mtime_ns}"
    base = location.rstrip("/").rsplit("/", 1)[-1].split("@")[0]
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-._")[:40] or "image"
    import hashlib

    return f"{IMPORTED_PREFIX}{base}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _imported(
    repos: RepoSet, image_ref: str, source: str, notify: Notify
) -> tuple[Repository, ImageMeta]:
    from pcocc.fsutil import locked
    from pcocc.repo import ops

    name = imported_name(source)
    repo = repos.for_write(None)
    if repo.has_image(name):
        return repo, repo.get(name)
    repo.ensure()
    # one import per source at a time; the others wait and reuse it (the lock lives where
    # only the repository's writers may open it)
    lock = repo.layout.ensure_lock_dir() / f"run-import-{name}.lock"
    with locked(lock, wait_s=None, what=f"the import of {image_ref}"):
        if not repo.has_image(name):
            notify(f"importing {image_ref} into {repo.name}:{name}")
            try:
                ops.import_image(
                    repos, source, f"{repo.name}:{name}", description=f"pcocc run {image_ref}"
                )
            except AlreadyExists:
                pass
    with contextlib.suppress(OSError):
        lock.unlink()
    return repo, repo.get(name)


# -- the cache -----------------------------------------------------------------------------
def prepare_rootfs(
    config: Config,
    repo: Repository,
    meta: ImageMeta,
    *,
    mounts: contextlib.ExitStack | None = None,
    notify: Notify = _quiet,
    fanout: Fanout | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The rootfs of a repository image from the container cache (built on first use)."""
    from pcocc.repo.cache import ContainerCache

    image = meta.oci_image()
    image_config = image_config_from(image.config, f"image {meta.ref}")
    cache_cfg = config.cache
    if cache_cfg is None:
        raise PcoccError("no container cache is configured", hint="set cache.path in repos.yaml")
    cache = ContainerCache.from_config(cache_cfg)
    mode = getattr(cache_cfg, "mode", "dir") or "dir"
    if mode == "squashfs":
        reason = squashfuse_unusable() if mounts is not None else "no pod to tie the mount to"
        if reason:
            log.warning("cache mode squashfs: %s; using an unpacked directory instead", reason)
            mode = "dir"

    def prepare(mode: str) -> Path:
        said = []

        def progress(done: int, total: int) -> None:  # called only when this process builds
            if not said:
                said.append(True)
                notify(f"preparing {meta.ref} in the container cache ({mode}, first use here)")

        if fanout is None:
            return cache.prepare(image, repo.blob_path, mode, progress=progress, lease=mounts)
        from pcocc.ctr.fanout import fetcher

        return cache.prepare(image, repo.blob_path, mode, progress=progress, lease=mounts,
                             fetch=fetcher(fanout, image, mode), node=fanout.name)

    payload = prepare(mode)
    if mode == "dir":
        return payload, image_config
    assert mounts is not None
    try:
        with contextlib.ExitStack() as attempt:
            root = mount_squashfs(payload, attempt)
            mounts.push(attempt.pop_all())
            return root, image_config
    except PcoccError as err:  # e.g. FUSE refused in this container or job
        log.warning("cannot mount the squashfs image (%s); using an unpacked directory", err)
    return prepare("dir"), image_config


def squashfuse_unusable() -> str | None:
    """Why squashfs images cannot be mounted here, or None when they can."""
    import shutil

    for tool, package in (("squashfuse", "squashfuse"), ("fuse-overlayfs", "fuse-overlayfs")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package})"
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return "fusermount is not installed (Debian package fuse3)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not usable"
    return None


def mount_squashfs(image: Path, mounts: contextlib.ExitStack) -> Path:
    """Mount ``image`` for one pod until ``mounts`` closes; returns the root to use.

    The squashfs is read-only, and runtimes create mount points (``/proc``, ``/sys``,
    volume targets) in the root: a fuse-overlayfs with a private upper directory on top
    lets them, while the cached image itself never changes. Everything lives in a fresh
    directory of the user's runtime dir and is unmounted and removed at the end.
    """
    import secrets

    from pcocc import proc
    from pcocc.ctr.rootlayer import escape as _escape
    from pcocc.paths import runtime_dir

    base = runtime_dir() / "mnt"
    base.mkdir(mode=0o700, exist_ok=True)
    sweep_stale_mounts(base)
    top = base / f"{os.getpid()}-{secrets.token_hex(4)}"
    top.mkdir(mode=0o700)
    mounts.callback(_remove_tree, top)
    lower, upper, work, merged = (top / n for n in ("lower", "upper", "work", "rootfs"))
    for d in (lower, upper, work, merged):
        d.mkdir(mode=0o755)
    proc.run(["squashfuse", "-o", "ro", image, lower], what=f"mount {image} (squashfuse)")
    mounts.callback(fuse_unmount, lower)
    proc.run(
        [
            "fuse-overlayfs", "-o",
            f"lowerdir={_escape(lower)},upperdir={_escape(upper)},workdir={_escape(work)}",
            merged,
        ],
        what=f"mount an overlay over {image} (fuse-overlayfs)",
    )  # fmt: skip
    mounts.callback(fuse_unmount, merged)
    return merged


def sweep_stale_mounts(base: Path) -> None:
    """Unmount and remove what pods of dead pcocc processes left (they were killed)."""
    for top in base.iterdir():
        pid = top.name.split("-", 1)[0]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        log.info("cleaning the mounts of dead process %s in %s", pid, top)
        for point in sorted(_mount_points_below(top), reverse=True):  # overlay first
            fuse_unmount(point)
        _remove_tree(top)


def _mount_points_below(top: Path) -> list[Path]:
    try:
        with open("/proc/self/mounts") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    points = [Path(line.split()[1].replace("\\040", " ")) for line in lines if line.strip()]
    return [p for p in points if top in p.parents]


def fuse_unmount(point: Path) -> None:
    import shutil

    from pcocc import proc

    fusermount = "fusermount3" if shutil.which("fusermount3") else "fusermount"
    try:
        proc.run([fusermount, "-u", "-z", point], what=f"unmount {point}")
    except PcoccError as err:
        log.warning("cannot unmount %s: %s", point, err)


def _remove_tree(path: Path) -> None:
    from pcocc.fsutil import remove_tree

    if not remove_tree(path):  # the runtime may leave read-only dirs: handled there
        log.warning("could not remove %s", path)


__all__ = ["find_image", "import_source", "imported_name", "resolve_image", "resolve_rootfs"]
