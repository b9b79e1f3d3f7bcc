"""Repositories of pcocc 0.7, read only: their layout, metadata and blobs.

::

    <root>/.config           YAML {version: 2} (version 1 kept metadata elsewhere)
    <root>/meta/NAME@REV     JSON: name, revision, kind ("vm" or "ctr"), owner, timestamp,
                             data_blobs, and optionally description, custom_meta
    <root>/data/XX/HEX       blobs named by the sha256 of their content (XX: its first two
                             hex digits); metadata names them "HEX" or "sha256:HEX"
    <root>/.tmp/             in-flight work

A VM revision lists its qcow2 layers base first; each layer after the first names the one
before it as its backing file, ``../../data/XX/HEX``. A container revision lists its OCI
blobs and keeps the OCI index in ``custom_meta.oci_index``.

Such a repository may come from anyone, so every file is opened below the root without
following a symbolic link, must be a regular file, and blobs are checked against their
names while they are copied out. Nothing here writes into it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcocc.errors import Corrupt, PcoccError, PermissionDenied
from pcocc.fsutil import os_error
from pcocc.repo.digest import HEX_RE
from pcocc.repo.model import KIND_CTR, KIND_VM

SUPPORTED_VERSION = 2
#: 0.7's image names (our own rule, pcocc.repo.layout.NAME_RE, is checked at import)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+\Z")
_KINDS = {"vm": KIND_VM, "ctr": KIND_CTR, "cont": KIND_CTR}
_META_KEYS = {"name", "revision", "data_blobs", "description", "kind", "owner", "timestamp",
              "custom_meta"}
_MAX_SMALL_FILE = 16 << 20  # metadata and .config
_CHUNK = 1 << 20


@dataclass(frozen=True)
class LegacyRevision:
    name: str
    revision: int
    kind: str  # KIND_VM or KIND_CTR
    owner: str
    timestamp: float
    blobs: tuple[str, ...]  # 64-hex digests, in the metadata's order (VM: base first)
    description: str = ""
    oci_index: Any = None  # container images: the OCI index (checked by the importer)


def relpath_from_blob(hexd: str) -> str:
    """How a 0.7 layer names its parent blob ``hexd`` as backing file."""
    return f"../../data/{hexd[:2]}/{hexd}"


def _blob_hex(value: Any, where: str) -> str:
    text = value[7:] if isinstance(value, str) and value.startswith("sha256:") else value
    if not isinstance(text, str) or not HEX_RE.match(text):
        raise Corrupt(f"{where}: data_blobs: {value!r} is not a sha256 digest")
    return text


def parse_meta(data: bytes, where: str) -> LegacyRevision:
    """One metadata file, checked field by field (0.7's schema: no other key)."""
    try:
        d = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise Corrupt(f"{where}: not JSON ({err})") from err
    if not isinstance(d, dict):
        raise Corrupt(f"{where}: not a JSON object")
    unknown = set(d) - _META_KEYS
    missing = {"name", "revision", "data_blobs", "kind", "owner", "timestamp"} - set(d)
    if unknown or missing:
        raise Corrupt(f"{where}: " + "; ".join(
            ([f"unknown keys {sorted(unknown)}"] if unknown else [])
            + ([f"missing keys {sorted(missing)}"] if missing else [])))
    name, rev, blobs = d["name"], d["revision"], d["data_blobs"]
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise Corrupt(f"{where}: invalid name {name!r}")
    if not isinstance(rev, int) or isinstance(rev, bool) or rev < 0:
        raise Corrupt(f"{where}: invalid revision {rev!r}")
    if not isinstance(blobs, list) or not blobs:
        raise Corrupt(f"{where}: data_blobs is not a non-empty list")
    kind = _KINDS.get(d["kind"]) if isinstance(d["kind"], str) else None
    if kind is None:
        raise Corrupt(f"{where}: unknown image kind {d['kind']!r}")
    ts = d["timestamp"]
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise Corrupt(f"{where}: invalid timestamp {ts!r}")
    custom = d.get("custom_meta")
    if custom is not None and not isinstance(custom, dict):
        raise Corrupt(f"{where}: custom_meta is not an object")
    description = d.get("description", "")
    if not isinstance(d["owner"], str) or not isinstance(description, str):
        raise Corrupt(f"{where}: owner and description must be strings")
    return LegacyRevision(
        name=name, revision=rev, kind=kind, owner=d["owner"], timestamp=float(ts),
        blobs=tuple(_blob_hex(b, where) for b in blobs), description=description,
        oci_index=(custom or {}).get("oci_index"))


class LegacyRepo:
    """A pcocc 0.7 repository opened for reading (a context manager)."""

    def __init__(self, root: Path):
        self.root = Path(os.path.abspath(root))
        try:
            self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise os_error(err, f"cannot open {self.root}") from err
        try:
            self._check_config()
        except BaseException:
            os.close(self._fd)
            raise

    def __enter__(self) -> LegacyRepo:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)

    # -- files below the root -------------------------------------------------------------

    def _open(self, *parts: str, directory: bool = False) -> int:
        """Open ``root/parts...`` without following a symbolic link on the way."""
        if not parts or any(not p or p in (".", "..") or "/" in p for p in parts):
            raise ValueError(f"bad path below the repository: {parts!r}")
        fd = self._fd
        try:
            for i, part in enumerate(parts):
                last = i == len(parts) - 1
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                flags |= os.O_DIRECTORY if directory or not last else os.O_NONBLOCK
                try:
                    new = os.open(part, flags, dir_fd=fd)
                finally:
                    if fd != self._fd:
                        os.close(fd)
                fd = new
        except OSError as err:
            where = self.root.joinpath(*parts[: i + 1])
            if err.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(where):
                raise PermissionDenied(
                    f"{where} is a symbolic link: refused (a pcocc 0.7 repository is read "
                    "inside its own directory only)") from None
            raise os_error(err, f"cannot open {where}") from err
        if not directory:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise PermissionDenied(
                    f"{self.root.joinpath(*parts)} is not a regular file: refused")
        return fd

    def _read_small(self, *parts: str) -> bytes:
        fd = self._open(*parts)
        with os.fdopen(fd, "rb") as f:
            data = f.read(_MAX_SMALL_FILE + 1)
        if len(data) > _MAX_SMALL_FILE:
            raise Corrupt(f"{self.root.joinpath(*parts)} is too large for a metadata file")
        return data

    def _check_config(self) -> None:
        import yaml  # here: only this command reads YAML repository markers

        where = self.root / ".config"
        try:
            data = self._read_small(".config")
        except PcoccError as err:
            raise PcoccError(f"{self.root} is not a pcocc 0.7 repository: {err}",
                             hint="give the directory that holds .config, data/ and meta/"
                             ) from err
        try:
            config = yaml.safe_load(data)
        except yaml.YAMLError as err:
            raise Corrupt(f"{where}: not YAML ({err})") from err
        version = config.get("version") if isinstance(config, dict) else None
        if version == 1:
            raise PcoccError(
                f"{self.root} is a pcocc 0.7 repository of format version 1",
                hint="pcocc 0.7 upgrades a repository to version 2 when it collects its "
                     "garbage: do that with pcocc 0.7 first, then import it")
        if version != SUPPORTED_VERSION:
            raise Corrupt(f"{where}: unknown repository format version {version!r}",
                          hint=f"import-legacy reads version {SUPPORTED_VERSION}")

    # -- contents -------------------------------------------------------------------------

    def revisions(self) -> tuple[dict[str, list[LegacyRevision]], dict[str, str]]:
        """Every revision by image name (sorted), and the problems of the entries that
        could not be read, by image name (or file name)."""
        fd = self._open("meta", directory=True)
        try:
            entries = sorted(os.listdir(fd))
        finally:
            os.close(fd)
        images: dict[str, list[LegacyRevision]] = {}
        problems: dict[str, str] = {}
        for entry in entries:
            name, sep, rev = entry.rpartition("@")
            if not sep or not _NAME_RE.match(name) or not rev.isdigit():
                problems[entry] = f"meta/{entry}: not a metadata file name (NAME@REVISION)"
                continue
            if name in problems:
                continue
            where = f"{self.root}/meta/{entry}"
            try:
                meta = parse_meta(self._read_small("meta", entry), where)
                if (meta.name, meta.revision) != (name, int(rev)):
                    raise Corrupt(f"{where}: it describes {meta.name}@{meta.revision}")
            except PcoccError as err:
                problems[name] = str(err)
                images.pop(name, None)
                continue
            images.setdefault(name, []).append(meta)
        for revs in images.values():
            revs.sort(key=lambda m: m.revision)
        return images, problems

    def blob_where(self, hexd: str) -> Path:
        return self.root / "data" / hexd[:2] / hexd

    def copy_blob(self, hexd: str, dest: Path) -> int:
        """Copy the blob ``hexd`` to the new file ``dest`` and check its digest on the way;
        return its size. A damaged blob is Corrupt (``dest`` is then removed)."""
        if not HEX_RE.match(hexd):
            raise ValueError(hexd)
        fd = self._open("data", hexd[:2], hexd)
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "rb") as src, open(dest, "xb") as out:
                while chunk := src.read(_CHUNK):
                    h.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
        except OSError as err:
            dest.unlink(missing_ok=True)
            raise os_error(err, f"cannot copy {self.blob_where(hexd)}") from err
        if h.hexdigest() != hexd:
            dest.unlink(missing_ok=True)
            raise Corrupt(f"blob {self.blob_where(hexd)} is damaged: its content hashes to "
                          f"sha256:{h.hexdigest()}")
        return size
