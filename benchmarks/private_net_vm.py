#!/usr/bin/env python3
"""Ping between two test VMs over a private network, against QEMU's multicast socket.

ours:      ``pcocc alloc testvm:2`` with a resource set on ``[nat, cluster]`` (cluster a
           ``private`` network: QEMU dgram NICs and the Python switch); vm0 pings vm1.
baseline:  the same cluster without the private network; each VM gets a second NIC from
           ``custom-args``, a QEMU ``-netdev socket,mcast`` on loopback (no switch: the kernel
           delivers every frame to every VM), configured by a user-data script with the
           same address; vm0 pings vm1.

Both run the test VM under TCG, local mode, so the numbers say what the switch adds to a
guest-to-guest round trip when the guests themselves are slow; with KVM guests the switch's
share is larger (see benchmarks/private_switch.py for the switch alone). Prints the median
of the per-run average round trips for small and full-size packets, and the ratio.

    python benchmarks/private_net_vm.py [--rounds N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib
import yaml

ROOT = Path(__file__).resolve().parent.parent
MCAST_GROUP = "230.0.0.1"

HOSTS = "cat /seed/pcocc/hosts >> /etc/hosts\n"
MCAST_SETUP = (
    "rank=$(hostname | tr -dc 0-9)\n"
    "ip link set eth1 address 02:00:00:00:01:0$rank\n"
    "ip link set eth1 up\n"
    "ip addr add 10.252.0.$((rank + 1))/16 dev eth1\n"
)
PINGS = (
    "pcocc ssh vm1 true; "
    "pcocc ssh vm0 'for i in $(seq 100); do grep -q vm1 /etc/hosts && break; sleep 0.2; done;"
    " ping -c 3 -W 5 vm1 > /dev/null; ping -q -c 30 -i 0.1 vm1; ping -q -c 30 -i 0.1 -s 1400 vm1'"
)


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_case(work: Path, vm: dict, private: bool) -> tuple[float, float]:
    """Average round trips (ms) of small and 1400-byte pings from vm0 to vm1."""
    alloc = load("alloc_ready")
    env = alloc.pcocc_env(work, vm)
    system = Path(env["PCOCC_SYSTEM_CONF_DIR"])
    templates = yaml.safe_load((system / "templates.yaml").read_text())
    networks = {"nat": {"type": "user"}, "cluster": {"type": "private"}}
    user_data = work / "user-data.sh"
    if private:
        nets = ["nat", "cluster"]
        user_data.write_text("#!/bin/sh\n" + HOSTS)
    else:
        nets = ["nat"]
        port = alloc.free_port()
        templates["templates"]["testvm"]["custom-args"] = [
            "-netdev",
            f"socket,id=m0,mcast={MCAST_GROUP}:{port},localaddr=127.0.0.1",
            "-device",
            "virtio-net-pci,netdev=m0",
        ]
        user_data.write_text("#!/bin/sh\n" + MCAST_SETUP + HOSTS)
    (system / "templates.yaml").write_text(yaml.safe_dump(templates))
    (system / "networks.yaml").write_text(yaml.safe_dump({"networks": networks}))
    (system / "resources.yaml").write_text(
        yaml.safe_dump(
            {"resource-sets": {"tiny": {"cores": 1, "memory": "256M", "networks": nets}}}
        )
    )
    pcocc = str(Path(sys.executable).parent / "pcocc")
    argv = [pcocc, "alloc", "--user-data", str(user_data), "-E", PINGS, "testvm:2"]
    res = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=900)
    averages = [float(m) for m in re.findall(r"min/avg/max = [\d.]+/([\d.]+)/", res.stdout)]
    if res.returncode != 0 or len(averages) != 2:
        raise SystemExit(f"pcocc alloc failed ({res.returncode}): {res.stderr.strip()}")
    return averages[0], averages[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="default 3, quick 1")
    benchlib.add_quick(parser)
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 3)
    benchlib.baseline("the same two-VM cluster whose second NICs are QEMU `-netdev socket,mcast`"
                      " on loopback (the kernel delivers every frame, no switch process), same"
                      " guest addresses, same ping")
    outdir = Path(os.environ.get("PCOCC_TESTVM_DIR") or tempfile.mkdtemp(prefix="testvm-"))
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    try:
        vm = load("alloc_ready").load_builder().build(outdir)
        with tempfile.TemporaryDirectory(prefix="private-net-vm-") as tmp:
            for i in range(args.rounds):
                for private in (True, False):
                    work = Path(tmp) / f"{'ours' if private else 'base'}{i}"
                    results[private].append(run_case(work, vm, private))
                    print(f"round {i + 1} {'ours' if private else 'mcast'}:"
                          f" {results[private][-1]}", flush=True)  # fmt: skip
    finally:
        if "PCOCC_TESTVM_DIR" not in os.environ:
            shutil.rmtree(outdir, ignore_errors=True)
    for index, label in ((0, "ping 56 B"), (1, "ping 1400 B")):
        ours = statistics.median(r[index] for r in results[True])
        base = statistics.median(r[index] for r in results[False])
        print(
            f"{label:12s} ours {ours:8.3f} ms   baseline (mcast) {base:8.3f} ms"
            f"   ratio {ours / base:.2f}"
        )
        benchlib.figure(f"{label} round trip, private network", ours, "ms")
        benchlib.figure(f"{label} round trip, private / mcast", ours / base, "x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
