"""The vm container runtime with real QEMU (TCG), through the CLI.

Each test boots the host's cloud kernel in a small VM (256 MiB), so they are slow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import testrootfs
from pcocc.ctr.runtimes.vm import VmRuntime
from pcocc.errors import PcoccError
from tests.integration.containers import ctrlib

TIMEOUT_S = 240  # TCG on a loaded 2-core machine


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    try:
        VmRuntime().check_installed()
    except PcoccError as err:
        pytest.skip(f"the vm runtime cannot work here: {err}")
    try:
        return testrootfs.build_rootfs(tmp_path_factory.mktemp("ctr-vm-image") / "img")
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture
def env(pcocc_env, tmp_path, monkeypatch):
    runtime_dir = tmp_path / "xdg-runtime"
    runtime_dir.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("PCOCC_ACCEL", "tcg")
    return pcocc_env


def pcocc(pcocc_bin, *args, check=None):
    return ctrlib.pcocc(pcocc_bin, *args, check=check, timeout=TIMEOUT_S)


def pods(pcocc_bin) -> list[dict]:
    return ctrlib.pods(pcocc_bin, timeout=TIMEOUT_S)


def qemu_pids_of(uuid: str) -> list[int]:
    """QEMU processes whose command line names the pod."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"qemu-system" in argv[0] and any(uuid.encode() in a for a in argv):
            found.append(int(entry))
    return found


def leftovers(home: Path) -> list[Path]:
    """Temporary VM directories left in the pods' app bundles."""
    return list((home / ".local" / "state" / "pcocc" / "pods").glob("*/apps/*/.vm-*"))


def host_os_id() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("ID="):
            return line
    return "ID=unknown"


@pytest.mark.slow
def test_app_sees_the_image_its_env_and_a_readonly_volume(env, pcocc_bin, image_dir, tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "data.txt").write_text("from the host volume\n")
    res = pcocc(
        pcocc_bin, "run", "--runtime", "vm", "--set-env", "FOO=from cli",
        "--volume", f"v,kind=host,source={vol},readOnly=true", "--mount", "volume=v,target=/v",
        image_dir, "--", "sh", "-c",
        'cat /etc/os-release; echo "FOO=$FOO"; echo "IMAGE_VAR=$IMAGE_VAR"; cat /v/data.txt',
        check=0,
    )
    assert "ID=pcocctest" in res.stdout  # the image's file (helpers/testrootfs.py)
    assert host_os_id() not in res.stdout.splitlines()
    assert "FOO=from cli" in res.stdout and "IMAGE_VAR=from-image" in res.stdout
    assert "from the host volume" in res.stdout
    (pod,) = pods(pcocc_bin)
    assert pod["state"] == "exited" and pod["runtime"] == "vm"
    assert qemu_pids_of(pod["uuid"]) == [] and leftovers(env["home"]) == []


@pytest.mark.slow
def test_exit_status_and_stderr_propagate(env, pcocc_bin, image_dir):
    res = ctrlib.run_image(pcocc_bin, "vm", image_dir, "sh", "-c",
                           "echo to-stderr >&2; touch /readonly-root; exit 3")
    assert res.returncode == 3, res.stderr
    assert "to-stderr" in res.stderr
    assert "Read-only file system" in res.stderr  # the image's root stays read-only
    (pod,) = pods(pcocc_bin)
    assert qemu_pids_of(pod["uuid"]) == [] and leftovers(env["home"]) == []


@pytest.mark.slow
def test_writable_directory_volume_is_shared_with_the_host(env, pcocc_bin, image_dir,
                                                          tmp_path):
    vol = tmp_path / "rw"
    vol.mkdir()
    (vol / "in.txt").write_text("from the host\n")
    res = pcocc(pcocc_bin, "run", "--runtime", "vm",
                "--volume", f"v,kind=host,source={vol}", "--mount", "volume=v,target=/v",
                image_dir, "--", "sh", "-c",
                "cat /v/in.txt; echo from the app > /v/out.txt; mkdir /v/dir", check=0)
    assert "from the host" in res.stdout
    assert (vol / "out.txt").read_text() == "from the app\n"  # not a snapshot: the host sees it
    assert (vol / "out.txt").stat().st_uid == os.getuid()
    assert (vol / "dir").is_dir()
    (pod,) = pods(pcocc_bin)
    assert qemu_pids_of(pod["uuid"]) == [] and leftovers(env["home"]) == []
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_virtiofsd_of(p, vol)]


def _is_virtiofsd_of(pid: str, source: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"virtiofsd" in a for a in argv) and f"source={source}".encode() in argv


def test_writable_file_volume_is_refused_before_boot(env, pcocc_bin, image_dir, tmp_path):
    conf = tmp_path / "x.conf"
    conf.write_text("x\n")
    res = pcocc(pcocc_bin, "run", "--runtime", "vm",
                "--volume", f"v,kind=host,source={conf}", "--mount", "volume=v,target=/etc/x",
                image_dir, "--", "true")
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("pcocc: error: the vm runtime cannot mount")
    assert "readOnly=true" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_terminating_the_pod_stops_its_vm_and_removes_its_files(env, pcocc_bin, image_dir):
    p = subprocess.Popen([pcocc_bin, "run", "--runtime", "vm", str(image_dir), "--",
                          "sleep", "600"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        uuid = None
        while time.monotonic() < deadline and p.poll() is None:
            running = [x for x in pods(pcocc_bin) if x["state"] == "running"]
            if running and qemu_pids_of(running[0]["uuid"]):
                uuid = running[0]["uuid"]
                break
            time.sleep(0.2)
        assert uuid, f"no VM started: {p.poll()} {p.stderr.read() if p.poll() is not None else ''}"
        assert leftovers(env["home"]), "the VM's files should exist while it runs"
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert qemu_pids_of(uuid) == []
    assert leftovers(env["home"]) == []
    assert [x["state"] for x in pods(pcocc_bin)] == ["exited"]
