#!/usr/bin/env python3
"""Throughput and ping between two VMs over an ethernet network, against the private
switch and against two host endpoints on the same bridges and VXLAN.

One job of the netns dev cluster with the Slurm plugin loaded (tests/fixtures/spank.py):
``pcocc alloc -N 2 testvm:2``, vm0 on n1 and vm1 on n2, each with two NICs:

ethernet: eth0 on an ``ethernet`` network (TAP, per-job bridge on each node, VXLAN between
          the nodes: all in the kernel);
switch:   eth1 on a ``private`` network (QEMU dgram sockets and the Python switch);
host:     two network namespaces, one per node, each with a veth attached to the job's
          bridge on its node, MTU and subnet of the job: host to host over the very bridges
          and VXLAN the ethernet VMs use, without QEMU and guests.

Every case runs the same busybox tools: throughput is ``dd if=/dev/zero`` run by ``nc -e``
on its connection to a ``nc -l -e`` whose script counts the bytes (``wc -c``) between the
connection and its end, timed from /proc/uptime by the receiver (the sender's own time is
printed too); latency is the
average of busybox ``ping -i 0.2``. The CPU load of both ends over the transfer comes from
/proc/stat (the VMs have one vCPU each): the guests run under TCG, which emulates every
instruction, so a guest near 100 % busy means the figure is the emulator's, not the network's.

    python benchmarks/vm_network.py [--rounds N] [--mib M]   (as root)
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import benchlib
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "helpers")]  # tests.fixtures.spank imports devcluster
PORT = 5001
NETWORKS = {
    "eth": {"type": "ethernet", "cidr": "10.233.0.0/16", "job-prefix": 24, "mtu": 1450,
            "reverse-nat": {"vm-port": 22, "host-ports": "21100-21199"}},
    "priv": {"type": "private", "cidr": "10.252.0.0/16"},
}
#: host to host moves data some 15 times faster than the VMs: a transfer as many times
#: longer lasts about as long as theirs (/proc/uptime, the timer, counts 10 ms)
HOST_SCALE = 16
#: vm1's address on the private network (rank N has host N+1 of the cidr)
PRIVATE_VM1 = "10.252.0.2"
#: the receiver, run by ``nc -l -e`` on the connection: bytes, times and CPU counters
RECEIVER = ("#!/bin/sh\n"
            "read -r t0 _ < /proc/uptime; s0=$(head -n 1 /proc/stat)\n"
            "n=$(wc -c)\n"
            "read -r t1 _ < /proc/uptime; s1=$(head -n 1 /proc/stat)\n"
            "echo \"$n $t0 $t1 | $s0 | $s1\" > {out}\n")
#: the sender: ``nc -e`` runs dd on the connection, whose 64 KiB writes go to the socket
#: directly (not through nc's small relay buffer, which costs the host 5x here)
SENDER = ("printf '#!/bin/sh\\nexec dd if=/dev/zero bs=65536 count={count} 2>/dev/null\\n'"
          " > {tx}; chmod +x {tx};"
          " read -r t0 _ < /proc/uptime; s0=$(head -n 1 /proc/stat);"
          " nc {addr} {port} -e {tx};"
          " read -r t1 _ < /proc/uptime; s1=$(head -n 1 /proc/stat); rm -f {tx};"
          " echo \"RESULT {nbytes} $t0 $t1 | $s0 | $s1\"")
BUSYBOX_TOOLS = ("sh", "nc", "dd", "wc", "head", "ping", "cat", "chmod", "echo", "printf", "rm")


def busy(stat0: str, stat1: str) -> float:
    """Fraction of CPU time not idle between two ``cpu`` lines of /proc/stat."""
    a = [int(x) for x in stat0.split()[1:]]
    b = [int(x) for x in stat1.split()[1:]]
    total = sum(b) - sum(a)
    idle = (b[3] - a[3]) + (b[4] - a[4])
    return 1 - idle / total if total > 0 else 0.0


def parse_timed(text: str) -> tuple[int, float, float, float]:
    """(bytes, seconds, start, cpu busy) of a ``N T0 T1 | stat | stat`` line."""
    head, s0, s1 = text.split("|")
    n, t0, t1 = head.split()[-3:]
    return int(n), float(t1) - float(t0), float(t0), busy(s0, s1)


# inside the allocation: what runs on both sides --------------------------------------------
class Endpoint:
    """Where a side of a measurement runs: a VM (through pcocc ssh) or a host namespace
    (busybox from a directory of its applets, so both run the same tools)."""

    def __init__(self, name: str, argv: list[str]):
        self.name, self.argv = name, argv

    def run(self, script: str, timeout_s: float = 300) -> str:
        res = subprocess.run([*self.argv, script], capture_output=True, text=True,
                             timeout=timeout_s, check=False)
        if res.returncode != 0 and "RESULT" not in res.stdout:
            raise RuntimeError(f"{self.name}: {script[:60]}...: {res.stderr.strip()[-500:]}")
        return res.stdout

    def start(self, script: str) -> subprocess.Popen:
        return subprocess.Popen([*self.argv, script], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


def vm(name: str) -> Endpoint:
    return Endpoint(name, ["pcocc", "ssh", name])


def host(netns: str, bindir: Path) -> Endpoint:
    return Endpoint(netns, ["ip", "netns", "exec", netns, "env", f"PATH={bindir}",
                            str(bindir / "sh"), "-c"])


def throughput(src: Endpoint, dst: Endpoint, addr: str, mib: int) -> dict:
    """One transfer of ``mib`` MiB from ``src`` to ``addr`` (on ``dst``)."""
    out = "/tmp/pcocc-bench-rx"
    script = RECEIVER.format(out=out + ".out")
    listener = dst.start(f"rm -f {out}.out; cat > {out}.sh <<'EOF'\n{script}EOF\n"
                         f"chmod +x {out}.sh; echo listening; exec nc -l -p {PORT} -e {out}.sh")
    try:
        assert listener.stdout is not None
        line = listener.stdout.readline()
        if "listening" not in line:
            raise RuntimeError(f"{dst.name}: receiver did not start: {listener.stderr.read()}")
        time.sleep(0.5)  # from the echo to the listen(): a few instructions, TCG or not
        count = mib * 16
        sent = src.run(SENDER.format(count=count, addr=addr, port=PORT, nbytes=count * 65536,
                                     tx="/tmp/pcocc-bench-tx.sh"))
        listener.wait(timeout=120)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    got = dst.run(f"cat {out}.out; rm -f {out}.out {out}.sh")
    nbytes, rx_s, _, rx_busy = parse_timed(got)
    sent_bytes, tx_s, _, tx_busy = parse_timed(sent[sent.index("RESULT"):])
    if nbytes != sent_bytes:
        raise RuntimeError(f"{dst.name} received {nbytes} bytes of {sent_bytes}")
    return {"mbit": nbytes * 8 / rx_s / 1e6, "tx_mbit": nbytes * 8 / tx_s / 1e6,
            "rx_busy": rx_busy, "tx_busy": tx_busy}


def latency(src: Endpoint, addr: str, count: int) -> float:
    """Average round trip of ``count`` pings, in microseconds (after one warm-up ping)."""
    out = src.run(f"ping -c 1 -W 10 {addr} > /dev/null; ping -q -c {count} -i 0.2 {addr}")
    match = re.search(r"min/avg/max = [\d.]+/([\d.]+)/", out)
    if not match:
        raise RuntimeError(f"{src.name}: no ping summary: {out}")
    return float(match.group(1)) * 1000


@contextlib.contextmanager
def host_endpoints(job: int, nodes: dict[str, str], subnet: str) -> Iterator[list[str]]:
    """A namespace per node with a veth on the job's ethernet bridge there (see the
    module doc); yields their addresses, removes them on exit."""
    from pcocc.net import ethernet

    net = ipaddress.IPv4Network(subnet)
    names, addrs = [], []
    try:
        for i, (node, node_ns) in enumerate(sorted(nodes.items())):
            ns, addr = f"{node_ns}h", str(net.network_address + 250 + i)
            names.append(ns)
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", node_ns, "link", "add", "pbenchh", "mtu", "1450",
                            "type", "veth", "peer", "name", "eth0", "netns", ns], check=True)
            subprocess.run(["ip", "-n", node_ns, "link", "set", "pbenchh", "master",
                            ethernet.bridge_name(job, 0), "up"], check=True)
            for argv in (["addr", "add", f"{addr}/{net.prefixlen}", "dev", "eth0"],
                         ["link", "set", "eth0", "mtu", "1450", "up"], ["link", "set", "lo", "up"]):
                subprocess.run(["ip", "-n", ns, *argv], check=True)
            addrs.append(addr)
        yield addrs
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def inside(spec_path: Path) -> int:
    """The -E command of the job: every measurement; results as JSON to spec['out']."""
    spec = json.loads(spec_path.read_text())
    job = int(os.environ["SLURM_JOB_ID"])
    bindir = Path(tempfile.mkdtemp(prefix="vm-network-bin-"))
    busybox = shutil.which("busybox")
    for tool in BUSYBOX_TOOLS:
        (bindir / tool).symlink_to(busybox)
    results: dict[str, dict] = {"ethernet": {}, "switch": {}, "host": {}}
    try:
        vm0, vm1 = vm("vm0"), vm("vm1")
        for endpoint in (vm0, vm1):  # ssh up, and the guest's busybox has what we need
            endpoint.run("nc --help 2>&1 | head -n 1")
        # vm1's address on the ethernet network (the job's subnet is taken in etcd)
        found = re.search(r"inet ([\d.]+/\d+)", vm1.run("ip -o -4 addr show eth0"))
        if not found:
            raise RuntimeError("vm1 has no address on its ethernet NIC (eth0)")
        vm1_eth = ipaddress.IPv4Interface(found.group(1))
        with host_endpoints(job, spec["nodes"], str(vm1_eth.network)) as addrs:
            h1, h2 = (host(f"{ns}h", bindir) for _, ns in sorted(spec["nodes"].items()))
            cases = {"ethernet": (vm0, vm1, str(vm1_eth.ip), spec["mib"]),
                     "switch": (vm0, vm1, PRIVATE_VM1, spec["mib"]),
                     "host": (h1, h2, addrs[1], spec["mib"] * HOST_SCALE)}
            for case, (src, _, addr, _) in cases.items():
                results[case]["rtt_us"] = latency(src, addr, spec["pings"])
            for _ in range(spec["rounds"]):
                for case, (src, dst, addr, mib) in cases.items():
                    results[case].setdefault("runs", []).append(
                        throughput(src, dst, addr, mib))
                    print(case, results[case]["runs"][-1], flush=True)
    finally:
        shutil.rmtree(bindir, ignore_errors=True)
        Path(spec["out"]).write_text(json.dumps(results))
    return 0


# outside: the cluster, the job, the figures ------------------------------------------------
def load(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(vm_files: dict, rounds: int, mib: int, pings: int) -> dict:
    from tests.fixtures import spank

    alloc = load("alloc_ready")
    with tempfile.TemporaryDirectory(prefix="vm-network-") as tmp, \
            spank.plugin_cluster(NETWORKS) as cluster:
        work = Path(tmp)
        env = alloc.pcocc_env(work, vm_files, {"type": "slurm", "etcd": {"mode": "private"}})
        # the user's etcd is a private one; the cluster's is root's (allocations)
        env["SLURM_CONF"] = cluster.env()["SLURM_CONF"]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        system = Path(env["PCOCC_SYSTEM_CONF_DIR"])
        (system / "networks.yaml").write_text(yaml.safe_dump({"networks": NETWORKS}))
        (system / "resources.yaml").write_text(yaml.safe_dump({"resource-sets": {"tiny": {
            "cores": 1, "memory": "256M", "networks": ["eth", "priv"]}}}))
        templates = yaml.safe_load((system / "templates.yaml").read_text())
        templates["templates"]["testvm"]["append"] += " testvm.net=dhcp"
        (system / "templates.yaml").write_text(yaml.safe_dump(templates))
        spec = {"rounds": rounds, "mib": mib, "pings": pings, "out": str(work / "out.json"),
                "nodes": {n: cluster.netns.netns_name(n) for n in cluster.nodes}}
        (work / "spec.json").write_text(json.dumps(spec))
        command = f"{sys.executable} {Path(__file__).resolve()} --inside {work / 'spec.json'}"
        res = subprocess.run(["pcocc", "alloc", "-N", "2", "--ntasks-per-node", "1",
                              "-E", command, "testvm:2"], env=env, capture_output=True,
                             text=True, timeout=1800, check=False)
        print(res.stdout, end="")
        out = work / "out.json"
        if res.returncode != 0 or not out.exists():
            raise SystemExit(f"pcocc alloc failed ({res.returncode}): {res.stderr[-2000:]}")
        return json.loads(out.read_text())


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(results: dict) -> None:
    load_avg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min) after the runs: {load_avg}")
    rows = {}
    for case in ("ethernet", "switch", "host"):
        runs = results[case]["runs"]
        rows[case] = {k: median(runs, k) for k in ("mbit", "tx_mbit", "rx_busy", "tx_busy")}
        r = rows[case]
        print(f"{case:9s} {r['mbit']:8.0f} Mbit/s (sender's time: {r['tx_mbit']:6.0f})"
              f"   rtt {results[case]['rtt_us']:7.0f} us"
              f"   CPU busy: sender {r['tx_busy']:4.0%} receiver {r['rx_busy']:4.0%}"
              f"{'' if case != 'host' else ' (the whole host)'}")
    eth, sw, hst = rows["ethernet"]["mbit"], rows["switch"]["mbit"], rows["host"]["mbit"]
    print(f"ratios: ethernet / switch {eth / sw:.1f} (target >= 5);"
          f" ethernet / host-to-host {eth / hst:.2f} (target >= 0.5: within 2x)")
    guest = max(rows["ethernet"]["tx_busy"], rows["ethernet"]["rx_busy"])
    benchlib.note(f"the guests run under TCG: over the ethernet transfers the busier VM's"
                  f" vCPU was {guest:.0%} busy: the VM figures measure the emulated CPU more"
                  f" than the network (host-to-host shows what the bridges and VXLAN carry);"
                  f" load average {load_avg}")
    benchlib.figure("ethernet throughput", eth, "Mbit/s")
    benchlib.figure("switch throughput", sw, "Mbit/s")
    benchlib.figure("host-to-host throughput", hst, "Mbit/s")
    benchlib.figure("ethernet / switch throughput", eth / sw, "x", ">= 5")
    benchlib.figure("ethernet / host-to-host throughput", eth / hst, "x", ">= 0.5",
                    note=f"guest vCPU {guest:.0%} busy (TCG)")
    benchlib.figure("ethernet guest vCPU busy", guest * 100, "%")
    for case in ("ethernet", "switch", "host"):
        benchlib.figure(f"{case} ping round trip", results[case]["rtt_us"], "us")
        benchlib.point("vm_network_mbit", "throughput", case, rows[case]["mbit"], style="bar",
                       title="Throughput between two endpoints on two nodes",
                       ylabel="Mbit/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="default 3, quick 1")
    parser.add_argument("--mib", type=int, default=None, help="MiB per transfer: 32, quick 8")
    parser.add_argument("--inside", type=Path, help=argparse.SUPPRESS)
    benchlib.add_quick(parser)
    args = parser.parse_args()
    if args.inside:
        return inside(args.inside)
    if os.geteuid() != 0:
        raise SystemExit("vm_network: needs root (the Slurm plugin sets up the network as"
                         " root on the dev cluster's nodes)")
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.mib = args.mib or (8 if args.quick else 32)
    benchlib.baseline("switch: the same two VMs, second NIC on a `private` network (QEMU"
                      " dgram sockets, Python switch); host-to-host: a network namespace per"
                      " node with a veth on the job's bridge there (same bridges, VXLAN, MTU"
                      " and subnet as the VMs); same busybox dd stream over nc -e, counted and timed"
                      " by the receiver, and busybox ping, on every side")
    outdir = Path(os.environ.get("PCOCC_TESTVM_DIR") or tempfile.mkdtemp(prefix="testvm-"))
    try:
        vm_files = load("alloc_ready").load_builder().build(outdir)
        results = measure(vm_files, args.rounds, args.mib, 10 if args.quick else 30)
    finally:
        if "PCOCC_TESTVM_DIR" not in os.environ:
            shutil.rmtree(outdir, ignore_errors=True)
    report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
