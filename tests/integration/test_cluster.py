"""Virtual clusters of the real test VM under TCG, in local mode and on the Slurm dev cluster.

Each scenario checks what a user sees (exit status, messages, ssh answers) and that nothing
is left afterwards: no process, no etcd key, no file in the run directory.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fixtures.cluster import (
    PRIVATE_CHECKS,
    WAIT_HOSTS,
    Env,
    _endpoints,
    assert_nothing_left,
    pids_matching,
    use_private_network,
)

pytestmark = pytest.mark.slow

# -- scenarios ---------------------------------------------------------------------------
CHECKS = (
    "set -e; pcocc ssh vm0 hostname > vm0.name; pcocc ssh vm1 hostname > vm1.name; "
    f"pcocc ssh vm0 '{WAIT_HOSTS} grep -w vm1 /etc/hosts' > vm0.hosts; "
    f"pcocc ssh vm1 '{WAIT_HOSTS.replace('vm1', 'vm0')} grep -w vm0 /etc/hosts' > vm1.hosts; "
    'pcocc ps --json > ps.json; echo "$PCOCC_JOB_ID" > job.id'
)


def _check_outputs(env: Env) -> None:
    tmp = env.tmp
    assert (tmp / "vm0.name").read_text().strip() == "vm0"
    assert (tmp / "vm1.name").read_text().strip() == "vm1"
    assert (tmp / "vm0.hosts").read_text().split()[1] == "vm1"
    assert (tmp / "vm1.hosts").read_text().split()[1] == "vm0"
    job_id = (tmp / "job.id").read_text().strip()
    ps = json.loads((tmp / "ps.json").read_text())
    assert [(c["id"], c["state"], c["vms"], c["running"]) for c in ps] == [
        (job_id, "running", 2, 2)
    ]


def test_alloc_runs_command_on_a_booted_cluster(cluster_env):
    env = cluster_env
    res = env.run("alloc", "--user-data", str(env.user_data), "-E", CHECKS, "testvm:2")
    assert res.returncode == 0, res.stderr
    _check_outputs(env)
    assert env.ps() == []
    assert_nothing_left(env, _endpoints(env))


def test_alloc_returns_the_command_status(local_env):
    res = local_env.run("alloc", "-E", "pcocc ssh vm0 'exit 7'", "testvm:1")
    assert res.returncode == 7, res.stderr
    assert_nothing_left(local_env)


def test_batch_runs_in_background(cluster_env):
    env = cluster_env
    res = env.run("batch", "--user-data", str(env.user_data), "-E", CHECKS, "testvm:2")
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip()
    assert job_id
    from pcocc.batch.base import get_manager
    from pcocc.config import BatchConfig

    old = dict(os.environ)
    os.environ.update(env.env)
    try:
        batch = Path(env.env["PCOCC_SYSTEM_CONF_DIR"]) / "batch.yaml"
        manager = get_manager(BatchConfig.from_data(yaml.safe_load(batch.read_text())))
        state = manager.wait(job_id, timeout_s=600)
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert state == "COMPLETED"
    _check_outputs(env)
    assert (env.tmp / "job.id").read_text().strip() == job_id
    assert_nothing_left(env, _endpoints(env))


def test_bad_definition_fails_before_allocation(local_env):
    res = local_env.run("alloc", "-E", "true", "nosuch:2")
    assert res.returncode == 2
    assert "unknown template 'nosuch'" in res.stderr and "Traceback" not in res.stderr
    res = local_env.run("alloc", "--image", "nosuch=img", "-E", "true", "testvm:1")
    assert (
        res.returncode == 2 and "template 'nosuch' is not in the cluster definition" in res.stderr
    )
    assert not (local_env.tmp / "home" / ".pcocc" / "local-jobs").exists() or not any(
        (local_env.tmp / "home" / ".pcocc" / "local-jobs").iterdir()
    )


def assert_private(run_dir: Path) -> None:
    """Run dirs are 0700; nothing in them is open to group or others."""
    found = 0
    for path in [run_dir, *run_dir.rglob("*")]:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        found += 1
        if stat.S_ISDIR(mode):
            assert stat.S_IMODE(mode) == 0o700, path
        elif not stat.S_ISLNK(mode):
            assert stat.S_IMODE(mode) & 0o077 == 0, f"{path}: {oct(stat.S_IMODE(mode))}"
    assert found > 3


def _start_and_wait_running(env: Env, n: int = 2) -> subprocess.Popen:
    proc = env.start("alloc", "-E", "sleep 600", f"testvm:{n}")
    env.wait_ps(lambda cs: len(cs) == 1 and cs[0]["running"] == n, "the VMs to run", proc=proc)
    assert_private(env.run_dir)
    return proc


def test_killed_qemu_ends_the_cluster_with_a_message(cluster_env):
    env = cluster_env
    proc = _start_and_wait_running(env)
    [cluster] = env.ps()
    qemus = pids_matching(env, "qemu-system")
    assert len(qemus) == 2
    os.kill(qemus[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "QEMU was killed by signal 9 (KILL)" in err
    # the console log outlives the cluster: its path is named, and 'console --log' reads it
    found = re.search(r"console log kept in (\S+) \(on \S+; or 'pcocc console --log -j "
                      rf"{cluster['id']} (vm\d)'\)", err)
    assert found, err
    kept = Path(found.group(1))
    assert "testvm: init started" in kept.read_text(errors="replace")
    assert kept.stat().st_mode & 0o077 == 0
    res = env.run("console", "--log", "-j", cluster["id"], found.group(2), timeout_s=60)
    assert res.returncode == 0, res.stderr
    # the same log (console --log drops the terminal's control sequences)
    assert res.stdout.splitlines()[:3] == kept.read_text(errors="replace").splitlines()[:3]
    assert_nothing_left(env, _endpoints(env))


def test_killed_node_process_ends_the_cluster(cluster_env):
    env = cluster_env
    proc = _start_and_wait_running(env)
    nodes = pids_matching(env, "internal run")
    assert nodes
    os.kill(nodes[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    assert "pcocc: error:" in err and "Traceback" not in err
    assert_nothing_left(env, _endpoints(env))


def test_ctrl_c_tears_down(local_env):
    proc = _start_and_wait_running(local_env, n=1)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    # the launcher or the node processes see the Ctrl-C first: both say the cluster stopped
    assert re.search(r"cluster \d+ stopped(: the batch system sent| by) SIGINT|interrupted",
                     err), err
    assert "disappeared" not in err and "Traceback" not in err
    assert_nothing_left(local_env)


def test_scancel_mid_boot_cleans_up(slurm_test_env):
    env = slurm_test_env
    res = env.run("batch", "-E", "sleep 600", "testvm:2")
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip()
    env.wait_ps(lambda cs: any(c["id"] == job_id for c in cs), "the cluster to be defined")
    subprocess.run(["scancel", job_id], env=env.env, check=True)
    env.wait_job_gone(job_id)
    assert_nothing_left(env, _endpoints(env))
    text = (env.tmp / f"slurm-{job_id}.out").read_text()
    # scancel signals the launcher and the node processes at once: whichever the launcher
    # notices first is what it reports; both say the cluster was stopped, not lost.
    assert re.search(
        rf"pcocc: error: cluster {job_id} stopped(: the batch system sent| by) SIGTERM", text
    ), text
    assert "Traceback" not in text and "disappeared" not in text


ACCESS = (
    "set -e; pcocc console --log vm0 > console.txt; "
    "pcocc monitor-cmd vm0 info status > hmp.txt; "
    "pcocc monitor-cmd vm0 query-status > qmp.json; "
    "(pcocc nc vm0 22 < /dev/null | head -c 4 > banner.txt) || true; "
    "pcocc ssh vm0 'echo $((6 * 7))' > ssh.txt; "
    "pcocc reset vm0; sleep 1; "
    'pcocc monitor-cmd vm0 \'{"execute": "query-status"}\' > after-reset.json; '
    "if pcocc ssh vm9 true 2> vm9.err; then exit 9; fi"
)


def test_access_commands(local_env):
    env = local_env
    res = env.run("alloc", "-E", ACCESS, "testvm:1")
    assert res.returncode == 0, res.stderr
    tmp = env.tmp
    assert "ready" in (tmp / "console.txt").read_text()
    assert "VM status: running" in (tmp / "hmp.txt").read_text()
    assert json.loads((tmp / "qmp.json").read_text())["status"] == "running"
    assert (tmp / "banner.txt").read_text() == "SSH-"
    assert (tmp / "ssh.txt").read_text().strip() == "42"
    assert json.loads((tmp / "after-reset.json").read_text())["running"] is True
    assert "vm9 does not exist" in (tmp / "vm9.err").read_text()
    assert_nothing_left(env)


def test_interactive_shell_without_command(local_env):
    env = local_env
    env.env["SHELL"] = "/bin/sh"
    res = env.run(
        "alloc",
        "testvm:1",
        input='pcocc ssh vm0 hostname > shell.out\necho "$PCOCC_JOB_ID" > id\nexit 3\n',
    )
    assert res.returncode == 3, res.stderr
    assert (env.tmp / "shell.out").read_text().strip() == "vm0"
    assert (env.tmp / "id").read_text().strip()
    assert_nothing_left(env)


def test_cluster_on_an_etcd_with_auth_logs_in_from_batch_yaml(
    tmp_path, pcocc_env, pcocc_bin, testvm_artifacts, slurm_cluster
):
    """Launcher, srun'd node processes and user commands all log in as the user that
    batch.yaml names, with its private password file: no login in the environment or argv,
    and the user's role reaches only its own prefix."""
    from pcocc.kv.admin import EtcdAuthAdmin
    from pcocc.kv.client import KvClient
    from pcocc.kv.server import EtcdServer

    root_file, alice_file = tmp_path / "root.pw", tmp_path / "alice.pw"
    with EtcdServer(tmp_path / "etcd") as server:
        with EtcdAuthAdmin.connect(server.endpoint, root_file) as admin:
            admin.add_user("alice", alice_file)
            admin.enable_auth()
        env = Env(
            tmp_path,
            pcocc_env,
            pcocc_bin,
            testvm_artifacts,
            {
                "type": "slurm",
                "etcd": {
                    "endpoints": [server.endpoint.split("://")[-1]],
                    "user": "alice",
                    "password-file": str(alice_file),
                },
            },
            # pcocc's etcd prefix is named after the login name of the process
            {**slurm_cluster.env(), "USER": "alice", "LOGNAME": "alice"},
        )
        checks = 'set -e; pcocc ps --json > ps.json; echo "$PCOCC_JOB_ID" > job.id'
        res = env.run("alloc", "-E", checks, "testvm:2")
        assert res.returncode == 0, res.stderr
        job_id = (tmp_path / "job.id").read_text().strip()
        ps = json.loads((tmp_path / "ps.json").read_text())
        assert [(c["id"], c["state"], c["running"]) for c in ps] == [(job_id, "running", 2)]
        password = alice_file.read_text().strip()
        assert password not in res.stdout + res.stderr
        with KvClient(server.endpoint, user="root", password=root_file.read_text().strip()) as kv:
            assert kv.get_prefix("/pcocc/") == {}  # the cluster's keys went with it
        assert_nothing_left(env)


# -- private network -----------------------------------------------------------------------
def test_private_network_connects_the_vms(cluster_env):
    env = cluster_env
    use_private_network(env, cidr="10.77.0.0/24", mtu=1400)
    res = env.run("alloc", "--user-data", str(env.user_data), "-E", PRIVATE_CHECKS, "testvm:2")
    assert res.returncode == 0, res.stderr
    assert "1 packets received" in (env.tmp / "ping01.txt").read_text()
    assert "10.77.0.2" in (env.tmp / "ping01.txt").read_text()
    assert "1 packets received" in (env.tmp / "ping10.txt").read_text()
    addr = (env.tmp / "addr1.txt").read_text()
    assert "inet 10.77.0.2/24" in addr and "mtu 1400" in addr
    assert_nothing_left(env, _endpoints(env))


def _host_address() -> str | None:
    """An IPv4 address of this host other than loopback, if it has one."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], check=False, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        words = line.split()
        if len(words) > 3 and words[1] != "lo":
            return words[3].split("/")[0]
    return None


DUMP_NET_KEYS = (
    "import json, os, sys; from pcocc.kv.client import KvClient; "
    "kv = KvClient.from_env(); "  # the job's login ($PCOCC_ETCD_JOB_LOGIN) with a private etcd
    "json.dump({k: v.decode() for k, v in "
    "kv.get_prefix('/pcocc/users/' + __import__('getpass').getuser() + '/').items() "
    "if '/nets/' in k}, sys.stdout)"
)


def test_private_network_on_the_node_address(local_env):
    """Switch and NICs bind on PCOCC_NODE_ADDRESS (here a real interface, not loopback)."""
    import shlex
    import sys

    address = _host_address()
    if address is None:
        pytest.skip("this host has no IPv4 address besides loopback")
    env = local_env
    env.env["PCOCC_NODE_ADDRESS"] = address
    use_private_network(env)
    command = (
        f"set -e; {shlex.quote(sys.executable)} -c {shlex.quote(DUMP_NET_KEYS)} > keys.json; "
        f"pcocc ssh vm1 '{WAIT_HOSTS.replace('vm1', 'vm0')} ping -c 1 -W 5 vm0' > ping10.txt"
    )
    res = env.run("alloc", "--user-data", str(env.user_data), "-E", command, "testvm:2")
    assert res.returncode == 0, res.stderr
    assert "10.252.0.1" in (env.tmp / "ping10.txt").read_text()  # the default cidr
    found = json.loads((env.tmp / "keys.json").read_text())
    switch = [v for k, v in found.items() if k.endswith("/nets/cluster/switch")]
    ports = [json.loads(v) for k, v in found.items() if "/nets/cluster/ports/" in k]
    assert len(switch) == 1 and switch[0].startswith(f"{address}:")
    assert sorted(p["host"] for p in ports) == [address, address]
    assert_nothing_left(env)


def test_private_network_too_small_for_the_cluster(local_env):
    system = Path(local_env.env["PCOCC_SYSTEM_CONF_DIR"])
    (system / "networks.yaml").write_text(
        yaml.safe_dump({"networks": {"cluster": {"type": "private", "cidr": "10.77.0.0/30"}}})
    )
    (system / "resources.yaml").write_text(
        yaml.safe_dump({"resource-sets": {"tiny": {"cores": 1, "networks": ["cluster"]}}})
    )
    res = local_env.run("alloc", "-E", "true", "testvm:3")
    assert res.returncode == 2, res.stderr
    assert "network 'cluster' (10.77.0.0/30) has room for 2 VMs, not 3" in res.stderr
    assert "Traceback" not in res.stderr
    (system / "networks.yaml").write_text(
        yaml.safe_dump({"networks": {"cluster": {"type": "private", "cidr": "10.77.0.1/24"}}})
    )
    res = local_env.run("alloc", "-E", "true", "testvm:1")
    assert res.returncode == 2, res.stderr
    assert "network 'cluster': cidr '10.77.0.1/24' is not an IPv4 network" in res.stderr
