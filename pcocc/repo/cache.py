"""The container cache: unpacked root file systems or squashfs images, by manifest digest.

Layout below the cache directory (``repos.yaml: cache.path``)::

    entries/<mode>-<hex>/      one prepared image; <mode> is "dir" or "squashfs"
        rootfs/ | rootfs.squashfs   the payload that containers use
        image-config.json      the OCI image config (env, cmd, workdir...)
        meta.json              digest, mode, size_bytes, created
        last-use               its mtime is the time of the last prepare()
        layers/                the layer blobs, kept when the entry serves other nodes
    locks/<mode>-<hex>.lock    held (exclusive) while an entry is being built
    locks/<mode>-<hex>.use     held (shared) while an entry is in use: a lease
    locks/<mode>-<hex>.pull.<node>  held while that node receives the entry's layers
    tmp/                       builds in progress, received layers, entries being deleted,
        <mode>-<hex>.layers/   an entry's layers, sent to other nodes while it is unpacked
    lock                       held for short index changes (eviction, deletion)

The cache directory of a user is private (0700, :func:`pcocc.paths.data_dir`), and layers
unpacked by a non-root user lose setuid, setgid and group/other write bits
(:func:`pcocc.repo.unpack.safe_mode`): nobody else reaches what the user runs.

An entry is built in ``tmp/`` and renamed into ``entries/`` once complete, so readers see a
complete entry or none. Two processes preparing the same image serialise on the entry's
lock: the second one finds the entry built by the first. A crash leaves a directory in
``tmp/`` that ``gc`` removes once no process holds the entry lock.

A pod holds the lease of each entry it runs from for its whole life (``prepare(lease=)``):
eviction past ``max_size_bytes`` (least recently used first), gc and deletion skip an entry
whose lease is held.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pcocc import paths, proc
from pcocc.errors import Busy, NotFound, UsageError
from pcocc.fsutil import fsync_dir, locked, os_error, write_atomic
from pcocc.repo.cachelayers import LAYERS_DIR, fetch_layers, layer_file, publish_layers
from pcocc.repo.cachelayers import keep_layers as keep_layers_of
from pcocc.repo.cachefiles import disk_usage, rmtree_forced, unheld
from pcocc.repo.digest import PREFIX, digest_hex, is_digest
from pcocc.repo.model import OciImage, Progress, no_progress

log = logging.getLogger(__name__)

MODES = ("dir", "squashfs")
PAYLOAD = {"dir": "rootfs", "squashfs": "rootfs.squashfs"}
#: the locks of an entry: build (exclusive), use (shared, a lease); receivers also take
#: ``.pull.<node>`` (one per node: a cache that nodes share must not chain their waits)
LOCK_SUFFIXES = (".lock", ".use")


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
        *,
        lease: contextlib.ExitStack | None = None,
        keep_layers: bool = False,
        fetch: Callable[[Path], bool] | None = None,
        node: str = "node",
    ) -> Path:
        """Return the payload (rootfs directory or squashfs file) of ``image``, building it
        if needed, and record its use. After a build, evicts least recently used entries
        past the size limit.

        :param lease: receives the hold on the entry: eviction and gc leave it alone until
            the stack closes (for the life of the pod); without it, only during the call
        :param keep_layers: keep the layer blobs in the entry (``layers/``) so that it can
            serve other nodes (:mod:`pcocc.repo.cachelayers`)
        :param fetch: when the entry is missing, called with an empty directory to fill
            with the image's verified layer blobs from elsewhere (another node); it returns
            False to read the repository instead. Implies ``keep_layers``.
        :param node: the name of this node (with ``fetch``: one receiver per node)
        """
        key = _key(image.manifest_digest, mode)
        self._init()
        entry = self.entries_dir / key
        with contextlib.ExitStack() as held:
            held.enter_context(self.lease(key))
            if (entry / "meta.json").is_file():
                self._touch(entry)
            else:
                self._prepare_missing(image, blob_path, mode, progress, keep_layers, fetch,
                                      node)
            if lease is not None:
                lease.push(held.pop_all())
        return entry / PAYLOAD[mode]

    @contextlib.contextmanager
    def lease(self, key: str) -> Iterator[None]:
        """Hold entry ``key`` (``<mode>-<hex>``) in use: a shared lock on its use lock,
        which eviction, gc and deletion test before removing an entry. In a cache this
        user cannot write (an admin's), entries are never removed under it: no lease."""
        path = self.locks_dir / f"{key}.use"
        if not path.exists() and not os.access(self.locks_dir, os.W_OK):
            yield
            return
        with locked(path, shared=True, wait_s=None, what=f"cache entry {key}"):
            yield

    def _prepare_missing(
        self,
        image: OciImage,
        blob_path: Callable[[str], Path],
        mode: str,
        progress: Progress,
        keep_layers: bool,
        fetch: Callable[[Path], bool] | None,
        node: str,
    ) -> None:
        key = _key(image.manifest_digest, mode)
        entry = self.entries_dir / key
        lock = self.locks_dir / f"{key}.lock"
        received = None
        with contextlib.ExitStack() as stack:
            if fetch is not None:  # outside the build lock (see fetch_layers)
                received = fetch_layers(self, stack, key, fetch, node)
            with locked(lock, wait_s=None, what=f"cache entry {key}"):
                if (entry / "meta.json").is_file():
                    self._touch(entry)
                    return
                self._build(image, blob_path, mode, entry, progress,
                            keep_layers or fetch is not None, received)
        if self.max_size_bytes is not None:
            self.evict(keep={key})

    def _build(
        self,
        image: OciImage,
        blob_path: Callable[[str], Path],
        mode: str,
        entry: Path,
        progress: Progress,
        keep_layers: bool = False,
        received: Path | None = None,
    ) -> None:
        # We hold the entry's exclusive lock, as every builder does: a build directory of
        # this entry left in tmp/ is a killed build's, and the build that takes over
        # removes it (gc would only find it later).
        for stale in self.tmp_dir.glob(f"{entry.name}.*"):
            if stale.name.endswith(".recv"):
                continue  # layers being received: the pull lock's, removed by their receiver
            log.info("cache: removing %s, left by a build that was killed", stale.name)
            rmtree_forced(stale)
        import secrets

        from pcocc.repo.unpack import unpack_image  # the cold path only

        t0 = time.monotonic()
        work = self.tmp_dir / f"{entry.name}.{os.getpid()}.{secrets.token_hex(4)}"
        work.mkdir(mode=0o755)
        try:
            rootfs = work / "rootfs"
            rootfs.mkdir(mode=0o755)
            progress(0, image.size)
            if received is not None:  # verified on arrival: kept as they are
                os.rename(received, work / LAYERS_DIR)
                blob_path = functools.partial(layer_file, work / LAYERS_DIR)
            elif keep_layers:  # one read of each repository blob, then only local copies
                keep_layers_of(image, blob_path, work / LAYERS_DIR)
                blob_path = functools.partial(layer_file, work / LAYERS_DIR)
            if keep_layers or received is not None:  # other nodes may copy them meanwhile
                publish_layers(work / LAYERS_DIR, self.staged_layers(entry.name))
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
                rmtree_forced(rootfs)
            size = disk_usage(work / PAYLOAD[mode])
            if keep_layers:
                size += disk_usage(work / LAYERS_DIR)
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
                rmtree_forced(work)
            fsync_dir(self.entries_dir)
            rmtree_forced(self.staged_layers(entry.name))  # the entry's own copy serves now
            log.info("cache: prepared %s in %.2f s", entry.name, time.monotonic() - t0)
            progress(image.size, image.size)
        except BaseException:
            rmtree_forced(work)
            rmtree_forced(self.staged_layers(entry.name))
            raise

    def staged_layers(self, key: str) -> Path:
        """Where the verified layers of entry ``key`` wait, while it is being unpacked, for
        the nodes that copy them (:func:`pcocc.repo.cachelayers.publish_layers`)."""
        return self.tmp_dir / f"{key}.layers"

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
        :raise Busy: a running pod uses it (its lease is held)
        """
        digest = image.manifest_digest if isinstance(image, OciImage) else image
        for mode in MODES:
            _key(digest, mode)  # validates the digest
        with self._index_lock():
            found = [e for e in self.list() if e.digest == digest]
            gone = [e for e in found if self._try_remove(e)]
        if not found:
            raise NotFound(
                f"image {digest} is not in the container cache", hint="run 'pcocc image cache list'"
            )
        if len(gone) < len(found):
            raise Busy(f"image {digest} is in use by a running container",
                       hint="delete it from the cache once its containers have ended")
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
                    rmtree_forced(t)
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
                key = lock.name.split(".", 1)[0]
                if not (self.entries_dir / key).exists() and self._is_free(key):
                    with contextlib.suppress(OSError):
                        lock.unlink()
        report.removed_entries += self.evict()
        return report

    def _is_free(self, key: str) -> bool:
        """True when no process builds, receives or uses (leases) entry ``key``."""
        return all(unheld(self.locks_dir / f"{key}{suffix}") for suffix in LOCK_SUFFIXES)

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
        rmtree_forced(doomed)


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
