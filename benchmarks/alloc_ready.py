#!/usr/bin/env python3
"""Time from ``pcocc alloc`` to ssh answers of its VMs, against plain QEMU.

Cases (``--case``, comma-separated), each run side by side with its baseline:

local1, local2, local4:
           ours: ``pcocc alloc -E '<pcocc ssh vmI true, I=0..N-1, in parallel>' testvm:N``
           (local mode, private etcd, TCG), from the start of pcocc until every ssh returned;
slurm4:    the same for testvm:4 ``-- -N 4`` on the Slurm development cluster
           (helpers/devcluster.py: 4 slurmd and etcd on this host, started and stopped here);
baseline:  N QEMUs started at once on the same kernel, initramfs, seed and QEMU options; for
           each, the ssh banner polled through the forwarded port every 50 ms by pcocc's own
           readiness function (``pcocc.vm.readiness.wait_ssh_banner``, what pcocc's node process
           does), then one ``ssh true``: what ``pcocc ssh`` does next.

Prints both medians per case, the overhead and the ratio (targets: overhead at most 0.5 s for
local1, 1 s for slurm4), and where pcocc's time goes: the phases pcocc marks when
``$PCOCC_TIMING`` names a file (pcocc/timing.py), in seconds since pcocc started. Builds the
test VM with helpers/build_testvm.py (cached in $PCOCC_TESTVM_DIR if set).

    python benchmarks/alloc_ready.py [--rounds N] [--case local1,...|all] [--quick]
"""

from __future__ import annotations

import argparse
import concurrent.futures
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

import benchlib
from pcocc import timing
from pcocc.vm import readiness

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
    # an installed pcocc has its bytecode: do not time the compiler (see warm_bytecode)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
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


def warm_bytecode() -> None:
    """Compile pcocc's bytecode (in its __pycache__ dirs), as an installed package has it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "pcocc")],
                   check=True, env=env, stdout=subprocess.DEVNULL)


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
    if timing.ENV in env:
        Path(env[timing.ENV]).write_text(f"{t0:.6f} 0 {START}\n")
    res = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=900)
    if res.returncode != 0 or not stamp.exists():
        raise SystemExit(f"pcocc alloc failed ({res.returncode}): {res.stderr.strip()}")
    return float(stamp.read_text()) - t0


START = "benchmark: pcocc alloc started"
SPAWNED = "machine: QEMU spawned"
UP = "machine: guest up (ssh banner or agent)"


def timing_env() -> str:
    return timing.ENV


def read_timing(path: Path, total: float) -> dict[str, float]:
    """Seconds from pcocc's start to each phase pcocc marked (the slowest VM's for per-VM
    phases), and to the answer of the last ``pcocc ssh``."""
    phases: dict[str, float] = {}
    t0 = None
    for line in path.read_text().splitlines() if path.exists() else ():
        stamp, _pid, phase = line.split(" ", 2)
        if phase == START:
            t0 = float(stamp)
            continue
        phases[phase] = max(phases.get(phase, 0.0), float(stamp))
    if t0 is None:
        return {}
    out = {phase: at - t0 for phase, at in phases.items()}
    out["benchmark: every `pcocc ssh vmI true` returned"] = total
    return out


def median_phases(rounds: list[dict[str, float]]) -> dict[str, float]:
    names = set().union(*rounds) if rounds else set()
    return {n: statistics.median(r[n] for r in rounds if n in r) for n in names}


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
        "-o", "LogLevel=ERROR",
        "root@127.0.0.1",
        "true",
    ]  # fmt: skip


def run_ssh(argv: list[str]) -> int:
    return subprocess.run(argv, check=False, capture_output=True, timeout=120).returncode


def wait_answered(qemu: subprocess.Popen, port: int, ssh: list[str], deadline: float) -> None:
    """What pcocc does before ``pcocc ssh``, then that ssh: the banner polled with pcocc's own
    readiness function (same probe, same pace), then one ``ssh true`` (retried only if the
    guest's sshd accepted the banner but not yet the login, as a user would)."""

    def alive() -> None:
        if qemu.poll() is not None:
            raise SystemExit(f"baseline QEMU exited with status {qemu.returncode}")

    while True:
        if not readiness.wait_ssh_banner(port, "127.0.0.1", deadline, alive):
            raise SystemExit(f"baseline VM on port {port} sent no ssh banner in time")
        if run_ssh(ssh) == 0:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"baseline VM on port {port} refused ssh until the deadline")


def time_baseline(work: Path, vm: dict, n: int = 1) -> float:
    """Seconds from starting ``n`` QEMUs at once until each one answered ``ssh true``."""
    from pcocc.vm.seed import SeedSpec, build_seed, generate_host_key

    key = work / "id_ed25519"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    known = work / "known_hosts"
    lines, argvs, sshs, ports = [], [], [], []
    for i in range(n):
        alias = f"bench{i}"
        host_key = generate_host_key()
        seed = build_seed(
            SeedSpec(f"vm{i}", alias, (key.with_suffix(".pub").read_text().strip(),), host_key),
            work / f"seed{i}.iso",
        )
        lines.append(f"{alias} {host_key.public}\n")
        port = free_port()
        ports.append(port)
        argvs.append(_qemu_argv(vm, seed, port))
        sshs.append(_ssh_argv(key, known, alias, port))
    known.write_text("".join(lines))
    t0 = time.time()
    deadline = time.monotonic() + 600
    qemus = [
        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for argv in argvs
    ]
    try:
        # one waiter per VM, in parallel, as pcocc's node processes wait for their own VMs
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            list(pool.map(wait_answered, qemus, ports, sshs, [deadline] * n))
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


BASELINE = ("QEMU started directly with pcocc's kernel, initramfs, seed ISO, memory, CPU and"
            " user-net options (without pcocc's QMP socket, console log and guest-agent"
            " channel), one thread per VM polling the ssh banner through the forwarded port"
            " every 50 ms with pcocc's own readiness function"
            " (pcocc.vm.readiness.wait_ssh_banner), then one `ssh true`")
#: overhead over the baseline, in seconds, per case (issue 18)
TARGETS = {"local1": "<= 0.5", "slurm4": "<= 1"}
CASES = ("local1", "local2", "local4", "slurm4")
#: --quick: 4 VMs once only (on the dev cluster, where its target is), 1 round each
QUICK_CASES = ("local1", "local2", "slurm4")


def report(case: str, n: int, base: list[float], ours: list[float],
           phases: dict[str, float], plot_base: bool = True) -> None:
    b, o = statistics.median(base), statistics.median(ours)
    where = "Slurm dev cluster, 4 nodes" if case == "slurm4" else "local mode"
    print(f"{case} (testvm:{n}, {where}): median of {len(base)}: qemu {b:.2f} s,"
          f" pcocc alloc {o:.2f} s")
    target = TARGETS.get(case)
    ok = benchlib.figure(f"{case}: overhead of pcocc alloc over QEMU alone", o - b, "s", target)
    benchlib.figure(f"{case}: ratio pcocc alloc / QEMU alone", o / b, "x")
    verdict = "" if ok is None else (" (target " + target + " s: " +
                                     ("met" if ok else "missed") + ")")
    print(f"{case}: overhead {o - b:+.2f} s, ratio {o / b:.2f}x{verdict}")
    series = "pcocc alloc (Slurm dev cluster)" if case == "slurm4" else "pcocc alloc (local)"
    for name, value in ((series, o), ("QEMU alone", b))[: 2 if plot_base else 1]:
        benchlib.point("alloc_vs_vms", name, n, value, title="Time to first ssh answer of"
                       " every VM", xlabel="number of VMs", ylabel="seconds (median)")
    if phases:
        print(f"{case}: where pcocc's time goes (median seconds since pcocc started):")
        for phase, at in sorted(phases.items(), key=lambda kv: kv[1]):
            print(f"  {at:7.2f}  {phase}")
        spawned, up = phases.get(SPAWNED), phases.get(UP)
        if spawned is not None and up is not None:
            benchlib.figure(f"{case}: pcocc start until the last QEMU is spawned", spawned, "s")
            benchlib.figure(f"{case}: QEMU spawn to guest up in pcocc (QEMU alone, start to"
                            f" ssh answer: {b:.2f} s)", up - spawned, "s")
            benchlib.figure(f"{case}: guest up to `pcocc ssh` answered", o - up, "s")


def run_case(case: str, rounds: int, work: Path, vm: dict, plot_base: bool = True) -> None:
    n = int(case[-1])
    ours, base, timings = [], [], []
    with contextlib.ExitStack() as stack:
        if case == "slurm4":
            batch, env = stack.enter_context(slurm_devcluster())
            args: tuple[str, ...] = ("-N", "4")
        else:
            batch, env, args = None, {}, ()
        for i in range(rounds):
            base.append(time_baseline(work, vm, n))
            timing = work / f"timing-{case}-{i}"
            ours.append(time_ours(work, vm, n, batch, {**env, timing_env(): str(timing)},
                                  args))
            timings.append(read_timing(timing, ours[-1]))
            print(f"{case} round {i + 1}: qemu {base[-1]:.2f} s,"
                  f" pcocc alloc {ours[-1]:.2f} s", flush=True)
    report(case, n, base, ours, median_phases(timings), plot_base)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="default 3, quick 1")
    parser.add_argument("--case", default="all",
                        help=f"comma-separated of {', '.join(CASES)} (default all;"
                             f" quick: {', '.join(QUICK_CASES)})")
    benchlib.add_quick(parser)
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    if args.case == "all":
        cases = QUICK_CASES if args.quick else CASES
    else:
        cases = tuple(args.case.split(","))
    if set(cases) - set(CASES):
        parser.error(f"--case: choose among {', '.join(CASES)}")
    benchlib.baseline(BASELINE)
    outdir = Path(os.environ.get("PCOCC_TESTVM_DIR") or tempfile.mkdtemp(prefix="testvm-"))
    vm = load_builder().build(outdir)
    try:
        with tempfile.TemporaryDirectory(prefix="alloc-ready-") as tmp:
            warm_bytecode()
            for case in cases:
                # QEMU alone does not care whether pcocc runs on Slurm: one point per size
                plot_base = not (case == "slurm4" and "local4" in cases)
                run_case(case, rounds, Path(tmp), vm, plot_base)
    finally:
        if "PCOCC_TESTVM_DIR" not in os.environ:
            shutil.rmtree(outdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
