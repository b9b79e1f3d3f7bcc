"""``--user`` (pcocc 0.7's way to act on another user's cluster), attacked by another user.

The victim runs a real local-mode cluster of the test VM, named with ``-J``. While it runs,
the attacker names it every way pcocc 0.7 allowed (``--user VICTIM`` with ``-j JOBID`` or
``-J NAME``) on ssh, scp, nc, console, reset and monitor-cmd, and lists clusters with
``ps -a`` and ``ps -u VICTIM``. Each attempt must be refused with the one clear message, with
nothing of the victim's cluster read (no console text, no name, no VM answer) and nothing
done in the VM; the victim still reaches it by name afterwards.
"""

from __future__ import annotations

import os

import pytest

from tests.security.clusterlib import victim_cluster

pytestmark = pytest.mark.slow

NAME = "victims-secret-job"

#: The victim's -E script: select the cluster by name, wait for the attack, check the VM.
VICTIM_SCRIPT = f"""
set -e
pcocc ssh -J {NAME} root@vm0 'echo console-mark > /dev/console; echo ok' > byname.out
echo "$PCOCC_JOB_ID" > job.id
touch attack-now
for i in $(seq 600); do [ -e attack-done ] && break; sleep 0.5; done
pcocc ssh -J {NAME} root@vm0 'test ! -e /tmp/pwned && echo clean' > after.out
"""

REFUSED = "pcocc cannot reach the clusters of another user"


def test_user_option_does_not_reach_another_users_cluster(victim, attacker,
                                                         victim_cluster_conf):
    with victim_cluster(victim, victim_cluster_conf, "-J", NAME, "-E", VICTIM_SCRIPT,
                        "testvm:1", files=("byname.out", "after.out", "job.id")) as run:
        assert (victim.home / "byname.out").read_text().strip() == "ok"
        job_id = (victim.home / "job.id").read_text().strip()
        owner = victim.name
        attempts = {
            "ssh": ["ssh", "root@vm0", "touch /tmp/pwned"],
            "scp": ["scp", "/etc/hostname", "root@vm0:/tmp/pwned"],
            "nc": ["nc", "vm0", "22"],
            "console": ["console", "--log", "vm0"],
            "reset": ["reset", "vm0"],
            "monitor-cmd": ["monitor-cmd", "vm0", "info", "status"],
            "dump": ["dump", "vm0", "/tmp/pcocc-stolen.elf"],
            "display": ["display", "vm0"],
        }
        for what, (command, *args) in attempts.items():
            for select in (["-j", job_id], ["-J", NAME]):
                res = attacker.pcocc(command, "--user", owner, *select, *args, input="")
                assert res.returncode == 1, (what, res)
                assert REFUSED in res.stderr, (what, res.stderr)
                assert "console-mark" not in res.stdout + res.stderr
                assert "SSH-" not in res.stdout and "VM status" not in res.stdout
        # without --user, the attacker's pcocc sees only the attacker's own clusters
        res = attacker.pcocc("ssh", "-j", job_id, "root@vm0", "touch /tmp/pwned")
        assert res.returncode == 1 and "no running cluster" in res.stderr, res
        # listing: without a batch system another user's cluster is out of sight
        for args in (["ps", "-a"], ["ps", "-u", owner], ["ps", "-a", "--json"]):
            res = attacker.pcocc(*args)
            assert res.returncode == 0, res.stderr
            assert NAME not in res.stdout and job_id not in res.stdout.split(), res.stdout
        assert "out of sight" in attacker.pcocc("ps", "-u", owner).stderr
    assert run.returncode == 0, run.stderr
    assert not os.path.lexists("/tmp/pcocc-stolen.elf")
    # nothing ran in the VM, and the owner still reaches it by name
    assert (victim.home / "after.out").read_text().strip() == "clean", run.stderr
