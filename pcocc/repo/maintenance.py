"""Repository maintenance: ``gc`` (unreferenced blobs, stale ``tmp/`` entries) and ``fsck``
(blob digests, metadata references, qcow2 backing chains) of a :class:`Repository`.

This module builds on :mod:`pcocc.repo.store`, never the reverse: callers (``pcocc repo
gc``/``fsck``) call ``maintenance.gc(repo)`` and ``maintenance.fsck(repo)``.

gc holds the repository lock while it decides what is unreferenced, so a concurrent commit
either lands before (its blobs are referenced) or after (its blobs are younger than the
grace period, which protects blobs written before their metadata commit).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pcocc.errors import Corrupt, NotFound, PcoccError, ToolError
from pcocc.fsutil import os_error, remove_tree
from pcocc.repo.digest import HEX_RE, from_hex, hash_file
from pcocc.repo.model import KIND_VM, Progress, no_progress

if TYPE_CHECKING:
    from pcocc.repo.store import Repository

#: How long gc waits for the repository lock (a commit holds it for milliseconds).
LOCK_WAIT_S = 120.0
#: Default age under which gc leaves unreferenced blobs and tmp/ entries alone.
DEFAULT_GRACE_PERIOD_S = 3600.0


def _tree_newest_mtime(path: Path) -> float:
    """Newest mtime in a tree: a staging dir still being written to looks young."""
    try:
        newest = path.lstat().st_mtime
    except FileNotFoundError:
        return 0.0
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for n in dirs + files:
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, os.lstat(os.path.join(root, n)).st_mtime)
    return newest


def _tree_size(path: Path) -> int:
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except FileNotFoundError:
        return 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for n in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, n)).st_size
    return total


@dataclass
class GcReport:
    blobs_removed: int = 0
    tmp_removed: int = 0
    bytes_freed: int = 0
    kept_young: int = 0


@dataclass
class FsckReport:
    blobs_checked: int = 0
    images_checked: int = 0
    problems: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)

    @property
    def is_clean(self) -> bool:
        return not self.problems



def _referenced(repo: Repository) -> set[str]:
    refs: set[str] = set()
    for name in repo.layout.image_names():
        for rev in repo.layout.revisions(name):
            try:
                meta = repo.read_meta(name, rev)
            except NotFound:
                continue
            refs.update(b.digest for b in meta.blobs)
    return refs

def _blob_files(repo: Repository) -> Iterator[Path]:
    try:
        subdirs = sorted(os.listdir(repo.layout.data_dir))
    except FileNotFoundError:
        return
    for sub in subdirs:
        d = repo.layout.data_dir / sub
        if d.is_dir():
            for n in sorted(os.listdir(d)):
                yield d / n

def gc(repo: Repository, grace_period_s: float = DEFAULT_GRACE_PERIOD_S,
       progress: Progress = no_progress) -> GcReport:
    """Remove unreferenced blobs and stale ``tmp/`` entries older than the grace period.

    A metadata file that cannot be read stops gc (Corrupt): what it references is unknown.
    """
    repo.require_writable()
    report = GcReport()
    if not repo.layout.is_initialized():
        return report
    repo.layout.check_format()
    now = time.time()
    with repo.layout.write_locked(f"repository '{repo.name}'", LOCK_WAIT_S):
        refs = _referenced(repo)
        files = []
        for f in _blob_files(repo):
            with contextlib.suppress(FileNotFoundError):
                files.append((f, f.lstat()))
        total = sum(st.st_size for _f, st in files)
        done = 0
        for f, st in files:
            done += st.st_size
            progress(done, total)
            digest = from_hex(f.name)
            if HEX_RE.match(f.name) and f.parent.name == f.name[:2] and digest in refs:
                continue
            if now - st.st_mtime < grace_period_s:
                report.kept_young += 1
                continue
            f.unlink(missing_ok=True)
            report.blobs_removed += 1
            report.bytes_freed += st.st_size
        stale: list[Path] = []
        if repo.layout.tmp_dir.is_dir():
            stale += list(repo.layout.tmp_dir.iterdir())
        for name in repo.layout.image_names():
            stale += [p for p in repo.layout.image_dir(name).glob(".*.tmp")]
        stale += [p for p in repo.layout.root.glob(".*.tmp")]
        for entry in stale:
            if now - _tree_newest_mtime(entry) < grace_period_s:
                report.kept_young += 1
                continue
            report.bytes_freed += _tree_size(entry)
            report.tmp_removed += 1
            remove_tree(entry)
        for name in repo.layout.image_names():  # directories left by deleted images
            if not repo.layout.revisions(name):
                with contextlib.suppress(OSError):
                    repo.layout.image_dir(name).rmdir()
    return report


def fsck(repo: Repository, *, quarantine: bool = False, progress: Progress = no_progress
         ) -> FsckReport:
    """Check every blob's digest and every reference (metadata -> blobs, qcow2 chains)."""
    from pcocc.repo import qemu_img  # VM checks only

    if quarantine:
        repo.require_writable()
    report = FsckReport()
    if not repo.layout.is_initialized():
        return report
    repo.layout.check_format()
    files = list(_blob_files(repo))
    total = sum(f.lstat().st_size for f in files)
    done = 0
    damaged: set[str] = set()
    for f in files:
        report.blobs_checked += 1
        if not HEX_RE.match(f.name) or f.parent.name != f.name[:2]:
            report.problems.append(f"{f}: not a blob name")
            continue
        digest = from_hex(f.name)
        if not f.is_file() or f.is_symlink():  # fsck opens no FIFO, device or symlink
            damaged.add(digest)
            report.problems.append(f"blob {digest}: not a regular file")
            continue
        try:
            actual = hash_file(f, progress, done, total, fsync=False)
        except OSError as err:
            actual = f"unreadable ({err.strerror})"
        done += f.lstat().st_size
        if actual != digest:
            damaged.add(digest)
            report.problems.append(f"blob {digest}: content hashes to {actual}")
            if quarantine:
                _quarantine(repo, f)
                report.quarantined.append(digest)
    layer_ok: dict[str, str | None] = {}
    for name in repo.layout.image_names():
        for rev in repo.layout.revisions(name):
            report.images_checked += 1
            where = f"image {repo.name}:{name}@{rev}"
            try:
                meta = repo.read_meta(name, rev)
            except PcoccError as err:
                report.problems.append(f"{where}: {err}")
                continue
            for b in meta.blobs:
                if b.digest in damaged:
                    report.problems.append(f"{where}: blob {b.digest} is damaged")
                elif not repo.layout.blob_path(b.digest).exists():
                    report.problems.append(f"{where}: blob {b.digest} is missing")
            if meta.kind == KIND_VM and meta.vm is not None:
                parent = None
                for digest in meta.vm["layers"]:
                    key = f"{digest}<{parent}"
                    if key not in layer_ok:
                        layer_ok[key] = _check_layer(repo, qemu_img, digest, parent)
                    if layer_ok[key]:
                        report.problems.append(f"{where}: {layer_ok[key]}")
                    parent = digest
    return report

def _check_layer(repo: Repository, qemu_img, digest: str, parent: str | None) -> str | None:
    """Why a stored layer is not a valid link of its chain (None when it is): see
    :func:`pcocc.repo.qemu_img.layer_problem`. A layer naming any other file (data file,
    backing file outside the chain) is reported: exporting it would read that file."""
    path = repo.layout.blob_path(digest)
    if not path.exists():
        return None  # already reported as missing
    try:
        info = qemu_img.info(path, "qcow2")
    except (ToolError, Corrupt) as err:
        return f"layer {digest} is not a readable qcow2 ({err})"
    want = None if parent is None else repo.layout.blob_relpath_from_blob(parent)
    problem = qemu_img.layer_problem(info, want)
    if problem:
        return f"layer {digest} {problem}"
    if want is not None and not (path.parent / want).exists():
        return f"layer {digest}: backing blob {parent} is missing"
    return None

def _quarantine(repo: Repository, blob: Path) -> None:
    qdir = repo.layout.quarantine_dir
    try:
        qdir.mkdir(exist_ok=True)
        os.rename(blob, qdir / f"{blob.name}.{int(time.time())}")
    except OSError as err:
        raise os_error(err, f"cannot move {blob} to {qdir}") from err
