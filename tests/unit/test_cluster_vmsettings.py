"""Template settings made real for one VM: run-time placeholders, persistent drives,
full-node, disk-model (the QEMU drives that the node process builds)."""

from __future__ import annotations


import pytest

from pcocc.cluster import jobs, vmsettings
from pcocc.cluster.vmbuild import persistent_disks
from pcocc.cluster.definition import build_definition
from pcocc.cluster.vmsettings import PersistentDrive
from pcocc.errors import ConfigError, UsageError
from pcocc.vm.qemu import Drive

KERNEL = {"kernel": "/boot/vmlinuz", "resources": {"cores": 1}}


def test_runtime_settings_expand_clusterdir_and_rank_in_the_vm_settings():
    settings = {
        "custom-args": ["-pidfile", "%{clusterdir}/vm%{vm_rank}.pid", "-x", "%%{kept}"],
        "mount-points": {"scratch": {"path": "%{clusterdir}/s%{vm_rank}", "readonly": True}},
        "persistent-drives": ["/d/%{vm_rank}.raw", {"path": "%{clusterdir}/x.qcow2"}],
        "user-data": "/ud/%{vm_rank}.sh",
        "description": "left %{vm_rank} alone",
    }
    out = vmsettings.runtime_settings(settings, clusterdir="/run/c 1", vm_rank=3)
    assert out["custom-args"] == ["-pidfile", "/run/c 1/vm3.pid", "-x", "%{kept}"]
    assert out["mount-points"] == {"scratch": {"path": "/run/c 1/s3", "readonly": True}}
    assert out["persistent-drives"] == ["/d/3.raw", {"path": "/run/c 1/x.qcow2"}]
    assert out["user-data"] == "/ud/3.sh"
    assert out["description"] == "left %{vm_rank} alone"
    assert settings["custom-args"][1] == "%{clusterdir}/vm%{vm_rank}.pid"  # not modified


def test_persistent_drive_entries_and_formats():
    drives = vmsettings.persistent_drives(
        {"persistent-drives": ["/a.qcow2", {"path": "/b.img", "cache": "none", "readonly": True},
                               {"path": "/c.data", "format": "raw"}]}
    )
    assert drives == [
        PersistentDrive("/a.qcow2"),
        PersistentDrive("/b.img", cache="none", readonly=True),
        PersistentDrive("/c.data", format="raw"),
    ]
    assert [vmsettings.drive_format("t", d) for d in drives] == ["qcow2", "raw", "raw"]
    with pytest.raises(ConfigError, match="template 't': persistent drive '/d.vmdk': cannot"
                       " tell its format") as err:
        vmsettings.drive_format("t", PersistentDrive("/d.vmdk"))
    assert "format: raw" in err.value.hint


def _vms(spec: str, templates: dict) -> list:
    definition = build_definition(spec, templates)
    return [(vm.template, vm.rank, vm.settings) for vm in definition.vms]


def test_check_drives_accepts_per_rank_and_shared_readonly_files(tmp_path):
    for name in ("d1.raw", "d2.raw", "shared.qcow2"):
        (tmp_path / name).write_bytes(b"")
    tpl = {**KERNEL, "persistent-drives": [
        f"{tmp_path}/d%{{vm_rank}}.raw",
        {"path": f"{tmp_path}/shared.qcow2", "readonly": True},
        {"path": "%{clusterdir}/later.qcow2"},  # cannot exist yet: checked on the node
    ]}
    probed = []
    # ranks 1 and 2: the template comes second in the definition
    vmsettings.check_drives(
        _vms("other:1,t:2", {"t": tpl, "other": KERNEL}),
        probe=lambda p: probed.append(p) or "qcow2",
    )
    assert probed == [f"{tmp_path}/shared.qcow2"] * 2


def test_check_drives_refuses_a_file_two_vms_would_write(tmp_path):
    (tmp_path / "data.raw").write_bytes(b"")
    tpl = {**KERNEL, "persistent-drives": [str(tmp_path / "data.raw")]}
    with pytest.raises(ConfigError) as err:
        vmsettings.check_drives(_vms("t:2", {"t": tpl}))
    assert str(err.value) == (
        f"template 't': persistent drive '{tmp_path}/data.raw' would be written by more than"
        " one VM: vm0 (t), vm1 (t)"
    )
    assert "%{vm_rank}" in err.value.hint and "readonly: true" in err.value.hint
    # read-only for one VM but written by the other: still refused
    other = {**KERNEL, "persistent-drives": [{"path": str(tmp_path / "data.raw"),
                                              "readonly": True}]}
    with pytest.raises(ConfigError, match="vm0 \\(t\\), vm1 \\(o\\)"):
        vmsettings.check_drives(_vms("t:1,o:1", {"t": tpl, "o": other}))
    vmsettings.check_drives(_vms("t:1", {"t": tpl}))  # one VM alone may write it


def test_check_drives_missing_relative_and_wrong_format(tmp_path):
    missing = tmp_path / "nope.qcow2"
    with pytest.raises(ConfigError) as err:
        vmsettings.check_drives(_vms("t:1", {"t": {**KERNEL, "persistent-drives": [
            str(missing)]}}))
    assert str(err.value) == f"template 't': persistent drive '{missing}': no such file"
    assert err.value.hint.startswith(f"create it with 'qemu-img create -f qcow2 {missing} SIZE'")
    with pytest.raises(ConfigError, match="'data.raw': the path must be absolute"):
        vmsettings.check_drives(_vms("t:1", {"t": {**KERNEL, "persistent-drives": [
            "data.raw"]}}))
    fake = tmp_path / "fake.qcow2"
    fake.write_bytes(b"\0" * 4096)
    with pytest.raises(ConfigError, match="not a qcow2 image \\(qemu-img sees raw\\)"):
        vmsettings.check_drives(
            _vms("t:1", {"t": {**KERNEL, "persistent-drives": [str(fake)]}}),
            probe=lambda p: "raw",
        )


def test_persistent_disks_become_virtio_drives_with_stated_formats(tmp_path):
    (tmp_path / "r1.raw").write_bytes(b"")
    settings = {"persistent-drives": [
        str(tmp_path / "r1.raw"),
        {"path": str(tmp_path / "x.bin"), "format": "raw", "cache": "none", "readonly": True},
    ]}
    (tmp_path / "x.bin").write_bytes(b"")
    assert persistent_disks("t", settings) == (
        Drive(tmp_path / "r1.raw", format="raw", cache="writeback", id="pdrive0"),
        Drive(tmp_path / "x.bin", format="raw", readonly=True, cache="none", id="pdrive1"),
    )
    (tmp_path / "x.bin").unlink()
    with pytest.raises(ConfigError, match="x.bin': no such file"):
        persistent_disks("t", settings)


def test_full_node_request_and_local_mode():
    one = build_definition("t:1", {"t": {**KERNEL, "full-node": True}})
    two = build_definition("t:1,u:1", {"t": {**KERNEL, "full-node": True}, "u": KERNEL})
    plain = build_definition("u:2", {"u": {**KERNEL, "resources": {"cores": 2}}})
    assert (one.full_node, two.full_node, plain.full_node) == (True, True, False)
    request = jobs._request(two, ["-p", "x"])
    assert (request.ntasks, request.cpus_per_task, request.one_per_node) == (2, 1, True)
    request = jobs._request(plain, [])
    assert (request.ntasks, request.cpus_per_task, request.one_per_node) == (2, 2, False)
    jobs.check_full_node(one, "local")
    jobs.check_full_node(two, "slurm")
    jobs.check_full_node(plain, "local")
    with pytest.raises(UsageError) as err:
        jobs.check_full_node(two, "local")
    assert str(err.value) == (
        "template 't' sets full-node, but without Slurm (batch type local) all 2 VMs of the"
        " cluster would share this host"
    )


def test_node_cpus_from_slurm_else_affinity():
    assert vmsettings.node_cpus({"SLURM_CPUS_ON_NODE": "6"}) == 6
    import os

    assert vmsettings.node_cpus({}) == len(os.sched_getaffinity(0))
    assert vmsettings.node_cpus({"SLURM_CPUS_ON_NODE": "x"}) == len(os.sched_getaffinity(0))
