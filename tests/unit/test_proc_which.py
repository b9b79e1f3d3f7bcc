"""``proc.which`` finds commands as ``shutil.which`` does (it no longer imports shutil)."""

from __future__ import annotations

import shutil

import pytest

from pcocc import proc
from pcocc.errors import ToolMissing


def test_which_agrees_with_shutil(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "tool").write_text("#!/bin/sh\n")  # not executable: skipped
    (a / "dir").mkdir(mode=0o755)  # a directory is no command
    (b / "dir").write_text("#!/bin/sh\n")
    (b / "dir").chmod(0o755)
    (b / "tool").write_text("#!/bin/sh\n")
    (b / "tool").chmod(0o755)
    monkeypatch.setenv("PATH", f"{a}:{b}")
    for name in ("tool", "dir", str(b / "tool")):
        assert proc.which(name) == shutil.which(name)
    assert proc.which("tool") == str(b / "tool")
    with pytest.raises(ToolMissing):
        proc.which("no-such-tool")
    with pytest.raises(ToolMissing):
        proc.which(str(a / "tool"))
