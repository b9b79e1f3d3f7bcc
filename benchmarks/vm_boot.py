#!/usr/bin/env python3
"""Time from QEMU start to the first ssh answer of the test VM, under TCG.

Runs side by side, alternating, N times each:
  baseline  a hand-written QEMU command line (direct boot, user net, seed disk), ssh polled
  pcocc     pcocc.vm.Machine: overlay + seed + sockets + readiness wait, then the same ssh
and prints the medians and the ratio pcocc/baseline. This is the baseline of the later
alloc_ready benchmark (a whole virtual cluster).

usage: benchmarks/vm_boot.py [-n RUNS] [--testvm-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pcocc import proc
import benchlib
from pcocc.vm import readiness
from pcocc.vm.machine import Machine, free_tcp_ports
from pcocc.vm.seed import SeedSpec, build_seed, generate_host_key

ROOT = Path(__file__).resolve().parent.parent


def load_builder():
    spec = importlib.util.spec_from_file_location("build_testvm", ROOT / "helpers" /
                                                  "build_testvm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ssh_until_answer(key: Path, port: int, known_hosts: Path, timeout_s: float = 300) -> str:
    """pcocc's readiness wait (banner every 50 ms), then ``ssh hostname`` (retried only while
    the guest's sshd sends its banner but refuses the login)."""
    deadline = time.monotonic() + timeout_s
    argv = ["ssh", "-i", key, "-p", str(port), "-o", f'UserKnownHostsFile="{known_hosts}"',
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR", "root@127.0.0.1", "hostname"]
    while readiness.wait_ssh_banner(port, "127.0.0.1", deadline):
        res = proc.run(argv, check=False, timeout_s=30)
        if res.returncode == 0:
            return res.stdout.strip()
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"no ssh answer on port {port} within {timeout_s} s")


def run_baseline(art: dict, work: Path, seed: SeedSpec, key: Path) -> float:
    work.mkdir()
    build_seed(seed, work / "seed.iso")
    proc.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", art["disk"], "-F", "qcow2",
              work / "disk.qcow2"])
    port = free_tcp_ports(1)[0]
    known = work / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {seed.host_key.public}\n")
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "256",
            "-display", "none", "-nodefaults", "-serial", f"file:{work}/console.log",
            "-kernel", art["kernel"], "-initrd", art["initrd"], "-append", art["append"],
            "-drive", f"file={work}/disk.qcow2,if=virtio,format=qcow2",
            "-drive", f"file={work}/seed.iso,if=virtio,format=raw,readonly=on",
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", "virtio-net-pci,netdev=n0"]
    start = time.monotonic()
    qemu = proc.spawn(argv)
    try:
        ssh_until_answer(key, port, known)
        return time.monotonic() - start
    finally:
        proc.stop(qemu)


def run_pcocc(art: dict, work: Path, seed: SeedSpec, key: Path) -> float:
    from pcocc.vm.qemu import VmSpec

    spec = VmSpec(name="bench", accel="tcg", kernel=Path(art["kernel"]),
                  initrd=Path(art["initrd"]), append=art["append"])
    start = time.monotonic()
    with Machine(spec, work / "run", image=art["disk"], seed=seed, boot_timeout_s=300) as vm:
        known = work / "known_hosts"
        known.write_text(f"[127.0.0.1]:{vm.ssh_port} {seed.host_key.public}\n")
        ssh_until_answer(key, vm.ssh_port, known)
        return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=None, help="default 3, quick 1")
    parser.add_argument("--testvm-dir", type=Path, default=None,
                        help="default: $PCOCC_TESTVM_DIR, else built in a temporary directory")
    benchlib.add_quick(parser)
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    if args.testvm_dir is None and os.environ.get("PCOCC_TESTVM_DIR"):
        args.testvm_dir = Path(os.environ["PCOCC_TESTVM_DIR"])
    benchlib.baseline("a hand-written QEMU command line (same kernel, initramfs, disk overlay and"
                      " seed, made before the clock starts), ssh banner polled every 50 ms with"
                      " pcocc's own readiness function, then `ssh hostname`")
    with tempfile.TemporaryDirectory(prefix="pcocc-bench-vm-") as tmp:
        tmpdir = Path(tmp)
        art = load_builder().build(args.testvm_dir or tmpdir / "testvm")
        key = tmpdir / "id_ed25519"
        proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key])
        seed = SeedSpec(hostname="bench0", instance_id="bench",
                        authorized_keys=(key.with_suffix(".pub").read_text(),),
                        host_key=generate_host_key())
        times: dict[str, list[float]] = {"baseline": [], "pcocc": []}
        for i in range(args.runs):
            for name, runner in (("baseline", run_baseline), ("pcocc", run_pcocc)):
                spent = runner(art, tmpdir / f"{name}-{i}", seed, key)
                times[name].append(spent)
                print(f"run {i + 1}/{args.runs} {name:8s} {spent:6.2f} s", file=sys.stderr)
    base = statistics.median(times["baseline"])
    ours = statistics.median(times["pcocc"])
    print(f"load average: {os.getloadavg()[0]:.2f} (2 shared cores: expect noise)")
    print(f"QEMU start -> first 'ssh hostname' answer, test VM under TCG, median of {args.runs}:")
    print(f"  baseline (raw QEMU command)  {base:6.2f} s")
    print(f"  pcocc Machine                {ours:6.2f} s")
    print(f"  ratio pcocc/baseline         {ours / base:6.2f}")
    benchlib.figure("QEMU start to ssh answer, pcocc Machine", ours, "s")
    benchlib.figure("QEMU start to ssh answer, raw QEMU", base, "s")
    benchlib.figure("pcocc Machine / raw QEMU", ours / base, "x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
