"""Content digests: ``sha256:<64 hex>`` strings, and the sha256 of bytes, files and streams.

Repository blobs, OCI descriptors and container cache entries are all named by such a
digest; this module is the one place that computes them, checks them and takes them apart.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import IO, Any

from pcocc.errors import Corrupt
from pcocc.repo.model import Progress, no_progress

PREFIX = "sha256:"
#: ``\Z``, not ``$``: a digest followed by a newline is not a digest.
DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})\Z")
HEX_RE = re.compile(r"^[0-9a-f]{64}\Z")
_CHUNK = 1 << 20


def _sha256(data: bytes = b"") -> Any:
    """A new sha256 object; hashlib is imported on first use (loading OpenSSL costs a warm
    ``pcocc run``, which hashes nothing, ~5 ms)."""
    import hashlib

    return hashlib.sha256(data)


def is_digest(value: object) -> bool:
    """Whether ``value`` is a ``sha256:<64 lowercase hex>`` string."""
    return isinstance(value, str) and DIGEST_RE.match(value) is not None


def digest_hex(digest: str) -> str:
    """The 64 hex digits of a ``sha256:<hex>`` digest (Corrupt when malformed)."""
    m = DIGEST_RE.match(digest)
    if not m:
        raise Corrupt(f"malformed blob digest {digest!r}")
    return m.group(1)


def from_hex(hexpart: str) -> str:
    """``sha256:<hexpart>`` (the name of a blob file back to its digest)."""
    return PREFIX + hexpart


def sha256_hex(data: bytes) -> str:
    """The 64 hex digits of the sha256 of ``data``."""
    return _sha256(data).hexdigest()


def sha256_bytes(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return PREFIX + sha256_hex(data)


def hash_file(path: Path, progress: Progress = no_progress, done0: int = 0,
              total: int | None = None, *, fsync: bool = True) -> str:
    """``sha256:<hex>`` of a file; with ``fsync``, also flush it to disk (it is about to
    become a blob). The flush runs in a thread while we hash: both release the GIL, so the
    cost is the longer of the two rather than their sum."""
    h = _sha256()
    done = done0
    buf = bytearray(_CHUNK)  # one buffer, refilled in place: no 4 MiB allocation per read
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        flusher = None
        errors: list[OSError] = []
        if fsync:
            def flush() -> None:
                try:
                    os.fsync(f.fileno())
                except OSError as err:
                    errors.append(err)

            import threading  # here: most commands never hash a file

            flusher = threading.Thread(target=flush, name="pcocc-fsync")
            flusher.start()
        try:
            while n := f.readinto(buf):
                h.update(view[:n])
                done += n
                progress(done, total)
        finally:
            if flusher is not None:
                flusher.join()
        if errors:
            raise errors[0]
    return PREFIX + h.hexdigest()


class HashingWriter:
    """A stream that forwards writes to ``out`` and hashes them; ``digest()`` is the
    ``sha256:<hex>`` of all that went through (e.g. a layer's uncompressed tar)."""

    def __init__(self, out: IO[bytes]):
        self.out = out
        self._hash = _sha256()

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()

    def digest(self) -> str:
        return PREFIX + self._hash.hexdigest()
