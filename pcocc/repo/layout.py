"""Every path inside a repository, and its on-disk format marker.

::

    <root>/repo.json                     {"format": "pcocc-repo", "version": 1}
    <root>/data/<2 hex>/<64 hex>         immutable blobs (mode 0444), named by sha256
    <root>/meta/<name>/<revision>.json   image metadata, one file per revision
    <root>/tmp/                          in-flight work (staging dirs), reclaimed by gc
    <root>/quarantine/                   damaged blobs moved aside by ``fsck --quarantine``
    <root>/locks/write.lock              flock taken only by writers, for short commits;
                                         locks/ is 0700 (0770 in a group-writable repo)

Nobody else builds these paths. Blob references between qcow2 layers are relative
(``../<2 hex>/<64 hex>``), so a repository can be moved or its blobs hard-linked elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pcocc.errors import Corrupt, PcoccError, PermissionDenied, UsageError
from pcocc.fsutil import fsync_dir, locked, os_error, write_atomic
from pcocc.repo.digest import digest_hex

FORMAT_NAME = "pcocc-repo"
FORMAT_VERSION = 1

#: Image names: a letter or digit first, then letters, digits, '.', '_', '-'.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
META_FILE_RE = re.compile(r"^(0|[1-9][0-9]{0,8})\.json$")


def check_image_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UsageError(
            f"invalid image name {name!r}",
            hint="use letters, digits, '.', '_' and '-', starting with a letter or digit",
        )
    return name


def _entry(*parts: str) -> property:
    """A read-only ``Path`` attribute: ``root`` joined with ``parts``."""
    return property(lambda self: self.root.joinpath(*parts), doc=f"<root>/{'/'.join(parts)}")


@dataclass(frozen=True)
class RepoLayout:
    root: Path

    # The fixed entries of a repository (see the module docstring).
    marker = _entry("repo.json")
    #: the format marker of a pcocc 0.7 repository (see :mod:`pcocc.repo.legacy`)
    legacy_marker = _entry(".config")
    data_dir = _entry("data")
    meta_dir = _entry("meta")
    tmp_dir = _entry("tmp")
    quarantine_dir = _entry("quarantine")
    #: Writers' lock files. Only writers may enter it: a reader who could open a lock file
    #: (even read-only) could flock it and stall every writer.
    lock_dir = _entry("locks")
    lock = _entry("locks", "write.lock")

    def ensure_lock_dir(self) -> Path:
        """Create ``locks/`` (0700, or 0770 when the repository directory is group-writable)
        or set its mode; refuse a symlink or a directory others may still enter."""
        d = self.lock_dir
        try:
            want = 0o770 if os.stat(self.root).st_mode & stat.S_IWGRP else 0o700
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=want)
            st = os.lstat(d)
            if not stat.S_ISDIR(st.st_mode):
                raise Corrupt(f"{d} is not a directory", hint="remove it; pcocc recreates it")
            if stat.S_IMODE(st.st_mode) != want and st.st_uid == os.geteuid():
                os.chmod(d, want)
                st = os.lstat(d)
        except OSError as err:
            raise os_error(err, f"cannot create {d}") from err
        if st.st_mode & 0o007:
            raise PermissionDenied(f"{d} is open to other users (mode {st.st_mode & 0o777:o})",
                                   hint=f"its owner should run 'chmod o-rwx {d}'")
        return d

    @contextlib.contextmanager
    def write_locked(self, what: str, wait_s: float | None) -> Iterator[None]:
        """Hold the writers' lock (see :attr:`lock_dir`)."""
        self.ensure_lock_dir()
        with locked(self.lock, wait_s=wait_s, what=what):
            yield

    def blob_path(self, digest: str) -> Path:
        hexd = digest_hex(digest)
        return self.data_dir / hexd[:2] / hexd

    def blob_relpath_from_blob(self, digest: str) -> str:
        """Path of a blob as seen from another blob's directory (qcow2 backing files)."""
        hexd = digest_hex(digest)
        return f"../{hexd[:2]}/{hexd}"

    def image_dir(self, name: str) -> Path:
        return self.meta_dir / check_image_name(name)

    def meta_path(self, name: str, revision: int) -> Path:
        return self.image_dir(name) / f"{int(revision)}.json"

    def revisions(self, name: str) -> list[int]:
        """Committed revisions of an image, sorted (an empty list when there is none)."""
        try:
            entries = os.listdir(self.image_dir(name))
        except FileNotFoundError:
            return []
        except OSError as err:
            raise os_error(err, f"cannot read {self.image_dir(name)}") from err
        return sorted(int(e[:-5]) for e in entries if META_FILE_RE.match(e))

    def image_names(self) -> list[str]:
        try:
            entries = os.listdir(self.meta_dir)
        except FileNotFoundError:
            return []
        except OSError as err:
            raise os_error(err, f"cannot read {self.meta_dir}") from err
        return sorted(e for e in entries if NAME_RE.match(e))

    def is_initialized(self) -> bool:
        return self.marker.is_file()

    def refuse_legacy(self) -> None:
        """A pcocc 0.7 repository (``.config``, no ``repo.json``) is never written in place:
        its blobs would look unreferenced to our gc."""
        if not self.marker.exists() and self.legacy_marker.exists():
            raise PcoccError(
                f"{self.root} holds a pcocc 0.7 repository, which this pcocc does not use "
                "in place",
                hint=f"move it aside (e.g. 'mv {self.root} {self.root}-0.7'), then run "
                     f"'pcocc image repo import-legacy {self.root}-0.7 --repo NAME'")

    def check_format(self) -> None:
        """Refuse a directory that is not a repository of a format this pcocc knows."""
        try:
            data = json.loads(self.marker.read_text())
        except FileNotFoundError:
            raise PcoccError(
                f"{self.root} is not a pcocc repository (no repo.json)",
                hint="check the path in repos.yaml",
            ) from None
        except (OSError, ValueError) as err:
            raise Corrupt(f"cannot read {self.marker}: {err}") from err
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise Corrupt(f"{self.marker}: not a pcocc repository marker")
        version = data.get("version")
        if version != FORMAT_VERSION:
            raise PcoccError(
                f"{self.root}: repository format version {version!r} is not supported "
                f"(this pcocc knows version {FORMAT_VERSION})",
                hint="use the pcocc version that created it",
            )

    def initialize(self) -> None:
        """Create the directories and the marker (idempotent, safe when racing)."""
        self.refuse_legacy()
        try:
            for d in (self.root, self.data_dir, self.meta_dir, self.tmp_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise os_error(err, f"cannot create repository {self.root}") from err
        if not self.marker.exists():
            marker = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
            write_atomic(self.marker, json.dumps(marker) + "\n", mode=0o644)
            fsync_dir(self.root)
        self.check_format()
