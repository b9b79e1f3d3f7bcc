"""pcocc.repo.digest: the one place that computes and parses ``sha256:<hex>`` digests."""

from __future__ import annotations

import hashlib
import io

import pytest

from pcocc.errors import Corrupt, UsageError
from pcocc.repo import digest
from pcocc.repo.cache import ContainerCache

HEX = hashlib.sha256(b"abc").hexdigest()


def test_digest_strings_are_checked_and_taken_apart():
    assert digest.is_digest("sha256:" + HEX)
    for bad in (None, 3, HEX, "sha256:" + HEX.upper(), "sha512:" + HEX, "sha256:" + HEX[:-1],
                "sha256:" + HEX + "\n", "sha256:" + "../" * 21 + "x"):
        assert not digest.is_digest(bad), bad
    assert digest.digest_hex("sha256:" + HEX) == HEX
    assert digest.from_hex(HEX) == "sha256:" + HEX
    with pytest.raises(Corrupt, match="malformed blob digest"):
        digest.digest_hex("md5:abc")


def test_sha256_of_bytes_files_and_streams(tmp_path):
    assert digest.sha256_hex(b"abc") == HEX
    assert digest.sha256_bytes(b"abc") == "sha256:" + HEX
    f = tmp_path / "blob"
    f.write_bytes(b"abc")
    assert digest.hash_file(f, fsync=False) == "sha256:" + HEX
    out = io.BytesIO()
    writer = digest.HashingWriter(out)
    writer.write(b"a")
    writer.write(b"bc")
    writer.flush()
    assert (out.getvalue(), writer.digest()) == (b"abc", "sha256:" + HEX)


def test_the_container_cache_takes_only_well_formed_digests(tmp_path):
    cache = ContainerCache(tmp_path / "cache")
    assert cache.lookup("sha256:" + HEX) is None
    for bad in ("sha256:" + "../" * 21 + "x", "sha256:" + HEX.upper(), "sha1:" + HEX):
        with pytest.raises(UsageError, match="not an image digest"):
            cache.lookup(bad)
