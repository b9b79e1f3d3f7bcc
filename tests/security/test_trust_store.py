"""Another user cannot make a victim accept an image the victim's trust does not cover.

The attacker signs a malicious image with a key of his own and (1) trusts that key in his
own trust directory, (2) plants it in a system trust directory an admin left writable by
others. In both cases the victim's fetch of the attacker's image is refused and nothing is
stored; the victim's trusted images still fetch.
"""

from __future__ import annotations

import os
import shutil

import pytest
import yaml

from tests.fixtures.pgp import pgp_keys  # noqa: F401 - fixture
from tests.integration.repo_testlib import convert, make_raw

pytestmark = pytest.mark.slow


@pytest.fixture
def setup(two_users, victim, attacker, pgp_keys, tmp_path):
    work = two_users.shared / "trust"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o755)
    good = convert(make_raw(tmp_path / "g.raw", 1 << 20), work / "app.qcow2", "qcow2")
    bad_dir = work / "evil"
    bad_dir.mkdir(mode=0o755)
    bad = convert(make_raw(tmp_path / "b.raw", 1 << 20, seed=9), bad_dir / "app.qcow2", "qcow2")
    pgp_keys.sign("good", good)
    pgp_keys.sign("other", bad)          # "other" is the attacker's key
    pgp_keys.export("good", work / "victim.pub")
    pgp_keys.export("other", work / "attacker.pub")
    for p in work.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    for user in (victim, attacker):
        conf = user.home / ".pcocc"
        shutil.rmtree(conf, ignore_errors=True)
        conf.mkdir()
        (conf / "repos.yaml").write_text(yaml.safe_dump(
            {"repos": [{"name": "user", "path": str(conf / "repo")}]}))
        user.chown(conf)
    shutil.rmtree(two_users.sysconf / "trustedkeys", ignore_errors=True)
    yield work, good, bad
    shutil.rmtree(two_users.sysconf / "trustedkeys", ignore_errors=True)


def _nothing_stored(victim):
    listing = victim.pcocc("image", "list")
    assert listing.returncode == 0, listing.stderr
    assert "evil" not in listing.stdout and "attacker" not in listing.stdout


def test_attacker_trust_does_not_reach_the_victim(setup, victim, attacker):
    work, good, bad = setup
    # the attack: the attacker trusts his key for everything, in his own trust directory
    res = attacker.pcocc("trust", "--root", "--skip-fingerprint-review",
                         str(work / "attacker.pub"))
    assert res.returncode == 0, res.stderr
    assert attacker.pcocc("image", "fetch", f"file://{bad}").returncode == 0
    # the victim trusts only his own key; the attacker-signed image is refused
    res = victim.pcocc("trust", "--prefix", "app", "--skip-fingerprint-review",
                       str(work / "victim.pub"))
    assert res.returncode == 0, res.stderr
    res = victim.pcocc("image", "fetch", "--dest", "evil", f"file://{bad}")
    assert res.returncode == 1 and "not trusted" in res.stderr, res.stderr
    _nothing_stored(victim)
    # the attacker cannot write the victim's trust directory either
    res = attacker.sh(f"cp {work}/attacker.pub {victim.home}/.pcocc/trustedkeys/root.d/x")
    assert res.returncode != 0
    # the victim still works
    res = victim.pcocc("image", "fetch", f"file://{good}")
    assert res.returncode == 0, res.stderr


def test_a_system_trust_dir_others_may_write_is_not_trusted(setup, two_users, victim,
                                                            attacker, pgp_keys):
    work, good, bad = setup
    # an admin trusts the victim's key for everything, but leaves root.d writable by all
    root_d = two_users.sysconf / "trustedkeys" / "root.d"
    root_d.mkdir(parents=True)
    (two_users.sysconf / "trustedkeys").chmod(0o755)
    pgp_keys.export("good", root_d / pgp_keys.fingerprints["good"], armor=False)
    os.chmod(root_d / pgp_keys.fingerprints["good"], 0o644)
    root_d.chmod(0o777)
    # the attack: plant the attacker's key as a system root key
    fpr = pgp_keys.fingerprints["other"]
    res = attacker.sh(f"gpg --batch --homedir $(mktemp -d) --import {work}/attacker.pub "
                      f"2>/dev/null; gpg --batch --homedir $(mktemp -d) --dearmor "
                      f"< {work}/attacker.pub > {root_d}/{fpr}")
    assert (root_d / fpr).exists()
    res = victim.pcocc("image", "fetch", "--dest", "evil", f"file://{bad}")
    assert res.returncode == 1 and "may be written by other users" in res.stderr, res.stderr
    _nothing_stored(victim)
    # once the admin fixes the mode (and removes the planted key), the victim works again
    (root_d / fpr).unlink()
    root_d.chmod(0o755)
    res = victim.pcocc("image", "fetch", f"file://{good}")
    assert res.returncode == 0, res.stderr
    res = victim.pcocc("image", "fetch", "--dest", "evil", f"file://{bad}")
    assert res.returncode == 1 and "not trusted" in res.stderr
