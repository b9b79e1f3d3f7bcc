"""pcocc/userfile.py: reading and writing a user's file without following a link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pcocc import userfile
from pcocc.errors import PermissionDenied

#: the user whose files are handled: ourselves, or (as root) a uid that root chowns to
ME = (
    userfile.Owner("me", os.getuid(), os.getgid())
    if os.getuid() != 0
    else userfile.Owner("someone", 65534, 65534)
)


def _give(path: Path) -> None:
    if os.getuid() == 0:
        os.chown(path, ME.uid, ME.gid, follow_symlinks=False)


@pytest.fixture
def home(tmp_path) -> Path:
    d = tmp_path / "home"
    d.mkdir(mode=0o700)
    _give(d)
    return d


def test_written_file_is_private_and_reads_back(home):
    path = home / ".pcocc" / "etcd-password"
    userfile.write_file(path, b"pw\n", ME, what="password file")
    assert path.stat().st_mode & 0o777 == 0o600 and path.stat().st_uid == ME.uid
    assert (home / ".pcocc").stat().st_mode & 0o777 == 0o700
    mode, data = userfile.read_file(path, ME, what="password file")
    assert data == b"pw\n" and mode & 0o777 == 0o600
    assert [p.name for p in (home / ".pcocc").iterdir()] == ["etcd-password"]  # no tmp left


def test_linked_directory_is_not_followed(home, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (home / ".pcocc").symlink_to(elsewhere)
    _give(home / ".pcocc")
    with pytest.raises(PermissionDenied, match="is a symbolic link") as err:
        userfile.write_file(home / ".pcocc" / "pw", b"x", ME, what="password file")
    assert str(home / ".pcocc") in str(err.value)
    assert list(elsewhere.iterdir()) == []
    with pytest.raises(PermissionDenied, match="is a symbolic link"):
        userfile.read_file(home / ".pcocc" / "pw", ME, what="password file")


def test_linked_file_is_neither_read_nor_written_through(home, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("secret\n")
    (home / "pw").symlink_to(secret)
    _give(home / "pw")
    with pytest.raises(PermissionDenied, match="is a symbolic link"):
        userfile.read_file(home / "pw", ME, what="password file")
    assert secret.read_text() == "secret\n"


def test_missing_file_is_file_not_found(home):
    with pytest.raises(FileNotFoundError):
        userfile.read_file(home / "nope" / "pw", ME, what="password file")
    with pytest.raises(FileNotFoundError):
        userfile.read_file(home / "pw", ME, what="password file")


def test_file_of_another_owner_is_refused(home):
    (home / "pw").write_text("x\n")
    _give(home / "pw")
    other = userfile.Owner("other", ME.uid + 1, ME.gid)
    with pytest.raises(PermissionDenied):
        userfile.read_file(home / "pw", other, what="password file")


def test_a_fifo_is_not_waited_for(home):
    os.mkfifo(home / "pw")
    _give(home / "pw")
    with pytest.raises(Exception, match="not a regular file"):
        userfile.read_file(home / "pw", ME, what="password file")
