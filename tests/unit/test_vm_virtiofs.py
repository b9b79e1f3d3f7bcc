"""virtio-fs shares: QEMU arguments, virtiofsd command lines, preflight checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcocc.errors import PcoccError, ToolMissing
from pcocc.vm import virtiofs
from pcocc.vm.machine import Machine
from pcocc.vm.qemu import VmSpec, build_argv
from test_vm_qemu import AWKWARD, parse_qemu_opts


def values_of(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_shares_make_the_guest_ram_a_shared_memfd():
    spec = VmSpec(name="vm0", memory_mib=384,
                  fs_shares=(("pcocc0", Path("fs0.sock")), ("home", Path("fs1.sock"))))
    argv = build_argv(spec)
    backend = parse_qemu_opts(values_of(argv, "-object")[0])
    assert backend["_0"] == "memory-backend-memfd"
    assert (backend["size"], backend["share"]) == ("384M", "on")
    assert values_of(argv, "-numa") == [f"node,memdev={backend['id']}"]
    assert values_of(argv, "-m") == ["384"]  # the backend has the size of -m
    chardevs = [parse_qemu_opts(c) for c in values_of(argv, "-chardev")]
    devices = [parse_qemu_opts(d) for d in values_of(argv, "-device")]
    fs_devices = [d for d in devices if d["_0"] == "vhost-user-fs-pci"]
    assert [(d["tag"], d["chardev"]) for d in fs_devices] == [("pcocc0", "fs0"), ("home", "fs1")]
    by_id = {c["id"]: c for c in chardevs}
    assert (by_id["fs0"]["_0"], by_id["fs0"]["path"]) == ("socket", "fs0.sock")
    assert by_id["fs1"]["path"] == "fs1.sock"
    assert "server" not in by_id["fs0"]  # QEMU connects to virtiofsd's listening socket


def test_no_shares_no_memory_backend():
    argv = build_argv(VmSpec(name="vm0"))
    assert "-object" not in argv and "-numa" not in argv
    assert not any("vhost-user-fs" in a for a in argv)


def test_socket_paths_with_commas_are_escaped():
    sock = AWKWARD / "fs0.sock"
    argv = virtiofs.device_args(["t"], [sock])
    assert parse_qemu_opts(argv[1])["path"] == str(sock)


@pytest.mark.parametrize("tag", ["", "a,b", "with space", "x" * 37])
def test_bad_tags_are_refused(tag):
    with pytest.raises(PcoccError, match="invalid virtio-fs tag"):
        virtiofs.device_args([tag], ["fs0.sock"])
    with pytest.raises(PcoccError, match="invalid virtio-fs tag"):
        Machine(VmSpec(name="vm0", network=False), "/nonexistent",
                shares=[virtiofs.Share(tag, "/tmp")])


def test_virtiofsd_as_root_runs_directly():
    argv = virtiofs.virtiofsd_argv("/usr/lib/qemu/virtiofsd", 7, "/data", as_root=True)
    assert argv[0] == "/usr/lib/qemu/virtiofsd"
    assert "--fd=7" in argv and "source=/data" in argv
    assert "--socket-path" not in " ".join(argv)  # its lock dir is root's


def test_virtiofsd_as_user_runs_in_a_mapped_user_namespace():
    argv = virtiofs.virtiofsd_argv("/v", 5, "/home/u/d", as_root=False)
    assert argv[:3] == ["unshare", "--map-root-user", "--map-auto"]
    assert argv[3:5] == ["/v", "--fd=5"]
    assert argv[argv.index("-o", 5) + 1] == "source=/home/u/d"


def test_readonly_share_is_a_readonly_bind_mount_in_its_own_namespace():
    argv = virtiofs.virtiofsd_argv("/v", 5, "/opt/apps", as_root=False, readonly=True)
    assert argv[:4] == ["unshare", "--map-root-user", "--map-auto", "--mount"]
    script_at = argv.index("-c") + 1
    assert "mount --bind -o ro" in argv[script_at]
    assert argv[script_at + 1] == "/opt/apps"  # $0 of the script
    assert argv[script_at + 2:script_at + 4] == ["/v", "--fd=5"]
    root = virtiofs.virtiofsd_argv("/v", 5, "/opt/apps", as_root=True, readonly=True)
    assert root[:2] == ["unshare", "--mount"]


def test_missing_virtiofsd_names_the_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(virtiofs, "VIRTIOFSD_PATHS", ("/nonexistent/virtiofsd",))
    with pytest.raises(ToolMissing) as err:
        virtiofs.find_virtiofsd()
    assert "virtiofsd" in err.value.message
    assert "qemu-system-common" in err.value.hint


def test_virtiofsd_is_found_outside_path(monkeypatch, tmp_path):
    binary = tmp_path / "virtiofsd"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(virtiofs, "VIRTIOFSD_PATHS", ("/nonexistent/x", str(binary)))
    assert virtiofs.find_virtiofsd() == str(binary)


def test_users_need_subordinate_ids(tmp_path):
    subuid, subgid = tmp_path / "subuid", tmp_path / "subgid"
    subuid.write_text("alice:100000:65536\n")
    subgid.write_text("1234:100000:65536\n")
    virtiofs.check_unprivileged(1234, "alice", subuid, subgid)  # by name, then by uid
    virtiofs.check_unprivileged(0, "root", tmp_path / "none", tmp_path / "none")
    with pytest.raises(PcoccError, match=f"user bob has no range in {subuid}") as err:
        virtiofs.check_unprivileged(1235, "bob", subuid, subgid)
    assert "usermod --add-subuids" in err.value.hint


def test_machine_refuses_a_missing_share_before_starting_anything(tmp_path):
    machine = Machine(VmSpec(name="vm0", network=False), tmp_path / "run",
                      shares=[virtiofs.Share("home", str(tmp_path / "missing"))])
    with pytest.raises(PcoccError, match=r"VM vm0: cannot share .*missing \(tag home\)"):
        machine.launch()
    assert machine.process is None and not (tmp_path / "run").exists()


def test_9p_shares_are_served_by_qemu_without_shared_memory():
    shares = (virtiofs.Share("data", "/srv/data", type="virtio-9p"),
              virtiofs.Share("ro", str(AWKWARD), readonly=True, type="virtio-9p"))
    argv = build_argv(VmSpec(name="vm0", ninep_shares=shares))
    assert "-object" not in argv and "-numa" not in argv
    fsdevs = [parse_qemu_opts(f) for f in values_of(argv, "-fsdev")]
    assert [(f["_0"], f["path"], f["security_model"], f.get("readonly")) for f in fsdevs] == [
        ("local", "/srv/data", "none", None), ("local", str(AWKWARD), "none", "on")]
    devices = [parse_qemu_opts(d) for d in values_of(argv, "-device")]
    ninep = [(d["fsdev"], d["mount_tag"]) for d in devices if d["_0"] == "virtio-9p-pci"]
    assert ninep == [(fsdevs[0]["id"], "data"), (fsdevs[1]["id"], "ro")]


def test_machine_gives_9p_shares_to_qemu_and_starts_no_virtiofsd(tmp_path):
    machine = Machine(VmSpec(name="vm0", network=False), tmp_path / "run",
                      shares=[virtiofs.Share("a", str(tmp_path), type="virtio-9p"),
                              virtiofs.Share("b", str(tmp_path))])
    assert [s.tag for s in machine.shares] == ["b"]
    assert [s.tag for s in machine.ninep_shares] == ["a"]
    with pytest.raises(PcoccError, match="invalid virtio-fs tag"):
        Machine(VmSpec(name="vm0", network=False), tmp_path / "run",
                shares=[virtiofs.Share("a b", str(tmp_path), type="virtio-9p")])
