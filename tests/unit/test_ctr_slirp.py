"""pcocc.ctr.net: the slirp4netns command line, the network plan, the gate hook."""

from __future__ import annotations

import os
import socket
import stat
import sys
import threading
from pathlib import Path

import pytest

from pcocc.cli.containers import bare_flag_value
from pcocc.ctr import net
from pcocc.ctr.net import (
    GATE_ANNOTATION,
    NetPlan,
    PodNetwork,
    PortForward,
    parse_port,
    add_gate,
    gate_path_for,
    plan_network,
    slirp_argv,
)
from pcocc.errors import PcoccError, ToolMissing, UsageError


@pytest.fixture
def fake_slirp(tmp_path, monkeypatch):
    """PATH with a slirp4netns that is only a name (the builders never run it)."""
    exe = tmp_path / "slirp4netns"
    exe.write_text("#!/bin/sh\nexit 1\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    return str(exe)


@pytest.fixture
def no_slirp(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))


def test_slirp_argv_defaults_disable_host_loopback(fake_slirp):
    argv = slirp_argv(1234, ready_fd=5, exit_fd=6)
    assert argv == [
        fake_slirp,
        "--configure",
        "--mtu=65520",
        "--ready-fd=5",
        "--exit-fd=6",
        "--disable-host-loopback",
        "1234",
        "tap0",
    ]


def test_slirp_argv_options(fake_slirp):
    argv = slirp_argv(
        7, ready_fd=3, exit_fd=4, allow_host_loopback=True, api_socket="/r/api.sock", mtu=1500
    )
    assert "--disable-host-loopback" not in argv
    assert "--api-socket=/r/api.sock" in argv and "--mtu=1500" in argv
    assert argv[-2:] == ["7", "tap0"]


def test_slirp_argv_names_the_package_when_missing(no_slirp):
    with pytest.raises(ToolMissing) as err:
        slirp_argv(1, ready_fd=3, exit_fd=4)
    assert "slirp4netns" in err.value.hint


def test_plan_host_network_by_default(no_slirp):
    assert plan_network(False) == NetPlan("host")
    with pytest.raises(UsageError, match="--allow-host-loopback needs --private-net"):
        plan_network(False, allow_host_loopback=True)


def test_plan_auto_uses_slirp_when_installed(fake_slirp):
    warnings = []
    plan = plan_network(True, "auto", allow_host_loopback=True, warn=warnings.append)
    assert plan == NetPlan("slirp", allow_host_loopback=True)
    assert warnings == []


def test_plan_auto_falls_back_to_loopback_with_one_warning(no_slirp):
    warnings = []
    assert plan_network(True, "auto", warn=warnings.append) == NetPlan("loopback")
    assert len(warnings) == 1 and "slirp4netns is not installed" in warnings[0]


def test_plan_explicit_modes(no_slirp):
    assert plan_network(True, "loopback") == NetPlan("loopback")
    with pytest.raises(ToolMissing):
        plan_network(True, "slirp")  # asked for by name: no silent fallback
    with pytest.raises(UsageError, match="unknown mode 'veth'"):
        plan_network(True, "veth")


def test_plan_vm_runtime_has_loopback_only(fake_slirp):
    assert plan_network(True, "auto", runtime_name="vm") == NetPlan("loopback")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("8080:80", PortForward(8080, 80, "0.0.0.0", "tcp")),
        ("127.0.0.1:8080:80", PortForward(8080, 80, "127.0.0.1", "tcp")),
        ("5353:53/udp", PortForward(5353, 53, "0.0.0.0", "udp")),
    ],
)
def test_parse_port(value, expected):
    assert parse_port(value) == expected


@pytest.mark.parametrize("value", ["80", "a:80", "8080:0", "70000:80", "1:2/sctp", ":1:2", ""])
def test_parse_port_rejects(value):
    with pytest.raises(UsageError, match="--port: bad value"):
        parse_port(value)


def test_hostfwd_request():
    assert PortForward(8080, 80, "127.0.0.1").hostfwd_request() == {
        "execute": "add_hostfwd",
        "arguments": {"proto": "tcp", "host_addr": "127.0.0.1", "host_port": 8080, "guest_port": 80},
    }


def test_plan_ports_need_slirp(fake_slirp):
    plan = plan_network(True, "auto", ports=["8080:80"])
    assert plan.ports == (PortForward(8080, 80),)
    for private, mode in ((False, "auto"), (True, "loopback")):
        with pytest.raises(UsageError, match="--port needs --private-net"):
            plan_network(private, mode, ports=["8080:80"])
    with pytest.raises(UsageError, match="--port needs"):
        plan_network(True, "auto", ports=["8080:80"], runtime_name="vm")


def test_plan_ports_never_fall_back(no_slirp):
    with pytest.raises(ToolMissing):
        plan_network(True, "auto", ports=["8080:80"], warn=lambda m: None)


def test_add_gate_hooks_the_first_app():
    spec = {"ociVersion": "1.0.2", "hooks": {"poststop": [{"path": "/x"}]}}
    add_gate(spec, "/run/g.sock")
    [hook] = spec["hooks"]["createRuntime"]
    assert hook["path"] == sys.executable and Path(hook["path"]).is_absolute()
    assert hook["args"][-2:] == ["--net-hook", "/run/g.sock"]
    assert hook["args"][-3].endswith("nsinit.py")
    assert spec["hooks"]["poststop"] == [{"path": "/x"}]
    assert spec["annotations"][GATE_ANNOTATION] == "/run/g.sock"


def test_gate_path_stays_short(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    uuid = "0123456789abcdef-0000"
    assert gate_path_for(tmp_path, uuid) == tmp_path / "net-0123456789ab.sock"
    deep = tmp_path / ("d" * 120)
    path = gate_path_for(deep, uuid)
    assert len(os.fsencode(path)) <= 107 and path.name.endswith("net-0123456789ab.sock")
    # in the private fallback directory, not directly in a directory shared by all users
    assert path.parent == tmp_path / f"pcocc-{os.getuid()}"
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_short_gate_path_is_in_a_private_directory(tmp_path, monkeypatch):
    """Not in the shared temporary directory, where another user could reach the slirp4netns
    API socket (and forward ports into the pod) or take the name first."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    tmp_path.chmod(0o1777)
    path = gate_path_for(tmp_path / ("d" * 120), "0123456789abcdef-0000", "slirp")
    assert path.parent != tmp_path and path.parent.parent == tmp_path
    st = path.parent.stat()
    assert st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) == 0o700


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--private-net", "img", "--", "x"], ["--private-net=", "img", "--", "x"]),
        (["--private-net=slirp", "img"], ["--private-net=slirp", "img"]),
        (["--runtime", "--private-net", "img"], ["--runtime", "--private-net", "img"]),
        (["--root", "--private-net", "-M", "m", "i"], ["--root", "--private-net=", "-M", "m", "i"]),
        (["img", "--private-net"], ["img", "--private-net"]),
        (["--", "--private-net"], ["--", "--private-net"]),
    ],
)
def test_bare_private_net_never_takes_the_image(args, expected):
    assert bare_flag_value(args, "--private-net", {"--runtime", "-M"}) == expected


# -- the gate, with the real stage-2 client of nsinit ------------------------------------
class _Running:
    def poll(self):
        return None


def test_gate_gives_slirp_the_pid_from_the_client(tmp_path, monkeypatch):
    """The supervisor reads the pid the hook sends and answers go once slirp is ready."""
    started = []
    monkeypatch.setattr(PodNetwork, "_start_slirp", lambda self, pid: started.append(pid))
    network = PodNetwork(NetPlan("slirp"), tmp_path / "g.sock", tmp_path / "log")
    network.open_gate()
    from pcocc.ctr import nsinit

    client = threading.Thread(target=nsinit.wait_at_gate, args=(str(network.gate_path), 4242))
    client.start()
    network.connect(_Running(), timeout_s=10)
    client.join(10)
    assert started == [4242]
    assert not network.gate_path.exists()


def test_gate_takes_the_peer_pid_when_the_client_sends_none(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(PodNetwork, "_start_slirp", lambda self, pid: started.append(pid))
    network = PodNetwork(NetPlan("slirp"), tmp_path / "g.sock", tmp_path / "log")
    network.open_gate()
    from pcocc.ctr import nsinit

    client = threading.Thread(target=nsinit.wait_at_gate, args=(str(network.gate_path),))
    client.start()
    network.connect(_Running(), timeout_s=10)
    client.join(10)
    assert started == [os.getpid()]


def test_client_fails_when_the_supervisor_gives_up(tmp_path):
    from pcocc.ctr import nsinit

    path = tmp_path / "g.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    def refuse():
        conn, _ = srv.accept()
        conn.recv(64)
        conn.close()

    t = threading.Thread(target=refuse)
    t.start()
    with pytest.raises(nsinit.SetupError, match="could not set up the network"):
        nsinit.wait_at_gate(str(path), 1)
    t.join(5)
    srv.close()


def test_gate_reports_an_app_that_ended(tmp_path):
    class _Ended:
        def poll(self):
            return 1

    network = PodNetwork(NetPlan("slirp"), tmp_path / "g.sock", tmp_path / "log")
    network.open_gate()
    try:
        with pytest.raises(PcoccError, match="ended before its network was set up"):
            network.connect(_Ended(), timeout_s=5)
    finally:
        network.stop()
    assert not (tmp_path / "g.sock").exists()


def test_module_surface():
    assert set(net.__all__) <= set(dir(net))
