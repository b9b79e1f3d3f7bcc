"""The QEMU command line builder: golden argv, escaping of awkward paths, validation."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from pcocc.errors import UsageError
from pcocc.vm.qemu import Drive, VmSpec, build_argv, escape

# Paths a user may really have: spaces, quotes, commas, semicolons, backslashes, equals.
AWKWARD = Path("/tmp/my dir, \"quoted\" 'x';\\ a=b")


def full_spec(base: Path = Path("/run/vm0"), **overrides) -> VmSpec:
    fields = {
        "name": "vm0",
        "accel": "tcg",
        "memory_mib": 512,
        "smp": 2,
        "kernel": base / "vmlinuz",
        "initrd": base / "initrd.img",
        "append": "console=ttyS0 quiet",
        "disks": (Drive(base / "disk0.qcow2"),),
        "seed": base / "seed.iso",
        "console_socket": base / "console.sock",
        "console_log": base / "console.log",
        "qmp_socket": base / "qmp.sock",
        "agent_socket": base / "qga.sock",
        "ssh_host_port": 40022,
        "custom_args": ("-rtc", "base=utc"),
    }
    fields.update(overrides)
    return VmSpec(**fields)


GOLDEN_FULL = """\
qemu-system-x86_64
-name
guest=vm0
-accel
tcg
-cpu
max
-m
512
-smp
2
-display
none
-nodefaults
-no-user-config
-chardev
socket,id=console,path=/run/vm0/console.sock,server=on,wait=off,logfile=/run/vm0/console.log,logappend=on
-serial
chardev:console
-chardev
socket,id=qmp,path=/run/vm0/qmp.sock,server=on,wait=off
-mon
chardev=qmp,mode=control
-chardev
socket,id=qga0,path=/run/vm0/qga.sock,server=on,wait=off
-device
virtio-serial-pci,id=vser0
-device
virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0
-kernel
/run/vm0/vmlinuz
-initrd
/run/vm0/initrd.img
-append
console=ttyS0 quiet
-drive
file=/run/vm0/disk0.qcow2,format=qcow2,id=disk0,if=virtio
-drive
file=/run/vm0/seed.iso,format=raw,id=seed,if=virtio,readonly=on
-netdev
user,id=net0,hostfwd=tcp:127.0.0.1:40022-:22
-device
virtio-net-pci,netdev=net0
-rtc
base=utc
"""


def assert_golden(argv: list[str], golden: str) -> None:
    got = "\n".join(argv) + "\n"
    if got != golden:
        diff = "".join(difflib.unified_diff(golden.splitlines(True), got.splitlines(True),
                                            "expected", "built"))
        pytest.fail(f"QEMU argv differs from the golden record in this file:\n{diff}\n"
                    "update GOLDEN_* if the change is intended")


def test_full_spec_matches_golden():
    assert_golden(build_argv(full_spec()), GOLDEN_FULL)


def parse_qemu_opts(text: str) -> dict[str, str]:
    """Split a QEMU option string the way QEMU does: ',,' is a literal comma."""
    parts, current, i = [], "", 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                current += ","
                i += 2
                continue
            parts.append(current)
            current = ""
        else:
            current += text[i]
        i += 1
    parts.append(current)
    opts = {}
    for index, part in enumerate(parts):
        key, sep, value = part.partition("=")
        opts[key if sep else f"_{index}"] = value if sep else key
    return opts


def test_awkward_paths_round_trip_through_qemu_option_parsing():
    argv = build_argv(full_spec(AWKWARD))
    drives = [parse_qemu_opts(argv[i + 1]) for i, a in enumerate(argv) if a == "-drive"]
    assert drives[0]["file"] == str(AWKWARD / "disk0.qcow2")
    assert drives[0]["format"] == "qcow2"
    assert drives[1]["file"] == str(AWKWARD / "seed.iso")
    assert drives[1]["readonly"] == "on"
    chardevs = [parse_qemu_opts(argv[i + 1]) for i, a in enumerate(argv) if a == "-chardev"]
    assert chardevs[0]["path"] == str(AWKWARD / "console.sock")
    assert chardevs[0]["logfile"] == str(AWKWARD / "console.log")
    assert chardevs[0]["server"] == "on"
    assert [c["id"] for c in chardevs] == ["console", "qmp", "qga0"]


def test_kernel_initrd_and_append_are_verbatim():
    # QEMU takes these arguments as they are: doubling commas would break the path.
    argv = build_argv(full_spec(AWKWARD, append="console=ttyS0 a,b"))
    assert argv[argv.index("-kernel") + 1] == str(AWKWARD / "vmlinuz")
    assert argv[argv.index("-initrd") + 1] == str(AWKWARD / "initrd.img")
    assert argv[argv.index("-append") + 1] == "console=ttyS0 a,b"


def test_name_with_comma_is_escaped():
    argv = build_argv(full_spec(name="vm,0"))
    assert argv[argv.index("-name") + 1] == "guest=vm,,0"


def test_escape_doubles_commas_only():
    assert escape("a,b,,c d'\"") == "a,,b,,,,c d'\""
    assert escape(Path("/x,y")) == "/x,,y"


def test_cpu_defaults_to_max_under_tcg_and_host_under_kvm():
    tcg = build_argv(full_spec(accel="tcg"))
    assert tcg[tcg.index("-cpu") + 1] == "max" and "host" not in tcg
    kvm = build_argv(full_spec(accel="kvm"))
    assert kvm[kvm.index("-accel") + 1] == "kvm"
    assert kvm[kvm.index("-cpu") + 1] == "host"
    custom = build_argv(full_spec(accel="kvm", cpu_model="Haswell"))
    assert custom[custom.index("-cpu") + 1] == "Haswell"


def test_minimal_spec_has_no_optional_devices():
    argv = build_argv(VmSpec(name="tiny", network=False))
    assert argv == ["qemu-system-x86_64", "-name", "guest=tiny", "-accel", "tcg", "-cpu", "max",
                    "-m", "256", "-smp", "1", "-display", "none", "-nodefaults",
                    "-no-user-config"]


def test_console_log_without_socket_uses_a_file_chardev():
    argv = build_argv(VmSpec(name="v", network=False, console_log=Path("/l,og")))
    assert argv[-4:] == ["-chardev", "file,id=console,path=/l,,og", "-serial", "chardev:console"]


def test_network_without_port_has_no_forwarding():
    argv = build_argv(VmSpec(name="v", nic_model="e1000"))
    assert argv[-4:] == ["-netdev", "user,id=net0", "-device", "e1000,netdev=net0"]


def test_extra_netdevs_follow_the_user_nic_and_precede_custom_args():
    extra = ("-netdev", "dgram,id=priv0,local.type=fd,local.str=9", "-device", "e1000,netdev=priv0")
    argv = build_argv(VmSpec(name="v", nic_model="e1000", extra_netdevs=extra, pass_fds=(9,),
                             custom_args=("-rtc", "base=utc")))
    assert argv[-10:] == ["-netdev", "user,id=net0", "-device", "e1000,netdev=net0", *extra,
                          "-rtc", "base=utc"]


def test_drive_options():
    spec = VmSpec(name="v", network=False, disks=(
        Drive(Path("/a.raw"), format="raw", readonly=True, cache="unsafe"),
        Drive(Path("/b.qcow2"), interface="ide", id="data"),
    ))
    argv = build_argv(spec)
    assert argv[-3] == "file=/a.raw,format=raw,id=disk0,if=virtio,readonly=on,cache=unsafe"
    assert argv[-1] == "file=/b.qcow2,format=qcow2,id=data,if=ide"


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"accel": "hvf"}, "unknown accelerator 'hvf'"),
        ({"memory_mib": 4}, "at least 16 MiB"),
        ({"smp": 0}, "at least one CPU"),
        ({"kernel": None}, "need a kernel"),
        ({"ssh_host_port": 70000}, "bad forwarded port 70000 (guest port 22)"),
        ({"host_address": "node1"}, "host address 'node1' is not an IPv4 address"),
        ({"disks": (Drive(Path("/a\nb")),)}, "newlines"),
    ],
)
def test_invalid_specs_are_usage_errors(overrides, words):
    with pytest.raises(UsageError) as info:
        build_argv(full_spec(**overrides))
    assert words in str(info.value)
    assert "vm0" in str(info.value)
    assert info.value.exit_status == 2


# -- networks -------------------------------------------------------------------------------
def _net_args(argv: list[str]) -> list[str]:
    start = argv.index("-netdev")
    return argv[start:]


def test_forwards_listen_on_the_host_address():
    argv = build_argv(VmSpec(name="v", ssh_host_port=4022, host_address="10.1.2.3"))
    assert _net_args(argv) == [
        "-netdev", "user,id=net0,hostfwd=tcp:10.1.2.3:4022-:22",
        "-device", "virtio-net-pci,netdev=net0",
    ]  # fmt: skip


def test_user_networks_one_nic_each_with_their_forwards():
    from pcocc.net.user import UserNet

    spec = VmSpec(
        name="v",
        host_address="192.0.2.7",
        ssh_host_port=4022,
        host_ports=((80, 4080), (9000, 4900)),
        user_nets=(
            UserNet(id="net0", network="nat", cidr="10.0.3.0/24", forwards=(22, 80)),
            UserNet(id="net1", network="quiet", forwards=()),
            UserNet(id="net2", network="web", cidr="10.0.4.0/24", forwards=(9000,)),
        ),
        extra_netdevs=("-netdev", "dgram,id=net3", "-device", "e1000,netdev=net3"),
        custom_args=("-rtc", "base=utc"),
    )
    assert spec.forwarded_ports() == [22, 80, 9000]
    assert _net_args(build_argv(spec)) == [
        "-netdev",
        "user,id=net0,net=10.0.3.0/24,hostfwd=tcp:192.0.2.7:4022-:22,"
        "hostfwd=tcp:192.0.2.7:4080-:80",
        "-device", "virtio-net-pci,netdev=net0",
        "-netdev", "user,id=net1",
        "-device", "virtio-net-pci,netdev=net1",
        "-netdev", "user,id=net2,net=10.0.4.0/24,hostfwd=tcp:192.0.2.7:4900-:9000",
        "-device", "virtio-net-pci,netdev=net2",
        "-netdev", "dgram,id=net3", "-device", "e1000,netdev=net3",
        "-rtc", "base=utc",
    ]  # fmt: skip


def test_no_user_network_means_no_user_nic_but_other_nics_stay():
    """``network=False``: no user-mode NIC and no forward; NICs of other types (a VM on a
    private network only) are still there."""
    from pcocc.net.user import UserNet

    spec = VmSpec(name="v", network=False, user_nets=(UserNet(id="net0"),),
                  extra_netdevs=("-netdev", "dgram,id=priv0"))  # fmt: skip
    argv = build_argv(spec)
    assert argv.count("-netdev") == 1 and "dgram,id=priv0" in argv
    assert not any(a.startswith("user,") for a in argv)
    assert spec.forwarded_ports() == []


def test_duplicate_nic_ids_are_refused():
    from pcocc.net.user import UserNet

    spec = VmSpec(name="v", user_nets=(UserNet(id="net0"), UserNet(id="net0", forwards=())))
    with pytest.raises(UsageError, match="VM v: two NICs have the same id"):
        build_argv(spec)


def _drive_and_device_args(argv: list[str]) -> list[str]:
    pairs = zip(argv, argv[1:])
    return [f"{opt} {val}" for opt, val in pairs if opt == "-drive"
            or (opt == "-device" and val.startswith(("virtio-scsi", "scsi-hd")))]


def test_virtio_scsi_disks_share_one_controller_before_the_first():
    spec = VmSpec(name="v", network=False, seed=Path("seed.iso"), disks=(
        Drive(Path("disk0.qcow2"), interface="virtio-scsi", id="disk0"),
        Drive(Path("/data.raw"), format="raw", id="pdrive0"),
        Drive(Path("/more.qcow2"), interface="virtio-scsi", id="more"),
    ))
    assert _drive_and_device_args(build_argv(spec)) == [
        "-device virtio-scsi-pci,id=scsi0",
        "-drive file=disk0.qcow2,format=qcow2,id=disk0,if=none",
        "-device scsi-hd,drive=disk0,bus=scsi0.0",
        "-drive file=/data.raw,format=raw,id=pdrive0,if=virtio",
        "-drive file=/more.qcow2,format=qcow2,id=more,if=none",
        "-device scsi-hd,drive=more,bus=scsi0.0",
        "-drive file=seed.iso,format=raw,id=seed,if=virtio,readonly=on",
    ]


def test_ide_boot_disk_and_unknown_disk_model():
    spec = VmSpec(name="v", network=False, disks=(Drive(Path("d.qcow2"), interface="ide"),))
    assert _drive_and_device_args(build_argv(spec)) == [
        "-drive file=d.qcow2,format=qcow2,id=disk0,if=ide"]
    with pytest.raises(UsageError, match="VM v: unknown disk model 'scsi'") as err:
        build_argv(VmSpec(name="v", disk_model="scsi"))
    assert "virtio, virtio-scsi, ide" in err.value.hint
