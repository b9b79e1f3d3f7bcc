"""Runtime registry, quirk detection and spec adaptation, probe cache, namespace joining
(no containers run)."""

from __future__ import annotations

import json
import sys

import pytest

import pcocc.ctr.runtimes
from pcocc.ctr import host, nsjoin, probe
from pcocc.ctr.runtimes import base
from pcocc.ctr.runtimes.oci import Crun, Runc
from pcocc.ctr.runtimes.vm import VmRuntime
from pcocc.errors import ConfigError, PcoccError

HYBRID = """\
25 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
26 25 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
27 26 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
28 26 0:25 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
"""
UNIFIED = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
LEGACY = HYBRID.replace("27 26 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n", "")


def test_cgroup_layout_detection():
    assert host.cgroup_layout(HYBRID) == "hybrid"
    assert host.cgroup_layout(UNIFIED) == "unified"
    assert host.cgroup_layout(LEGACY) == "legacy"
    assert host.cgroup_layout("") == "none"


def _spec():
    return {
        "process": {"user": {"uid": 1000, "gid": 100}},
        "linux": {
            "resources": {"devices": []},
            "uidMappings": [{"containerID": 1000, "hostID": 1000, "size": 1}],
            "gidMappings": [{"containerID": 100, "hostID": 100, "size": 1}],
        },
    }


def test_crun_wrapped_rootless_rewrites_host_ids(monkeypatch):
    monkeypatch.setattr(host, "is_rootless", lambda: True)
    spec = Crun({"wrap": "unified-bind"}).adapt_spec(_spec())
    assert spec["linux"]["uidMappings"] == [{"containerID": 1000, "hostID": 0, "size": 1}]
    assert "resources" not in spec["linux"]
    assert spec["process"]["user"] == {"uid": 1000, "gid": 100}


def test_crun_direct_keeps_ids(monkeypatch):
    monkeypatch.setattr(host, "is_rootless", lambda: True)
    spec = Crun({}).adapt_spec(_spec())
    assert spec["linux"]["uidMappings"][0]["hostID"] == 1000


def test_runc_rootless_maps_root(monkeypatch):
    monkeypatch.setattr(host, "is_rootless", lambda: True)
    spec = Runc({}).adapt_spec(_spec())
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 1000, "size": 1}]
    assert spec["process"]["user"] == {"uid": 0, "gid": 0}


def test_wrapper_only_when_probed_so(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(host, "is_rootless", lambda: False)
    plain = Crun({}).run_argv(tmp_path, "c1")
    wrapped = Crun({"wrap": "unified-bind"}).run_argv(tmp_path, "c1")
    assert "unshare" not in plain[0] and "--cgroup-manager=disabled" not in plain
    assert wrapped[0].endswith("unshare") and "--cgroup-manager=disabled" in wrapped
    assert "/sys/fs/cgroup/unified" in wrapped and "--user" not in wrapped
    monkeypatch.setattr(host, "is_rootless", lambda: True)
    assert "--map-root-user" in Crun({"wrap": "unified-bind"}).run_argv(tmp_path, "c1")


def test_unknown_runtime_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown container runtime 'docker'"):
        probe.get_runtime("docker")


def test_vm_runtime_is_chosen_only_by_name(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert "vm" not in base.AUTO_ORDER and "vm" in base.BACKEND_MODULES
    monkeypatch.setattr(VmRuntime, "check_installed", lambda self: None)
    monkeypatch.setattr(probe, "try_mode", lambda cls, mode: pytest.fail("vm must not be probed"))
    vm = probe.get_runtime("vm")
    assert isinstance(vm, VmRuntime)
    argv = vm.run_argv(tmp_path / "bundle", "pcocc-x-app")
    assert argv[-3:] == ["pcocc.ctr.vmrun", str(tmp_path / "bundle"), "pcocc-x-app"]
    with pytest.raises(PcoccError, match="cannot be entered"):
        vm.exec_argv("c", ["sh"], record={})


def test_probe_result_is_cached_per_boot(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(host, "boot_id", lambda: "boot-1")
    calls = []

    def fake_try(cls, mode):
        calls.append((cls.name, mode))
        return None if mode else "cgroups in hybrid mode not supported"

    monkeypatch.setattr(probe, "try_mode", fake_try)
    monkeypatch.setattr(Crun, "candidate_modes", lambda self: [{}, {"wrap": "unified-bind"}])
    first = probe.probe("crun")
    assert first.mode == {"wrap": "unified-bind"} and len(calls) == 2
    again = probe.probe("crun")
    assert again.mode == first.mode and len(calls) == 2  # from the cache
    cache = json.loads((tmp_path / "pcocc" / "probe-boot-1.json").read_text())
    assert any(k.startswith("crun:") for k in cache["runtimes"])
    monkeypatch.setattr(host, "boot_id", lambda: "boot-2")  # a reboot probes again
    probe.probe("crun")
    assert len(calls) == 4


def test_unusable_runtime_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(probe, "try_mode", lambda cls, mode: "broken here")
    with pytest.raises(probe.RuntimeUnusable, match="'runc' does not work on this host: broken"):
        probe.probe("runc")


def test_auto_takes_the_first_usable(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(probe, "try_mode", lambda cls, mode: None if cls is Runc else "no")
    assert probe.get_runtime("auto").name == "runc"


def test_join_namespaces_sets_paths_of_shared_ones_only():
    spec = {"linux": {"namespaces": [{"type": t} for t in ("pid", "mount", "user", "network")]}}
    joined = nsjoin.join_namespaces(spec, {"user": "/proc/1/fd/3", "network": "/proc/1/fd/4"})
    assert joined["linux"]["namespaces"] == [
        {"type": "pid"},
        {"type": "mount"},
        {"type": "user", "path": "/proc/1/fd/3"},
        {"type": "network", "path": "/proc/1/fd/4"},
    ]
    assert "path" not in spec["linux"]["namespaces"][2]  # the input is left alone
    assert set(nsjoin.SHARED_NAMESPACES) == {"user", "ipc", "uts", "network"}


def test_only_the_backend_asked_for_is_imported(monkeypatch):
    """``--runtime crun`` (the hot path of ``pcocc run``) loads neither unshare nor vm."""
    for short in ("oci", "unshare", "vm"):
        monkeypatch.delitem(sys.modules, f"pcocc.ctr.runtimes.{short}", raising=False)
        monkeypatch.delattr(pcocc.ctr.runtimes, short, raising=False)
    monkeypatch.setattr(base, "_REGISTRY", {})
    assert base.runtime_class("crun").name == "crun"
    assert "pcocc.ctr.runtimes.oci" in sys.modules
    assert "pcocc.ctr.runtimes.unshare" not in sys.modules
    assert "pcocc.ctr.runtimes.vm" not in sys.modules
    assert base.runtime_class("unshare").name == "unshare"
    assert "pcocc.ctr.runtimes.vm" not in sys.modules


class _EndingRuntime:
    """A runtime process that has ended (or ends when waited for) with ``status``."""

    def __init__(self, status: int, ended: bool):
        self.status, self.ended = status, ended

    def poll(self):
        return self.status if self.ended else None

    def wait(self, timeout=None):
        self.ended = True
        return self.status

    @property
    def returncode(self):
        return self.status if self.ended else None


@pytest.mark.parametrize("status, started", [(0, True), (1, False)])
def test_a_stopped_container_started_only_if_its_runtime_says_so(monkeypatch, status, started):
    """runc shows a failed exec (no such program) as "stopped" while its own process still
    runs: the runtime's exit status decides, not the state."""
    runtime = Runc({})
    monkeypatch.setattr(runtime, "container_state", lambda cid: {"status": "stopped"})
    assert runtime.wait_started("c1", _EndingRuntime(status, ended=False)) is started


def test_a_running_container_has_started(monkeypatch):
    runtime = Crun({})
    monkeypatch.setattr(runtime, "container_state", lambda cid: {"status": "running"})
    assert runtime.wait_started("c1", _EndingRuntime(0, ended=False)) is True
