"""An OCI image archive received as a stream (a download) is written as an OCI layout,
each blob hashed as it is written, so that the store takes the blobs by a rename: no
skopeo copy, no second read (:func:`pcocc.repo.ops.import_received`).

Only the archive's members an OCI layout has are written (``oci-layout``, ``index.json``,
``blobs/sha256/<hex>``), under names this module makes, never the archive's: a member
elsewhere is skipped, one of another type (link, device...) or a blob that does not hash
to its name is refused (``Corrupt``). Nothing is placed in the store here; the caller
stores the blobs once the whole archive has been checked (its signature).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
from pathlib import Path
from typing import Any

from pcocc.errors import Corrupt
from pcocc.repo.digest import digest_hex
from pcocc.repo.model import AddBlob

_BLOB_RE = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_META = ("oci-layout", "index.json")
_MAX_META = 4 << 20
_CHUNK = 1 << 20
_DIRS = ("", ".", "blobs", "blobs/sha256")


def _name(member: tarfile.TarInfo) -> str:
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def is_oci_archive(head: bytes) -> bool:
    """Whether ``head``, the first bytes of a file, start an uncompressed tar archive whose
    first entries are those of an OCI layout (skopeo writes ``blobs/`` first)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tar:
            for member in tar:
                name = _name(member)
                if name in ("", "."):
                    continue
                return name in _META or name == "blobs" or name.startswith("blobs/")
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return False
    return False


class LayoutReceiver:
    """A :class:`pcocc.trust.http.Sink`: writes the OCI archive it receives as the OCI
    layout ``root`` (a new directory in a staging directory of the destination
    repository). ``written`` maps each blob's digest to its file, which hashed to that
    digest as it was written."""

    def __init__(self, root: Path):
        self.root = root
        self.written: dict[str, Path] = {}

    def receive(self, stream: Any) -> None:
        blobs = self.root / "blobs" / "sha256"
        blobs.mkdir(parents=True, mode=0o700)
        with tarfile.open(fileobj=stream, mode="r|", bufsize=_CHUNK) as tar:
            for member in tar:
                name = _name(member)
                if member.isdir() and name in _DIRS:
                    continue
                m = _BLOB_RE.fullmatch(name)
                if name not in _META and m is None:
                    continue
                if not member.isreg():
                    raise Corrupt(f"OCI archive: {member.name} is not a regular file")
                if m is None and member.size > _MAX_META:
                    raise Corrupt(f"OCI archive: {member.name} is too large")
                src = tar.extractfile(member)
                assert src is not None  # a regular file
                path = blobs / m.group(1) if m else self.root / name
                got = _write(src, path, member.name)
                if m is not None:
                    if got != m.group(1):
                        raise Corrupt(f"OCI archive: blob {m.group(1)} holds data of "
                                      f"digest sha256:{got}", hint="the archive is damaged")
                    self.written["sha256:" + got] = path


def _write(src: Any, path: Path, what: str) -> str:
    """Copy ``src`` into the new private file ``path``; the sha256 (hex) of its bytes."""
    h = hashlib.sha256()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise Corrupt(f"OCI archive: {what} appears twice") from None
    with open(fd, "wb") as out:
        while chunk := src.read(_CHUNK):
            out.write(chunk)
            h.update(chunk)
    return h.hexdigest()


class WrittenBlobs:
    """``add_blob`` for :func:`pcocc.repo.oci.ingest_layout` over a received layout: a
    blob hashed as it was received is stored by a rename (``BlobSink.add_written``),
    anything else (a manifest corrected since) is hashed as usual."""

    def __init__(self, sink: AddBlob, written: dict[str, Path]):
        self._sink, self._written = sink, written
        self.has_blob = getattr(sink, "has_blob", None)

    def __call__(self, path: Path, expected_digest: str | None = None) -> str:
        if expected_digest is not None and self._written.get(expected_digest) == path:
            digest_hex(expected_digest)
            # received unsynced: the store fsyncs it before the rename
            add_written = self._sink.add_written  # type: ignore[attr-defined]
            return add_written(path, expected_digest, synced=False)
        return self._sink(path, expected_digest)
