"""The layer that ``pcocc pod export`` writes from an overlay upper directory: whiteouts,
opaque directories, modes and owners, symlinks, and names that must not escape or lie."""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest

from pcocc.errors import Corrupt
from pcocc.repo import difflayer
from pcocc.repo.difflayer import write_diff_layer

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts are 0/0 devices: mknod")


def _members(upper: Path, tmp_path: Path, **kw) -> dict[str, tarfile.TarInfo]:
    out = tmp_path / "layer.tar.gz"
    write_diff_layer(upper, out, **kw)
    with tarfile.open(out) as tar:
        return {m.name: m for m in tar.getmembers()}


def _whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


@pytest.fixture
def upper(tmp_path) -> Path:
    d = tmp_path / "upper"
    d.mkdir()
    return d


@needs_root
def test_deletions_become_whiteout_files(upper, tmp_path):
    (upper / "etc").mkdir()
    (upper / "etc" / "new").write_text("made\n")
    _whiteout(upper / "etc" / "hello")
    _whiteout(upper / "gone-dir")
    got = _members(upper, tmp_path)
    assert sorted(got) == [".wh.gone-dir", "etc", "etc/.wh.hello", "etc/new"]
    assert got["etc/.wh.hello"].isreg() and got["etc/.wh.hello"].size == 0
    assert not any(m.ischr() for m in got.values())


@pytest.mark.parametrize("ns", ["user", "trusted"])
def test_opaque_directory_gets_the_opaque_marker(upper, tmp_path, ns):
    if ns == "trusted" and os.geteuid() != 0:
        pytest.skip("trusted xattrs need root")
    d = upper / "data"
    d.mkdir()
    (d / "fresh").write_text("x")
    os.setxattr(d, f"{ns}.overlay.opaque", b"y")
    got = _members(upper, tmp_path)
    assert "data/.wh..wh..opq" in got and "data/fresh" in got
    assert list(got).index("data") < list(got).index("data/.wh..wh..opq")
    assert not any("xattr" in k for m in got.values() for k in m.pax_headers)


def test_a_dir_that_only_contains_xwhiteouts_is_not_opaque(upper, tmp_path):
    d = upper / "data"
    d.mkdir()
    os.setxattr(d, "user.overlay.opaque", b"x")  # "has xwhiteouts", not opaque
    f = d / "old"
    f.write_bytes(b"")
    os.setxattr(f, "user.overlay.whiteout", b"")
    got = _members(upper, tmp_path)
    assert "data/.wh..wh..opq" not in got and "data/.wh.old" in got and "data/old" not in got


def test_modes_and_owners_as_root_are_kept(upper, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    f = upper / "tool"
    f.write_text("#!/bin/sh\n")
    os.chmod(f, 0o4755)
    (upper / "shared").mkdir(mode=0o777)
    os.chmod(upper / "shared", 0o1777)
    got = _members(upper, tmp_path)
    assert got["tool"].mode == 0o4755 and got["shared"].mode == 0o1777
    assert (got["tool"].uid, got["tool"].gid) == (os.stat(f).st_uid, os.stat(f).st_gid)
    assert got["tool"].uname == ""


def test_as_a_user_members_are_roots_without_setuid(upper, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    f = upper / "tool"
    f.write_text("#!/bin/sh\n")
    os.chmod(f, 0o6755)
    got = _members(upper, tmp_path)
    assert got["tool"].mode == 0o755 and (got["tool"].uid, got["tool"].gid) == (0, 0)


def test_symlinks_are_stored_not_followed(upper, tmp_path):
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "key").write_text("do not copy")
    os.symlink("../../../etc/passwd", upper / "up")
    os.symlink(str(outside), upper / "linkdir")
    got = _members(upper, tmp_path)
    assert got["up"].issym() and got["up"].linkname == "../../../etc/passwd"
    assert got["linkdir"].issym() and "linkdir/key" not in got
    assert set(got) == {"up", "linkdir"}


def test_hard_links_stay_links(upper, tmp_path):
    (upper / "a").write_text("same")
    os.link(upper / "a", upper / "b")
    got = _members(upper, tmp_path)
    assert got["a"].isreg() and got["b"].islnk() and got["b"].linkname == "a"


@pytest.mark.parametrize("name", ["new\nline", "back\\slash", "..dots", " space", "ü-name"])
def test_odd_names_stay_inside_the_layer(upper, tmp_path, name):
    (upper / "d").mkdir()
    (upper / "d" / name).write_text("x")
    got = _members(upper, tmp_path)
    assert set(got) == {"d", f"d/{name}"}
    for m in got:
        assert not m.startswith("/") and ".." not in m.split("/")


@pytest.mark.parametrize("name", [".wh.evil", ".wh..wh..opq"])
def test_a_name_that_reads_as_a_whiteout_is_refused(upper, tmp_path, name):
    (upper / "etc").mkdir()
    (upper / "etc" / name).write_text("")
    with pytest.raises(Corrupt, match=r"etc/\.wh\."):
        _members(upper, tmp_path)


def test_overlay_redirects_are_refused(upper, tmp_path):
    d = upper / "moved"
    d.mkdir()
    os.setxattr(d, "user.overlay.redirect", b"/old")
    with pytest.raises(Corrupt, match="redirect"):
        _members(upper, tmp_path)


def test_runtime_mount_points_are_left_out_when_empty(upper, tmp_path):
    for d in ("proc", "sys", "data"):
        (upper / d).mkdir()
    (upper / "data" / "kept").write_text("the app wrote it before the mount? no: a volume")
    got = _members(upper, tmp_path, mount_points=["/proc", "/sys", "/data"])
    assert set(got) == {"data", "data/kept"}


def test_sockets_are_left_out(upper, tmp_path):
    import socket

    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(upper / "sock"))
        (upper / "f").write_text("x")
        assert set(_members(upper, tmp_path)) == {"f"}
    finally:
        s.close()


def test_diff_id_is_the_uncompressed_tar_digest(upper, tmp_path):
    import gzip
    import hashlib

    (upper / "f").write_text("x")
    out = tmp_path / "l.tar.gz"
    diff_id = write_diff_layer(upper, out)
    assert diff_id == "sha256:" + hashlib.sha256(gzip.decompress(out.read_bytes())).hexdigest()
    assert difflayer.OPAQUE_MARKER == ".wh..wh..opq"
