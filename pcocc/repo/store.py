"""The repository store: blobs in, metadata committed under a short lock, look-ups and
delete (``Repository``); the ordered set of configured repositories is
:class:`pcocc.repo.reposet.RepoSet`.
gc and fsck are in :mod:`pcocc.repo.maintenance`, which builds on this module.

Writers put every blob in place first (``add_blob``: hash, verify, fsync, rename into
``data/``), then commit one metadata file under the repository lock. A killed writer leaves
only unreferenced blobs and ``tmp/`` entries, which ``gc`` removes once they are older than
its grace period.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pwd
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from pcocc import paths
from pcocc.config import RepoConfig
from pcocc.errors import (
    AlreadyExists,
    Corrupt,
    NotFound,
    PermissionDenied,
    UsageError,
)
from pcocc.fsutil import fsync_dir, os_error, remove_tree, write_atomic
from pcocc.repo.digest import digest_hex, hash_file
from pcocc.repo.layout import META_FILE_RE, RepoLayout
from pcocc.repo.meta import ImageMeta

log = logging.getLogger(__name__)

_LOCK_WAIT_S = 120.0


def _owner() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


class BlobSink:
    """``Repository.add_blob``: a callable that stores a blob, with the optional hooks
    ``has_blob(digest)``, ``blob_path(digest)`` and ``import_index`` that drivers look up
    as attributes."""

    def __init__(self, repo: Repository):
        self._repo = repo

    def __call__(self, path: Path, expected_digest: str | None = None) -> str:
        return self._repo.store_blob(path, expected_digest)

    def add_written(self, path: Path, digest: str, *, synced: bool) -> str:
        """Store ``path``, which its writer hashed to ``digest`` as it wrote it (see
        :meth:`Repository.store_hashed_blob`); ``synced``: the writer fsynced it."""
        return self._repo.store_hashed_blob(path, digest, synced=synced)

    def has_blob(self, digest: str) -> bool:
        return self._repo.has_blob(digest)

    def blob_path(self, digest: str) -> Path:
        return self._repo.blob_path(digest)

    @property
    def import_index(self) -> Path:
        """The OCI driver's index of imported sources (a cache; see ``ocifast``)."""
        return self._repo.layout.root / "oci-import-index.json"


class Repository:
    """One repository directory (see ``layout.py``)."""

    def __init__(self, cfg: RepoConfig):
        self.name = cfg.name
        self.path = Path(cfg.path)
        self.description = cfg.description
        self.origin = cfg.origin
        self.layout = RepoLayout(self.path)
        self._checked: bool | None = None

    def __repr__(self) -> str:
        return f"Repository({self.name!r}, {str(self.path)!r})"

    # -- permissions ---------------------------------------------------------------------

    @property
    def is_writable(self) -> bool:
        """System repositories are read-only; others when their directory (or, before it
        exists, its nearest existing parent) is writable by us."""
        if self.origin == "system":
            return False
        p = self.path
        while not p.exists() and p != p.parent:
            p = p.parent
        return os.access(p, os.W_OK | os.X_OK)

    def require_writable(self) -> None:
        if self.origin == "system":
            raise PermissionDenied(
                f"repository '{self.name}' is a system repository and read-only",
                hint="write to one of your own repositories (see 'pcocc image repo list')",
            )
        if not self.is_writable:
            raise PermissionDenied(
                f"repository '{self.name}' ({self.path}) is read-only for you",
                hint="write to another repository (see 'pcocc image repo list')",
            )

    def ensure(self) -> None:
        """Make sure the repository exists, creating it when we may write."""
        if self.check():
            return
        self.require_writable()
        paths.data_dir(self.path, what=f"repository '{self.name}'", foreign_ok=True)
        self.layout.initialize()
        self._checked = True

    # -- reading -------------------------------------------------------------------------

    def check(self) -> bool:
        """True when the repository exists and has a format this pcocc reads (else an error);
        False when its directory was not created yet. Checked once per object."""
        if self._checked is None:
            self.layout.refuse_legacy()
            exists = self.layout.is_initialized()
            if exists:
                self.layout.check_format()
                if self.origin != "system":
                    paths.tighten(self.path, what=f"repository '{self.name}'")
            self._checked = exists
        return self._checked

    def read_meta(self, name: str, revision: int) -> ImageMeta:
        path = self.layout.meta_path(name, revision)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"image '{self.name}:{name}@{revision}' not found",
                           hint=f"run 'pcocc image show {self.name}:{name}'") from None
        except OSError as err:
            raise os_error(err, f"cannot read {path}") from err
        meta = ImageMeta.from_bytes(data, repo=self.name, where=str(path))
        if meta.name != name or meta.revision != revision:
            raise Corrupt(f"{path}: metadata names {meta.name}@{meta.revision}",
                          hint="run 'pcocc image repo fsck'")
        return meta

    def get(self, name: str, revision: int | None = None) -> ImageMeta:
        """A revision of an image (the highest when ``revision`` is None)."""
        revs = self.layout.revisions(name) if self.check() else []
        if not revs:
            raise NotFound(f"image '{self.name}:{name}' not found",
                           hint=f"run 'pcocc image list -R {self.name}'")
        return self.read_meta(name, revs[-1] if revision is None else revision)

    def has_image(self, name: str) -> bool:
        return self.check() and bool(self.layout.revisions(name))

    def images(self, regex: str | None = None, *, all_revisions: bool = False
               ) -> list[ImageMeta]:
        """Images (latest revision only unless ``all_revisions``), names matching ``regex``.

        Reads one small JSON file per result and nothing else: no blob is hashed. This is the
        path of ``pcocc image list``, hence plain os calls. A damaged metadata file is skipped
        with a warning (fsck reports it).
        """
        pattern = compile_regex(regex)
        out: list[ImageMeta] = []
        if not self.check():
            return out
        meta_dir = os.fspath(self.layout.meta_dir)
        for name in self.layout.image_names():
            if pattern and not pattern.search(name):
                continue
            image_dir = os.path.join(meta_dir, name)
            try:
                entries = os.listdir(image_dir)
            except FileNotFoundError:  # deleted while we list
                continue
            except OSError as err:
                raise os_error(err, f"cannot read {image_dir}") from err
            revs = sorted(int(e[:-5]) for e in entries if META_FILE_RE.match(e))
            for rev in revs if all_revisions else revs[-1:]:
                path = os.path.join(image_dir, f"{rev}.json")
                try:
                    with open(path, "rb") as f:
                        data = f.read()
                    meta = ImageMeta.from_bytes(data, repo=self.name, where=path)
                except FileNotFoundError:
                    continue
                except OSError as err:
                    raise os_error(err, f"cannot read {path}") from err
                except Corrupt as err:
                    log.warning("skipping %s", err)
                    continue
                if meta.name == name and meta.revision == rev:
                    out.append(meta)
                else:
                    log.warning("skipping %s: it names %s@%s", path, meta.name, meta.revision)
        return out

    def blob_path(self, digest: str) -> Path:
        return self.layout.blob_path(digest)

    # -- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def staging(self, what: str = "import") -> Iterator[Path]:
        """A private directory in ``tmp/``, removed on exit (gc reclaims it after a crash)."""
        self.require_writable()
        self.ensure()
        d = self.layout.tmp_dir / f"{what}-{os.getpid()}-{os.urandom(6).hex()}"
        try:
            d.mkdir(mode=0o700)
        except OSError as err:
            raise os_error(err, f"cannot create a staging directory in {self.layout.tmp_dir}"
                           ) from err
        try:
            yield d
        finally:
            remove_tree(d)

    @functools.cached_property
    def add_blob(self) -> BlobSink:
        """``add_blob(path, expected_digest=None) -> digest`` for the drivers (see
        :meth:`store_blob`), which also offers the optional ``has_blob``/``blob_path`` hooks
        the OCI driver probes for, so that a re-import reuses stored blobs unhashed."""
        return BlobSink(self)

    def has_blob(self, digest: str) -> bool:
        """True when the blob is stored. A hit refreshes the blob's time, as a deduplicated
        ``store_blob`` does, so that gc leaves it alone while our commit is pending."""
        path = self.layout.blob_path(digest)
        if not path.is_file():
            return False
        with contextlib.suppress(OSError):
            os.utime(path)
        return True

    def store_blob(self, path: Path, expected_digest: str | None = None) -> str:
        """Hash, verify, fsync and move ``path`` into ``data/``; return its digest.

        When the blob is already stored the file is dropped (deduplication) and the stored
        blob's time is refreshed, so that gc does not take it while our commit is pending.
        """
        path = Path(path)
        try:
            digest = hash_file(path)
            if expected_digest is not None and digest != expected_digest:
                path.unlink(missing_ok=True)
                raise Corrupt(f"{path.name}: content does not match digest {expected_digest} "
                              f"(got {digest})", hint="the source is damaged or changed")
        except OSError as err:
            raise os_error(err, f"cannot store blob in repository '{self.name}'") from err
        return self._place(path, digest)

    def _place(self, path: Path, digest: str) -> str:
        """Move the flushed file ``path`` into ``data/`` as blob ``digest`` (dropped when
        the blob is stored already)."""
        try:
            dst = self.layout.blob_path(digest)
            if not dst.parent.is_dir():
                dst.parent.mkdir(exist_ok=True)
                fsync_dir(self.layout.data_dir)
            if dst.exists():
                with contextlib.suppress(OSError):
                    os.utime(dst)
                path.unlink()
                return digest
            if (path.stat().st_mode & 0o777) != 0o444:
                os.chmod(path, 0o444)
            os.rename(path, dst)
            fsync_dir(dst.parent)
        except OSError as err:
            raise os_error(err, f"cannot store blob in repository '{self.name}'") from err
        return digest

    def store_hashed_blob(self, path: Path, digest: str, *, synced: bool = False) -> str:
        """:meth:`store_blob` of a file we wrote ourselves into :meth:`staging` (private:
        nobody else can change it) and hashed while writing it: ``digest`` is taken as its
        digest, so it is fsynced and moved without being read again. ``synced``: its writer
        fsynced it after its last write (the writer says so, nothing here guesses it), so
        it is only moved."""
        digest_hex(digest)  # Corrupt when malformed
        if synced:
            return self._place(path, digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            raise os_error(err, f"cannot store blob in repository '{self.name}'") from err
        return self._place(path, digest)

    def commit(self, meta: ImageMeta, *, new_image: bool) -> ImageMeta:
        """Write the next revision of ``meta.name`` under the lock; return it as stored.

        :raise AlreadyExists: ``new_image`` and the name is taken
        :raise Corrupt: a blob vanished (a concurrent gc removed it)
        """
        self.require_writable()
        self.ensure()
        with self.layout.write_locked(f"repository '{self.name}'", _LOCK_WAIT_S):
            revs = self.layout.revisions(meta.name)
            if new_image and revs:
                raise AlreadyExists(
                    f"image '{self.name}:{meta.name}' already exists",
                    hint="choose another name, or delete it first with 'pcocc image delete'",
                )
            if not new_image and not revs:
                raise NotFound(f"image '{self.name}:{meta.name}' was deleted meanwhile")
            for b in meta.blobs:
                if not self.layout.blob_path(b.digest).exists():
                    raise Corrupt(f"blob {b.digest} vanished from repository '{self.name}' "
                                  "before the commit", hint="run the command again")
            stored = meta.with_revision(revs[-1] + 1 if revs else 0)
            image_dir = self.layout.image_dir(meta.name)
            try:
                image_dir.mkdir(exist_ok=True)
            except OSError as err:
                raise os_error(err, f"cannot create {image_dir}") from err
            data = stored.to_bytes()
            write_atomic(self.layout.meta_path(meta.name, stored.revision), data, mode=0o444)
            fsync_dir(self.layout.meta_dir)
        return ImageMeta.from_bytes(data, repo=self.name, where="(new metadata)")

    def commit_image(self, metas: Sequence[ImageMeta]) -> list[ImageMeta]:
        """Write a new image with all its revisions at once, numbers kept as given: the
        revisions are written into a staging directory that is renamed into ``meta/`` under
        the lock, so readers see the whole image or nothing (also after a crash).

        :raise AlreadyExists: the name is taken
        :raise Corrupt: a blob vanished (a concurrent gc removed it)
        """
        names = {m.name for m in metas}
        if len(names) != 1 or len({m.revision for m in metas}) != len(metas):
            raise ValueError("commit_image: revisions of one image, each once")
        name = names.pop()
        self.require_writable()
        self.ensure()
        with self.staging("image") as staging:
            new_dir = staging / name
            try:
                new_dir.mkdir()
            except OSError as err:
                raise os_error(err, f"cannot create {new_dir}") from err
            for m in metas:
                write_atomic(new_dir / f"{m.revision}.json", m.to_bytes(), mode=0o444,
                             sync_dir=False)
            fsync_dir(new_dir)
            with self.layout.write_locked(f"repository '{self.name}'", _LOCK_WAIT_S):
                if self.layout.revisions(name):
                    raise AlreadyExists(
                        f"image '{self.name}:{name}' already exists",
                        hint="choose another name, or delete it first with "
                             "'pcocc image delete'")
                for m in metas:
                    for b in m.blobs:
                        if not self.layout.blob_path(b.digest).exists():
                            raise Corrupt(f"blob {b.digest} vanished from repository "
                                          f"'{self.name}' before the commit",
                                          hint="run the command again")
                image_dir = self.layout.image_dir(name)
                try:
                    # An empty directory left by a deleted image is replaced by the rename.
                    os.rename(new_dir, image_dir)
                except OSError as err:
                    raise os_error(err, f"cannot create {image_dir}") from err
                fsync_dir(self.layout.meta_dir)
        return [self.read_meta(name, m.revision) for m in sorted(metas, key=lambda m: m.revision)]

    def delete(self, name: str, revision: int | None = None) -> list[ImageMeta]:
        """Remove one revision or all of an image; blobs stay until gc."""
        self.require_writable()
        with self.layout.write_locked(f"repository '{self.name}'", _LOCK_WAIT_S):
            revs = self.layout.revisions(name)
            if revision is not None:
                if revision not in revs:
                    raise NotFound(f"image '{self.name}:{name}@{revision}' not found",
                                   hint=f"run 'pcocc image show {self.name}:{name}'")
                revs = [revision]
            elif not revs:
                raise NotFound(f"image '{self.name}:{name}' not found",
                               hint=f"run 'pcocc image list -R {self.name}'")
            gone = []
            for rev in revs:
                with contextlib.suppress(Corrupt):
                    gone.append(self.read_meta(name, rev))
                try:
                    self.layout.meta_path(name, rev).unlink()
                except OSError as err:
                    raise os_error(err, f"cannot delete {self.name}:{name}@{rev}") from err
            image_dir = self.layout.image_dir(name)
            if not self.layout.revisions(name):
                for leftover in image_dir.iterdir():  # stale temporary files
                    leftover.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    image_dir.rmdir()
            fsync_dir(self.layout.meta_dir)
        return gone


def compile_regex(regex: str | None) -> re.Pattern[str] | None:
    """The compiled image-name filter (None for no filter); a bad one is a UsageError."""
    if not regex:
        return None
    try:
        return re.compile(regex)
    except re.error as err:
        raise UsageError(f"invalid regular expression {regex!r}: {err}") from err


def new_meta(name: str, kind: str, blobs, *, description: str = "", source: str = "",
             parent: str | None = None, vm: dict | None = None, oci: dict | None = None
             ) -> ImageMeta:
    """Metadata for a revision about to be committed (the store assigns the revision)."""
    return ImageMeta(
        name=name, revision=0, kind=kind, owner=_owner(), created=round(time.time(), 3),
        blobs=tuple(blobs), description=description, source=source, parent=parent,
        vm=vm, oci=oci,
    )


__all__ = ["BlobSink", "Repository", "new_meta"]
