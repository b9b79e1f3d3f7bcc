"""The trust directories: which OpenPGP keys may sign images of which name prefix.

Layout of a trust directory (the user's ``<dir>/trustedkeys``, 0700, and the system's
``<system config>/trustedkeys``, written by admins only)::

    root.d/<FINGERPRINT>                    a key trusted for every image name
    prefix.d/<escaped prefix>/<FINGERPRINT> a key trusted for names under the prefix

Each file holds one public key in binary OpenPGP form. An image named N may be signed by the
keys of the longest prefix (in either directory) that covers N, or by a root key. The user
directory may add keys; it can neither remove nor replace the system's: ``trust rm`` only
touches the user directory, and a system directory that someone else than root or its owner
may write is refused as a whole.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pcocc import paths
from pcocc.errors import NotFound, PermissionDenied, UsageError
from pcocc.fsutil import os_error, write_atomic
from pcocc.trust import gpg
from pcocc.trust.prefix import check_name, escape, longest_match, unescape

ROOT_DIR = "root.d"
PREFIX_DIR = "prefix.d"
_FPR_RE = re.compile(r"^[0-9A-F]{40}([0-9A-F]{24})?$")


@dataclass(frozen=True)
class TrustEntry:
    """One trusted key file."""

    scope: str            # "system" or "user"
    prefix: str | None    # None for a root key
    fingerprint: str
    path: Path


@dataclass(frozen=True)
class Needed:
    """The keys that may sign a given image name."""

    prefix: str | None    # the longest trusted prefix covering the name, if any
    keys: tuple[TrustEntry, ...]


class TrustStore:
    def __init__(self, user_dir: Path, system_dir: Path):
        self.user_dir = Path(user_dir)
        self.system_dir = Path(system_dir)

    # ---- reading
    def entries(self) -> list[TrustEntry]:
        """Every trusted key file, system ones first."""
        return [*self._scan("system", self.system_dir), *self._scan("user", self.user_dir)]

    def _scan(self, scope: str, top: Path) -> list[TrustEntry]:
        if not top.is_dir():
            return []
        owners = {0}
        if scope == "system":
            # the admins: root and the owner of the system configuration directory
            owners.add(os.stat(top.parent).st_uid)
            _check_admin_owned(top, owners)
            for sub in (top / ROOT_DIR, top / PREFIX_DIR):
                if os.path.lexists(sub):
                    _check_admin_owned(sub, owners)
        out: list[TrustEntry] = []
        for fpr_path in _files(top / ROOT_DIR):
            out.append(TrustEntry(scope, None, fpr_path.name, fpr_path))
        for sub in sorted(_dirs(top / PREFIX_DIR)):
            prefix = unescape(sub.name)
            if prefix is None:
                continue  # not a directory we would write: ignored
            if scope == "system":
                _check_admin_owned(sub, owners)
            for fpr_path in _files(sub):
                out.append(TrustEntry(scope, prefix, fpr_path.name, fpr_path))
        if scope == "system":
            for e in out:
                _check_admin_owned(e.path, owners)
        return out

    def needed_for(self, name: str) -> Needed:
        """The keys that may sign images named ``name``: those of the longest covering
        prefix, and the root keys."""
        check_name(name)
        entries = self.entries()
        prefix = longest_match({e.prefix for e in entries if e.prefix is not None}, name)
        keys = tuple(e for e in entries if e.prefix is None or e.prefix == prefix)
        return Needed(prefix, keys)

    # ---- writing (user directory only)
    def add(self, key_file: Path, fingerprints: list[str], prefix: str | None) -> list[Path]:
        """Store the keys ``fingerprints`` of ``key_file`` for ``prefix`` (None: root)."""
        target = self._target_dir(prefix)
        out = []
        with tempfile.TemporaryDirectory(prefix="pcocc-trust-") as tmp:
            exported = gpg.export_keys(key_file, fingerprints, Path(tmp))
            for fpr, path in exported.items():
                dest = target / fpr
                write_atomic(dest, path.read_bytes(), 0o644)
                out.append(dest)
        return out

    def _target_dir(self, prefix: str | None) -> Path:
        paths.private_dir(self.user_dir, what="trust directory")
        if prefix is None:
            d = self.user_dir / ROOT_DIR
        else:
            (self.user_dir / PREFIX_DIR).mkdir(mode=0o700, exist_ok=True)
            d = self.user_dir / PREFIX_DIR / escape(prefix)
        try:
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            raise os_error(err, f"cannot create {d}") from err
        return d

    def holds(self, fingerprint: str) -> bool:
        """True when the user directory trusts ``fingerprint`` (for any prefix)."""
        return any(e.fingerprint == fingerprint for e in self._scan("user", self.user_dir))

    def refresh(self, key_file: Path, fingerprint: str) -> None:
        """Replace every user copy of ``fingerprint`` with the one in ``key_file`` (a
        revocation, new expiry date...)."""
        with tempfile.TemporaryDirectory(prefix="pcocc-trust-") as tmp:
            new = gpg.export_keys(key_file, [fingerprint], Path(tmp))[fingerprint]
            for e in self._scan("user", self.user_dir):
                if e.fingerprint == fingerprint:
                    write_atomic(e.path, new.read_bytes(), 0o644)

    def remove(self, fingerprint: str) -> list[TrustEntry]:
        """Remove the user's trust in ``fingerprint`` (every prefix); the system's stays."""
        fpr = fingerprint.replace(" ", "").upper()
        if not _FPR_RE.match(fpr):
            raise UsageError(f"invalid fingerprint {fingerprint!r}",
                             hint="give the 40 hex digits that 'pcocc trust list' shows")
        entries = [e for e in self.entries() if e.fingerprint == fpr]
        mine = [e for e in entries if e.scope == "user"]
        if not mine:
            if entries:
                raise PermissionDenied(
                    f"key {fpr} is trusted by the system trust directory {self.system_dir}",
                    hint="only an admin can remove it from there")
            raise NotFound(f"no trusted key has the fingerprint {fpr}",
                           hint="see 'pcocc trust list'")
        for e in mine:
            try:
                e.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as err:
                raise os_error(err, f"cannot remove {e.path}") from err
        return mine


def _files(d: Path) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir()
                      if _FPR_RE.match(p.name) and p.is_file() and not p.is_symlink())
    except FileNotFoundError:
        return []
    except OSError as err:
        raise os_error(err, f"cannot read trust directory {d}") from err


def _dirs(d: Path) -> list[Path]:
    try:
        return [p for p in d.iterdir() if p.is_dir() and not p.is_symlink()]
    except FileNotFoundError:
        return []
    except OSError as err:
        raise os_error(err, f"cannot read trust directory {d}") from err


def _check_admin_owned(path: Path, owners: set[int]) -> int:
    """A system trust directory, subdirectory or key file must belong to root or to the
    owner of the trust directory (the admin), and be writable by its owner only: else
    someone else could add a key for all. Returns the owner."""
    try:
        st = os.lstat(path)
    except OSError as err:
        raise os_error(err, f"cannot read {path}") from err
    problem = None
    if st.st_uid not in owners:
        problem = f"belongs to uid {st.st_uid}, neither root nor the admin of the directory"
    elif st.st_mode & 0o022 and not stat.S_ISLNK(st.st_mode):
        problem = f"may be written by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    if problem:
        raise PermissionDenied(
            f"system trust directory: {path} {problem}: no system key is trusted",
            hint="an admin must make the trust directory writable by root only "
                 "(chown root, chmod go-w) and check what was added to it")
    return st.st_uid
