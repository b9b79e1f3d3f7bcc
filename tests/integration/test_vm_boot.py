"""Boot the real test VM under TCG with Machine: ssh, user-data, QMP, guest agent, reset,
boot failures and clean shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

import pytest
from tests.fixtures.vm import load_builder, ssh_run

from pcocc import proc
from pcocc.errors import PcoccError, UsageError
from pcocc.vm.accel import probe_kvm
from pcocc.vm.machine import Machine, VmBootError
from pcocc.vm.readiness import ssh_banner_ready
from pcocc.vm.qemu import Drive, VmSpec
from pcocc.vm.qmp import QmpError
from pcocc.vm.seed import SeedSpec, generate_host_key

USER_DATA = """#!/bin/sh
echo "user-data ran on $(hostname)" > /run/pcocc-test-marker
"""


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(scope="module")
def booted(tmp_path_factory, testvm_artifacts, ssh_user_key):
    """One test VM for the module, in a long run directory with awkward characters."""
    base = tmp_path_factory.mktemp("vm run")
    run_dir = base / ("dir with space, comma 'quote' \"dq\" " + "x" * 80)
    host_key = generate_host_key()
    seed = SeedSpec(hostname="vm5", instance_id="test-vm5",
                    authorized_keys=(ssh_user_key.public,), host_key=host_key,
                    user_data=USER_DATA)
    machine = Machine(testvm_artifacts.spec("vm5"), run_dir, image=testvm_artifacts.disk,
                      seed=seed, boot_timeout_s=180)
    with machine:
        known_hosts = base / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{machine.ssh_port} {host_key.public}\n")
        yield machine, known_hosts
    assert not run_dir.exists()


@pytest.mark.slow
def test_ssh_with_published_host_key_prints_seed_hostname(booted, ssh_user_key):
    machine, known_hosts = booted
    res = ssh_run(ssh_user_key, machine.ssh_port, known_hosts, "hostname")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "vm5"


@pytest.mark.slow
def test_wrong_host_key_is_refused(booted, ssh_user_key, tmp_path):
    machine, _ = booted
    other = tmp_path / "known_hosts"
    other.write_text(f"[127.0.0.1]:{machine.ssh_port} {generate_host_key().public}\n")
    res = ssh_run(ssh_user_key, machine.ssh_port, other, "hostname")
    assert res.returncode != 0
    assert "vm5" not in res.stdout


@pytest.mark.slow
def test_user_data_script_ran(booted, ssh_user_key):
    machine, known_hosts = booted

    def marker():
        res = ssh_run(ssh_user_key, machine.ssh_port, known_hosts,
                      "cat /run/pcocc-test-marker 2>/dev/null")
        return res.stdout.strip()

    assert wait_for(marker, 60, "the user-data marker") == "user-data ran on vm5"


@pytest.mark.slow
def test_image_disk_is_mounted_from_the_overlay(booted, ssh_user_key):
    machine, known_hosts = booted
    res = ssh_run(ssh_user_key, machine.ssh_port, known_hosts, "cat /disk/etc/os-release")
    assert "ID=pcocc-testvm" in res.stdout
    assert machine.overlay is not None and machine.overlay.exists()


@pytest.mark.slow
def test_qmp_and_guest_agent(booted, testvm_artifacts):
    machine, _ = booted
    with machine.qmp() as qmp:
        assert qmp.query_status() == "running"
        assert "running" in qmp.human_monitor_command("info status")
        blocks = qmp.execute("query-block")
        assert {b["device"] for b in blocks} >= {"disk0", "seed"}
        with pytest.raises(QmpError) as info:
            qmp.execute("no-such-command")
        assert "CommandNotFound" in str(info.value)
        assert qmp.query_status() == "running"  # the session survives an error
    if not testvm_artifacts.has_guest_agent:
        pytest.skip("qemu-guest-agent is not in the test VM")
    agent = machine.agent()
    assert wait_for(lambda: agent.ping(timeout_s=2), 60, "the guest agent")
    code, out, _ = agent.exec("/bin/hostname")
    assert (code, out.strip()) == (0, "vm5")


@pytest.mark.slow
def test_serial_console_socket_reaches_the_guest_shell(booted):
    machine, _ = booted
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(machine.console_socket)
        sock.settimeout(1)
        seen = b""
        deadline = time.monotonic() + 60
        while b"CONSOLE-42" not in seen and time.monotonic() < deadline:
            sock.sendall(b"echo CONSOLE-$((6*7))\n")
            with contextlib.suppress(TimeoutError):
                seen += sock.recv(4096)
    assert b"CONSOLE-42" in seen
    # the log records the session (QEMU writes it a moment after the socket sees it)
    deadline = time.monotonic() + 10
    while b"CONSOLE-42" not in machine.console_log.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert b"CONSOLE-42" in machine.console_log.read_bytes()


@pytest.mark.slow
def test_sockets_are_private(booted):
    machine, _ = booted
    assert os.stat(machine.run_dir).st_mode & 0o777 == 0o700
    for name in ("qmp.sock", "qga.sock", "console.sock"):
        assert os.stat(machine.run_dir / name).st_mode & 0o077 == 0, name


@pytest.mark.slow
def test_system_reset_reboots_the_guest(booted, ssh_user_key):
    # runs last among the tests of this VM (pytest keeps file order)
    machine, known_hosts = booted

    def boots() -> int:
        return machine.console_log.read_text(errors="replace").count("testvm: init started")

    assert boots() == 1
    with machine.qmp() as qmp:
        qmp.system_reset()
        assert qmp.query_status() == "running"
    wait_for(lambda: boots() == 2, 120, "a second boot in the console log")
    wait_for(lambda: ssh_banner_ready(machine.ssh_port), 120, "ssh after the reset")
    res = ssh_run(ssh_user_key, machine.ssh_port, known_hosts, "hostname")
    assert res.stdout.strip() == "vm5"


@pytest.mark.slow
def test_agent_readiness_and_shutdown_leave_nothing(testvm_artifacts, tmp_path):
    if not testvm_artifacts.has_guest_agent:
        pytest.skip("qemu-guest-agent is not in the test VM")
    run_dir = tmp_path / "run"
    seed = SeedSpec(hostname="vm1", instance_id="i-1")
    machine = Machine(testvm_artifacts.spec("vm1", network=False), run_dir,
                      image=testvm_artifacts.disk, seed=seed, boot_timeout_s=180)
    with machine:
        assert machine.ready == "agent" and machine.ssh_port is None
        info = machine.describe()
        assert info["pid"] == machine.pid and info["accel"] == "tcg"
        assert Path(info["console_log"]).read_text().count("testvm: ready") == 1
        assert machine.agent().exec("/bin/hostname")[1].strip() == "vm1"
        pid = machine.pid
        assert is_alive(pid)
    assert not is_alive(pid)
    assert not run_dir.exists()
    machine.shutdown()  # a second call is harmless


@pytest.mark.slow
def test_guest_that_never_boots_times_out_naming_the_console_log(testvm_artifacts, tmp_path):
    # No initramfs: the kernel panics (cannot mount root) and, with panic=0, waits forever.
    spec = VmSpec(name="broken", accel="tcg", kernel=testvm_artifacts.kernel,
                  append="console=ttyS0 panic=0")
    machine = Machine(spec, tmp_path / "run", boot_timeout_s=8)
    with pytest.raises(VmBootError) as info:
        machine.launch()
    message = str(info.value)
    assert str(machine.console_log) in message
    assert "tcg" in message and "within 8 s" in message
    assert machine.console_log.exists()  # kept for the user to read
    assert not is_alive(machine.pid)
    assert not (tmp_path / "run" / "qmp.sock").exists()


def test_qemu_that_fails_at_once_reports_its_message(tmp_path):
    spec = VmSpec(name="bad", network=False, custom_args=("-no-such-option",))
    machine = Machine(spec, tmp_path / "run", ready="agent", boot_timeout_s=30)
    with pytest.raises(VmBootError) as info:
        machine.launch()
    assert "no-such-option" in str(info.value)
    assert "QEMU exited with status 1" in str(info.value)
    assert not is_alive(machine.pid)


def test_run_dir_in_use_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "qmp.sock").write_text("")
    with pytest.raises(PcoccError) as info:
        Machine(VmSpec(name="v", network=False), run_dir).launch()
    assert "not empty" in str(info.value)
    assert (run_dir / "qmp.sock").exists()  # not ours: untouched


def test_kvm_probe_fails_for_a_guest_that_cannot_start():
    # A CPU model QEMU does not know: QEMU exits at once, the probe must not say "usable".
    result = probe_kvm(cpu_model="no-such-cpu-model", timeout_s=20)
    assert not result.is_usable
    assert result.reason


def test_extra_disks_are_attached(testvm_artifacts, tmp_path):
    # The argv Machine builds contains the overlay first, then the extra disks.
    machine = Machine(testvm_artifacts.spec("v", disks=(Drive(testvm_artifacts.disk,
                                                              readonly=True),)),
                      tmp_path / "run", image=testvm_artifacts.disk)
    try:
        machine._prepare()
        drives = [d.path for d in machine.spec.disks]
        assert drives == [Path("disk0.qcow2"), testvm_artifacts.disk]
        assert (tmp_path / "run" / "disk0.qcow2").exists()
    finally:
        machine.shutdown()
    assert not (tmp_path / "run").exists()


def test_kept_overlay_points_at_the_image(testvm_artifacts, tmp_path):
    machine = Machine(testvm_artifacts.spec("v"), tmp_path / "run",
                      image=testvm_artifacts.disk, keep_overlay=True)
    machine._prepare()
    machine.shutdown()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["disk0.qcow2"]
    info = json.loads(proc.run(["qemu-img", "info", "--output=json",
                                tmp_path / "run" / "disk0.qcow2"]).stdout)
    assert info["backing-filename"] == str(testvm_artifacts.disk)
    assert info["backing-filename-format"] == "qcow2"


def test_bad_readiness_choices_are_usage_errors(tmp_path):
    with pytest.raises(UsageError):
        Machine(VmSpec(name="v"), tmp_path / "run", ready="ping")
    with pytest.raises(UsageError) as info:
        Machine(VmSpec(name="v", network=False), tmp_path / "run", ready="ssh")
    assert "networking" in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("cpu_model", ["host", "qemu64"])
def test_kvm_probe_agrees_with_a_real_kvm_boot(testvm_artifacts, tmp_path, cpu_model):
    """Whatever the probe says about KVM here, booting the test VM under KVM must agree.

    On the development machines /dev/kvm opens but guests hang (or ``-cpu host`` aborts): the
    probe must say "not usable" and the boot must fail; on a host with working KVM, both
    must succeed.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.skip("/dev/kvm cannot be opened here: the probe is not even tried")
    result = probe_kvm(cpu_model=cpu_model)
    spec = testvm_artifacts.spec("kvm0", accel="kvm", cpu_model=cpu_model, network=False)
    machine = Machine(spec, tmp_path / "run", seed=SeedSpec("kvm0", "i-kvm"),
                      ready="agent", boot_timeout_s=20)
    if result.is_usable:
        with machine:
            assert machine.agent().ping()
    else:
        assert result.reason
        with pytest.raises(VmBootError) as info:
            machine.launch()
        assert "kvm" in str(info.value)


def test_testvm_build_is_cached_by_content(tmp_path, monkeypatch, testvm_artifacts):
    builder = load_builder()
    out = tmp_path / "out"
    first = builder.build(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    second = builder.build(out)
    assert second["key"] == first["key"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps  # nothing rewritten
    # a changed input (the init script) gives a new build
    changed = tmp_path / "init.sh"
    changed.write_text(builder.INIT_SCRIPT.read_text() + "# changed for a test\n")
    monkeypatch.setattr(builder, "INIT_SCRIPT", changed)
    third = builder.build(out)
    assert third["key"] != first["key"]
    assert b"# changed for a test" in (out / "initrd.img").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["disk.qcow2", "initrd.img",
                                                      "manifest.json", "vmlinuz"]


def test_testvm_initramfs_is_a_valid_cpio_archive(testvm_artifacts):
    listing = proc.run(["cpio", "-it", "--quiet", "-F", testvm_artifacts.initrd]).stdout.split()
    for member in ("init", "bin/busybox", "bin/sh", "bin/dropbear", "etc/passwd",
                   "lib/modules/virtio_net.ko", "lib/modules/isofs.ko", "etc/testvm/modules"):
        assert member in listing, member
    info = proc.run(["qemu-img", "info", "--output=json", testvm_artifacts.disk]).stdout
    assert '"format": "qcow2"' in info


def test_testvm_modules_are_loaded_after_their_dependencies(testvm_artifacts):
    manifest = json.loads((testvm_artifacts.directory / "manifest.json").read_text())
    moddir = Path("/lib/modules") / manifest["kernel_version"]
    deps = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[Path(target).name.removesuffix(".ko")] = [
            Path(d).name.removesuffix(".ko") for d in rest.split()]
    order = manifest["modules"]
    for wanted in ("virtio_pci", "virtio_net", "virtio_blk", "virtio_console", "isofs"):
        assert wanted in order
    for index, module in enumerate(order):
        missing = [d for d in deps[module] if d not in order[:index]]
        assert not missing, f"{module} is loaded before its dependencies {missing}"


@pytest.mark.vm  # (starts QEMU, which finds the port taken)
def test_taken_ssh_port_is_retried_then_reported(tmp_path, monkeypatch):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        picks = []

        def always_taken(count: int, address: str = "127.0.0.1") -> list[int]:
            picks.append(port)
            return [port] * count

        monkeypatch.setattr("pcocc.vm.machine.free_tcp_ports", always_taken)
        machine = Machine(VmSpec(name="p"), tmp_path / "run", boot_timeout_s=30)
        with pytest.raises(VmBootError) as info:
            machine.launch()
        assert len(picks) == 3  # picked, lost the race, tried again
        assert "host forwarding" in str(info.value)
        # an explicit port is not replaced by another one
        explicit = Machine(VmSpec(name="p", ssh_host_port=port), tmp_path / "run2",
                           boot_timeout_s=30)
        with pytest.raises(VmBootError):
            explicit.launch()
        assert len(picks) == 3
