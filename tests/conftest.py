"""Shared fixtures: an isolated HOME and configuration directories for every test."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def pcocc_env(tmp_path, monkeypatch):
    """An empty system and user configuration and a private HOME; returns their paths."""
    home = tmp_path / "home"
    sysconf = tmp_path / "etc-pcocc"
    userconf = home / ".pcocc"
    for d in (home, sysconf, userconf):
        d.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PCOCC_SYSTEM_CONF_DIR", str(sysconf))
    monkeypatch.setenv("PCOCC_USER_CONF_DIR", str(userconf))
    return {"home": home, "system": sysconf, "user": userconf}


@pytest.fixture
def pcocc_bin():
    """The pcocc console script of the environment running the tests."""
    exe = Path(sys.executable).parent / "pcocc"
    if not exe.exists():
        pytest.fail(f"pcocc console script not found next to {sys.executable}: run helpers/setup")
    return str(exe)
