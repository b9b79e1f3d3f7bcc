"""A user's run, state, cache and repository directories are private to that user.

The attacker takes ``/tmp/pcocc-<victim uid>`` first (the runtime directory of a victim
without XDG_RUNTIME_DIR), or reads what the victim's commands leave on disk when the
victim's home can be entered by others (0755 homes are the default on many sites).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.security.imagelib import build_readable_image

pytestmark = pytest.mark.slow


@pytest.fixture
def image_ref(two_users) -> str:
    work = two_users.shared / "img-private-dirs"
    if not (work / "layout").exists():
        work.mkdir()
        build_readable_image(work)
    return f"oci:{work / 'layout'}:img"


@pytest.fixture
def victim_tmp(victim):
    """``/tmp/pcocc-<victim uid>``, absent before and after the test."""
    path = Path(f"/tmp/pcocc-{victim.uid}")
    _remove(path)
    yield path
    _remove(path)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


@pytest.fixture
def fresh_victim(victim):
    """The victim without any pcocc state (repository, cache, pods) from earlier tests."""
    for name in (".pcocc", ".cache", ".local"):
        shutil.rmtree(victim.home / name, ignore_errors=True)
    (victim.home / ".pcocc").mkdir()
    victim.chown(victim.home / ".pcocc")
    yield victim
    victim.home.chmod(0o700)


def _import_and_run(victim, ref: str) -> subprocess.CompletedProcess:
    res = victim.pcocc("image", "import", ref, "user:img")
    assert res.returncode == 0, res.stderr
    return victim.pcocc("run", "img", "--", "/bin/echo", "ran")


def _tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# The first and the third attack were already refused on main (by the owner of the
# directory the path led to); the others were not.
def test_runtime_dir_taken_by_the_attacker_is_refused(fresh_victim, attacker, victim_tmp,
                                                       image_ref):
    res = attacker.sh(f"mkdir -m 777 {victim_tmp}")
    assert res.returncode == 0, res.stderr
    res = _import_and_run(fresh_victim, image_ref)
    assert res.returncode != 0 and "ran" not in res.stdout
    assert str(victim_tmp) in res.stderr and "belongs to another user" in res.stderr, res.stderr
    assert "XDG_RUNTIME_DIR" in res.stderr and "Traceback" not in res.stderr
    assert _tree(victim_tmp) == []


def test_runtime_dir_linked_by_the_attacker_is_refused(fresh_victim, attacker, victim_tmp,
                                                      image_ref, two_users):
    """The link points at a directory of the victim's that the attacker can read: pcocc
    must not follow a link that someone else put there."""
    public = two_users.shared / "victim-public"
    public.mkdir(mode=0o755, exist_ok=True)
    fresh_victim.chown(public)
    public.chmod(0o755)
    res = attacker.sh(f"ln -s {public} {victim_tmp}")
    assert res.returncode == 0, res.stderr
    res = _import_and_run(fresh_victim, image_ref)
    assert res.returncode != 0 and "ran" not in res.stdout
    assert str(victim_tmp) in res.stderr and "symbolic link" in res.stderr, res.stderr
    assert _tree(public) == []
    seen = attacker.sh(f"ls -A {public}")
    assert seen.returncode == 0 and seen.stdout == ""


def test_attacker_link_to_their_own_dir_is_refused(fresh_victim, attacker, victim_tmp,
                                                   image_ref):
    res = attacker.sh(f"mkdir -p -m 777 {attacker.home}/trap && ln -s {attacker.home}/trap"
                      f" {victim_tmp}")
    assert res.returncode == 0, res.stderr
    res = _import_and_run(fresh_victim, image_ref)
    assert res.returncode != 0 and "ran" not in res.stdout
    assert str(victim_tmp) in res.stderr, res.stderr
    assert _tree(attacker.home / "trap") == []


def test_victims_runtime_dir_open_to_others_is_made_private(fresh_victim, attacker,
                                                            victim_tmp, image_ref):
    res = fresh_victim.sh(f"mkdir -m 755 {victim_tmp}")
    assert res.returncode == 0, res.stderr
    res = _import_and_run(fresh_victim, image_ref)
    assert res.returncode == 0 and res.stdout == "ran\n", res.stderr
    assert "made it 0700" in res.stderr
    assert victim_tmp.stat().st_mode & 0o777 == 0o700
    seen = attacker.sh(f"ls -A {victim_tmp}")
    assert seen.returncode != 0 and seen.stdout == ""


def test_attacker_cannot_read_the_victims_repository_cache_or_state(fresh_victim, attacker,
                                                                   victim_tmp, image_ref):
    """With a home others may enter, nothing pcocc made for the victim is readable."""
    fresh_victim.home.chmod(0o755)
    res = _import_and_run(fresh_victim, image_ref)
    assert res.returncode == 0 and res.stdout == "ran\n", res.stderr
    home = fresh_victim.home
    made = {
        "user repository": home / ".pcocc" / "repo",
        "container cache": home / ".cache" / "pcocc",
        "state directory": home / ".local" / "state" / "pcocc",
        "runtime directory": victim_tmp,
    }
    for what, path in made.items():
        assert path.is_dir(), f"{what} {path} was not created"
        assert path.stat().st_mode & 0o077 == 0, f"{what} {path} is open to others"
        seen = attacker.sh(f"ls -A {path}")
        assert seen.returncode != 0 and seen.stdout == "", f"attacker listed the {what}"
    meta = next((home / ".pcocc" / "repo" / "meta").rglob("*.json"))
    stolen = attacker.sh(f"cat {meta}")
    assert stolen.returncode != 0 and stolen.stdout == ""
    # the victim still works
    res = fresh_victim.pcocc("run", "img", "--", "/bin/echo", "again")
    assert res.returncode == 0 and res.stdout == "again\n", res.stderr
