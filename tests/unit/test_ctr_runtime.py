"""Runtime registry, quirk detection and spec adaptation, probe cache (no containers run)."""

from __future__ import annotations

import json

import pytest

from pcocc.ctr import runtime as rt
from pcocc.errors import ConfigError

HYBRID = """\
25 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
26 25 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
27 26 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
28 26 0:25 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
"""
UNIFIED = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
LEGACY = HYBRID.replace("27 26 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n", "")


def test_cgroup_layout_detection():
    assert rt.cgroup_layout(HYBRID) == "hybrid"
    assert rt.cgroup_layout(UNIFIED) == "unified"
    assert rt.cgroup_layout(LEGACY) == "legacy"
    assert rt.cgroup_layout("") == "none"


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
    monkeypatch.setattr(rt, "is_rootless", lambda: True)
    spec = rt.Crun({"wrap": "unified-bind"}).adapt_spec(_spec())
    assert spec["linux"]["uidMappings"] == [{"containerID": 1000, "hostID": 0, "size": 1}]
    assert "resources" not in spec["linux"]
    assert spec["process"]["user"] == {"uid": 1000, "gid": 100}


def test_crun_direct_keeps_ids(monkeypatch):
    monkeypatch.setattr(rt, "is_rootless", lambda: True)
    spec = rt.Crun({}).adapt_spec(_spec())
    assert spec["linux"]["uidMappings"][0]["hostID"] == 1000


def test_runc_rootless_maps_root(monkeypatch):
    monkeypatch.setattr(rt, "is_rootless", lambda: True)
    spec = rt.Runc({}).adapt_spec(_spec())
    assert spec["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 1000, "size": 1}]
    assert spec["process"]["user"] == {"uid": 0, "gid": 0}


def test_wrapper_only_when_probed_so(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(rt, "is_rootless", lambda: False)
    plain = rt.Crun({}).run_argv(tmp_path, "c1")
    wrapped = rt.Crun({"wrap": "unified-bind"}).run_argv(tmp_path, "c1")
    assert "unshare" not in plain[0] and "--cgroup-manager=disabled" not in plain
    assert wrapped[0].endswith("unshare") and "--cgroup-manager=disabled" in wrapped
    assert "/sys/fs/cgroup/unified" in wrapped and "--user" not in wrapped
    monkeypatch.setattr(rt, "is_rootless", lambda: True)
    assert "--map-root-user" in rt.Crun({"wrap": "unified-bind"}).run_argv(tmp_path, "c1")


def test_unknown_runtime_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown container runtime 'docker'"):
        rt.get_runtime("docker")


def test_vm_runtime_is_chosen_only_by_name(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert "vm" not in rt.AUTO_ORDER and "vm" in rt.RUNTIMES
    monkeypatch.setattr(rt.VmRuntime, "check_installed", lambda self: None)
    monkeypatch.setattr(rt, "try_mode", lambda cls, mode: pytest.fail("vm must not be probed"))
    vm = rt.get_runtime("vm")
    assert isinstance(vm, rt.VmRuntime)
    argv = vm.run_argv(tmp_path / "bundle", "pcocc-x-app")
    assert argv[-3:] == ["pcocc.ctr.vmrun", str(tmp_path / "bundle"), "pcocc-x-app"]
    with pytest.raises(rt.PcoccError, match="cannot be entered"):
        vm.exec_argv("c", ["sh"], record={})


def test_probe_result_is_cached_per_boot(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(rt, "boot_id", lambda: "boot-1")
    calls = []

    def fake_try(cls, mode):
        calls.append((cls.name, mode))
        return None if mode else "cgroups in hybrid mode not supported"

    monkeypatch.setattr(rt, "try_mode", fake_try)
    monkeypatch.setattr(rt.Crun, "candidate_modes", lambda self: [{}, {"wrap": "unified-bind"}])
    first = rt.probe("crun")
    assert first.mode == {"wrap": "unified-bind"} and len(calls) == 2
    again = rt.probe("crun")
    assert again.mode == first.mode and len(calls) == 2  # from the cache
    cache = json.loads((tmp_path / "pcocc" / "probe-boot-1.json").read_text())
    assert any(k.startswith("crun:") for k in cache["runtimes"])
    monkeypatch.setattr(rt, "boot_id", lambda: "boot-2")  # a reboot probes again
    rt.probe("crun")
    assert len(calls) == 4


def test_unusable_runtime_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(rt, "try_mode", lambda cls, mode: "broken here")
    with pytest.raises(rt.RuntimeUnusable, match="'runc' does not work on this host: broken"):
        rt.probe("runc")


def test_auto_takes_the_first_usable(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(rt, "try_mode", lambda cls, mode: None if cls is rt.Runc else "no")
    assert rt.get_runtime("auto").name == "runc"


def test_join_namespaces_sets_paths_of_shared_ones_only():
    spec = {"linux": {"namespaces": [{"type": t} for t in ("pid", "mount", "user", "network")]}}
    joined = rt.join_namespaces(spec, {"user": "/proc/1/fd/3", "network": "/proc/1/fd/4"})
    assert joined["linux"]["namespaces"] == [
        {"type": "pid"},
        {"type": "mount"},
        {"type": "user", "path": "/proc/1/fd/3"},
        {"type": "network", "path": "/proc/1/fd/4"},
    ]
    assert "path" not in spec["linux"]["namespaces"][2]  # the input is left alone
    assert set(rt.SHARED_NAMESPACES) == {"user", "ipc", "uts", "network"}
