"""The benchmarks' baselines wait the way pcocc waits (issue 18, fair baselines)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import pytest

from pcocc.vm import readiness
from pcocc.vm.machine import Machine
from pcocc.vm.qemu import VmSpec

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


class AliveQemu:
    returncode = None

    def poll(self):
        return None


def test_alloc_ready_baseline_waits_with_pcoccs_readiness_function(monkeypatch):
    alloc_ready = load_benchmark("alloc_ready")
    calls: list[tuple] = []

    def banner(port, address, deadline, check=lambda: None):
        check()
        calls.append(("banner", port, address))
        return True

    monkeypatch.setattr(readiness, "wait_ssh_banner", banner)
    monkeypatch.setattr(alloc_ready, "run_ssh", lambda argv: calls.append(("ssh", argv)) or 0)
    alloc_ready.wait_answered(AliveQemu(), 2222, ["ssh", "true"], time.monotonic() + 5)
    assert calls == [("banner", 2222, "127.0.0.1"), ("ssh", ["ssh", "true"])]


def test_alloc_ready_baseline_ssh_has_no_connect_timeout_quantum():
    alloc_ready = load_benchmark("alloc_ready")
    argv = alloc_ready._ssh_argv(Path("k"), Path("kh"), "a", 22)
    assert not any(a.startswith("ConnectTimeout") for a in argv)


def test_pcocc_machine_waits_with_the_same_function(monkeypatch, tmp_path):
    vm = Machine(VmSpec(name="vm0"), tmp_path / "run")
    vm.process, vm.spec, vm.ssh_port = AliveQemu(), vm.base_spec, 4022
    seen = []

    def banner(port, address, deadline, check=lambda: None):
        seen.append((port, address))
        return True

    monkeypatch.setattr(readiness, "wait_ssh_banner", banner)
    vm._wait_until_up()
    assert seen == [(4022, "127.0.0.1")]


def test_readiness_is_polled_every_50_ms(monkeypatch):
    sleeps, answers = [], iter([False, False, True])
    monkeypatch.setattr(readiness.time, "sleep", sleeps.append)
    assert readiness.wait_ready(lambda: next(answers), time.monotonic() + 5)
    assert sleeps == [0.05, 0.05]


def test_readiness_gives_up_at_the_deadline_and_stops_when_qemu_died(monkeypatch):
    monkeypatch.setattr(readiness.time, "sleep", lambda s: None)
    assert not readiness.wait_ready(lambda: False, time.monotonic() - 1)

    def died():
        raise RuntimeError("qemu died")

    with pytest.raises(RuntimeError):
        readiness.wait_ready(lambda: True, time.monotonic() + 5, died)


@pytest.mark.parametrize("path", sorted(p.name for p in BENCH.glob("*.py")
                                        if p.stat().st_mode & 0o111))
def test_every_benchmark_states_its_baseline_and_has_a_quick_mode(path):
    text = (BENCH / path).read_text()
    assert "benchlib.baseline(" in text, f"{path} prints no 'baseline:' line"
    assert "benchlib.add_quick(" in text, f"{path} has no --quick"
    assert "benchlib.figure(" in text, f"{path} records no figure for the report"
