"""The KVM probe cache shared by processes that start together."""

from __future__ import annotations

import json
import multiprocessing
import os
import time

from pcocc.vm.accel import ProbeResult, cached_probe


def _start_vm_probe(cache, log_path, barrier, results):
    barrier.wait()
    results.put(cached_probe(_slow_probe_recording_in(log_path), cache, boot_id="b").reason)


def _slow_probe_recording_in(log_path):
    def probe() -> ProbeResult:
        with open(log_path, "a") as log:
            log.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # long enough for the other starter to reach the cache meanwhile
        return ProbeResult(False, "guest hung")

    return probe


def test_vms_starting_together_run_one_probe(tmp_path):
    """Two processes probing at once: one probes, the other waits and reads its answer."""
    ctx = multiprocessing.get_context("fork")
    cache, probes = tmp_path / "cache" / "probe.json", tmp_path / "probes.log"
    barrier, results = ctx.Barrier(2), ctx.Queue()
    starters = [
        ctx.Process(target=_start_vm_probe, args=(cache, probes, barrier, results))
        for _ in range(2)
    ]
    for p in starters:
        p.start()
    reasons = [results.get(timeout=30) for _ in starters]
    for p in starters:
        p.join(30)
        assert p.exitcode == 0
    assert len(probes.read_text().splitlines()) == 1
    assert reasons == ["guest hung", "guest hung"]
    assert json.loads(cache.read_text())["reason"] == "guest hung"
