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
