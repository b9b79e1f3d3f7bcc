"""The container cache: unpacked root file systems or squashfs images, by manifest digest.

Layout below the cache directory (``repos.yaml: cache.path``)::

    entries/<mode>-<hex>/      one prepared image; <mode> is "dir" or "squashfs"
        rootfs/ | rootfs.squashfs   the payload that containers use
        image-config.json      the OCI image config (env, cmd, workdir...)
        meta.json              digest, mode, size_bytes, created
        last-use               its mtime is the time of the last prepare()
    locks/<mode>-<hex>.lock    held while an entry is being built
    tmp/                       builds in progress, and entries being deleted
    lock                       held for short index changes (eviction, deletion)

The cache directory of a user is private (0700, :func:`pcocc.paths.data_dir`), and layers
unpacked by a non-root user lose setuid, setgid and group/other write bits
(:func:`pcocc.repo.unpack.safe_mode`): nobody else reaches what the user runs.

An entry is built in ``tmp/`` and renamed into ``entries/`` once complete, so readers see a
complete entry or none. Two processes preparing the same image serialise on the entry's
lock: the second one finds the entry built by the first. A crash leaves a directory in
``tmp/`` that ``gc`` removes once no process holds the entry lock.

Deleting or evicting an entry that a running container uses breaks that container: as
for the reference pcocc, users must not clean the cache under running containers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pcocc import paths, proc
from pcocc.errors import NotFound, UsageError
from pcocc.fsutil import fsync_dir, locked, os_error, write_atomic
from pcocc.repo.digest import PREFIX, digest_hex, is_digest
from pcocc.repo.model import OciImage, Progress, no_progress

log = logging.getLogger(__name__)

MODES = ("dir", "squashfs")
PAYLOAD = {"dir": "rootfs", "squashfs": "rootfs.squashfs"}


@dataclass
class CacheEntry:
    digest: str  #: image manifest digest
    mode: str
    size_bytes: int
    last_used: float  #: seconds since the epoch
    path: Path  #: the entry directory

    @property
    def payload(self) -> Path:
        return self.path / PAYLOAD[self.mode]


@dataclass
class GcReport:
    removed_tmp: list[str] = field(default_factory=list)
    removed_entries: list[CacheEntry] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return sum(e.size_bytes for e in self.removed_entries)


def _key(digest: str, mode: str) -> str:
    if mode not in MODES:
        raise UsageError(f"unknown cache mode '{mode}'", hint=f"use one of: {', '.join(MODES)}")
    if not is_digest(digest):
        raise UsageError(f"'{digest}' is not an image digest (sha256:<64 hex>)")
    return f"{mode}-{digest_hex(digest)}"


class ContainerCache:
    """The cache directory; every method is safe against concurrent pcocc processes."""

    def __init__(self, root: Path, max_size_bytes: int | None = None):
        self.root = Path(root)
        self.max_size_bytes = max_size_bytes
        self.entries_dir = self.root / "entries"
        self.tmp_dir = self.root / "tmp"
        self.locks_dir = self.root / "locks"

    @classmethod
    def from_config(cls, cache_config) -> ContainerCache:
        """From ``Config.cache`` (path, max_size_bytes)."""
        return cls(cache_config.path, getattr(cache_config, "max_size_bytes", None))

    def _init(self) -> None:
        paths.data_dir(self.root, what="container cache", foreign_ok=False)
        try:
            for d in (self.entries_dir, self.tmp_dir, self.locks_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise os_error(err, f"cannot create the container cache in {self.root}") from err

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        with locked(self.root / "lock", wait_s=120, what="the container cache lock"):
            yield

    # --- prepare -----------------------------------------------------------------------

    def lookup(self, digest: str, mode: str = "dir") -> Path | None:
        """The payload of a complete entry, or None."""
        entry = self.entries_dir / _key(digest, mode)
        return entry / PAYLOAD[mode] if (entry / "meta.json").is_file() else None

    def prepare(
        self,
        image: OciImage,
        blob_path: Callable[[str], Path],
        mode: str = "dir",
        progress: Progress = no_progress,
    ) -> Path:
        """Return the payload (rootfs directory or squashfs file) of ``image``, building it
        if needed, and record its use. Evicts least recently used entries past the limit.
        """
        key = _key(image.manifest_digest, mode)
        self._init()
        entry = self.entries_dir / key
        lock = self.locks_dir / f"{key}.lock"
        # Holding the entry lock (shared to use, exclusive to build) keeps gc and eviction
        # of other processes away from it until its last use is recorded.
        with locked(lock, shared=True, wait_s=None, what=f"cache entry {key}"):
            ready = (entry / "meta.json").is_file()
            if ready:
                self._touch(entry)
        if not ready:
            with locked(lock, wait_s=None, what=f"cache entry {key}"):
                if not (entry / "meta.json").is_file():
                    self._build(image, blob_path, mode, entry, progress)
                self._touch(entry)
        if self.max_size_bytes is not None:
            self.evict(keep={key})
        return entry / PAYLOAD[mode]

    def _build(
        self,
        image: OciImage,
        blob_path: Callable[[str], Path],
        mode: str,
        entry: Path,
        progress: Progress,
    ) -> None:
        # We hold the entry's exclusive lock, as every builder does: a build directory of
        # this entry left in tmp/ is a killed build's, and the build that takes over
        # removes it (gc would only find it later).
        for stale in self.tmp_dir.glob(f"{entry.name}.*"):
            log.info("cache: removing %s, left by a build that was killed", stale.name)
            _rmtree(stale)
        import secrets

        from pcocc.repo.unpack import unpack_image  # the cold path only

        work = self.tmp_dir / f"{entry.name}.{os.getpid()}.{secrets.token_hex(4)}"
        work.mkdir(mode=0o755)
        try:
            rootfs = work / "rootfs"
            rootfs.mkdir(mode=0o755)
            progress(0, image.size)
            unpack_image(image, blob_path, rootfs)
            if mode == "squashfs":
                argv = [
                    "mksquashfs",
                    rootfs,
                    work / PAYLOAD["squashfs"],
                    "-noappend",
                    "-no-progress",
                    "-quiet",
                ]
                if os.geteuid() != 0:
                    argv.append("-all-root")  # owners could not be kept when unpacking
                proc.run(argv, what=f"mksquashfs of image {image.manifest_digest}")
                _rmtree(rootfs)
            size = _disk_usage(work / PAYLOAD[mode])
            write_atomic(work / "image-config.json", json.dumps(image.config, indent=1))
            meta = {
                "digest": image.manifest_digest,
                "mode": mode,
                "size_bytes": size,
                "created": time.time(),
            }
            write_atomic(work / "meta.json", json.dumps(meta))
            (work / "last-use").touch()
            fsync_dir(work)
            try:
                os.rename(work, entry)
            except OSError as err:
                if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                log.debug("cache entry %s appeared meanwhile; using it", entry.name)
                _rmtree(work)
            fsync_dir(self.entries_dir)
            progress(image.size, image.size)
        except BaseException:
            _rmtree(work)
            raise

    def _touch(self, entry: Path) -> None:
        try:
            os.utime(entry / "last-use")
        except OSError as err:  # a read-only shared cache still works
            log.debug("cannot record the use of %s: %s", entry, err)

    # --- query -------------------------------------------------------------------------

    def list(self) -> list[CacheEntry]:
        """Complete entries, least recently used first."""
        out = []
        if not self.entries_dir.is_dir():
            return out
        for d in self.entries_dir.iterdir():
            e = self._read_entry(d)
            if e is not None:
                out.append(e)
        return sorted(out, key=lambda e: (e.last_used, e.path.name))

    def _read_entry(self, d: Path) -> CacheEntry | None:
        try:
            meta = json.loads((d / "meta.json").read_text())
            last = (d / "last-use").stat().st_mtime
            return CacheEntry(meta["digest"], meta["mode"], int(meta["size_bytes"]), last, d)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def total_size_bytes(self) -> int:
        return sum(e.size_bytes for e in self.list())

    # --- removal -----------------------------------------------------------------------

    def delete(self, image: OciImage | str) -> list[CacheEntry]:
        """Remove every entry (all modes) of an image, given as OciImage or digest.

        :raise NotFound: nothing is cached for it
        """
        digest = image.manifest_digest if isinstance(image, OciImage) else image
        for mode in MODES:
            _key(digest, mode)  # validates the digest
        with self._index_lock():
            gone = [e for e in self.list() if e.digest == digest]
            for e in gone:
                self._remove_entry(e)
        if not gone:
            raise NotFound(
                f"image {digest} is not in the container cache", hint="run 'pcocc image cache list'"
            )
        return gone

    def evict(self, keep: Iterable[str] = ()) -> list[CacheEntry]:
        """Remove least recently used entries until the cache fits ``max_size_bytes``.

        :param keep: entry names ("<mode>-<hex>") never to evict (the one just prepared)
        """
        if self.max_size_bytes is None:
            return []
        keep = set(keep)
        removed = []
        with self._index_lock():
            entries = self.list()
            total = sum(e.size_bytes for e in entries)
            for e in entries:
                if total <= self.max_size_bytes:
                    break
                if e.path.name in keep or not self._try_remove(e):
                    continue
                total -= e.size_bytes
                removed.append(e)
        for e in removed:
            log.info("evicted %s (%s) from the container cache", e.digest, e.mode)
        return removed

    def gc(self, live_digests: Iterable[str] | None = None) -> GcReport:
        """Remove dangling builds, broken entries, entries of images that no repository
        holds any more (when ``live_digests`` is given), then enforce the size limit.
        """
        report = GcReport()
        if not self.root.is_dir():
            return report
        self._init()
        live = set(live_digests) if live_digests is not None else None
        with self._index_lock():
            for t in self.tmp_dir.iterdir():
                key = t.name.split(".", 1)[0]
                if ".deleted." in t.name or self._is_free(key):
                    _rmtree(t)
                    report.removed_tmp.append(t.name)
            for d in self.entries_dir.iterdir():
                e = self._read_entry(d)
                if e is None:
                    if self._is_free(d.name):
                        self._remove_path(d)
                        report.removed_tmp.append(d.name)
                elif live is not None and e.digest not in live and self._try_remove(e):
                    report.removed_entries.append(e)
            for lock in self.locks_dir.iterdir():
                key = lock.name.removesuffix(".lock")
                if not (self.entries_dir / key).exists() and self._is_free(key):
                    with contextlib.suppress(OSError):
                        lock.unlink()
        report.removed_entries += self.evict()
        return report

    def _is_free(self, key: str) -> bool:
        """True when no process holds the build lock of entry ``key``."""
        path = self.locks_dir / f"{key}.lock"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    def _try_remove(self, e: CacheEntry) -> bool:
        if not self._is_free(e.path.name):
            return False
        self._remove_entry(e)
        return True

    def _remove_entry(self, e: CacheEntry) -> None:
        self._remove_path(e.path)

    def _remove_path(self, path: Path) -> None:
        """Rename out of entries/ first (atomic disappearance), then delete."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        import secrets

        doomed = self.tmp_dir / f"{path.name}.deleted.{secrets.token_hex(4)}"
        try:
            os.rename(path, doomed)
        except FileNotFoundError:
            return
        except OSError as err:
            raise os_error(err, f"cannot remove {path} from the container cache") from err
        _rmtree(doomed)


def _rmtree(path: Path) -> None:
    """Delete a tree; as non-root, first give u+rwx to directories left read-only."""
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    if os.geteuid() != 0:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o700)
        for dirpath, dirnames, _ in os.walk(path):  # top-down: fixed before entered
            for d in dirnames:
                p = os.path.join(dirpath, d)
                with contextlib.suppress(OSError):
                    if not os.path.islink(p):
                        os.chmod(p, os.lstat(p).st_mode & 0o7777 | 0o700)
    import shutil  # only here: a warm run does not pay for zlib, bz2 and lzma

    shutil.rmtree(path)


def _disk_usage(path: Path) -> int:
    """Bytes used on disk by a file or a tree (hard links counted once)."""
    st = path.lstat()
    if not path.is_dir():
        return st.st_blocks * 512
    seen: set[tuple[int, int]] = set()
    total = st.st_blocks * 512
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            s = os.lstat(os.path.join(dirpath, name))
            if s.st_nlink > 1:
                if (s.st_dev, s.st_ino) in seen:
                    continue
                seen.add((s.st_dev, s.st_ino))
            total += s.st_blocks * 512
    return total


def resolve_prefix(cache: ContainerCache, text: str) -> str:
    """The digest of the cached image whose digest (or hex) starts with ``text``."""
    hexpart = text.removeprefix(PREFIX)
    matches = {e.digest for e in cache.list() if e.digest.split(":", 1)[1].startswith(hexpart)}
    if not matches:
        raise NotFound(f"no cached image matches '{text}'", hint="run 'pcocc image cache list'")
    if len(matches) > 1:
        raise UsageError(f"'{text}' matches {len(matches)} cached images; give more digits")
    return matches.pop()


__all__ = ["MODES", "CacheEntry", "ContainerCache", "GcReport", "resolve_prefix"]
