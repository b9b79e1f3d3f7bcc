"""Another local user against a running job's private etcd and private network.

The victim runs a real virtual cluster (local batch mode, private etcd, two test VMs on a
private network) whose ``-E`` script waits for a file. The attacker, another Unix user on
the same host, learns what every user may learn (the ``ps`` listing, the UDP sockets in
/proc/net/udp) and tries to read and rewrite the job's etcd keys over gRPC and the JSON
gateway, to read the victim's run directory, and to send Ethernet frames into the private
network. Everything fails; the victim's own later commands still work.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

NET = "cluster"
CIDR = "10.77.0.0/24"
VM1_ADDRESS = "10.77.0.2"  # rank N gets host N+1 of the cidr
#: frames the attacker sends to each socket: a guest that got them would count them
FRAMES = 300


@pytest.fixture
def victim_cluster(two_users, victim, testvm_artifacts):
    """The victim's running cluster: (job id, its run dir, the alloc process)."""
    images = two_users.shared / "testvm"
    images.mkdir(exist_ok=True)
    for artifact in (testvm_artifacts.kernel, testvm_artifacts.initrd):
        shutil.copy(artifact, images / artifact.name)
        (images / artifact.name).chmod(0o644)
    conf = two_users.sysconf
    (conf / "batch.yaml").write_text(yaml.safe_dump({"type": "local", "etcd": {"mode": "private"}}))
    template = {
        "kernel": str(images / testvm_artifacts.kernel.name),
        "initrd": str(images / testvm_artifacts.initrd.name),
        "append": testvm_artifacts.append,
        "accel": "tcg",
        "resource-set": "tiny",
    }
    (conf / "templates.yaml").write_text(yaml.safe_dump({"templates": {"testvm": template}}))
    networks = {"nat": {"type": "user"}, NET: {"type": "private", "cidr": CIDR}}
    (conf / "networks.yaml").write_text(yaml.safe_dump({"networks": networks}))
    tiny = {"cores": 1, "memory": "256M", "networks": ["nat", NET]}
    (conf / "resources.yaml").write_text(yaml.safe_dump({"resource-sets": {"tiny": tiny}}))
    for name in ("ready", "go"):
        (victim.home / name).unlink(missing_ok=True)
    script = "touch ready; while [ ! -e go ]; do sleep 0.2; done"
    popen = victim.popen(
        ["/usr/bin/python3", "-m", "pcocc.cli.main", "alloc", "-E", script, "testvm:2"],
        env={"PCOCC_ACCEL": "tcg", "PCOCC_BOOT_TIMEOUT": "240"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (victim.home / "ready").exists():
            if popen.poll() is not None or time.monotonic() > deadline:
                out, err = popen.communicate(timeout=60) if popen.poll() is not None else ("", "")
                pytest.fail(f"the victim's cluster did not start: {err[-2000:]}")
            time.sleep(0.5)
        run_root = victim.home / ".pcocc" / "run"
        [job_dir] = [p.parent for p in run_root.glob("*/etcd-endpoints")]
        yield job_dir.name, job_dir, popen
    finally:
        (victim.home / "go").touch()
        try:
            out, err = popen.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            popen.kill()
            out, err = popen.communicate()
    assert popen.returncode == 0, err[-2000:]


def _etcd_endpoint_from_ps(attacker, victim) -> str:
    """What any user sees: the victim's etcd command line, with its client URL."""
    listing = attacker.sh(f"ps -u {victim.name} -o args=").stdout
    found = re.findall(r"--advertise-client-urls (http://\S+)", listing)
    assert found, listing
    return found[0]


ATTACK_ETCD = r"""
import json, sys
from pcocc.errors import PcoccError
from pcocc.kv import keys
from pcocc.kv.client import KvClient
from pcocc.kv.gateway import GatewayReader

endpoint, user, job, net = sys.argv[1:5]
results = {}

def attempt(name, action):
    try:
        value = action()
        results[name] = "SUCCEEDED: " + repr(value)[:200]
    except PcoccError as err:
        results[name] = "refused: " + err.message

grpc = KvClient(endpoint, timeout_s=5)
attempt("grpc list", lambda: sorted(grpc.get_prefix("/")))
attempt("grpc read definition", lambda: grpc.get(keys.cluster_definition(user, job)))
port = json.dumps({"host": "127.0.0.1", "port": 9, "mac": "02:00:00:00:00:99"})
attempt("grpc register port", lambda: grpc.put(keys.net_port(user, job, net, 7), port))
attempt("grpc overwrite port 1", lambda: grpc.put(keys.net_port(user, job, net, 1), port))
attempt("grpc rewrite definition", lambda: grpc.put(keys.cluster_definition(user, job), "{}"))
attempt("grpc watch", lambda: grpc.wait_for("/", lambda snap: snap or None, 2))
for name, password in (("root", ""), ("root", "root"), ("pcocc-job", "pcocc-job")):
    attempt(f"grpc login {name}:{password}",
            lambda n=name, p=password: KvClient(endpoint, user=n, password=p).get_prefix("/"))
gateway = GatewayReader(endpoint)
attempt("gateway list", lambda: sorted(gateway.get_prefix("/")))
attempt("gateway read definition", lambda: gateway.get(keys.cluster_definition(user, job)))
print(json.dumps(results))
"""

SPRAY_UDP = r"""
import socket, sys
uid = int(sys.argv[1])
count = int(sys.argv[2])
# every UDP socket of the victim on this host (anyone may read /proc/net/udp)
targets = []
for line in open("/proc/net/udp").read().splitlines()[1:]:
    fields = line.split()
    if int(fields[7]) != uid:
        continue
    host_hex, port_hex = fields[1].split(":")
    host = socket.inet_ntoa(bytes.fromhex(host_hex)[::-1])
    targets.append((host, int(port_hex, 16)))
# broadcast frames (flooded by a switch that took them) and frames to each VM's MAC
frames = [b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x99" + b"\x08\x06" + b"\x00" * 46]
for rank in range(2):
    frames.append(bytes.fromhex("020000000000")[:5] + bytes([rank]) + frames[0][6:])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    for target in targets:
        for _ in range(count):
            for frame in frames:
                try:
                    s.sendto(frame, target)
                except OSError:
                    pass
print(len(targets))
"""


def _rx_packets(victim, vm: str) -> int:
    """Frames the guest's private NIC received (its address is in the private cidr)."""
    res = victim.pcocc(
        "ssh", f"root@{vm}",
        "dev=$(ip -o -4 addr show | grep ' 10\\.77\\.' | cut -d' ' -f2); "
        "cat /sys/class/net/$dev/statistics/rx_packets",
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return int(res.stdout.split()[-1])


def _ping(victim) -> str:
    res = victim.pcocc("ssh", "root@vm0", f"ping -c 2 -W 5 {VM1_ADDRESS}", timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_another_user_cannot_use_the_private_etcd_or_network(victim, attacker, victim_cluster):
    job, job_dir, _popen = victim_cluster
    endpoint = _etcd_endpoint_from_ps(attacker, victim)

    # later commands of the victim (outside the job) find the cluster and the job's login
    assert "2 packets received" in _ping(victim)
    before = {vm: _rx_packets(victim, vm) for vm in ("vm0", "vm1")}

    # the job's etcd: nothing listed, read, written or watched, over gRPC or the gateway
    res = attacker.run(
        ["/usr/bin/python3", "-c", ATTACK_ETCD, endpoint, victim.name, job, NET], timeout=120
    )
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout)
    assert len(results) == 11, results
    succeeded = {k: v for k, v in results.items() if not v.startswith("refused")}
    assert succeeded == {}, succeeded

    # the victim's run directory (etcd login, sockets, logs) is closed to the attacker
    stolen = attacker.sh(
        f"ls {job_dir}; cat {job_dir}/etcd-login {job_dir}/etcd/root-password", timeout=30
    )
    assert stolen.returncode != 0 and "pcocc-job" not in stolen.stdout
    assert "Permission denied" in stolen.stderr

    # no secret in any command line that ps shows (etcd, node processes, switch, QEMU)
    login = (job_dir / "etcd-login").read_text().strip()
    secrets = [login.split(":", 1)[1], (job_dir / "etcd" / "root-password").read_text().strip()]
    listing = attacker.sh("ps -eo args=", timeout=30).stdout
    assert "internal vswitch" in listing and "qemu-system" in listing
    assert not any(secret in listing for secret in secrets)

    # the job's keys are as the job wrote them: no port of the attacker's, same definition
    check = victim.python(
        "import json, sys; from pcocc.kv.client import KvClient; "
        f"kv = KvClient({endpoint!r}, user='pcocc-job', password=sys.stdin.read().strip()); "
        f"print(json.dumps(sorted(kv.get_prefix('/pcocc/users/{victim.name}/'))))",
        input=secrets[0], timeout=60,
    )
    assert check.returncode == 0, check.stderr
    port_keys = [k for k in json.loads(check.stdout) if f"/nets/{NET}/ports/" in k]
    assert sorted(k.rsplit("/", 1)[1] for k in port_keys) == ["0", "1"]

    # frames sent to the switch or straight to a VM's port are not delivered
    sprayed = attacker.run(
        ["/usr/bin/python3", "-c", SPRAY_UDP, str(victim.uid), str(FRAMES)], timeout=120
    )
    assert sprayed.returncode == 0, sprayed.stderr
    assert int(sprayed.stdout) >= 3, "expected the switch and both NICs' sockets"
    time.sleep(1)
    after = {vm: _rx_packets(victim, vm) for vm in ("vm0", "vm1")}
    # the attacker sent FRAMES x 3 frames to each socket; a few frames of the guests' own
    # traffic (the ssh checks' ARP) may arrive meanwhile
    for vm in before:
        assert after[vm] - before[vm] < FRAMES // 10, (vm, before, after)

    # and the victim's VMs still reach each other
    assert "2 packets received" in _ping(victim)
