"""Remote displays: the QEMU arguments, the password, the display record and its strict
parser, the template key, the viewer command line (no QEMU)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from pcocc.cluster.definition import build_definition
from pcocc.cluster.display import VmDisplay, viewer_argv
from pcocc.cluster.vmbuild import VmHost, build_vm, runtime_settings
from pcocc.config import load_config
from pcocc.errors import ConfigError, Corrupt, NotFound, UsageError
from pcocc.vm import display
from pcocc.vm.display import DisplayInfo
from pcocc.vm.qemu import VmSpec, build_argv
from pcocc.vm.seed import HostKey

SOCKET = "/run/pcocc/42/vm0/qemu/vnc.sock"


def _spec(**kwargs) -> VmSpec:
    return VmSpec(name="vm0", network=False, **kwargs)


def test_vnc_display_is_a_vga_card_on_a_unix_socket_with_password_auth():
    argv = build_argv(_spec(remote_display="vnc", display_socket=Path("vnc.sock")))
    i = argv.index("-vnc")
    assert argv[i - 2 : i + 2] == ["-device", "VGA", "-vnc", "unix:vnc.sock,password=on"]


def test_spice_display_needs_a_ticket_on_a_unix_socket():
    argv = build_argv(_spec(remote_display="spice", display_socket=Path("spice.sock")))
    i = argv.index("-spice")
    assert argv[i - 2 : i + 2] == [
        "-device", "VGA", "-spice", "unix=on,addr=spice.sock,disable-ticketing=off",
    ]


def test_display_socket_with_a_comma_is_escaped():
    argv = build_argv(_spec(remote_display="vnc", display_socket=Path("a,b.sock")))
    assert "unix:a,,b.sock,password=on" in argv


def test_no_display_without_the_setting():
    argv = build_argv(_spec())
    assert "-vnc" not in argv and "-spice" not in argv and "VGA" not in argv


@pytest.mark.parametrize("kwargs, message", [
    ({"remote_display": "rdp", "display_socket": Path("x.sock")}, "unknown remote display"),
    ({"remote_display": "vnc"}, "needs a socket path"),
])
def test_bad_display_spec_is_refused(kwargs, message):
    with pytest.raises(UsageError, match=message):
        build_argv(_spec(**kwargs))


def test_template_setting_reaches_the_spec():
    d = build_definition("t:1", {"t": {"kernel": "/k", "remote-display": "vnc"}})
    entry = d.vm(0)
    build = build_vm(d, entry, runtime_settings(entry, "42"), batchid="42",
                     host=VmHost(accel="tcg", cpus=1), host_key=HostKey("K", "ssh-ed25519 A"))
    assert build.spec.remote_display == "vnc"


def test_template_key_is_validated(pcocc_env):
    path = pcocc_env["system"] / "templates.yaml"
    path.write_text("templates:\n  t: {remote-display: vnc}\n")
    assert load_config(pcocc_env["system"], pcocc_env["user"]).templates["t"][
        "remote-display"] == "vnc"
    path.write_text("templates:\n  t: {remote-display: rdp}\n")
    with pytest.raises(ConfigError, match=r"templates.t.remote-display: expected one of "
                                          r"vnc, spice, got 'rdp'"):
        load_config(pcocc_env["system"], pcocc_env["user"])


# -- password and record --------------------------------------------------------------------
@pytest.mark.parametrize("protocol, length", [("vnc", 8), ("spice", 24)])
def test_passwords_are_random_letters_and_digits(protocol, length):
    passwords = {display.new_password(protocol) for _ in range(20)}
    assert len(passwords) == 20
    assert all(len(p) == length and p.isalnum() and p.isascii() for p in passwords)


class FakeQmp:
    def __init__(self):
        self.calls = []

    def execute(self, command, arguments=None, **_):
        self.calls.append((command, arguments))


def test_enable_sets_the_password_over_qmp_and_writes_a_private_record(tmp_path):
    qmp = FakeQmp()
    info = display.enable(qmp, "vnc", tmp_path / "vnc.sock", tmp_path / "display.json")
    assert qmp.calls == [("set_password", {"protocol": "vnc", "password": info.password})]
    record = tmp_path / "display.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert DisplayInfo.from_json(record.read_bytes()) == info
    assert info.socket == str(tmp_path / "vnc.sock")
    assert info.uri == f"vnc+unix://{tmp_path}/vnc.sock"


GOOD = {"protocol": "vnc", "socket": SOCKET, "password": "Ab3dE6gH"}


def test_record_round_trip():
    info = DisplayInfo.from_json(json.dumps(GOOD))
    assert info == DisplayInfo("vnc", SOCKET, "Ab3dE6gH")
    assert DisplayInfo.from_json(info.to_json()) == info


@pytest.mark.parametrize("change, field", [
    ({"protocol": "rdp"}, "protocol"),
    ({"protocol": 1}, "protocol"),
    ({"socket": "vnc.sock"}, "socket"),
    ({"socket": "/run/../etc/x"}, "socket"),
    ({"socket": "/run/a\nb"}, "socket"),
    ({"password": ""}, "password"),
    ({"password": "a b"}, "password"),
    ({"password": "a;rm -rf"}, "password"),
    ({"password": "x\n"}, "password"),
    ({"password": "x" * 25}, "password"),
    ({"password": 12345678}, "password"),
    ({"extra": 1}, "extra"),
])
def test_hostile_records_are_refused_naming_the_field(change, field):
    with pytest.raises(Corrupt, match=rf"invalid display record /f: field '{field}'"):
        DisplayInfo.from_json(json.dumps({**GOOD, **change}), "/f")


@pytest.mark.parametrize("raw", [b"", b"[]", b"\xff", b"{" * 10, b'{"a": NaN}',
                                 json.dumps({**GOOD, "pad": "x" * 9000}).encode()])
def test_records_that_are_not_json_objects_are_refused(raw):
    with pytest.raises(Corrupt, match="field '\\(record\\)'"):
        DisplayInfo.from_json(raw)


def test_missing_field_is_refused():
    with pytest.raises(Corrupt, match="field 'password': missing"):
        DisplayInfo.from_json(json.dumps({"protocol": "vnc", "socket": SOCKET}))


# -- SPICE support ---------------------------------------------------------------------------
def test_spice_is_refused_clearly_when_qemu_lacks_it():
    with pytest.raises(ConfigError, match="built without SPICE support") as exc:
        display.check_protocol("vm0", "spice", "qemu-x", has_spice=lambda _bin: False)
    assert "remote-display: vnc" in exc.value.hint


def test_vnc_never_asks_qemu_about_spice():
    def boom(_bin):
        raise AssertionError("probed")

    display.check_protocol("vm0", "vnc", "qemu-x", has_spice=boom)
    display.check_protocol("vm0", "spice", "qemu-x", has_spice=lambda _bin: True)


# -- what pcocc display prints or runs -------------------------------------------------------
INFO = DisplayInfo("vnc", SOCKET, "Ab3dE6gH")


def test_lines_give_the_address_password_and_a_tunnel():
    lines = VmDisplay("vm0", "n1", INFO).lines()
    assert lines[0] == f"address: vnc+unix://{SOCKET}"
    assert lines[1] == "password: Ab3dE6gH"
    assert f"ssh -N -L ~/.pcocc-vm0-vnc.sock:{SOCKET} n1" in "\n".join(lines)
    assert VmDisplay("vm0", "n1", INFO).to_json()["password"] == "Ab3dE6gH"


def _which(*installed):
    return lambda name: f"/usr/bin/{name}" if name in installed else None


def test_viewer_prefers_remote_viewer_with_the_uri():
    assert viewer_argv(INFO, _which("remote-viewer", "vncviewer")) == [
        "/usr/bin/remote-viewer", f"vnc+unix://{SOCKET}"]


def test_vncviewer_gets_the_socket_path():
    assert viewer_argv(INFO, _which("vncviewer")) == ["/usr/bin/vncviewer", SOCKET]


def test_spice_needs_remote_viewer():
    spice = DisplayInfo("spice", SOCKET.replace("vnc", "spice"), "x" * 24)
    with pytest.raises(NotFound, match=r"no SPICE viewer is installed: tried remote-viewer "
                                       r"\(Debian package virt-viewer\)"):
        viewer_argv(spice, _which("vncviewer"))


def test_no_viewer_is_a_clear_error():
    with pytest.raises(NotFound, match="no VNC viewer is installed") as exc:
        viewer_argv(INFO, _which())
    assert "without -p" in exc.value.hint


@pytest.mark.parametrize("returncode, stdout, stderr, expected", [
    # QEMU 7.2 lists the options, then exits with status 1
    (1, "spice options:\n  addr=<str>\n", "", True),
    (1, "", "qemu-system-x86_64: -spice help: There is no option group 'spice'\n", False),
    (1, "", "qemu-system-x86_64: -spice: invalid option\n", False),
])
def test_spice_probe_reads_what_qemu_prints(monkeypatch, returncode, stdout, stderr, expected):
    from pcocc import proc

    def run(argv, **_kwargs):
        assert argv == ["qemu-x", "-spice", "help"]
        return proc.Result(argv, returncode, stdout, stderr)

    monkeypatch.setattr(proc, "run", run)
    assert display.spice_supported("qemu-x") is expected


# -- reading the record back on the VM's host ------------------------------------------------
@pytest.fixture
def vm_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PCOCC_RUN_DIR", str(tmp_path / "run"))
    path = tmp_path / "run" / "7" / "vm0" / "qemu"
    path.mkdir(parents=True)
    return path


def _view(vm_dir, template=None, host=None):
    import socket

    from pcocc.cluster.lookup import ClusterView
    from pcocc.cluster.record import ClusterRecord, ClusterState
    from pcocc.cluster.vmstate import VmRecord

    settings = {"kernel": "/k", **({"remote-display": template} if template else {})}
    definition = build_definition("tpl:1", {"tpl": settings}, owner="bob")
    record = ClusterRecord("7", definition, ClusterState.RUNNING, "n1", 123, batch="local")
    vm = VmRecord(rank=0, host=host or socket.gethostname(), status="running", node_pid=10,
                  qmp_socket=str(vm_dir / "qmp.sock"))
    return ClusterView("7", record, vms={0: vm})


def _listen(path):
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    return sock


def test_find_display_reads_the_record_and_checks_the_socket(vm_dir):
    from pcocc.cluster.display import find_display

    with _listen(vm_dir / "vnc.sock"):
        info = DisplayInfo("vnc", str(vm_dir / "vnc.sock"), "Ab3dE6gH")
        (vm_dir / "display.json").write_text(info.to_json())
        found = find_display(_view(vm_dir, "vnc"), "vm0")
    assert found.info == info and found.vm == "vm0"


def test_a_vm_without_remote_display_says_which_key_to_set(vm_dir):
    from pcocc.cluster.display import find_display

    with pytest.raises(NotFound, match="vm0 of cluster 7 has no remote display") as exc:
        find_display(_view(vm_dir), "vm0")
    assert "remote-display: vnc" in exc.value.hint and "'tpl'" in exc.value.hint


def test_a_display_not_written_yet_or_on_another_host(vm_dir):
    from pcocc.cluster.display import find_display

    with pytest.raises(NotFound, match="vm0 has no display yet"):
        find_display(_view(vm_dir, "vnc"), "vm0")
    with pytest.raises(UsageError, match="runs on host elsewhere"):
        find_display(_view(vm_dir, "vnc", host="elsewhere"), "vm0")


@pytest.mark.parametrize("socket_path", ["/etc/passwd", "{tmp}/vnc.sock", "{dir}/display.json"])
def test_a_record_naming_another_socket_is_refused(vm_dir, socket_path):
    from pcocc.cluster.display import find_display

    path = socket_path.format(tmp=vm_dir.parents[3], dir=vm_dir)
    (vm_dir / "display.json").write_text(DisplayInfo("vnc", path, "x").to_json())
    with pytest.raises(Corrupt):
        find_display(_view(vm_dir, "vnc"), "vm0")


def test_a_record_that_is_a_link_or_of_another_protocol_is_refused(vm_dir, tmp_path):
    from pcocc.cluster.display import find_display

    elsewhere = tmp_path / "planted.json"
    elsewhere.write_text(DisplayInfo("vnc", str(vm_dir / "vnc.sock"), "x").to_json())
    (vm_dir / "display.json").symlink_to(elsewhere)
    with pytest.raises(Corrupt, match="not a file of yours"):
        find_display(_view(vm_dir, "vnc"), "vm0")
    (vm_dir / "display.json").unlink()
    (vm_dir / "display.json").write_text(DisplayInfo("spice", str(vm_dir / "x"), "x").to_json())
    with pytest.raises(Corrupt, match="names a spice display"):
        find_display(_view(vm_dir, "vnc"), "vm0")
