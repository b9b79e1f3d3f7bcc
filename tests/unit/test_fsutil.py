"""Atomic writes: by bytes (write_atomic) and by descriptor (atomic_fd)."""

from __future__ import annotations

import os
import stat

import pytest

from pcocc.errors import PcoccError
from pcocc.fsutil import atomic_fd, write_atomic


def test_atomic_fd_error_on_a_missing_directory_names_the_file(tmp_path):
    with pytest.raises(PcoccError, match=f"cannot write {tmp_path}/no/f"):
        with atomic_fd(tmp_path / "no" / "f"):
            pass


def test_atomic_fd_keeps_the_old_file_until_complete(tmp_path):
    path = tmp_path / "f"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_fd(path) as fd:
            os.write(fd, b"new")
            assert path.read_text() == "old"
            raise RuntimeError
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f"]
    with atomic_fd(path, 0o640) as fd:
        os.write(fd, b"new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_write_atomic_replaces_whole_with_the_mode_asked(tmp_path):
    path = tmp_path / "f"
    write_atomic(path, "old")
    write_atomic(path, b"new" * 100000, mode=0o600)
    assert path.read_bytes() == b"new" * 100000
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["f"]
    with pytest.raises(PcoccError, match=f"cannot write {tmp_path}/no/f"):
        write_atomic(tmp_path / "no" / "f", "x")


def test_remove_tree_removes_a_directory_it_may_not_list(tmp_path, monkeypatch):
    """overlayfs leaves its work/work at mode 0, not empty, in a rootless pod's layer (root
    lists it anyway: the refusal is simulated)."""
    from pcocc.fsutil import remove_tree

    top = tmp_path / "pod"
    (top / "layer" / "work").mkdir(parents=True)
    (top / "layer" / "work" / "#9f").write_text("")
    real_open = os.open
    denied: list[str] = []

    def refusing_open(path, flags, *args, dir_fd=None, **kw):
        if os.fspath(path) == "work" and dir_fd is not None and not denied:
            denied.append(os.fspath(path))
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, dir_fd=dir_fd, **kw)

    monkeypatch.setattr(os, "open", refusing_open)
    assert remove_tree(top) and not top.exists()
    assert denied == ["work"]


def test_write_atomic_not_durable_syncs_nothing(tmp_path, monkeypatch):
    """Files of the runtime directory (metadata service records) do not outlive a boot:
    written atomically, they are not fsynced (~15 ms on a busy disk)."""
    from pcocc import fsutil

    synced = []
    real = os.fsync
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    fsutil.write_atomic(tmp_path / "a", "x", 0o600, durable=False)
    assert synced == [] and (tmp_path / "a").read_text() == "x"
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == "0o600"
    fsutil.write_atomic(tmp_path / "b", "y", 0o600, sync_dir=False)
    assert len(synced) == 1
