"""pcocc.repo.ocistream: what a streamed OCI archive may write, and the choice of the
download's destination from its first bytes; pcocc.trust.http's body hand-over to a sink
(tee of every byte, errors raised in the caller's thread) and its proxy choice."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from pcocc.errors import Corrupt
from pcocc.repo.ocistream import LayoutReceiver, WrittenBlobs, is_oci_archive
from pcocc.trust import http


def _tar(entries: list[tuple[str, bytes | None, bytes]]) -> bytes:
    """(name, data or None for a directory, type) entries as an uncompressed tar."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _blob(data: bytes) -> tuple[str, bytes, bytes]:
    return ("blobs/sha256/" + hashlib.sha256(data).hexdigest(), data, tarfile.REGTYPE)


def _archive(*extra) -> bytes:
    index = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    return _tar([("blobs/", None, tarfile.DIRTYPE), ("blobs/sha256/", None, tarfile.DIRTYPE),
                 _blob(b"layer" * 100000), *extra,
                 ("index.json", index, tarfile.REGTYPE),
                 ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}', tarfile.REGTYPE)])


class _Chunks:
    """A stream of ``data`` in small reads, as a download gives it."""

    def __init__(self, data: bytes, size: int = 7000):
        self.data, self.size = data, size

    def read(self, n: int = -1) -> bytes:
        n = self.size if n < 0 else min(n, self.size)
        out, self.data = self.data[:n], self.data[n:]
        return out


def test_an_archive_becomes_a_layout_of_hashed_blobs(tmp_path):
    recv = LayoutReceiver(tmp_path / "layout")
    recv.receive(_Chunks(_archive(("elsewhere/x", b"skipped", tarfile.REGTYPE))))
    digest = "sha256:" + hashlib.sha256(b"layer" * 100000).hexdigest()
    assert list(recv.written) == [digest]
    assert recv.written[digest].read_bytes() == b"layer" * 100000
    assert recv.written[digest].stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "layout" / "index.json").is_file()
    assert not (tmp_path / "layout" / "elsewhere").exists()


@pytest.mark.parametrize("bad, message", [
    (("blobs/sha256/" + "0" * 64, b"not that", tarfile.REGTYPE), "holds data of digest"),
    (("blobs/sha256/" + "1" * 64, None, tarfile.SYMTYPE), "not a regular file"),
    (("index.json", None, tarfile.SYMTYPE), "not a regular file"),
    (_blob(b"layer" * 100000), "appears twice"),
])
def test_a_bad_member_is_refused(tmp_path, bad, message):
    recv = LayoutReceiver(tmp_path / "layout")
    with pytest.raises(Corrupt, match=message):
        recv.receive(_Chunks(_archive(bad)))


def test_only_an_oci_archive_is_split():
    assert is_oci_archive(_archive()[:1 << 16])
    assert is_oci_archive(_tar([("./", None, tarfile.DIRTYPE),
                                ("./oci-layout", b"{}", tarfile.REGTYPE)]))
    assert not is_oci_archive(_tar([("manifest.json", b"[]", tarfile.REGTYPE)]))  # docker
    assert not is_oci_archive(b"QFI\xfb" + b"\0" * 1000)                           # qcow2
    assert not is_oci_archive(b"")


def test_written_blobs_are_stored_by_rename_and_others_hashed(tmp_path):
    calls = []

    class Sink:
        def __call__(self, path, expected_digest=None):
            calls.append(("hash", path))
            return expected_digest

        def add_written(self, path, digest, *, synced):
            calls.append(("rename", path, synced))
            return digest

    a, b = tmp_path / "a", tmp_path / "b"
    add = WrittenBlobs(Sink(), {"sha256:" + "a" * 64: a})
    add(a, "sha256:" + "a" * 64)
    add(b, "sha256:" + "b" * 64)
    add(b, "sha256:" + "a" * 64)  # not the file that was written for that digest
    assert calls == [("rename", a, False), ("hash", b), ("hash", b)]


class _Body:
    def __init__(self, data: bytes):
        self.stream = _Chunks(data, 1 << 20)

    def read(self, n: int) -> bytes:
        return self.stream.read(n)


def _response(data: bytes) -> http.Response:
    return http.Response("https://x/y", 200, {}, True, body=_Body(data))  # type: ignore[arg-type]


def test_a_sink_gets_the_body_and_the_tee_every_byte(tmp_path):
    data = _archive()
    teed = []
    recv = LayoutReceiver(tmp_path / "layout")
    http.save(_response(data), lambda head: recv, tee=teed.append)
    assert b"".join(teed) == data   # also the end-of-archive blocks the sink left unread
    assert len(recv.written) == 1


def test_a_sink_error_is_raised_in_the_callers_thread(tmp_path):
    recv = LayoutReceiver(tmp_path / "layout")
    data = _archive(("blobs/sha256/" + "0" * 64, b"not that", tarfile.REGTYPE))
    with pytest.raises(Corrupt):
        http.save(_response(data * 3), lambda head: recv)


def test_proxies_from_the_environment(monkeypatch):
    from urllib.parse import urlsplit

    for var in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "http_proxy",
                "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert http._proxy(urlsplit("https://a.example/x")) is None
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    monkeypatch.setenv("no_proxy", "b.example")
    assert http._proxy(urlsplit("https://a.example/x")) == "http://proxy.example:3128"
    assert http._proxy(urlsplit("https://b.example/x")) is None
