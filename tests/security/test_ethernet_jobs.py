"""Two users' jobs with ethernet networks at once on the plugin's dev cluster (nodes n1 and
n2, each in its own network namespace; root's setup by the SPANK plugin).

The victim's job spans n1 and n2 (a VXLAN between them); on each node one task holds the
TAP of its VM open, as QEMU does, and records every frame that comes out of it. While it
runs, the attacker's job on n1 attacks from the attacker's processes (what a user's VM or
a user on the node can do):

- open the victim's TAP (the kernel must refuse: EPERM);
- send, as its own VM through its own TAP, IPv4 to the victim's VM on n1 (routed from the
  attacker's bridge to the victim's one, if the host let it through);
- send VXLAN packets with the victim's VNI to the VXLAN port of n1 and n2 (the kernel
  would put their frames on the victim's bridges);
- connect to the victim's reverse NAT port on n1, to the node's address and to loopback.

Nothing of the attacker may come out of the victim's TAPs (no marker, no IPv4 or ARP for
the victim's VM), every connection is refused, and the victim's own frame still crosses
from n1 to n2 (the listeners worked). Nodes stay shared by one cluster for the whole module.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from pcocc import proc
from pcocc.kv import keys
from pcocc.kv.client import KvClient
from pcocc.net import ethernet, jobsetup, netalloc, slurmjob
from tests.fixtures import spank

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(spank.missing()), reason=str(spank.missing()))]

NETWORKS = {"eth": {"type": "ethernet", "cidr": "10.232.0.0/16", "job-prefix": 24,
                    "mtu": 1450, "reverse-nat": {"vm-port": 22, "host-ports": "21100-21199"}}}
MARK = b"PCOCC-ATTACK-MARK"
CONTROL = b"PCOCC-VICTIM-CONTROL"

#: The victim's task: hold the TAP of rank $SLURM_PROCID open, record what comes out of it
#: until DIR/stop exists; rank 0 sends a broadcast CONTROL frame once rank 1 listens.
LISTEN = r"""
import fcntl, json, os, select, struct, sys, time
d, job = sys.argv[1], int(sys.argv[2])
rank = int(os.environ["SLURM_PROCID"])
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", ("pt%x0%d" % (job, rank)).encode(), 0x1002))
open(f"{d}/ready-{rank}", "w").close()
frames, sent, deadline = [], False, time.time() + 150
while not os.path.exists(f"{d}/stop") and time.time() < deadline:
    if rank == 0 and not sent and os.path.exists(f"{d}/ready-1"):
        time.sleep(1)  # the bridge of n2 forwards to the TAP once it is up
        os.write(fd, b"\xff" * 6 + bytes.fromhex("02aabbccdd00") + b"\x88\xb5" + CONTROL)
        sent = True
    if select.select([fd], [], [], 0.2)[0]:
        frame = os.read(fd, 65536)
        frames.append(frame.hex())
with open(f"{d}/frames-{rank}.json", "w") as f:
    json.dump(frames, f)
""".replace("CONTROL", repr(CONTROL))

#: The attacker's job script (argv[1]: a JSON of what it aims at; argv[2]: its dir).
ATTACK = r"""
import errno, fcntl, json, os, socket, struct, sys, time
aim, d = json.loads(sys.argv[1]), sys.argv[2]
out = {}
def tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", name.encode(), 0x1002))
        return fd, "opened"
    except OSError as err:
        os.close(fd)
        return None, errno.errorcode[err.errno]
_, out["victim_tap"] = tap(aim["victim_tap"])
own, out["own_tap"] = tap(aim["own_tap"])
def csum(data):
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xffff)
    return ~(s + (s >> 16)) & 0xffff
def ipv4_udp(src, dst, payload):
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + udp
if own is not None:  # as the attacker's VM: IPv4 to the victim's VM, by our gateway
    with socket.socket() as s:  # the bridge's MAC (SIOCGIFHWADDR, in the node's netns)
        gw = fcntl.ioctl(s, 0x8927, struct.pack("256s", aim["own_bridge"].encode()))[18:24]
    mac = bytes.fromhex(aim["own_mac"].replace(":", ""))
    for _ in range(3):
        os.write(own, gw + mac + b"\x08\x00" + ipv4_udp(aim["own_addr"], aim["victim_addr"], MARK))
        time.sleep(0.3)
inner = b"\xff" * 6 + bytes.fromhex("02aabbccdd01") + b"\x88\xb5" + MARK
vxlan = struct.pack("!II", 0x08000000, aim["victim_vni"] << 8) + inner
out["vxlan"] = {}
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    for node in aim["nodes"]:
        try:
            for _ in range(3):
                s.sendto(vxlan, (node, aim["vxlan_port"]))
                time.sleep(0.2)
            out["vxlan"][node] = "sent"
        except OSError as err:
            out["vxlan"][node] = errno.errorcode[err.errno]
out["rnat"] = {}
for host in (aim["node"], "127.0.0.1"):
    try:
        with socket.create_connection((host, aim["victim_port"]), timeout=4):
            out["rnat"][host] = "connected"
    except socket.timeout:
        out["rnat"][host] = "timeout"
    except OSError as err:
        out["rnat"][host] = errno.errorcode.get(err.errno, str(err))
with open(f"{d}/result.json", "w") as f:
    json.dump(out, f)
""".replace("MARK", repr(MARK))


@pytest.fixture(scope="module")
def cluster():
    with spank.plugin_cluster(NETWORKS) as found:
        yield found


def _sbatch(cluster, user, out: Path, *opts: str) -> str:
    res = proc.run(["sbatch", "--parsable", "-o", str(out), "--uid", user.name,
                    "--pcocc-setup", *opts], env=spank.env(cluster), timeout_s=30)
    return res.stdout.strip().split(";")[0]


def _job_net(cluster, job: str) -> ethernet.EthernetNet:
    """The job's network as root's setup allocated it (subnet and VNI from etcd)."""
    net = ethernet.from_config("eth", NETWORKS["eth"], 0)
    with KvClient(cluster.etcd.endpoints) as kv:
        key = keys.net_job_network(int(job), "eth")
        vni, subnet = netalloc.parse_record(key, kv.get(key), net)
    return replace(net, cidr=subnet, pool=net.cidr, vni=vni)


def _frames(directory: Path, rank: int) -> list[bytes]:
    return [bytes.fromhex(f) for f in json.loads((directory / f"frames-{rank}.json").read_text())]


def _leaks(frames: list[bytes], victim_addr: str, attacker_net: str) -> list[str]:
    """Frames of the attack: its marker, or IPv4/ARP that concern the victim's VM."""
    import ipaddress

    found = []
    for frame in frames:
        kind = frame[12:14]
        if MARK in frame:
            found.append(f"marker: {frame.hex()}")
        elif kind == b"\x08\x00" and (
                str(ipaddress.IPv4Address(frame[30:34])) == victim_addr
                or ipaddress.IPv4Address(frame[26:30]) in ipaddress.IPv4Network(attacker_net)):
            found.append(f"ipv4: {frame.hex()}")
        elif kind == b"\x08\x06" and str(ipaddress.IPv4Address(frame[38:42])) == victim_addr:
            found.append(f"arp for the victim's VM: {frame.hex()}")
    return found


def test_two_users_jobs_cannot_reach_each_other(cluster, victim, attacker, two_users):
    work = two_users.shared / "ethernet-jobs"
    work.mkdir(mode=0o755)
    (work / "listen.py").write_text(LISTEN)
    (work / "attack.py").write_text(ATTACK)
    vdir, adir = work / "victim", work / "attacker"
    for d, user in ((vdir, victim), (adir, attacker)):
        d.mkdir(mode=0o700)
        os.chown(d, user.uid, user.gid)
    env = spank.env(cluster)
    vjob = _sbatch(cluster, victim, vdir / "out", "-N2", "-n2", "-w", "n1,n2", "--wrap",
                   f"srun /usr/bin/python3 {work}/listen.py {vdir} $SLURM_JOB_ID")
    spank.wait(lambda: (vdir / "ready-0").exists() and (vdir / "ready-1").exists(),
               f"the victim's job {vjob} to hold its TAPs", timeout_s=90)
    vnet = _job_net(cluster, vjob)
    nodes = [slurmjob.node_address(n, env) for n in ("n1", "n2")]
    # the attacker's job waits for its aim: the addresses of both jobs, known once they run
    ajob = _sbatch(cluster, attacker, adir / "out", "-N1", "-n1", "-w", "n1", "--wrap",
                   f"while [ ! -e {adir}/aim.json ]; do sleep 0.2; done;"
                   f" /usr/bin/python3 {work}/attack.py \"$(cat {adir}/aim.json)\" {adir}")
    spank.wait(lambda: jobsetup.read_forwards(int(ajob), "n1"),
               f"the attacker's job {ajob} to be set up", timeout_s=60)
    anet = _job_net(cluster, ajob)
    aim = {"victim_tap": ethernet.tap_name(int(vjob), 0, 0),
           "own_tap": ethernet.tap_name(int(ajob), 0, 0),
           "own_bridge": ethernet.bridge_name(int(ajob), 0),
           "own_mac": ethernet.vm_mac(int(ajob), anet, 0), "own_addr": anet.address(0),
           "victim_addr": vnet.address(0), "victim_vni": vnet.vni, "nodes": nodes,
           "vxlan_port": vnet.vxlan_port, "node": nodes[0],
           "victim_port": jobsetup.read_forwards(int(vjob), "n1")["eth"][0]}
    (adir / "aim.json").write_text(json.dumps(aim))
    spank.wait(lambda: spank.gone(cluster, ajob), f"the attacker's job {ajob} to end",
               timeout_s=90)
    (vdir / "stop").touch()
    spank.wait(lambda: spank.gone(cluster, vjob), f"the victim's job {vjob} to end")
    assert (adir / "result.json").exists(), (adir / "out").read_text()
    result = json.loads((adir / "result.json").read_text())
    n1, n2 = _frames(vdir, 0), _frames(vdir, 1)
    assert result["own_tap"] == "opened"  # the attacker's own VM side works, and
    assert any(CONTROL in f for f in n2)  # the victim's network carried its own frame
    assert anet.cidr != vnet.cidr and anet.vni != vnet.vni
    # every attack is checked, so that a failure shows all that got through
    through = {"victim's TAP": result["victim_tap"] != "EPERM",
               "reverse NAT port": result["rnat"] != {nodes[0]: "ECONNREFUSED",
                                                      "127.0.0.1": "ECONNREFUSED"},
               "frames on n1": _leaks(n1, vnet.address(0), anet.cidr),
               "frames on n2": _leaks(n2, vnet.address(0), anet.cidr)}
    assert {k: v for k, v in through.items() if v} == {}, result
