"""The directory policy of pcocc/paths.py: private dirs checked with lstat after mkdir."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pcocc import paths
from pcocc.errors import PermissionDenied


def test_private_dir_is_created_0700_with_its_parents(tmp_path):
    d = paths.private_dir(tmp_path / "a" / "b", what="test dir")
    assert d.is_dir() and d.stat().st_mode & 0o777 == 0o700


def test_private_dir_of_ours_open_to_others_is_tightened_with_a_notice(tmp_path, caplog):
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="pcocc.paths"):
        paths.private_dir(d, what="runtime directory")
    assert d.stat().st_mode & 0o777 == 0o700
    assert "runtime directory" in caplog.text and "made it 0700" in caplog.text


def test_symlink_is_refused_even_to_a_private_dir_of_ours(tmp_path):
    target = paths.private_dir(tmp_path / "target")
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(PermissionDenied, match="is a symbolic link") as err:
        paths.private_dir(link, what="runtime directory")
    assert str(link) in str(err.value) and err.value.hint


def test_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(PermissionDenied, match="is not a directory"):
        paths.private_dir(tmp_path / "f")


def test_another_users_dir_is_refused(tmp_path, monkeypatch):
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(d).st_uid + 1)
    with pytest.raises(PermissionDenied, match="belongs to another user"):
        paths.private_dir(d, what="runtime directory")


def test_runtime_dir_uses_a_private_xdg_runtime_dir(tmp_path, monkeypatch):
    xdg = paths.private_dir(tmp_path / "xdg")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert paths.runtime_dir() == xdg / "pcocc"
    assert (xdg / "pcocc").stat().st_mode & 0o777 == 0o700


def test_runtime_dir_falls_back_to_tmpdir_when_xdg_is_not_ours(tmp_path, monkeypatch):
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o755)
    xdg.chmod(0o755)  # open to others: not a runtime dir to use
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert paths.runtime_dir() == tmp_path / f"pcocc-{os.getuid()}"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert paths.runtime_dir() == tmp_path / f"pcocc-{os.getuid()}"


def test_tmp_fallback_taken_by_a_link_is_refused_with_a_hint(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    (tmp_path / f"pcocc-{os.getuid()}").symlink_to(paths.private_dir(tmp_path / "x"))
    with pytest.raises(PermissionDenied) as err:
        paths.runtime_dir()
    assert "XDG_RUNTIME_DIR" in err.value.hint


def test_run_root_and_state_and_cache_dirs(tmp_path, monkeypatch):
    monkeypatch.delenv("PCOCC_RUN_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert paths.run_root() == tmp_path / ".pcocc" / "run"
    assert paths.state_dir() == tmp_path / ".local" / "state" / "pcocc"
    assert paths.cache_dir() == tmp_path / ".cache" / "pcocc"
    created = paths.state_dir(create=True)
    assert created.stat().st_mode & 0o777 == 0o700
    monkeypatch.setenv("PCOCC_RUN_DIR", str(tmp_path / "runs"))
    assert paths.run_root(create=True).stat().st_mode & 0o777 == 0o700


def test_data_dir_follows_a_link_of_ours_and_is_0700(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the 0700 policy is for users
    new = paths.data_dir(tmp_path / "a" / "repo", what="repository 'user'", foreign_ok=True)
    assert new.stat().st_mode & 0o777 == 0o700
    real = tmp_path / "big-fs" / "repo"
    real.mkdir(parents=True)
    real.chmod(0o755)
    (tmp_path / "repo").symlink_to(real)
    paths.data_dir(tmp_path / "repo", what="repository 'user'", foreign_ok=True)
    assert real.stat().st_mode & 0o777 == 0o700


def test_data_dir_of_another_user(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    d.mkdir(mode=0o777)
    d.chmod(0o777)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(d).st_uid + 1)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(d).st_uid + 1)
    # a group's repository: used as its owner made it
    assert paths.data_dir(d, what="repository 'team'", foreign_ok=True) == d
    assert d.stat().st_mode & 0o777 == 0o777
    if os.stat(d).st_uid == 0:  # root's, but others may write into it: not a cache to use
        with pytest.raises(PermissionDenied, match="belongs to another user"):
            paths.data_dir(d, what="container cache", foreign_ok=False)
        d.chmod(0o755)
        assert paths.data_dir(d, what="container cache", foreign_ok=False) == d


def test_xdg_runtime_base_ignores_links(tmp_path, monkeypatch):
    target = paths.private_dir(tmp_path / "real")
    (tmp_path / "link").symlink_to(target)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "link"))
    assert paths.xdg_runtime_base() is None
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(target))
    assert paths.xdg_runtime_base() == Path(target)
