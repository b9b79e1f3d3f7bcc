"""Layers unpacked into a user's container cache lose setuid, setgid and other-write bits.

A layer may carry a setuid copy of a binary: unpacked by a non-root victim, that copy is
owned by the victim, and anyone who reaches it runs it with the victim's euid.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from tests.security.imagelib import build_readable_image

pytestmark = pytest.mark.slow

ID = Path(shutil.which("id") or "/usr/bin/id")
SPECIAL = [
    ("file", "bin/id-suid", str(ID), 0o4755),  # the host's id: it shows the euid
    ("file", "bin/busybox-sgid", "/bin/busybox", 0o2755),
    ("dir", "shared-sgid", None, 0o2775),
    ("file", "open-file", b"anyone may write me\n", 0o777),
    ("dir", "open-dir", None, 0o777),
    ("file", "sticky-file", b"sticky\n", 0o1644),
]


@pytest.fixture
def special_image(two_users) -> str:
    work = two_users.shared / "img-cache-modes"
    if not (work / "layout").exists():
        work.mkdir()
        build_readable_image(work, SPECIAL)
    return f"oci:{work / 'layout'}:img"


@pytest.fixture
def home_open_to_others(victim):
    """A home others may enter (0755, the default on many sites), the victim's pcocc state
    from earlier tests removed."""
    for name in (".pcocc", ".cache", ".local"):
        shutil.rmtree(victim.home / name, ignore_errors=True)
    victim.home.chmod(0o755)
    yield victim
    victim.home.chmod(0o700)


def _rootfs(victim) -> Path:
    entries = list((victim.home / ".cache" / "pcocc" / "entries").glob("dir-*"))
    assert len(entries) == 1, entries
    return entries[0] / "rootfs"


def test_cache_entry_has_no_setid_or_open_write_bits(home_open_to_others, attacker,
                                                     special_image):
    victim = home_open_to_others
    res = victim.pcocc("image", "import", special_image, "user:special")
    assert res.returncode == 0, res.stderr
    res = victim.pcocc("run", "special", "--", "/bin/echo", "ran")
    assert res.returncode == 0 and res.stdout == "ran\n", res.stderr

    rootfs = _rootfs(victim)
    for kind, name, _payload, mode in SPECIAL:
        st = (rootfs / name).lstat()
        got = stat.S_IMODE(st.st_mode)
        assert st.st_uid == victim.uid
        assert not got & (stat.S_ISUID | stat.S_ISGID), f"{name}: mode {got:04o}"
        assert not got & 0o022, f"{name}: mode {got:04o} (group/other write)"
        if kind == "file":
            assert not got & stat.S_ISVTX, f"{name}: mode {got:04o} (sticky file)"
        assert got & 0o755 == mode & 0o755 & ~0o022 | (0o700 if kind == "dir" else 0)

    # the attacker can neither reach the copy nor run it with the victim's euid
    res = attacker.sh(f"{rootfs}/bin/id-suid")
    assert res.returncode != 0, res.stdout
    assert f"euid={victim.uid}" not in res.stdout
    assert "Permission denied" in res.stderr
    listed = attacker.sh(f"ls {victim.home / '.cache' / 'pcocc'}")
    assert listed.returncode != 0 and listed.stdout == ""

    # the image still works for the victim, its files included
    res = victim.pcocc("run", "special", "--", "/bin/cat", "/open-file")
    assert res.returncode == 0 and res.stdout == "anyone may write me\n", res.stderr
