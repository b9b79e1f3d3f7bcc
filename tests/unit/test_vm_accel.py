"""Accelerator resolution with a fake probe; the real probe is in tests/integration."""

from __future__ import annotations

import json

import pytest

from pcocc.errors import PcoccError, UsageError
from pcocc.vm.accel import ProbeResult, cached_probe, resolve_accel


class FakeProbe:
    def __init__(self, usable: bool, reason: str = "guest hung") -> None:
        self.result = ProbeResult(usable, reason)
        self.calls = 0

    def __call__(self) -> ProbeResult:
        self.calls += 1
        return self.result


@pytest.fixture
def kvm_dev(tmp_path):
    """A file standing for a /dev/kvm that opens."""
    dev = tmp_path / "kvm"
    dev.write_bytes(b"")
    return dev


@pytest.fixture
def resolve(tmp_path, kvm_dev):
    warnings: list[str] = []

    def call(setting, probe, *, env=None, device=kvm_dev, boot_id="boot-1"):
        return resolve_accel(setting, probe=probe, cache_path=tmp_path / "cache" / "probe.json",
                             warn=warnings.append, env=env or {}, kvm_device=device,
                             boot_id=boot_id)

    call.warnings = warnings
    return call


def test_tcg_never_probes(resolve):
    probe = FakeProbe(True)
    assert resolve("tcg", probe) == "tcg"
    assert probe.calls == 0


def test_auto_uses_kvm_when_the_probe_boots(resolve):
    probe = FakeProbe(True, "ok")
    assert resolve("auto", probe) == "kvm"
    assert resolve(None, probe) == "kvm"
    assert resolve.warnings == []


def test_auto_falls_back_to_tcg_with_one_warning(resolve):
    probe = FakeProbe(False, "a guest did not boot within 15 s")
    assert resolve("auto", probe) == "tcg"
    assert len(resolve.warnings) == 1
    assert "a guest did not boot within 15 s" in resolve.warnings[0]
    assert "TCG" in resolve.warnings[0] and "\n" not in resolve.warnings[0]


def test_auto_without_kvm_device_is_tcg_without_probe(resolve, tmp_path):
    probe = FakeProbe(True)
    assert resolve("auto", probe, device=tmp_path / "no-kvm") == "tcg"
    assert probe.calls == 0


def test_explicit_kvm_needs_the_device(resolve, tmp_path):
    probe = FakeProbe(False)
    assert resolve("kvm", probe) == "kvm"  # explicit: trusted, not probed
    assert probe.calls == 0
    with pytest.raises(PcoccError) as info:
        resolve("kvm", probe, device=tmp_path / "no-kvm")
    assert "no-kvm" in str(info.value) and info.value.hint


def test_environment_overrides_the_setting(resolve):
    probe = FakeProbe(True)
    assert resolve("kvm", probe, env={"PCOCC_ACCEL": "tcg"}) == "tcg"
    assert resolve("tcg", probe, env={"PCOCC_ACCEL": "auto"}) == "kvm"
    assert resolve("tcg", probe, env={"PCOCC_ACCEL": ""}) == "tcg"


@pytest.mark.parametrize("setting, env, where", [
    ("fast", {}, "accel setting"),
    ("tcg", {"PCOCC_ACCEL": "kvmm"}, "PCOCC_ACCEL"),
])
def test_unknown_setting_is_a_usage_error(resolve, setting, env, where):
    with pytest.raises(UsageError) as info:
        resolve(setting, FakeProbe(True), env=env)
    assert where in str(info.value)
    assert info.value.exit_status == 2


def test_probe_runs_once_per_boot_of_the_host(resolve):
    probe = FakeProbe(False)
    assert resolve("auto", probe) == "tcg"
    assert resolve("auto", probe) == "tcg"
    assert probe.calls == 1
    assert len(resolve.warnings) == 2  # each run still says why it uses TCG
    assert resolve("auto", probe, boot_id="boot-2") == "tcg"
    assert probe.calls == 2


def test_damaged_cache_is_probed_again(tmp_path):
    cache = tmp_path / "probe.json"
    cache.write_text("{not json")
    probe = FakeProbe(True, "fine")
    assert cached_probe(probe, cache, boot_id="b") == ProbeResult(True, "fine")
    assert probe.calls == 1
    assert json.loads(cache.read_text()) == {"boot_id": "b", "is_usable": True, "reason": "fine"}
    assert cached_probe(probe, cache, boot_id="b").is_usable
    assert probe.calls == 1


def test_unwritable_cache_still_returns_the_result(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    probe = FakeProbe(True)
    assert cached_probe(probe, blocker / "sub" / "probe.json", boot_id="b").is_usable
    assert probe.calls == 1
