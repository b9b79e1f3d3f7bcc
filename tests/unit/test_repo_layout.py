"""Repository layout: paths and the versioned format marker."""

import json

import pytest

from pcocc.errors import Corrupt, PcoccError, UsageError
from pcocc.repo.layout import FORMAT_VERSION, RepoLayout

HEX = "ab" + "0" * 62


def test_paths(tmp_path):
    lay = RepoLayout(tmp_path)
    assert lay.blob_path(f"sha256:{HEX}") == tmp_path / "data" / "ab" / HEX
    assert lay.meta_path("img", 3) == tmp_path / "meta" / "img" / "3.json"
    assert lay.blob_relpath_from_blob(f"sha256:{HEX}") == f"../ab/{HEX}"
    with pytest.raises(Corrupt):
        lay.blob_path("sha256:xyz")
    with pytest.raises(UsageError):
        lay.meta_path("../etc", 0)


def test_initialize_writes_marker_and_revisions_sort_numerically(tmp_path):
    lay = RepoLayout(tmp_path / "r")
    lay.initialize()
    assert json.loads(lay.marker.read_text())["version"] == FORMAT_VERSION
    d = lay.image_dir("img")
    d.mkdir()
    for n in ("0.json", "10.json", "2.json", ".2.json.123.tmp", "junk"):
        (d / n).write_text("{}")
    assert lay.revisions("img") == [0, 2, 10]
    assert lay.image_names() == ["img"]
    lay.initialize()  # idempotent


def test_unknown_version_is_refused(tmp_path):
    lay = RepoLayout(tmp_path)
    lay.initialize()
    lay.marker.write_text(json.dumps({"format": "pcocc-repo", "version": 99}))
    with pytest.raises(PcoccError, match="version 99 is not supported"):
        lay.check_format()
    lay.marker.write_text("{}")
    with pytest.raises(Corrupt):
        lay.check_format()


def test_writers_lock_lives_where_only_writers_enter(tmp_path):
    import os
    import stat

    from pcocc.repo.layout import RepoLayout

    root = tmp_path / "repo"
    root.mkdir(mode=0o755)
    layout = RepoLayout(root)
    with layout.write_locked("repository 'r'", 1):
        assert layout.lock.parent == layout.lock_dir and layout.lock.exists()
    assert stat.S_IMODE(os.stat(layout.lock_dir).st_mode) == 0o700
    layout.lock_dir.chmod(0o755)  # an older or careless creation is tightened
    layout.ensure_lock_dir()
    assert stat.S_IMODE(os.stat(layout.lock_dir).st_mode) == 0o700
    root.chmod(0o775)  # a group-writable repository: its writers share the lock
    layout.lock.unlink()
    layout.lock_dir.rmdir()
    layout.ensure_lock_dir()
    assert stat.S_IMODE(os.stat(layout.lock_dir).st_mode) == 0o770
