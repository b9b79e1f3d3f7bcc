#!/usr/bin/env python3
"""Time from ``pcocc alloc`` to the first ssh answer of a VM, against plain QEMU.

ours:      ``pcocc alloc -E 'pcocc ssh vm0 true' testvm:1`` (local mode, private etcd, TCG),
           from the start of pcocc until that ssh returns
baseline:  QEMU started directly on the same kernel/initramfs with a ready-made seed, from
           its start until ``ssh true`` first succeeds

Prints both medians, the overhead in seconds and the ratio. Builds the test VM with
helpers/build_testvm.py (cached in $PCOCC_TESTVM_DIR if set).

    python benchmarks/alloc_ready.py [--rounds N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def load_builder():
    spec = importlib.util.spec_from_file_location(
        "build_testvm", ROOT / "helpers" / "build_testvm.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pcocc_env(work: Path, vm: dict) -> dict[str, str]:
    system, home = work / "etc", work / "home"
    for d in (system, home / ".pcocc"):
        d.mkdir(parents=True, exist_ok=True)
    (system / "templates.yaml").write_text(
        yaml.safe_dump(
            {
                "templates": {
                    "testvm": {
                        "kernel": vm["kernel"],
                        "initrd": vm["initrd"],
                        "append": vm["append"],
                        "accel": "tcg",
                        "resource-set": "tiny",
                    }
                }
            }
        )
    )
    (system / "resources.yaml").write_text(
        yaml.safe_dump({"resource-sets": {"tiny": {"cores": 1, "memory": "256M"}}})
    )
    (system / "batch.yaml").write_text(yaml.safe_dump({"type": "local"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PCOCC_"))}
    env.pop("XDG_RUNTIME_DIR", None)
    env.update(
        {
            "HOME": str(home),
            "PCOCC_SYSTEM_CONF_DIR": str(system),
            "PCOCC_USER_CONF_DIR": str(home / ".pcocc"),
            "PCOCC_ACCEL": "tcg",
            "PCOCC_RUN_DIR": str(work / "run"),
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        }
    )
    return env


def time_ours(work: Path, vm: dict) -> float:
    env = pcocc_env(work, vm)
    stamp = work / "ssh-answered"
    stamp.unlink(missing_ok=True)
    pcocc = str(Path(sys.executable).parent / "pcocc")
    command = f"pcocc ssh vm0 true && date +%s.%N > {stamp}"
    t0 = time.time()
    res = subprocess.run(
        [pcocc, "alloc", "-E", command, "testvm:1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if res.returncode != 0 or not stamp.exists():
        raise SystemExit(f"pcocc alloc failed ({res.returncode}): {res.stderr.strip()}")
    return float(stamp.read_text()) - t0


def time_baseline(work: Path, vm: dict) -> float:
    from pcocc.vm.seed import SeedSpec, build_seed, generate_host_key

    key = work / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    host_key = generate_host_key()
    seed = build_seed(
        SeedSpec("vm0", "bench", (key.with_suffix(".pub").read_text().strip(),), host_key),
        work / "seed.iso",
    )
    known = work / "known_hosts"
    known.write_text(f"bench {host_key.public}\n")
    port = free_port()
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-m",
        "256",
        "-smp",
        "1",
        "-display",
        "none",
        "-nodefaults",
        "-no-user-config",
        "-serial",
        "null",
        "-kernel",
        vm["kernel"],
        "-initrd",
        vm["initrd"],
        "-append",
        vm["append"],
        "-drive",
        f"file={seed},format=raw,if=virtio,readonly=on",
        "-netdev",
        f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device",
        "virtio-net-pci,netdev=n0",
    ]
    ssh = [
        "ssh",
        "-i",
        str(key),
        "-p",
        str(port),
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "HostKeyAlias=bench",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "LogLevel=ERROR",
        "root@127.0.0.1",
        "true",
    ]
    t0 = time.time()
    qemu = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if qemu.poll() is not None:
                raise SystemExit(f"QEMU exited with status {qemu.returncode}")
            if subprocess.run(ssh, capture_output=True).returncode == 0:
                return time.time() - t0
            if time.time() - t0 > 300:
                raise SystemExit("the baseline VM did not answer ssh within 300 s")
            time.sleep(0.1)
    finally:
        qemu.kill()
        qemu.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    outdir = Path(os.environ.get("PCOCC_TESTVM_DIR") or tempfile.mkdtemp(prefix="testvm-"))
    vm = load_builder().build(outdir)
    ours, base = [], []
    with tempfile.TemporaryDirectory(prefix="alloc-ready-") as tmp:
        work = Path(tmp)
        for i in range(args.rounds):
            base.append(time_baseline(work, vm))
            ours.append(time_ours(work, vm))
            print(f"round {i + 1}: qemu {base[-1]:.2f} s, pcocc alloc {ours[-1]:.2f} s", flush=True)
    if "PCOCC_TESTVM_DIR" not in os.environ:
        shutil.rmtree(outdir, ignore_errors=True)
    b, o = statistics.median(base), statistics.median(ours)
    print(f"median time to first ssh answer: qemu {b:.2f} s, pcocc alloc {o:.2f} s")
    print(f"overhead: {o - b:+.2f} s, ratio {o / b:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
