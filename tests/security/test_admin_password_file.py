"""``pcocc admin etcd-user add USER --password-file ~USER/...`` as root follows no link of USER.

The attacker plays the user being added: they prepare their home before the admin runs
the command, so that root would write a file of theirs into a directory of root's, or
read a file of root's as their etcd password.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.nonroot import SYSTEM_PYTHON

pytestmark = pytest.mark.slow

SECRET = "root-only-secret\n"


@pytest.fixture
def admin(two_users, etcd_server, tmp_path):
    """Run ``pcocc admin ...`` as root against the test etcd (which has no auth: adding a
    user needs none); every etcd user it adds is removed afterwards."""
    env = {**two_users.attacker.base_env, "HOME": str(tmp_path),
           "PCOCC_USER_CONF_DIR": str(tmp_path / "pcocc"),
           "PCOCC_ETCD_ENDPOINTS": etcd_server.endpoint}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([SYSTEM_PYTHON, "-m", "pcocc.cli.main", "admin", *args],
                              env=env, capture_output=True, text=True, timeout=120,
                              check=False, cwd="/")

    yield run
    run("etcd-user", "remove", two_users.attacker.name)


@pytest.fixture
def root_dir(two_users):
    """A directory of root's, with a root-only file in it."""
    d = two_users.shared / "root-owned"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o755)
    (d / "secret").write_text(SECRET)
    (d / "secret").chmod(0o600)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def attacker_pcocc(attacker):
    """The attacker's ~/.pcocc, absent before and after the test."""
    _remove(attacker.home / ".pcocc")
    yield attacker.home / ".pcocc"
    _remove(attacker.home / ".pcocc")


def _etcd_users(admin) -> list[str]:
    res = admin("etcd-user", "list", "--json")
    assert res.returncode == 0, res.stderr
    return [u["name"] for u in json.loads(res.stdout)]


def _snapshot(d: Path) -> dict[str, tuple]:
    return {p.name: (p.stat().st_uid, p.stat().st_mode, p.read_bytes())
            for p in d.iterdir()}


def test_linked_pcocc_dir_gets_no_file_in_roots_dir(admin, attacker, attacker_pcocc, root_dir):
    res = attacker.sh(f"ln -s {root_dir} {attacker_pcocc}")
    assert res.returncode == 0, res.stderr
    before = _snapshot(root_dir)
    res = admin("etcd-user", "add", attacker.name,
                "--password-file", str(attacker_pcocc / "etcd-password"))
    assert res.returncode != 0
    assert "symbolic link" in res.stderr and str(attacker_pcocc) in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert _snapshot(root_dir) == before
    assert attacker.name not in _etcd_users(admin)


def test_linked_password_file_is_not_read(admin, attacker, attacker_pcocc, root_dir):
    res = attacker.sh(f"mkdir -m 700 {attacker_pcocc} &&"
                      f" ln -s {root_dir / 'secret'} {attacker_pcocc / 'etcd-password'}")
    assert res.returncode == 0, res.stderr
    before = _snapshot(root_dir)
    res = admin("etcd-user", "add", attacker.name,
                "--password-file", str(attacker_pcocc / "etcd-password"))
    assert res.returncode != 0
    assert "symbolic link" in res.stderr and "etcd-password" in res.stderr, res.stderr
    assert _snapshot(root_dir) == before
    # root's secret did not become the attacker's etcd password
    assert attacker.name not in _etcd_users(admin)


def test_password_file_linked_to_a_dangling_target_is_not_written(admin, attacker,
                                                                 attacker_pcocc, root_dir):
    target = root_dir / "created-by-root"
    res = attacker.sh(f"mkdir -m 700 {attacker_pcocc} &&"
                      f" ln -s {target} {attacker_pcocc / 'etcd-password'}")
    assert res.returncode == 0, res.stderr
    res = admin("etcd-user", "add", attacker.name,
                "--password-file", str(attacker_pcocc / "etcd-password"))
    assert not target.exists()
    assert res.returncode != 0 and "symbolic link" in res.stderr, res.stderr


def test_without_links_the_file_is_the_users_and_private(admin, attacker, attacker_pcocc):
    path = attacker_pcocc / "etcd-password"
    res = admin("etcd-user", "add", attacker.name, "--password-file", str(path))
    assert res.returncode == 0, res.stderr
    st, dst = path.lstat(), attacker_pcocc.lstat()
    assert (st.st_uid, st.st_gid) == (attacker.uid, attacker.gid)
    assert st.st_mode & 0o777 == 0o600 and os.path.isfile(path)
    assert (dst.st_uid, dst.st_mode & 0o777) == (attacker.uid, 0o700)
    assert attacker.name in _etcd_users(admin)
    assert attacker.sh(f"cat {path}").stdout.strip() == path.read_text().strip()
