"""``pcocc image render|extract`` as a non-root victim, attacked by another local user.

- The written tree is the victim's and private: DIR is 0700 and the image's setuid
  program loses its setuid bit, so the attacker can neither reach it nor run it with the
  victim's euid (the victim's home is open to others, as on many sites).
- A target the attacker planted as a symbolic link in a directory both may write (like
  /tmp) is never written through: refused without --overwrite, and --overwrite refuses to
  replace anything but a real directory.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from tests.security.imagelib import build_readable_image

pytestmark = pytest.mark.slow

ID = Path(shutil.which("id") or "/usr/bin/id")


@pytest.fixture
def suid_image(two_users) -> str:
    work = two_users.shared / "img-render"
    if not (work / "layout").exists():
        work.mkdir()
        build_readable_image(work, [("file", "bin/id-suid", str(ID), 0o4755)])
    return f"oci:{work / 'layout'}:img"


@pytest.fixture
def victim_open_home(victim, suid_image):
    """The victim with a home others may enter and the image imported."""
    for name in (".pcocc", ".cache", ".local", "out", "precious"):
        shutil.rmtree(victim.home / name, ignore_errors=True)
    victim.home.chmod(0o755)
    res = victim.pcocc("image", "import", suid_image, "user:suid")
    assert res.returncode == 0, res.stderr
    yield victim
    victim.home.chmod(0o700)


def test_rendered_tree_is_private_and_without_setuid(victim_open_home, attacker):
    victim = victim_open_home
    out = victim.home / "out"
    res = victim.pcocc("image", "render", "suid", str(out))
    assert res.returncode == 0, res.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o700 and out.stat().st_uid == victim.uid
    suid = out / "rootfs" / "bin" / "id-suid"
    st = suid.lstat()
    assert st.st_uid == victim.uid and not st.st_mode & (stat.S_ISUID | stat.S_ISGID)
    res = attacker.sh(f"{suid}")
    assert res.returncode != 0 and f"euid={victim.uid}" not in res.stdout
    assert "Permission denied" in res.stderr
    res = attacker.sh(f"ls {out}")
    assert res.returncode != 0 and "Permission denied" in res.stderr
    # the victim still works with it
    assert victim.sh(f"{suid} -u").stdout.strip() == str(victim.uid)


def test_planted_symlink_target_is_not_written_through(victim_open_home, attacker,
                                                       two_users):
    victim = victim_open_home
    drop = two_users.shared / "drop"
    shutil.rmtree(drop, ignore_errors=True)
    drop.mkdir()
    drop.chmod(0o1777)  # like /tmp
    precious = victim.home / "precious"
    res = victim.sh(f"mkdir {precious} && echo mine > {precious}/file")
    assert res.returncode == 0, res.stderr
    planted = drop / "out"
    res = attacker.sh(f"ln -s {precious} {planted}")
    assert res.returncode == 0, res.stderr
    for cmd in ("render", "extract"):
        res = victim.pcocc("image", cmd, "suid", str(planted))
        assert res.returncode == 2 and "already exists" in res.stderr, res.stderr
        res = victim.pcocc("image", cmd, "--overwrite", "suid", str(planted))
        assert res.returncode == 2 and "is not a directory" in res.stderr, res.stderr
    assert sorted(p.name for p in precious.iterdir()) == ["file"]
    assert (precious / "file").read_text() == "mine\n"
    assert planted.is_symlink() and sorted(p.name for p in drop.iterdir()) == ["out"]
    # the victim still renders into a new path of the shared directory
    res = victim.pcocc("image", "render", "--rootfs-only", "suid", str(drop / "mine"))
    assert res.returncode == 0, res.stderr
    assert (drop / "mine" / "bin" / "id-suid").lstat().st_uid == victim.uid
