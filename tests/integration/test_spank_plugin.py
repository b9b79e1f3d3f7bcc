"""The pcocc_setup SPANK plugin, built from slurm-plugin/ and loaded by the dev cluster's
slurmd (each node in its own network namespace): a job with --pcocc-setup gets the ethernet
network of the admin's networks.yaml on its node (bridge, TAP per task owned by the job's
user, dnsmasq, nftables table, state and forwards files) for its lifetime, whatever way it
ends; a job without it gets nothing."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import pytest
import yaml

from pcocc import proc
from pcocc.batch.base import JobSpec
from pcocc.batch.slurm import SlurmManager
from pcocc.errors import ConfigError
from pcocc.kv import keys
from pcocc.kv.client import KvClient
from pcocc.net import ethernet, jobsetup, netalloc
from tests.fixtures import spank

#: the admin's networks.yaml of the nodes (root's pcocc reads it, never the user's)
NETWORKS = {"eth": {"type": "ethernet", "cidr": "10.231.0.0/16", "job-prefix": 24, "mtu": 1450,
                    "reverse-nat": {"vm-port": 22, "host-ports": "21000-21099"}},
            # NAT to the outside (the host, for the node namespaces): the VM test's eth1
            "out": {"type": "ethernet", "cidr": "10.232.0.0/16", "job-prefix": 24,
                    "mtu": 1450, "allow-outbound": True}}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(spank.missing()), reason=str(spank.missing())),
]


@pytest.fixture(scope="module")
def plugin_cluster():
    with spank.plugin_cluster(NETWORKS) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _no_job_left(plugin_cluster):
    """A test that fails half-way leaves no job holding a node for the next ones."""
    yield
    _drain(plugin_cluster)


_drain, _env, _wait, _gone = spank.drain, spank.env, spank.wait, spank.gone


def _submit(cluster, *opts: str, script: str = "sleep 300") -> str:
    res = proc.run(["sbatch", "--parsable", "-N1", "-w", "n1", "-o", "/dev/null", *opts,
                    "--wrap", script], env=_env(cluster), timeout_s=30)
    return res.stdout.strip().split(";")[0]


def _links(cluster, node: str) -> dict[str, int | None]:
    """Interface name -> owner uid (TAPs; None for other kinds) in the node's namespace."""
    ns = cluster.netns.netns_name(node)
    out = proc.run(["ip", "-n", ns, "-o", "link", "show"], timeout_s=10).stdout
    names = [line.split(": ")[1].split("@")[0] for line in out.splitlines()]
    owners = proc.run(["ip", "netns", "exec", ns, "sh", "-c",
                       "for d in /sys/class/net/*; do echo ${d##*/} $(cat $d/owner 2>/dev/null)"
                       "; done"], timeout_s=10).stdout
    owner = {w[0]: int(w[1]) for w in (line.split() for line in owners.splitlines())
             if len(w) == 2 and w[1].lstrip("-").isdigit() and int(w[1]) >= 0}
    return {n: owner.get(n) for n in names}


def _footprint(cluster, node: str, job: str) -> set[str]:
    """Everything of ``job`` on ``node``: links, nftables tables, dnsmasq, files."""
    tag = f"{int(job):x}"
    found = {f"link {n}" for n in _links(cluster, node)
             if n[:2] in ("pb", "pv", "pt") and n[2:].startswith(tag)}
    tables = proc.run(["ip", "netns", "exec", cluster.netns.netns_name(node), "nft", "list",
                       "tables"], timeout_s=10).stdout
    found |= {f"nft {t}" for t in tables.splitlines() if ethernet.table_name(int(job)) in t}
    needle = f"/{node}/{job}/dnsmasq".encode()
    netns = os.stat(f"/run/netns/{cluster.netns.netns_name(node)}").st_ino
    for entry in os.listdir("/proc"):
        try:  # a dnsmasq of the job in the node's namespace
            if (entry.isdigit() and needle in Path(f"/proc/{entry}/cmdline").read_bytes()
                    and os.stat(f"/proc/{entry}/ns/net").st_ino == netns):
                found.add(f"dnsmasq {entry}")
        except OSError:
            pass
    for path in (jobsetup.job_dir(int(job), node), jobsetup.info_path(int(job), node)):
        if path.exists():
            found.add(f"file {path}")
    with KvClient(cluster.etcd.endpoints) as kv:  # what the job holds in the site etcd
        found |= {f"etcd {key}" for key in netalloc.held(kv, int(job))
                  if "/nodes/" not in key or f"/nodes/{node}/" in key}
    return found


def _bridge(job: str) -> str:
    return ethernet.bridge_name(int(job), 0)


def _launched(cluster, job: str) -> bool:
    """The batch script started on n1 (after the prolog: RUNNING in squeue comes earlier)."""
    return f"Launching batch job {job} " in _log(cluster)


def _job_processes(job: str) -> list[int]:
    """Processes whose environment says they belong to ``job``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and f"SLURM_JOB_ID={job}\0".encode() in Path(
                    f"/proc/{entry}/environ").read_bytes():
                found.append(int(entry))
        except OSError:
            pass
    return found


def _log(cluster) -> str:
    return (cluster.directory / "log" / "slurmd-n1.log").read_text()


def test_sbatch_knows_the_option(plugin_cluster):
    out = proc.run(["sbatch", "--help"], env=_env(plugin_cluster), timeout_s=10).stdout
    assert "--pcocc-setup" in out


def test_network_lives_as_long_as_the_job_and_scancel_removes_it(plugin_cluster):
    job = _submit(plugin_cluster, "--pcocc-setup", "-n", "2")
    _wait(lambda: _launched(plugin_cluster, job), f"job {job} to start")
    tag = f"{int(job):x}0"
    links = _links(plugin_cluster, "n1")
    assert _bridge(job) in links
    assert links[f"pt{tag}0"] == 0 and links[f"pt{tag}1"] == 0  # a TAP per task, the user's
    assert f"pv{tag}" not in links  # one node: no tunnel
    found = _footprint(plugin_cluster, "n1", job)
    assert {f"nft table inet {ethernet.table_name(int(job))}",
            f"file {jobsetup.info_path(int(job), 'n1')}"} <= found
    assert sum(f.startswith("dnsmasq ") for f in found) == len(NETWORKS)  # one per network
    # only where the job runs (its VNI and subnet in etcd are the whole job's)
    assert {f for f in _footprint(plugin_cluster, "n2", job) if not f.startswith("etcd ")} \
        == set()
    state = jobsetup.read_state(int(job), "n1")
    assert state is not None and {"kind": "bridge", "name": _bridge(job)} in state.resources
    # a host port per VM from the range (the lowest ones no other job of the node holds:
    # jobs of other dev clusters of this host share /run/pcocc), recorded for cleanup
    forwards = jobsetup.read_forwards(int(job), "n1")
    assert list(forwards) == ["eth"] and sorted(forwards["eth"]) == [0, 1]
    ports = [forwards["eth"][0], forwards["eth"][1]]
    assert ports[0] < ports[1] and all(21000 <= p <= 21099 for p in ports)
    assert {"kind": "ports", "ports": ports} in state.resources
    # ... and held in the site etcd by the job, with its subnet and VNI
    assert {f"etcd {keys.node_allocation('n1', 'rnat-port', p)}" for p in ports} \
        | {f"etcd {keys.net_job_network(int(job), 'eth')}"} <= found
    assert sum(f.startswith("etcd /pcocc/net/vni/") for f in found) == len(NETWORKS)
    proc.run(["scancel", job], env=_env(plugin_cluster), timeout_s=10)
    _wait(lambda: _gone(plugin_cluster, job), f"job {job} to leave the queue")
    assert _footprint(plugin_cluster, "n1", job) == set()
    # cleanup is idempotent: a second run (e.g. an epilog retried) succeeds and does nothing
    res = proc.run(["ip", "netns", "exec", plugin_cluster.netns.netns_name("n1"),
                    "env", "SLURMD_NODENAME=n1", plugin_cluster.directory.parent / "pcocc",
                    "internal", "setup", "cleanup", "--job", job, "--user", "root"],
                   check=False, timeout_s=60)
    assert res.returncode == 0, res.stderr


def test_normal_end_removes_everything(plugin_cluster):
    job = _submit(plugin_cluster, "--pcocc-setup",
                  script="ip -o link show type bridge; sleep 1")
    _wait(lambda: _gone(plugin_cluster, job), f"job {job} to end")
    log = _log(plugin_cluster)
    assert f"setup init done for job {job}" in log
    assert f"setup cleanup done for job {job}" in log
    assert _footprint(plugin_cluster, "n1", job) == set()


def test_killed_job_processes_still_cleaned_up(plugin_cluster):
    job = _submit(plugin_cluster, "--pcocc-setup")
    _wait(lambda: _launched(plugin_cluster, job), f"job {job} to start")
    assert _bridge(job) in _links(plugin_cluster, "n1")
    _wait(lambda: len(_job_processes(job)) >= 2, f"the script and sleep of job {job}")
    for pid in _job_processes(job):  # the batch script and its sleep, not slurmstepd
        os.kill(pid, 9)
    _wait(lambda: _gone(plugin_cluster, job), f"job {job} to end after kill -9")
    assert _footprint(plugin_cluster, "n1", job) == set()


def test_job_without_the_option_gets_nothing(plugin_cluster):
    before = _links(plugin_cluster, "n1")
    job = _submit(plugin_cluster)
    _wait(lambda: _launched(plugin_cluster, job), f"job {job} to start")
    assert _links(plugin_cluster, "n1") == before
    assert _footprint(plugin_cluster, "n1", job) == set()
    log = _log(plugin_cluster)
    assert f"for job {job}" not in log
    proc.run(["scancel", job], env=_env(plugin_cluster), timeout_s=10)
    _wait(lambda: _gone(plugin_cluster, job), f"job {job} to leave the queue")


def test_pcocc_submit_passes_the_option_when_the_job_needs_setup(plugin_cluster):
    spec = JobSpec(ntasks=1, node_setup=True, env=plugin_cluster.env(),
                   options=["-w", "n1", "-o", "/dev/null"])
    job = SlurmManager().submit(spec, "sleep 300")
    _wait(lambda: _launched(plugin_cluster, job), f"job {job} to start")
    assert _bridge(job) in _links(plugin_cluster, "n1")
    proc.run(["scancel", job], env=_env(plugin_cluster), timeout_s=10)
    _wait(lambda: _gone(plugin_cluster, job), f"job {job} to leave the queue")
    assert _footprint(plugin_cluster, "n1", job) == set()


def test_without_the_plugin_pcocc_refuses_before_allocating(plugin_cluster, tmp_path):
    conf = plugin_cluster.slurm_conf.read_text()
    (tmp_path / "plugstack.conf").write_text("")
    conf = "\n".join(line for line in conf.splitlines()
                     if not line.startswith("PlugStackConfig="))
    conf += f"\nPlugStackConfig={tmp_path / 'plugstack.conf'}\n"
    (tmp_path / "slurm.conf").write_text(conf)
    spec = JobSpec(ntasks=1, node_setup=True, env={"SLURM_CONF": str(tmp_path / "slurm.conf")})
    before = proc.run(["squeue", "-h", "-o", "%i"], env=_env(plugin_cluster)).stdout
    with pytest.raises(ConfigError, match="does not load it"):
        SlurmManager().submit(spec, "sleep 300")
    with pytest.raises(ConfigError, match="does not load it"):
        SlurmManager().allocate(spec, ["true"])
    assert proc.run(["squeue", "-h", "-o", "%i"], env=_env(plugin_cluster)).stdout == before


#: run as the job's user: open the TAP named by argv[1] as QEMU does (TUNSETIFF, IFF_TAP)
TUN_OPEN = ("import fcntl, os, struct, sys\n"
            "fd = os.open('/dev/net/tun', os.O_RDWR)\n"
            "try:\n"
            "    fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH', sys.argv[1].encode(), 0x1002))\n"
            "    print(sys.argv[1], 'opened')\n"
            "except OSError as err:\n"
            "    print(sys.argv[1], 'refused', err.errno)\n")


def test_taps_belong_to_the_jobs_user_and_no_other(plugin_cluster):
    """A job of nobody gets TAPs nobody opens without privilege; the TAP of a job of root
    on the same node stays closed to nobody."""
    other = _submit(plugin_cluster, "--pcocc-setup")
    _wait(lambda: _launched(plugin_cluster, other), f"job {other} to start")
    out = Path(tempfile.mkdtemp(prefix="pcocc-tap-"))
    out.chmod(0o777)
    try:
        script = (f"cd {out}; /usr/bin/python3 -c \"$TUN_OPEN\" pt{int(other):x}00 > other;"
                  f" /usr/bin/python3 -c \"$TUN_OPEN\" pt$(printf %x $SLURM_JOB_ID)00 > own")
        env = {**_env(plugin_cluster), "TUN_OPEN": TUN_OPEN}
        res = proc.run(["sbatch", "--parsable", "-N1", "-w", "n1", "-o", "/dev/null",
                        "--uid", "nobody", "--pcocc-setup", "--export", "ALL",
                        "--wrap", script], env=env, timeout_s=30)
        job = res.stdout.strip().split(";")[0]
        _wait(lambda: _gone(plugin_cluster, job), f"job {job} of nobody to end")
        assert (out / "own").read_text().split()[1] == "opened"
        assert (out / "other").read_text().split()[1:] == ["refused", "1"]  # EPERM
        assert _footprint(plugin_cluster, "n1", job) == set()
    finally:
        proc.run(["scancel", other], env=_env(plugin_cluster), timeout_s=10)
        shutil.rmtree(out, ignore_errors=True)
    _wait(lambda: _gone(plugin_cluster, other), f"job {other} to leave the queue")


class _Outside:
    """The outside of the job's nodes: a TCP listener on the host's address on the dev
    cluster's bridge (every node namespace routes to it); records (peer address, what it
    sent) of each connection."""

    def __init__(self, address: str):
        self.sock = socket.create_server((address, 0))
        self.sock.settimeout(0.5)
        self.address, self.port = self.sock.getsockname()[:2]
        self.seen: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                try:
                    self.seen.append((peer[0], conn.recv(100).decode(errors="replace").strip()))
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def _outbound_checks(cluster, outside: _Outside) -> str:
    """-E steps of the VM test for allow-outbound: vm0's eth1 (network ``out``) takes the
    default route DHCP announces and reaches the outside; the same packets sent through
    eth0 (network ``eth``, no allow-outbound) must not get out, although the outside knows
    the way back to eth's subnet (a host route via n1): only n1's rules keep them in."""
    host, port = outside.address, outside.port
    eth_net = "10.231.$((SLURM_JOB_ID % 256))"
    return (f" ip route add {eth_net}.0/24 via {cluster.node_address('n1')};"
            " pcocc ssh vm0 'ip link set eth1 up; udhcpc -i eth1 -q -n -t 5"
            " -s /etc/testvm/udhcpc.script; ip -o -4 addr show eth1; ip route' > out-dhcp.txt 2>&1;"
            f" pcocc ssh vm0 'ping -c 1 -W 10 {host}; echo via-out | nc -w 10 {host} {port}'"
            " > out-yes.txt 2>&1;"
            f" pcocc ssh vm0 'ip route add {host}/32 via '{eth_net}.1' dev eth0; ip route;"
            f" ping -c 2 -W 3 {host}; echo via-eth | nc -w 5 {host} {port};"
            f" ip route del {host}/32' > out-no.txt 2>&1;"
            f" ip route del {eth_net}.0/24;")


def _vm_checks(cluster, run_dir: Path, outside: _Outside) -> str:
    """-E of the VM test: what each node holds during the job, and the VMs' view (every
    step runs, so that a failure leaves the rest to look at)."""
    dump = "".join(
        f"ip netns exec {cluster.netns.netns_name(n)} sh -c 'ip -o link; ip -o addr;"
        f" bridge fdb; nft list ruleset; ip neigh' > {n}.txt 2>&1;"
        for n in ("n1", "n2"))
    return (dump + " echo $SLURM_JOB_ID > job;"
            " pcocc ssh vm0 'ip addr show eth0; cat /etc/resolv.conf' > addr0.txt 2>&1;"
            " pcocc ssh vm0 'ping -c 1 -W 10 vm1' > ping01.txt 2>&1;"
            " pcocc ssh vm1 'ip addr show eth0' > addr1.txt 2>&1;"
            " pcocc ssh vm1 'ping -c 1 -W 10 vm0.pcocc' > ping10.txt 2>&1;"
            + _outbound_checks(cluster, outside) +
            f" cp -r {run_dir} runcopy; true")


def test_vms_on_two_nodes_share_an_ethernet_network(plugin_cluster, tmp_path, pcocc_env,
                                                    pcocc_bin, testvm_artifacts):
    """testvm:2, one VM per node: addresses by DHCP, names by DNS, pings across the VXLAN,
    pcocc ssh through the reverse NAT (the VMs have no user network), the outside reached
    through the network with allow-outbound only; nothing left after."""
    from tests.fixtures.cluster import Env, assert_nothing_left

    env = Env(tmp_path, pcocc_env, pcocc_bin, testvm_artifacts,
              {"type": "slurm", "etcd": {"mode": "private"}},
              {"SLURM_CONF": plugin_cluster.env()["SLURM_CONF"]})
    system = pcocc_env["system"]
    (system / "networks.yaml").write_text(yaml.safe_dump({"networks": NETWORKS}))
    (system / "resources.yaml").write_text(yaml.safe_dump(
        {"resource-sets": {"tiny": {"cores": 1, "memory": "256M",
                                    "networks": ["eth", "out"]}}}))
    templates = yaml.safe_load((system / "templates.yaml").read_text())
    templates["templates"]["testvm"]["append"] += " testvm.net=dhcp"
    (system / "templates.yaml").write_text(yaml.safe_dump(templates))
    outside = _Outside(plugin_cluster.netns.host_address)
    try:
        res = env.run("alloc", "-N", "2", "--ntasks-per-node", "1", "-E",
                      _vm_checks(plugin_cluster, env.run_dir, outside), "testvm:2")
    finally:
        outside.close()
    assert res.returncode == 0, res.stderr[-3000:]
    tmp, job = env.tmp, (env.tmp / "job").read_text().strip()
    tag = f"{int(job):x}0"
    for node in ("n1", "n2"):  # every node of the job had the bridge, tunnel and TAPs
        seen = (tmp / f"{node}.txt").read_text()
        for name in (f"pb{tag}", f"pv{tag}", f"pt{tag}0", f"pt{tag}1"):
            assert f" {name}:" in seen, (node, name, seen)
        assert f"table inet {ethernet.table_name(int(job))}" in seen
    net = ethernet.from_config("eth", NETWORKS["eth"], 0).for_job(int(job))
    assert f"inet {net.address(0)}/24" in (tmp / "addr0.txt").read_text()
    assert f"inet {net.address(1)}/24" in (tmp / "addr1.txt").read_text()
    assert "1 packets received" in (tmp / "ping01.txt").read_text()
    assert "1 packets received" in (tmp / "ping10.txt").read_text()
    assert net.address(1) in (tmp / "ping01.txt").read_text()  # vm1 resolved by dnsmasq
    # allow-outbound: a default route by DHCP, masquerading to the outside on n1
    out = ethernet.from_config("out", NETWORKS["out"], 1).for_job(int(job))
    dhcp = (tmp / "out-dhcp.txt").read_text()
    assert f"inet {out.address(0)}/24" in dhcp and f"default via {out.gateway}" in dhcp, dhcp
    assert "1 packets received" in (tmp / "out-yes.txt").read_text()
    n1_rules = (tmp / "n1.txt").read_text()
    assert f"ip saddr {out.cidr} ip daddr != {out.cidr} masquerade" in n1_rules
    assert f"ip saddr {net.cidr}" not in n1_rules  # eth: no masquerade, no forward out
    # the outside saw vm0 once, through out, as n1 (masqueraded); never through eth
    assert outside.seen == [(plugin_cluster.node_address("n1"), "via-out")], outside.seen
    assert " 0 packets received" in (tmp / "out-no.txt").read_text()
    env.wait_job_gone(job)
    for node in ("n1", "n2"):
        assert _footprint(plugin_cluster, node, job) == set()
    assert_nothing_left(env)
