"""Layer blobs kept with a cache entry, and the stream that copies them to another node.

An entry prepared for a multi-node run keeps the compressed layer blobs it was unpacked
from (``entries/<key>/layers/<hex>``), so that it can serve the image to the other nodes of
the job without anyone reading the repository again (:mod:`pcocc.ctr.fanout`).

The stream is the image's layers in manifest order, concatenated, nothing else. The
receiver knows each size and digest from the manifest it read from its own repository
(whose digest names the cache entry), so it trusts nothing from the sender: each blob is
hashed as it arrives and refused (``Corrupt``) when its size or sha256 differs, and a
stream with bytes left over is refused too. Only verified blobs are unpacked, with the same
safe unpacker as blobs read from the repository.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pcocc.errors import Corrupt, UsageError
from pcocc.fsutil import locked
from pcocc.repo.cachefiles import rmtree_forced
from pcocc.repo.digest import digest_hex, is_digest
from pcocc.repo.model import OciImage

if TYPE_CHECKING:
    import socket

LAYERS_DIR = "layers"
_CHUNK = 1 << 20


def image_layers(image: OciImage) -> list[tuple[str, int]]:
    """(digest, size) of each layer of ``image``, in manifest order."""
    out = []
    for layer in image.manifest.get("layers", []):
        digest, size = layer.get("digest"), layer.get("size")
        if not is_digest(digest) or not isinstance(size, int) or size < 0:
            raise Corrupt(f"image {image.manifest_digest}: a layer has no valid digest and size")
        out.append((digest, size))
    return out


def layer_file(layers_dir: Path, digest: str) -> Path:
    return layers_dir / digest_hex(digest)


def copy_verified(src: BinaryIO, dest: Path, digest: str, size: int, label: str) -> None:
    """Copy exactly ``size`` bytes of ``src`` to the new file ``dest`` and check their sha256.

    :raise Corrupt: fewer bytes, or another digest (``dest`` is removed)
    """
    import hashlib  # (here: a warm run, which copies nothing, does not load OpenSSL)

    h = hashlib.sha256()
    left = size
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            while left:
                chunk = src.read(min(_CHUNK, left))
                if not chunk:
                    raise Corrupt(f"{label}: blob {digest} ends {left} bytes early")
                h.update(chunk)
                out.write(chunk)
                left -= len(chunk)
        if "sha256:" + h.hexdigest() != digest:
            raise Corrupt(f"{label}: blob {digest} has another digest (sha256:{h.hexdigest()})")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise


def keep_layers(image: OciImage, blob_path: Callable[[str], Path], layers_dir: Path) -> None:
    """Copy (verified) every layer blob of ``image`` into ``layers_dir``: the only read of
    the repository's blobs when the entry is then unpacked from ``layers_dir``."""
    layers_dir.mkdir(mode=0o700, exist_ok=True)
    for digest, size in image_layers(image):
        dest = layer_file(layers_dir, digest)
        if dest.exists():  # the same layer twice in one image
            continue
        with open(blob_path(digest), "rb") as src:
            copy_verified(src, dest, digest, size, f"image {image.manifest_digest}")


def receive_layers(stream: BinaryIO, image: OciImage, layers_dir: Path, label: str) -> None:
    """Read the layers of ``image`` from ``stream`` (see the module) into ``layers_dir``."""
    layers_dir.mkdir(mode=0o700, exist_ok=True)
    for digest, size in _unique(image_layers(image)):
        copy_verified(stream, layer_file(layers_dir, digest), digest, size, label)
    if stream.read(1):
        raise Corrupt(f"{label}: more data than the layers of image {image.manifest_digest}")


def fetch_layers(cache, stack: contextlib.ExitStack, key: str, fetch: Callable[[Path], bool],
                 node: str) -> Path | None:
    """The directory of the cache's tmp/ where ``fetch`` received the layers of entry
    ``key`` (removed when ``stack`` closes), or None: read the repository.

    Called outside the build lock, which a shared cache may see taken by the very node
    that sends; under a pull lock of this ``node``, so that tasks of one node receive once
    and nodes sharing a cache never wait for each other's receptions.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", node):
        raise UsageError(f"'{node}' is not a node name")
    stack.enter_context(locked(cache.locks_dir / f"{key}.pull.{node}", wait_s=None,
                               what=f"cache entry {key}"))
    if (cache.entries_dir / key / "meta.json").is_file():
        return None  # another task received it meanwhile: the build lock finds it
    import secrets

    got = cache.tmp_dir / f"{key}.{os.getpid()}.{secrets.token_hex(4)}.recv"
    got.mkdir(mode=0o700)
    stack.callback(rmtree_forced, got)
    return got if fetch(got) else None


def publish_layers(layers_dir: Path, staged: Path) -> None:
    """Make the complete ``layers_dir`` visible at ``staged`` (hard links, then a rename:
    the directory appears complete or not at all), for senders to start before the entry
    is unpacked."""
    rmtree_forced(staged)  # a killed build's
    work = staged.with_name(f"{staged.name}.{os.getpid()}")
    rmtree_forced(work)
    work.mkdir(mode=0o700)
    for f in layers_dir.iterdir():
        os.link(f, work / f.name)
    os.rename(work, staged)


def send_layers(dirs: list[Path], digests: list[str], out: BinaryIO | socket.socket) -> int:
    """Write the kept blobs ``digests`` (in that order) to ``out``, each from the first of
    ``dirs`` that has it; returns the bytes sent.

    :raise FileNotFoundError: a blob is in none of ``dirs``
    """
    import socket

    sent = 0
    for digest in digests:
        for d in dirs:
            try:
                src = open(layer_file(d, digest), "rb")  # noqa: SIM115 - closed below
                break
            except FileNotFoundError:
                continue
        else:
            raise FileNotFoundError(digest)
        with src:
            if isinstance(out, socket.socket):  # the kernel copies, no pass through Python
                sent += out.sendfile(src)
                continue
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                sent += len(chunk)
    if not isinstance(out, socket.socket):
        out.flush()
    return sent


def _unique(layers: list[tuple[str, int]]) -> list[tuple[str, int]]:
    return list(dict.fromkeys(layers))


def unique_layer_digests(image: OciImage) -> list[str]:
    """The digests the sender streams, in order: each layer once."""
    return [d for d, _ in _unique(image_layers(image))]


__all__ = [
    "LAYERS_DIR", "copy_verified", "fetch_layers", "image_layers", "keep_layers", "layer_file",
    "publish_layers", "receive_layers", "send_layers", "unique_layer_digests",
]  # fmt: skip
