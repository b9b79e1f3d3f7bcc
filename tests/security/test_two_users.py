"""The fixture the security suite stands on: two users who cannot read each other's homes."""

from __future__ import annotations


def test_attacker_cannot_enter_the_victims_home(victim, attacker):
    secret = victim.home / "secret"
    res = victim.sh(f"echo s3cret > {secret} && cat {secret}")
    assert res.returncode == 0 and res.stdout == "s3cret\n", res.stderr
    stolen = attacker.sh(f"cat {secret}")
    assert stolen.returncode != 0 and "s3cret" not in stolen.stdout
    assert "Permission denied" in stolen.stderr


def test_both_users_run_pcocc(victim, attacker):
    for user in (victim, attacker):
        res = user.pcocc("--version")
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("pcocc"), res.stdout
