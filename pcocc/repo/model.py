"""Records exchanged between the repository store and the import/export drivers.

A driver never writes into a repository itself. It produces blob files in a staging
directory that the store gives it (``tmp/`` of the destination repository, so renames are
atomic) and hands each one to ``add_blob``; the store verifies the digest, fsyncs and renames
it into ``data/`` (or drops it when the same blob is already there), and returns the digest.
Only once every blob is in place does the store commit the metadata, under the repo lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

#: Image kinds, as stored in metadata; ``pcocc image list`` shows vm / cont.
KIND_VM = "vm"
KIND_CTR = "ctr"


class AddBlob(Protocol):
    def __call__(self, path: Path, expected_digest: str | None = None) -> str:
        """Move the file at ``path`` into the store and return its ``sha256:<hex>`` digest.

        :param expected_digest: when given, the file must hash to it (else ``Corrupt``)
        """


class Progress(Protocol):
    def __call__(self, done_bytes: int, total_bytes: int | None) -> None: ...


def no_progress(done_bytes: int, total_bytes: int | None) -> None:
    """A progress callback that shows nothing."""


@dataclass
class BlobRef:
    digest: str  # "sha256:<64 hex>"
    size: int
    media_type: str = ""


@dataclass
class OciImage:
    """A container image as the store records it: manifest, config and blob list."""

    manifest_digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]
    blobs: list[BlobRef] = field(default_factory=list)  # config + layers (+ manifest)

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs)


@dataclass
class VmLayers:
    """A VM image revision: qcow2 layers from base to top, each a blob."""

    layers: list[BlobRef]
    virtual_size: int
