"""Shared fixtures: an isolated HOME and configuration directories for every test; the
fixtures of real services and of the test VM (``pytest_plugins``); and the markers of the
test lanes.

Lanes: every test that uses a real component gets that component's marker, from the
fixtures it uses (directly or through other fixtures) or from its directory, so that
``helpers/test --quick`` (``-m "not (slow or etcd or ...)"``) runs only what needs none.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.vm",
    "tests.fixtures.cluster",
    "tests.fixtures.launcher",
]

#: marker -> the fixtures that start (or build) that real component
COMPONENT_FIXTURES: dict[str, frozenset[str]] = {
    "etcd": frozenset({"etcd_server", "auth_etcd", "tls_etcd"}),
    "slurm": frozenset({"slurm_cluster"}),
    "vm": frozenset({"testvm_artifacts"}),
    "registry": frozenset({"registry"}),
    "container": frozenset({"image_dir", "busybox_image", "multilayer_image"}),
    "root": frozenset({"two_users"}),
}
#: marker -> directories (below tests/) whose every test uses that component
COMPONENT_DIRS: dict[str, tuple[str, ...]] = {
    "container": ("integration/containers",),
    "root": ("security",),
}


def component_markers(fixturenames: set[str], relpath: str) -> set[str]:
    """The component markers of a test that uses ``fixturenames`` and lives in ``relpath``
    (a path below tests/, with '/')."""
    found = {m for m, fixtures in COMPONENT_FIXTURES.items() if fixtures & fixturenames}
    found |= {m for m, dirs in COMPONENT_DIRS.items()
              if any(relpath == d or relpath.startswith(d + "/") for d in dirs)}
    return found


def pytest_collection_modifyitems(config, items):
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        try:
            relpath = Path(item.fspath).resolve().relative_to(tests_dir).as_posix()
        except ValueError:
            continue
        for marker in sorted(component_markers(set(item.fixturenames), relpath)):
            item.add_marker(marker)


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
