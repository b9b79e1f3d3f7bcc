"""The pure parts of the vm container runtime: kernel command line, scripts, initramfs."""

from __future__ import annotations

import re

import pytest

from pcocc.errors import UsageError
from pcocc.vm import stage1


def _app(**kw) -> stage1.GuestApp:
    process = {"args": ["/bin/sh", "-c", "echo hi"], "env": ["PATH=/bin", "A=1"], "cwd": "/"}
    process.update(kw)
    return stage1.guest_app(process)


def test_kernel_cmdline_has_console_and_init_and_extra_words():
    line = stage1.kernel_cmdline(["loglevel=7"])
    words = line.split()
    assert "console=ttyS0" in words and "rdinit=/init" in words and "panic=-1" in words
    assert words[-1] == "loglevel=7"
    with pytest.raises(UsageError, match="no blanks"):
        stage1.kernel_cmdline(["a b"])


def test_guest_app_from_oci_process():
    app = stage1.guest_app(
        {"args": ["ls", "-l"], "env": ["PATH=/bin", "EMPTY=", "X=a=b"], "cwd": "/work"},
        readonly_rootfs=False, hostname="box-1",
    )
    assert app.args == ("ls", "-l")
    assert app.env == (("PATH", "/bin"), ("EMPTY", ""), ("X", "a=b"))
    assert app.cwd == "/work" and not app.readonly_rootfs and app.hostname == "box-1"


@pytest.mark.parametrize(
    ("process", "message"),
    [
        ({"args": []}, "has no args"),
        ({"args": ["x"], "env": ["NOEQUALS"]}, "not NAME=VALUE"),
        ({"args": ["x"], "env": ["1BAD=x"]}, "not NAME=VALUE"),
        ({"args": ["x"], "cwd": "relative"}, "not an absolute path"),
    ],
)
def test_guest_app_rejects_bad_processes(process, message):
    with pytest.raises(UsageError, match=message):
        stage1.guest_app(process)


def test_guest_app_rejects_bad_hostname():
    with pytest.raises(UsageError, match="host name"):
        stage1.guest_app({"args": ["x"]}, hostname="a b")


def test_stage2_script_removes_itself_before_exec():
    script = stage1.stage2_script(_app())
    first = next(ln for ln in script.splitlines() if not ln.startswith("#"))
    assert first == f"{stage1.STAGE2_DIR}/busybox rm -rf {stage1.STAGE2_DIR}"
    assert script.rstrip().splitlines()[-1].startswith("exec ")


def test_volumes_table_and_its_checks():
    vols = [stage1.GuestVolume("pcocc-vol0", "/data"),
            stage1.GuestVolume("pcocc-vol1", "/etc/x.conf", "x.conf"),
            stage1.GuestVolume("pcocc-vol2", "/work", shared=True)]
    assert stage1.volumes_table(vols) == (
        "pcocc-vol0\t/data\t-\tsquashfs\npcocc-vol1\t/etc/x.conf\tx.conf\tsquashfs\n"
        "pcocc-vol2\t/work\t-\tvirtiofs\n"
    )
    with pytest.raises(UsageError, match="only directories can be shared"):
        stage1.volumes_table([stage1.GuestVolume("v", "/a", "a", shared=True)])
    with pytest.raises(UsageError, match="tab or a newline"):
        stage1.volumes_table([stage1.GuestVolume("v", "/a\tb")])
    with pytest.raises(UsageError, match="not an absolute path"):
        stage1.volumes_table([stage1.GuestVolume("v", "data")])


def test_init_script_has_every_placeholder_filled():
    text = stage1.init_script()
    assert not re.search(r"@[A-Z0-9_]+@", text)
    assert stage1.PORT_STATUS in text and stage1.ROOT_SERIAL in text
    assert text.startswith("#!/bin/sh\n")


def test_initramfs_contents():
    app = stage1.guest_app({"args": ["true"]}, readonly_rootfs=True, hostname="h1",
                           volumes=[stage1.GuestVolume("pcocc-vol0", "/v")])
    modules = {"virtio": b"A", "virtio_pci": b"B"}
    cpio = stage1.initramfs_contents(app, busybox=b"BB", applets=["sh", "busybox", "mount"],
                                     modules=modules)
    e = cpio.entries
    assert e["init"][0] == 0o100755 and e["init"][1] == stage1.init_script().encode()
    assert e["bin/busybox"] == (0o100755, b"BB")
    assert e["bin/sh"] == (0o120777, b"busybox") and "bin/busybox" in e
    assert e["lib/modules/virtio_pci.ko"][1] == b"B"
    assert e["etc/pcocc/modules"][1] == b"virtio\nvirtio_pci\n"  # load order kept
    assert e["etc/pcocc/stage2"][1] == stage1.stage2_script(app).encode()
    assert e["etc/pcocc/volumes"][1] == b"pcocc-vol0\t/v\t-\tsquashfs\n"
    assert e["etc/pcocc/hostname"][1] == b"h1\n"
    assert "etc/pcocc/readonly" in e
    writable = stage1.initramfs_contents(
        stage1.guest_app({"args": ["true"]}, readonly_rootfs=False),
        busybox=b"BB", applets=[], modules={})
    assert "etc/pcocc/readonly" not in writable.entries
