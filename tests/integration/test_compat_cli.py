"""pcocc 0.7's documented command lines on the Slurm dev cluster: Slurm options before and
after the cluster definition, -J NAME then ``ssh -J NAME``, ``ps -a``, ``ssh -L`` with the
forward used, ``scp -r``, ``batch -E FILE``. Two clusters boot in all."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from tests.fixtures.cluster import Env, _endpoints, assert_nothing_left

pytestmark = pytest.mark.slow

#: reads the first bytes that come from 127.0.0.1:PORT (the guest's ssh banner)
BANNER = (
    "import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), 5); "
    "s.settimeout(10); print(s.recv(4).decode())"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alloc_checks(port: int) -> str:
    """What the -E command of the alloc test does on the first node, in the job."""
    return f"""set -e
pcocc ps --json > ps.json
squeue --noheader -j "$PCOCC_JOB_ID" -o '%j|%k|%D' > squeue.txt
# select by name, outside the job's environment
(unset PCOCC_JOB_ID SLURM_JOB_ID SLURM_JOBID; pcocc ssh -J compat vm1 hostname > byname.txt)
if (unset PCOCC_JOB_ID SLURM_JOB_ID; pcocc ssh -J nosuch vm0 true 2> noname.err); then exit 3; fi
# ssh's own options: a local forward to the guest's ssh server, used while it lasts
pcocc ssh -n -o ExitOnForwardFailure=yes -L 127.0.0.1:{port}:127.0.0.1:22 vm0 'sleep 10' &
for i in $(seq 40); do
    {sys.executable} -c "{BANNER}" {port} > banner.txt 2> banner.err && break
    sleep 0.5
done
wait
pcocc nc -z -v -w 10 vm1 22 2> nc.err
# an option value full of shell syntax reaches ssh as one word: no shell runs it
pcocc ssh -o 'SendEnv=NOPE;touch "$PWD/pwned";`touch pwned2`' vm0 true
# scp -r (OpenSSH's scp speaks sftp: give the guest's dropbear its sftp server)
pcocc ssh vm0 'mkdir -p /usr/lib && cat > /usr/lib/sftp-server && chmod 755 /usr/lib/sftp-server' \\
    < /usr/lib/openssh/sftp-server
pcocc scp -q -r tree vm0:/tmp/
pcocc ssh vm0 'cat /tmp/tree/sub/file' > scp.txt
"""


def test_alloc_with_slurm_options_around_the_definition(slurm_test_env):
    env: Env = slurm_test_env
    port = _free_port()
    (env.tmp / "tree" / "sub").mkdir(parents=True)
    (env.tmp / "tree" / "sub" / "file").write_text("copied by scp -r\n")
    res = env.run("alloc", "-p", "debug", "-t", "30", "-J", "compat", "--user-data",
                  str(env.user_data), "-E", _alloc_checks(port), "testvm:2", "-N", "2")
    assert res.returncode == 0, res.stderr
    tmp = env.tmp
    ps = json.loads((tmp / "ps.json").read_text())
    assert [(c["name"], c["vms"]) for c in ps] == [("compat", 2)]
    # -J named the Slurm job, -N 2 (after the definition) reached salloc
    assert (tmp / "squeue.txt").read_text().strip() == "compat|pcocc-cluster|2"
    assert (tmp / "byname.txt").read_text().strip() == "vm1"
    assert "no running cluster named 'nosuch'" in (tmp / "noname.err").read_text()
    assert (tmp / "banner.txt").read_text().strip() == "SSH-", (tmp / "banner.err").read_text()
    assert (tmp / "scp.txt").read_text() == "copied by scp -r\n"
    assert "connection to vm1 port 22 succeeded" in (tmp / "nc.err").read_text()
    assert not (tmp / "pwned").exists() and not (tmp / "pwned2").exists()
    assert_nothing_left(env, _endpoints(env))


def test_batch_host_script_file_and_ps_all(slurm_test_env):
    env: Env = slurm_test_env
    # a cluster that waits for its start time: ps -a shows it from squeue, no boot
    res = env.run("batch", "-J", "later", "testvm:1", "--begin=now+3600", "-t", "5")
    assert res.returncode == 0, res.stderr
    waiting = res.stdout.strip()
    script = env.tmp / "host-script.sh"
    script.write_text(
        "#!/bin/sh\n# pcocc 0.7: batch -E FILE runs FILE on the first node\n"
        "pcocc ssh -J compatb vm0 hostname > batch.out\n"
        "echo \"$SLURM_JOB_NAME\" > name.out\n"
    )
    res = env.run("batch", "-p", "debug", "-J", "compatb", "-E", str(script), "testvm:1",
                  "-t", "20")
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip()
    try:
        ps_all = env.run("ps", "-a", timeout_s=60)
        assert ps_all.returncode == 0, ps_all.stderr
        rows = [line.split() for line in ps_all.stdout.splitlines()]
        assert rows[0] == ["ID", "NAME", "USER", "STATE", "VMS", "NODES", "AGE"]
        assert [waiting, "later"] in [r[:2] for r in rows]
        assert next(r for r in rows if r[0] == waiting)[3] == "pending"
        only = env.run("ps", "-a", "-J", "later", "--json", timeout_s=60)
        assert [c["id"] for c in json.loads(only.stdout)] == [waiting]
    finally:
        subprocess.run(["scancel", waiting], env=env.env, check=False)
    env.wait_job_gone(job_id, 600)
    assert (env.tmp / "batch.out").read_text().strip() == "vm0", (
        env.tmp / f"slurm-{job_id}.out").read_text()
    assert (env.tmp / "name.out").read_text().strip() == "compatb"
    env.wait_job_gone(waiting, 60)
    assert_nothing_left(env, _endpoints(env))


def test_options_neither_pcocc_nor_slurm_knows_get_slurms_message(slurm_test_env):
    env: Env = slurm_test_env
    res = env.run("alloc", "--no-such-option", "-E", "true", "testvm:1", timeout_s=60)
    assert res.returncode != 0
    assert "salloc: unrecognized option '--no-such-option'" in res.stderr
    res = env.run("batch", "testvm:1", "--no-such-option", timeout_s=60)
    assert res.returncode == 1
    assert "sbatch: unrecognized option '--no-such-option'" in res.stderr
    assert "Traceback" not in res.stderr
