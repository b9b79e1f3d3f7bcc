"""``--mount`` as pcocc 0.7 writes it, ``TAG=PATH[,type=virtio-fs|virtio-9p][,readonly]``,
on the real test VM: the guest mounts each share by its tag, and a read-only one refuses
every write of the guest."""

from __future__ import annotations

import pytest
from tests.fixtures.cluster import Env, assert_nothing_left

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
