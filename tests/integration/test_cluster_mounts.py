"""``pcocc alloc --mount``: host directories shared into the real test VM over virtio-fs.

The tests run as root (the user running the tests), and one as a throwaway user, for the
unprivileged path (virtiofsd in a user namespace mapped with the user's subordinate ids).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from tests.fixtures.cluster import Env, _endpoints, assert_nothing_left, pids_matching

from pcocc.vm import virtiofs
from tests.nonroot import readable_pcocc, readable_site_packages

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _need_virtiofsd():
    try:
        virtiofs.find_virtiofsd()
    except Exception as err:  # noqa: BLE001 - skip with the reason
        pytest.skip(str(err))


def test_alloc_mount_reads_and_writes_host_files(cluster_env):
    env: Env = cluster_env
    share = env.tmp / "shared dir"
    share.mkdir()
    (share / "hello.txt").write_text("written on the host\n")
    script = (
        "set -e; pcocc ssh vm0 cat /data/hello.txt > from-guest.txt; "
        "pcocc ssh vm0 'echo written in vm0 > /data/new.txt; mkdir /data/made; sync'; "
        "pcocc ssh vm0 'grep \" /data virtiofs \" /proc/mounts' > mounts.txt"
    )
    res = env.run("alloc", "--mount", f"{share}:/data", "-E", script, "testvm:1")
    assert res.returncode == 0, res.stderr
    assert (env.tmp / "from-guest.txt").read_text() == "written on the host\n"
    assert (env.tmp / "mounts.txt").read_text().split()[:3] == ["pcocc0", "/data", "virtiofs"]
    new = share / "new.txt"
    assert new.read_text() == "written in vm0\n"
    assert (new.stat().st_uid, new.stat().st_gid) == (os.getuid(), os.getgid())
    assert (share / "made").is_dir()
    assert_nothing_left(env, _endpoints(env))


def test_template_mount_points_are_shared_by_tag(local_env, pcocc_env):
    env: Env = local_env
    apps, home = env.tmp / "apps", env.tmp / "home-share"
    for d in (apps, home):
        d.mkdir()
    (apps / "tool").write_text("v1\n")
    templates = pcocc_env["system"] / "templates.yaml"
    config = yaml.safe_load(templates.read_text())
    config["templates"]["testvm"]["mount-points"] = {
        "apps": {"path": str(apps), "readonly": True}, "home": {"path": str(home)}}
    templates.write_text(yaml.safe_dump(config))
    script = (
        "set -e; pcocc ssh vm0 'mkdir -p /apps /h && mount -t virtiofs apps /apps && "
        "mount -t virtiofs home /h && cat /apps/tool && echo ok > /h/written && "
        "{ touch /apps/new 2>&1 || true; }' > out.txt"
    )
    res = env.run("alloc", "-E", script, "testvm:1")
    assert res.returncode == 0, res.stderr
    out = (env.tmp / "out.txt").read_text()
    assert out.startswith("v1\n") and "Read-only file system" in out, out
    assert (home / "written").read_text() == "ok\n"
    assert not (apps / "new").exists()
    assert_nothing_left(env)


@pytest.mark.parametrize("how", ["qemu killed", "interrupted"])
def test_virtiofsd_ends_with_the_vm(local_env, how):
    env: Env = local_env
    share = env.tmp / "share"
    share.mkdir()
    proc = env.start("alloc", "--mount", f"{share}:/data", "-E", "sleep 600", "testvm:1")
    try:
        env.wait_ps(lambda cs: len(cs) == 1 and cs[0]["running"] == 1, "the VM to run",
                    proc=proc)
        assert pids_matching(env, "virtiofsd"), "no virtiofsd serves the share"
        sockets = list(env.run_dir.rglob("fs0.sock"))
        assert len(sockets) == 1 and oct(sockets[0].stat().st_mode & 0o777) == "0o600"
        if how == "qemu killed":
            (qemu,) = pids_matching(env, "qemu-system")
            os.kill(qemu, signal.SIGKILL)
            status = 1
        else:
            os.killpg(proc.pid, signal.SIGINT)
            status = 130
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == status, err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert_nothing_left(env)


@pytest.mark.parametrize("make_bad, why", [
    (lambda tmp: f"{tmp}/missing:/data", "does not exist"),
    (lambda tmp: f"{tmp}/hosts.sh:/data", "is not a directory"),
    (lambda tmp: f"{tmp}:data", "must be an absolute path"),
])
def test_bad_mounts_fail_before_allocation(local_env, make_bad, why):
    env: Env = local_env
    value = make_bad(env.tmp)
    res = env.run("alloc", "--mount", value, "-E", "true", "testvm:1", timeout_s=60)
    assert res.returncode == 2, res.stderr
    assert f"--mount '{value}'" in res.stderr and why in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2  # error (+ hint), no traceback
    assert not env.run_dir.exists() or not any(env.run_dir.iterdir())


# -- as an ordinary user ------------------------------------------------------------------
@pytest.fixture
def vm_user(testvm_artifacts):
    """A throwaway user, its private home with a pcocc configuration for the test VM, and
    the environment to run pcocc as that user."""
    if os.getuid() != 0:
        pytest.skip("creating a throwaway user needs root")
    for tool in ("useradd", "userdel", "usermod", "runuser", "newuidmap"):
        if shutil.which(tool) is None:
            pytest.skip(f"'{tool}' is missing")
    name = f"pcoccfs{os.getpid() % 100000}"
    top = Path(tempfile.mkdtemp(prefix="pcocc-virtiofs-"))  # pytest's tmp is root-only
    # useradd gives the user ranges in /etc/subuid and /etc/subgid (Debian's default)
    subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    try:
        uid = int(subprocess.run(["id", "-u", name], capture_output=True, text=True,
                                 check=True).stdout)
        try:
            virtiofs.check_unprivileged(uid, name)
        except Exception:  # noqa: BLE001 - no ranges: give some, as an admin would
            subprocess.run(["usermod", "--add-subuids", "300000-365535",
                            "--add-subgids", "300000-365535", name], check=True)
            virtiofs.check_unprivileged(uid, name)
        top.chmod(0o755)
        pythonpath = [readable_site_packages(top / "site"), readable_pcocc(top)]
        vm = top / "vm"
        vm.mkdir()
        for attr in ("kernel", "initrd"):
            shutil.copy(getattr(testvm_artifacts, attr), vm / attr)
        subprocess.run(["chmod", "-R", "a+rX", str(top)], check=True)
        home = top / "home"
        etc = home / "etc"
        etc.mkdir(parents=True)
        (etc / "templates.yaml").write_text(yaml.safe_dump({"templates": {"testvm": {
            "kernel": str(vm / "kernel"), "initrd": str(vm / "initrd"),
            "append": testvm_artifacts.append, "accel": "tcg", "resource-set": "tiny"}}}))
        (etc / "resources.yaml").write_text(
            yaml.safe_dump({"resource-sets": {"tiny": {"cores": 1, "memory": "256M"}}}))
        (etc / "batch.yaml").write_text(
            yaml.safe_dump({"type": "local", "etcd": {"mode": "private"}}))
        subprocess.run(["chown", "-R", f"{name}:{name}", str(home)], check=True)
        home.chmod(0o700)
        env = ["env", "-i", "PATH=/usr/bin:/bin:/usr/sbin:/sbin", f"HOME={home}",
               f"PCOCC_SYSTEM_CONF_DIR={etc}", f"PCOCC_USER_CONF_DIR={home / 'user'}",
               f"PCOCC_RUN_DIR={home / 'run'}", "PCOCC_BOOT_TIMEOUT=240", "PCOCC_ACCEL=tcg",
               "PYTHONPATH=" + ":".join(map(str, pythonpath))]
        yield {"name": name, "uid": uid, "home": home,
               "pcocc": ["runuser", "-u", name, "--", *env, "/usr/bin/python3", "-m",
                         "pcocc.cli.main"]}
    finally:
        subprocess.run(["userdel", "--force", name], check=False)
        shutil.rmtree(top, ignore_errors=True)


def test_alloc_mount_as_an_ordinary_user_keeps_the_users_ownership(vm_user):
    home = vm_user["home"]
    share = home / "share"
    share.mkdir()
    (share / "hello.txt").write_text("from the host\n")
    subprocess.run(["chown", "-R", f"{vm_user['name']}:", str(share)], check=True)
    # the test VM has only root: ssh as root (the user's own name is for real images)
    script = (
        "set -e; python3 -m pcocc.cli.main ssh root@vm0 "
        "'cat /data/hello.txt; echo written by vm0 > /data/new.txt; "
        "grep \" /data virtiofs \" /proc/mounts'"
    )
    res = subprocess.run([*vm_user["pcocc"], "alloc", "--mount", f"{share}:/data", "-E", script,
                          "testvm:1"], capture_output=True, text=True, timeout=400, cwd=home,
                         check=False)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "from the host" in lines
    assert any(ln.split()[:3] == ["pcocc0", "/data", "virtiofs"] for ln in lines), lines
    new = share / "new.txt"
    assert new.read_text() == "written by vm0\n"
    assert new.stat().st_uid == vm_user["uid"]  # the guest's root is the user on the host
    left = subprocess.run(["pgrep", "-u", vm_user["name"], "-a"], capture_output=True,
                          text=True, check=False).stdout
    assert left == ""
    assert not (home / "run").exists() or list((home / "run").iterdir()) == []
