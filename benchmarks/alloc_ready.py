#!/usr/bin/env python3
"""Time from ``pcocc alloc`` to ssh answers of its VMs, against plain QEMU.

Two cases (``--case``), each run side by side with its baseline:

local1:    ours: ``pcocc alloc -E 'pcocc ssh vm0 true' testvm:1`` (local mode, private etcd,
           TCG), from the start of pcocc until that ssh returns;
           baseline: QEMU started directly on the same kernel/initramfs with a ready-made
           seed, from its start until ``ssh true`` first succeeds
slurm4:    ours: ``pcocc alloc -E '<pcocc ssh vmI true, I=0..3, in parallel>' testvm:4 -- -N 4``
           on the Slurm development cluster (helpers/devcluster.py: 4 slurmd and etcd on this
           host, started and stopped by this script), until every ssh returned;
           baseline: 4 QEMUs started at once until each one's ``ssh true`` succeeded

Prints both medians per case, the overhead in seconds and the ratio (target: overhead at most
1.5 s). Builds the test VM with helpers/build_testvm.py (cached in $PCOCC_TESTVM_DIR if set).

    python benchmarks/alloc_ready.py [--rounds N] [--case local1|slurm4|all]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


def pcocc_env(work: Path, vm: dict, batch: dict | None = None) -> dict[str, str]:
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
    (system / "batch.yaml").write_text(yaml.safe_dump(batch or {"type": "local"}))
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


def time_ours(
    work: Path,
    vm: dict,
    n: int = 1,
    batch: dict | None = None,
    extra_env: dict[str, str] | None = None,
    batch_args: tuple[str, ...] = (),
) -> float:
    """Seconds from starting ``pcocc alloc`` until ``pcocc ssh vmI true`` returned for all I."""
    env = {**pcocc_env(work, vm, batch), **(extra_env or {})}
    stamp = work / "ssh-answered"
    stamp.unlink(missing_ok=True)
    pcocc = str(Path(sys.executable).parent / "pcocc")
    if n == 1:
        command = f"pcocc ssh vm0 true && date +%s.%N > {stamp}"
    else:
        # one ssh per VM, in parallel; fail unless every one answered
        sshs = " ".join(f"pcocc ssh vm{i} true & p{i}=$!;" for i in range(n))
        waits = " && ".join(f"wait $p{i}" for i in range(n))
        command = f"{sshs} {waits} && date +%s.%N > {stamp}"
    argv = [pcocc, "alloc", "-E", command, f"testvm:{n}"]
    if batch_args:
        argv += ["--", *batch_args]
    t0 = time.time()
    res = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0 or not stamp.exists():
        raise SystemExit(f"pcocc alloc failed ({res.returncode}): {res.stderr.strip()}")
    return float(stamp.read_text()) - t0


def _qemu_argv(vm: dict, seed: Path, port: int) -> list[str]:
    return [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-cpu", "max",
        "-m", "256",
        "-smp", "1",
        "-display", "none",
        "-nodefaults",
        "-no-user-config",
        "-serial", "null",
        "-kernel", vm["kernel"],
        "-initrd", vm["initrd"],
        "-append", vm["append"],
        "-drive", f"file={seed},format=raw,if=virtio,readonly=on",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
    ]  # fmt: skip


def _ssh_argv(key: Path, known: Path, alias: str, port: int) -> list[str]:
    return [
        "ssh",
        "-i", str(key),
        "-p", str(port),
        "-o", f"UserKnownHostsFile={known}",
        "-o", f"HostKeyAlias={alias}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=5",
        "-o", "LogLevel=ERROR",
        "root@127.0.0.1",
        "true",
    ]  # fmt: skip


def time_baseline(work: Path, vm: dict, n: int = 1) -> float:
    """Seconds from starting ``n`` QEMUs at once until each one answered ``ssh true``."""
    from pcocc.vm.seed import SeedSpec, build_seed, generate_host_key

    key = work / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    known = work / "known_hosts"
    lines, argvs, sshs = [], [], []
    for i in range(n):
        alias = f"bench{i}"
        host_key = generate_host_key()
        seed = build_seed(
            SeedSpec(f"vm{i}", alias, (key.with_suffix(".pub").read_text().strip(),), host_key),
            work / f"seed{i}.iso",
        )
        lines.append(f"{alias} {host_key.public}\n")
        port = free_port()
        argvs.append(_qemu_argv(vm, seed, port))
        sshs.append(_ssh_argv(key, known, alias, port))
    known.write_text("".join(lines))
    t0 = time.time()
    qemus = [
        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for argv in argvs
    ]
    pending = set(range(n))
    try:
        while pending:
            for i in sorted(pending):
                if qemus[i].poll() is not None:
                    raise SystemExit(f"QEMU of vm{i} exited with status {qemus[i].returncode}")
                if subprocess.run(sshs[i], check=False, capture_output=True).returncode == 0:
                    pending.discard(i)
            if pending and time.time() - t0 > 600:
                raise SystemExit(f"baseline VMs {sorted(pending)} did not answer ssh in 600 s")
            if pending:
                time.sleep(0.1)
        return time.time() - t0
    finally:
        for qemu in qemus:
            qemu.kill()
            qemu.wait()


@contextlib.contextmanager
def slurm_devcluster() -> Iterator[tuple[dict, dict[str, str]]]:
    """The Slurm dev cluster with its etcd: (batch.yaml content, environment); always stopped."""
    sys.path.insert(0, str(ROOT / "helpers"))
    import devcluster

    missing = devcluster.missing_binaries()
    if missing:
        raise SystemExit(f"slurm4 needs {', '.join(missing)} (see helpers/setup)")
    # not below a private tmp dir: munged wants every parent directory searchable by all
    directory = Path(tempfile.mkdtemp(prefix="alloc-ready-slurm-"))
    directory.chmod(0o755)
    try:
        with devcluster.DevCluster(directory) as cluster:
            env = cluster.env()
            endpoints = env["PCOCC_ETCD_ENDPOINTS"].split(",")
            batch = {
                "type": "slurm",
                "etcd": {"endpoints": [e.split("://")[-1] for e in endpoints]},
            }
            yield batch, env
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def report(name: str, base: list[float], ours: list[float]) -> None:
    b, o = statistics.median(base), statistics.median(ours)
    print(f"{name}: median time to ssh answers: qemu {b:.2f} s, pcocc alloc {o:.2f} s")
    verdict = "within" if o - b <= 1.5 else "above"
    print(f"{name}: overhead {o - b:+.2f} s, ratio {o / b:.2f}x ({verdict} the 1.5 s target)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--case", choices=("local1", "slurm4", "all"), default="all")
    args = parser.parse_args()
    outdir = Path(os.environ.get("PCOCC_TESTVM_DIR") or tempfile.mkdtemp(prefix="testvm-"))
    vm = load_builder().build(outdir)
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="alloc-ready-") as tmp:
            work = Path(tmp)
            if args.case in ("local1", "all"):
                ours, base = [], []
                for i in range(args.rounds):
                    base.append(time_baseline(work, vm))
                    ours.append(time_ours(work, vm))
                    print(f"local1 round {i + 1}: qemu {base[-1]:.2f} s,"
                          f" pcocc alloc {ours[-1]:.2f} s", flush=True)  # fmt: skip
                results.append(("local1 (testvm:1, local mode)", base, ours))
            if args.case in ("slurm4", "all"):
                ours, base = [], []
                with slurm_devcluster() as (batch, env):
                    for i in range(args.rounds):
                        base.append(time_baseline(work, vm, 4))
                        ours.append(time_ours(work, vm, 4, batch, env, ("-N", "4")))
                        print(f"slurm4 round {i + 1}: 4 qemu {base[-1]:.2f} s,"
                              f" pcocc alloc {ours[-1]:.2f} s", flush=True)  # fmt: skip
                results.append(("slurm4 (testvm:4 on 4 Slurm nodes)", base, ours))
    finally:
        if "PCOCC_TESTVM_DIR" not in os.environ:
            shutil.rmtree(outdir, ignore_errors=True)
    for name, base, ours in results:
        report(name, base, ours)
    return 0


if __name__ == "__main__":
    sys.exit(main())
