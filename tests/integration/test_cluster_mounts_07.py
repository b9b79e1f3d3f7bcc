"""``--mount`` as pcocc 0.7 writes it, ``TAG=PATH[,type=virtio-fs|virtio-9p][,readonly]``,
on the real test VM: the guest mounts each share by its tag, and a read-only one refuses
every write of the guest."""

from __future__ import annotations

import pytest
import yaml
from tests.fixtures.cluster import Env, assert_nothing_left, our_processes

from pcocc.vm import virtiofs

pytestmark = pytest.mark.slow


def test_mount_by_tag_readonly_and_read_write(local_env):
    env: Env = local_env
    try:
        virtiofs.find_virtiofsd()
    except Exception as err:  # noqa: BLE001 - skip with the reason
        pytest.skip(str(err))
    ro, rw = env.tmp / "ro-share", env.tmp / "rw-share"
    for d in (ro, rw):
        d.mkdir()
    (ro / "tool").write_text("v1\n")
    script = (
        "set -e; pcocc ssh vm0 'mkdir -p /r /w && mount -t virtiofs apps /r && "
        "mount -t virtiofs scratch /w && cat /r/tool && echo ok > /w/written && "
        "{ touch /r/new 2>&1 || echo write refused; }' > out.txt"
    )
    res = env.run("alloc", "--mount", f"apps={ro},readonly", "--mount", f"scratch={rw}",
                  "-E", script, "testvm:1")
    assert res.returncode == 0, res.stderr
    out = (env.tmp / "out.txt").read_text()
    assert out.startswith("v1\n") and "Read-only file system" in out, out
    assert "write refused" in out
    assert (rw / "written").read_text() == "ok\n"
    assert sorted(p.name for p in ro.iterdir()) == ["tool"]
    assert_nothing_left(env)


def test_mount_by_tag_over_9p(local_env, pcocc_env, testvm_9p_artifacts):
    """Guests without virtio-fs: QEMU's own 9p server (the test VM with Debian's generic
    kernel, which has the 9p modules), read-write, and read-only from the template."""
    env: Env = local_env
    templates = pcocc_env["system"] / "templates.yaml"
    config = yaml.safe_load(templates.read_text())
    tpl = config["templates"]["testvm"]
    tpl["kernel"] = str(testvm_9p_artifacts.kernel)
    tpl["initrd"] = str(testvm_9p_artifacts.initrd)
    rw, ro = env.tmp / "nine-rw", env.tmp / "nine-ro"
    for d in (rw, ro):
        d.mkdir()
    (rw / "hello").write_text("from the host\n")
    (ro / "tool").write_text("v2\n")
    tpl["mount-points"] = {"apps": {"path": str(ro), "type": "virtio-9p", "readonly": True}}
    templates.write_text(yaml.safe_dump(config))
    opts = "-o trans=virtio,version=9p2000.L"
    script = (
        f"set -e; pcocc ssh vm0 'mkdir -p /n /a && mount -t 9p {opts} nine /n && "
        f"mount -t 9p {opts} apps /a && cat /n/hello /a/tool && echo ok > /n/written && "
        "{ touch /a/new 2>&1 || echo write refused; } && grep \" 9p \" /proc/mounts' > out.txt"
    )
    res = env.run("alloc", "--mount", f"nine={rw},type=virtio-9p", "-E", script, "testvm:1")
    assert res.returncode == 0, res.stderr
    out = (env.tmp / "out.txt").read_text()
    assert out.startswith("from the host\nv2\n"), out
    assert "write refused" in out and "Read-only file system" in out, out
    assert [line.split()[:3] for line in out.splitlines() if " 9p " in line] == [
        ["nine", "/n", "9p"], ["apps", "/a", "9p"]]
    assert (rw / "written").read_text() == "ok\n"
    assert sorted(p.name for p in ro.iterdir()) == ["tool"]
    assert not any("virtiofsd" in p for p in our_processes(env))
    assert_nothing_left(env)
