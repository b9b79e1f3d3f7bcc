"""Networks of virtual clusters with the real test VM: user networks from networks.yaml, and
forwards reachable from another host (Slurm nodes in network namespaces of their own).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from tests.fixtures.cluster import (
    PRIVATE_CHECKS,
    Env,
    assert_nothing_left,
    use_private_network,
)

import devcluster

pytestmark = pytest.mark.slow

#: -E snippet: every key of the user's clusters, as JSON, into keys.json
DUMP_KEYS = (
    f"{sys.executable} -c 'import json, os; from pcocc.kv.client import KvClient; "
    "kv = KvClient.from_env(); "  # the job's login ($PCOCC_ETCD_JOB_LOGIN) with a private etcd
    'print(json.dumps({k: v.decode() for k, v in kv.get_prefix("/pcocc/users/"'
    ' + __import__("getpass").getuser() + "/").items()}))'
    "' > keys.json"
)


def _rnat(keys: dict[str, str]) -> dict[tuple[int, int], str]:
    found = {}
    for key, value in keys.items():
        parts = key.split("/")
        if len(parts) >= 3 and parts[-3] == "rnat":
            found[(int(parts[-2]), int(parts[-1]))] = value
    return found


def _states(keys: dict[str, str]) -> dict[int, dict]:
    return {
        int(k.split("/")[-2]): json.loads(v) for k, v in keys.items() if k.endswith("/state")
    }


# -- user networks, and a node address other than 127.0.0.1 ---------------------------------
@pytest.fixture
def user_net_env(tmp_path, pcocc_env, pcocc_bin, testvm_artifacts):
    env = Env(
        tmp_path,
        pcocc_env,
        pcocc_bin,
        testvm_artifacts,
        {"type": "local", "etcd": {"mode": "private"}},
        {"PCOCC_NODE_ADDRESS": "127.0.0.2"},
    )
    system = pcocc_env["system"]
    templates = yaml.safe_load((system / "templates.yaml").read_text())
    # the test VM asks DHCP for its address (slirp's is in the network's cidr)
    templates["templates"]["testvm"]["append"] += " testvm.net=dhcp"
    (system / "templates.yaml").write_text(yaml.safe_dump(templates))
    (system / "networks.yaml").write_text(
        yaml.safe_dump(
            {
                "networks": {
                    "nat": {
                        "type": "user",
                        "cidr": "10.0.3.0/24",
                        "ssh-forward": True,
                        "forwards": [7777],
                        "public-forwards": [7778],
                    }
                }
            }
        )
    )
    (system / "resources.yaml").write_text(
        yaml.safe_dump(
            {"resource-sets": {"tiny": {"cores": 1, "memory": "256M", "networks": ["nat"]}}}
        )
    )
    return env


NC_CHECKS = (
    "set -e; pcocc ssh vm0 'ip -4 -o addr show dev eth0' > addr.txt; "
    "pcocc ssh vm0 'nc -l -p 7777 -e echo hello-from-7777 </dev/null >/dev/null 2>&1 &'; "
    "pcocc ssh vm0 'nc -l -p 7778 -e echo hello-from-7778 </dev/null >/dev/null 2>&1 &'; "
    "for i in $(seq 20); do pcocc nc vm0 7777 </dev/null > nc.out || true; "
    "grep -q hello nc.out && break; sleep 0.5; done; "
    "for i in $(seq 20); do pcocc nc vm0 7778 </dev/null > nc-public.out || true; "
    "grep -q hello nc-public.out && break; sleep 0.5; done; "
    "ps -eo args | grep '[q]emu-system' > qemu.args; " + DUMP_KEYS
)


def test_user_network_forwards_public_ports_on_the_node_address(user_net_env):
    env = user_net_env
    res = env.run("alloc", "-E", NC_CHECKS, "testvm:1")
    assert res.returncode == 0, res.stderr
    tmp = env.tmp
    # the guest got its address from the network's subnet (slirp DHCP)
    assert " 10.0.3.15/24 " in (tmp / "addr.txt").read_text()
    # the private forward through the VM's ssh server, the public one directly
    assert (tmp / "nc.out").read_text().strip() == "hello-from-7777"
    assert (tmp / "nc-public.out").read_text().strip() == "hello-from-7778"
    qemu = (tmp / "qemu.args").read_text()
    assert "user,id=net0,net=10.0.3.0/24,hostfwd=tcp:127.0.0.2:" in qemu
    assert "-:22,hostfwd=tcp:127.0.0.2:" in qemu and "-:7778" in qemu
    assert "-:7777" not in qemu  # nothing listens for a private forward
    keys = json.loads((tmp / "keys.json").read_text())
    rnat = _rnat(keys)
    assert sorted(rnat) == [(0, 22), (0, 7778)]
    assert all(v.startswith("127.0.0.2:") for v in rnat.values()), rnat
    assert _states(keys)[0]["address"] == "127.0.0.2"
    assert_nothing_left(env)


def test_ethernet_network_is_refused_before_allocation(user_net_env):
    env = user_net_env
    system = Path(env.env["PCOCC_SYSTEM_CONF_DIR"])
    nets = yaml.safe_load((system / "networks.yaml").read_text())
    nets["networks"]["cluster"] = {"type": "ethernet", "cidr": "10.252.0.0/16"}
    (system / "networks.yaml").write_text(yaml.safe_dump(nets))
    (system / "resources.yaml").write_text(
        yaml.safe_dump({"resource-sets": {"tiny": {"networks": ["nat", "cluster"]}}})
    )
    res = env.run("alloc", "-E", "true", "testvm:1", timeout_s=60)
    assert res.returncode == 2
    # the local batch manager has no Slurm plugin to set the network up
    assert "need root setup on the nodes by the pcocc Slurm plugin" in res.stderr
    assert "type local has none" in res.stderr and "Traceback" not in res.stderr
    assert not env.run_dir.exists() or not any(env.run_dir.iterdir())


# -- nodes in network namespaces -------------------------------------------------------------
def _netns_usable() -> str | None:
    """None when this process may create network namespaces, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    name = f"{devcluster.NETNS_PREFIX}probe{os.getpid()}"
    res = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if res.returncode != 0:
        return f"'ip netns add' fails here: {res.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


@pytest.fixture(scope="module")
def netns_cluster():
    """Slurm with 2 nodes of 1 CPU, each slurmd in a network namespace of its own."""
    missing = devcluster.missing_binaries(with_etcd=True)
    if missing:
        pytest.skip(f"Slurm/munge/etcd programs not installed: {', '.join(missing)}")
    why = _netns_usable()
    if why:
        pytest.skip(why)
    directory = Path(tempfile.mkdtemp(prefix="pcocc-netns-"))
    try:
        with devcluster.DevCluster(
            directory, nodes=2, cpus_per_node=1, with_etcd=False, node_netns=True
        ) as cluster:
            yield cluster
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert devcluster.netns_tag(directory) not in left


@pytest.fixture
def netns_env(tmp_path, pcocc_env, pcocc_bin, testvm_artifacts, netns_cluster):
    # a private etcd, started by the launcher on this host: the nodes must reach it too
    return Env(
        tmp_path,
        pcocc_env,
        pcocc_bin,
        testvm_artifacts,
        {"type": "slurm", "etcd": {"mode": "private"}},
        netns_cluster.env(),
    )


NETNS_CHECKS = (
    "set -e; pcocc ssh vm0 hostname > vm0.name; pcocc ssh vm1 hostname > vm1.name; "
    'echo "$PCOCC_ETCD_ENDPOINTS" > endpoints; ' + DUMP_KEYS
)


def test_ssh_reaches_vms_on_nodes_in_other_network_namespaces(netns_env, netns_cluster):
    env = netns_env
    res = env.run("alloc", "-E", NETNS_CHECKS, "testvm:2")
    assert res.returncode == 0, res.stderr
    tmp = env.tmp
    assert (tmp / "vm0.name").read_text().strip() == "vm0"
    assert (tmp / "vm1.name").read_text().strip() == "vm1"
    # the private etcd listened where the nodes reach this host
    controller = netns_cluster.controller_address
    assert (tmp / "endpoints").read_text().strip().startswith(f"http://{controller}:")
    keys = json.loads((tmp / "keys.json").read_text())
    node_addresses = {netns_cluster.node_address(n) for n in netns_cluster.nodes}
    rnat = _rnat(keys)
    assert sorted(rnat) == [(0, 22), (1, 22)]
    published = {rnat[(r, 22)].rpartition(":")[0] for r in (0, 1)}
    assert published == node_addresses  # one VM per node, each on its node's address
    assert {s["address"] for s in _states(keys).values()} == node_addresses
    assert_nothing_left(env)


#: the pings of PRIVATE_CHECKS, the Slurm node of the launcher and the user's etcd keys
NETNS_PRIVATE_CHECKS = (
    PRIVATE_CHECKS + '; echo "$SLURMD_NODENAME" > launcher.node; ' + DUMP_KEYS
)


def _wait_batch(env: Env, job_id: str) -> str:
    from pcocc.batch.base import get_manager
    from pcocc.config import BatchConfig

    old = dict(os.environ)
    os.environ.update(env.env)
    try:
        batch = Path(env.env["PCOCC_SYSTEM_CONF_DIR"]) / "batch.yaml"
        config = BatchConfig.from_data(yaml.safe_load(batch.read_text()))
        return get_manager(config).wait(job_id, timeout_s=600)
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_batch_private_network_spans_network_namespaces(netns_env, netns_cluster):
    """The launcher runs in the namespace of the job's first node, with the private etcd and
    the switch; the VMs' NICs on both nodes reach the switch over the cluster's bridge."""
    env = netns_env
    use_private_network(env)
    res = env.run(
        "batch", "--user-data", str(env.user_data), "-E", NETNS_PRIVATE_CHECKS, "testvm:2"
    )
    assert res.returncode == 0, res.stderr
    job_id = res.stdout.strip()
    assert job_id
    state = _wait_batch(env, job_id)
    tmp = env.tmp
    job_output = "".join(p.read_text() for p in tmp.glob("slurm-*.out"))
    assert state == "COMPLETED", job_output[-2000:]
    # the switch runs with the launcher, in the namespace of the job's first node
    launcher = (tmp / "launcher.node").read_text().strip()
    assert launcher in netns_cluster.nodes
    _check_private_network(tmp, netns_cluster, netns_cluster.node_address(launcher))
    assert_nothing_left(env)


def test_private_network_switch_on_the_host_serves_vms_in_namespaces(netns_env, netns_cluster):
    """``pcocc alloc``: the launcher and the switch on this host (the bridge's address), one
    VM in each node's namespace."""
    env = netns_env
    use_private_network(env)
    res = env.run(
        "alloc", "--user-data", str(env.user_data), "-E", NETNS_PRIVATE_CHECKS, "testvm:2"
    )
    assert res.returncode == 0, res.stderr
    _check_private_network(env.tmp, netns_cluster, netns_cluster.controller_address)
    assert_nothing_left(env)


def _check_private_network(tmp: Path, cluster, switch_host: str) -> None:
    """The VMs pinged each other by name; the NICs and the switch published ``switch_host``
    and the namespaces' addresses (never 127.0.0.1)."""
    assert "1 packets received" in (tmp / "ping01.txt").read_text()
    assert "1 packets received" in (tmp / "ping10.txt").read_text()
    keys = json.loads((tmp / "keys.json").read_text())
    node_addresses = {cluster.node_address(n) for n in cluster.nodes}
    # one VM per node (1 CPU each): each NIC publishes its own namespace's address
    ports = [json.loads(v) for k, v in keys.items() if "/nets/cluster/ports/" in k]
    assert sorted(p["host"] for p in ports) == sorted(node_addresses)
    switch = [v for k, v in keys.items() if k.endswith("/nets/cluster/switch")]
    assert len(switch) == 1
    assert switch[0].rpartition(":")[0] == switch_host


def _ip_names() -> str:
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return spaces + links


def test_netns_of_a_crashed_dev_cluster_are_removed_by_stop():
    why = _netns_usable()
    if why or devcluster.missing_binaries(with_etcd=False):
        pytest.skip(why or "Slurm/munge programs not installed")
    directory = Path(tempfile.mkdtemp(prefix="pcocc-netns-crash-"))
    tag = devcluster.netns_tag(directory)
    try:
        cluster = devcluster.DevCluster(
            directory, nodes=2, cpus_per_node=1, with_etcd=False, node_netns=True
        ).start()
        assert _ip_names().count(tag) >= 5  # 2 namespaces, 2 host-side veths, the bridge
        # the process that started it dies: its daemons are killed, nothing is cleaned
        for name, child in cluster._procs.items():
            child.kill()
            child.wait()
        assert tag in _ip_names()
        devcluster.DevCluster.attach(directory).stop()
        assert tag not in _ip_names()
    finally:
        devcluster.NodeNetns.remove(tag)
        shutil.rmtree(directory, ignore_errors=True)


def test_bridge_of_a_dev_cluster_without_namespaces_is_removed_as_a_leftover(tmp_path):
    why = _netns_usable()
    if why:
        pytest.skip(why)
    tag = devcluster.netns_tag(tmp_path)
    bridge = devcluster.NodeNetns.bridge_name(tag)
    # not ours: another prefix, and a pcd* link that is not a dev cluster's bridge
    others = [f"pcdx{os.getpid() % 10000}", f"zz{tag[3:]}br"]
    try:
        for dev in [bridge, *others]:
            subprocess.run(["ip", "link", "add", dev, "type", "bridge"], check=True)
        devcluster.NodeNetns.remove_stale()
        names = _ip_names()
        assert f" {bridge}:" not in names
        assert all(f" {dev}:" in names for dev in others)
    finally:
        for dev in [bridge, *others]:
            subprocess.run(["ip", "link", "del", dev], capture_output=True)
