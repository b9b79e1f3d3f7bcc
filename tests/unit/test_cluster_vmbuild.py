"""What a cluster VM is, from its definition entry and template settings (no QEMU)."""

from pathlib import Path

from pcocc.cluster import rundir
from pcocc.cluster.definition import build_definition
from pcocc.cluster.stored import ClusterDefinition, VmEntry
from pcocc.cluster.vmbuild import VmBuild, VmHost, attach_private_nics, build_vm, runtime_settings
from pcocc.net.private import SEED_TABLE, Nic, NicSetup
from pcocc.net.user import default_net
from pcocc.vm.qemu import Drive, VmSpec
from pcocc.vm.seed import HostKey, SeedSpec
from pcocc.vm.virtiofs import Share

KEY = HostKey("PRIVATE", "ssh-ed25519 AAAA host")
HOST = VmHost(accel="tcg", cpus=8, address="10.0.0.5")


def _build(definition, rank=0, **kwargs):
    entry = definition.vm(rank)
    return build_vm(definition, entry, runtime_settings(entry, "42"), batchid="42", host=HOST,
                    host_key=KEY, **kwargs)


def _seed(definition, rank=0, **fields):
    hosts = "".join(f"{vm.address} {vm.name}\n" for vm in definition.vms)
    return SeedSpec(hostname=f"vm{rank}", instance_id=f"pcocc-42-{rank}", host_key=KEY,
                    extra_files={"pcocc/hosts": hosts, **fields.pop("files", {})}, **fields)


def test_plain_vm():
    d = build_definition("t:2", {"t": {"kernel": "/k", "memory": "1G", "append": "quiet"}})
    assert _build(d, 1) == VmBuild(
        spec=VmSpec(name="vm1", accel="tcg", memory_mib=1024, smp=1, host_address="10.0.0.5",
                    kernel=Path("/k"), append="quiet", user_nets=(default_net(),),
                    network=True),
        seed=_seed(d, 1),
        boot_timeout_s=d.boot_timeout_s,
    )


def test_full_node_vm_takes_the_node_cpus():
    d = build_definition("t:1", {"t": {"kernel": "/k", "full-node": True}})
    assert _build(d).spec.smp == 8


def test_vm_with_a_share(tmp_path):
    d = build_definition("t:1", {"t": {"kernel": "/k"}}, mounts=[f"{tmp_path}:/data"])
    build = _build(d)
    assert build.shares == (Share(tag="pcocc0", source=str(tmp_path)),)
    assert build.seed == _seed(d, mounts=(("pcocc0", "/data"),))


def test_vm_with_a_private_network_nic():
    d = build_definition("t:1", {"t": {"kernel": "/k", "nic-model": "e1000"}})
    build = _build(d)
    nic = Nic("net1", "02:aa:00:00:00:00", "10.200.0.1/24", 1500)
    nics = NicSetup(qemu_args=("-netdev", "socket,id=priv0,fd=7"), kv_entries={}, nics=(nic,))
    joined = attach_private_nics(build, nics)
    assert joined.spec == VmSpec(
        name="vm0", accel="tcg", smp=1, host_address="10.0.0.5", kernel=Path("/k"),
        nic_model="e1000", user_nets=(default_net(),), network=True,
        extra_netdevs=("-netdev", "socket,id=priv0,fd=7"), pass_fds=(),
    )
    files = joined.seed.extra_files
    assert list(files) == ["pcocc/hosts", "network-config", SEED_TABLE]
    assert files[SEED_TABLE] == "02:aa:00:00:00:00 10.200.0.1/24 1500\n"
    assert "02:aa:00:00:00:00" in files["network-config"]
    assert "52:54:00:12:34:56" in files["network-config"]  # the user-mode NIC, by DHCP
    assert build.seed.extra_files == {"pcocc/hosts": files["pcocc/hosts"]}  # not changed


def test_vm_with_persistent_drives(tmp_path, monkeypatch):
    """%{clusterdir} expands to this run's dir; a qcow2 drive is probed to be one."""
    monkeypatch.setenv("PCOCC_RUN_DIR", str(tmp_path / "run"))
    (tmp_path / "data.qcow2").write_bytes(b"")
    drives = [str(tmp_path / "data.qcow2"),
              {"path": "%{clusterdir}/scratch-%{vm_rank}.raw", "cache": "none"}]
    settings = {"kernel": "/k", "persistent-drives": drives}
    d = ClusterDefinition(vms=[VmEntry(0, "vm0", "t", settings, None, 1, "10.252.0.1")],
                          cores=1)
    scratch = rundir.cluster_dir("42") / "scratch-0.raw"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    scratch.write_bytes(b"")
    probed = []
    build = _build(d, probe=lambda p: probed.append(p) or "qcow2")
    assert build.spec.disks == (
        Drive(tmp_path / "data.qcow2", format="qcow2", cache="writeback", id="pdrive0"),
        Drive(scratch, format="raw", cache="none", id="pdrive1"),
    )
    assert probed == [str(tmp_path / "data.qcow2")]


def test_vm_with_shares_by_tag_of_each_type(tmp_path):
    tpl = {"kernel": "/k", "instance-id": "site-%{vm_rank}",
           "mount-points": {"home": {"path": str(tmp_path), "type": "virtio-9p",
                                     "readonly": True}}}
    d = build_definition("t:2", {"t": tpl},
                         mounts=[f"{tmp_path}:/data", f"ro={tmp_path},readonly,type=virtio-fs"])
    build = _build(d, 1)
    assert build.shares == (
        Share(tag="pcocc0", source=str(tmp_path)),
        Share(tag="ro", source=str(tmp_path), readonly=True),
        Share(tag="home", source=str(tmp_path), readonly=True, type="virtio-9p"),
    )
    # only SRC:DST mounts have a target the seed tells the guest; the others go by tag
    assert build.seed.mounts == (("pcocc0", "/data"),)
    assert build.seed.instance_id == "site-1"


def test_a_tag_shared_twice_is_refused(tmp_path):
    import pytest

    from pcocc.errors import ConfigError

    tpl = {"kernel": "/k", "mount-points": {"home": {"path": str(tmp_path)}}}
    d = build_definition("t:1", {"t": tpl}, mounts=[f"home={tmp_path}"])
    with pytest.raises(ConfigError, match="mount tag 'home'"):
        _build(d)


def test_vm_with_pinning_has_fewer_vcpus_than_cores():
    from pcocc.vm.pinning import Pinning

    tpl = {"kernel": "/k", "emulator-cores": 1, "bind-vcpus": True, "resources": {"cores": 3}}
    build = _build(build_definition("t:1", {"t": tpl}))
    assert (build.spec.smp, build.pinning) == (2, Pinning(True, 1))
    assert _build(build_definition("t:1", {"t": {"kernel": "/k"}})).pinning is None


def test_vm_on_an_ethernet_network_opens_its_tap(monkeypatch):
    """The job's TAP of this rank, vhost-net when it opens (said once when it does not)."""
    from pcocc.net import ethernet
    from pcocc.vm.qemu import build_argv

    networks = {"eth": {"type": "ethernet", "cidr": "10.8.0.0/16"}}
    templates = {"t": {"kernel": "/k", "resource-set": "rs",
                       "resources": {"networks": ["eth"]}}}
    d = build_definition("t:2", templates, networks=networks)
    monkeypatch.setattr(ethernet, "vhost_usable", lambda: True)
    spec = _build(d, 1).spec
    mac = ethernet.vm_mac(42, ethernet.from_config("eth", networks["eth"], 0), 1)
    assert spec.user_nets == () and not spec.network
    argv = build_argv(spec)
    at = argv.index("-netdev")
    assert argv[at:at + 4] == [
        "-netdev", "tap,id=eth0,ifname=pt2a01,script=no,downscript=no,vhost=on",
        "-device", f"virtio-net-pci,netdev=eth0,mac={mac}"]
    monkeypatch.setattr(ethernet, "vhost_usable", lambda: False)
    assert "vhost" not in " ".join(build_argv(_build(d, 1).spec))


def test_vhost_fallback_is_said_once(monkeypatch, caplog, tmp_path):
    from pcocc.net import ethernet

    monkeypatch.setattr(ethernet, "_vhost_said", False)
    missing = str(tmp_path / "vhost-net")
    assert not ethernet.vhost_usable(missing) and not ethernet.vhost_usable(missing)
    said = [r for r in caplog.records if "userspace virtio-net" in r.getMessage()]
    assert len(said) == 1
