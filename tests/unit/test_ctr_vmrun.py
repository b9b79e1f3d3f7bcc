"""Host side of the vm container runtime: the parts that need no VM."""

from __future__ import annotations

from pathlib import Path

import pytest

from pcocc.ctr import vmrun
from pcocc.ctr.runtimes.vm import VmRuntime
from pcocc.ctr.spec import Identity, SpecRequest, build_spec
from pcocc.ctr.volumes import Mount
from pcocc.errors import PcoccError, UsageError
from pcocc.vm import stage1


def _spec(mounts=(), private_net=False):
    req = SpecRequest(rootfs="rootfs", args=["true"], env={"A": "1"}, identity=Identity(1000, 1000),
                      mounts=list(mounts), private_net=private_net)
    return build_spec(req)


@pytest.mark.parametrize("private_net", [False, True])
def test_bind_volumes_skips_what_the_guest_provides(private_net):
    spec = _spec([Mount("/srv/data", "/data", readonly=True)], private_net=private_net)
    assert vmrun.bind_volumes(spec) == [("/srv/data", "/data", True)]


def test_writable_directory_binds_are_shared_and_file_binds_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    spec = _spec([Mount(str(tmp_path), "/data", readonly=False)])
    assert vmrun.bind_volumes(spec) == [(str(tmp_path), "/data", False)]
    assert VmRuntime().adapt_spec(spec) == spec
    bad = _spec([Mount(str(tmp_path / "f"), "/etc/f", readonly=False)])
    with pytest.raises(UsageError, match=f"cannot mount {tmp_path}/f read-write at /etc/f"):
        vmrun.bind_volumes(bad)
    with pytest.raises(UsageError, match="only directories"):
        VmRuntime().adapt_spec(bad)
    ok = _spec([Mount("/srv/data", "/data", readonly=True)])
    assert VmRuntime().adapt_spec(ok) == ok


def test_writable_volume_without_virtiofsd_names_the_package(tmp_path, monkeypatch):
    from pcocc.errors import ToolMissing
    from pcocc.vm import virtiofs

    monkeypatch.setattr(virtiofs, "VIRTIOFSD_PATHS", ("/nonexistent/virtiofsd",))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolMissing, match="virtiofsd"):
        VmRuntime().adapt_spec(_spec([Mount(str(tmp_path), "/data", readonly=False)]))


@pytest.mark.parametrize(
    ("text", "status"), [("exit 0\n", 0), ("exit 3\n", 3), ("exit 137", 137)]
)
def test_parse_status(text, status):
    assert vmrun.parse_status(text) == status


@pytest.mark.parametrize(
    ("text", "message"),
    [("fail cannot mount the rootfs image\n", "cannot mount the rootfs image"),
     ("", "without reporting"), ("exit x\n", "without reporting")],
)
def test_parse_status_failures(text, message):
    with pytest.raises(PcoccError, match=message):
        vmrun.parse_status(text)


def test_qemu_extra_args_name_ports_and_disks_and_escape_commas(tmp_path):
    tmp = tmp_path / "a,b"
    args = vmrun.qemu_extra_args(tmp, [(stage1.ROOT_SERIAL, tmp / "root.sqfs"),
                                       ("pcocc-vol0", tmp / "v.sqfs")])
    joined = " ".join(args)
    assert "-no-reboot" in args
    for port in (stage1.PORT_STDOUT, stage1.PORT_STDERR, stage1.PORT_STATUS):
        assert f"name={port}" in joined
    assert "path=/dev/fd/1,append=on" in joined and "path=/dev/fd/2,append=on" in joined
    assert f"file={tmp_path}/a,,b/root.sqfs,format=raw" in joined
    assert f"serial={stage1.ROOT_SERIAL}" in joined and "serial=pcocc-vol0" in joined
    assert joined.count("readonly=on") == 2


def test_squashfs_argv_packs_without_compression(tmp_path):
    argv = vmrun.squashfs_argv(Path("/src"), tmp_path / "x.sqfs")
    assert argv[:3] == ["mksquashfs", "/src", str(tmp_path / "x.sqfs")]
    assert {"-noappend", "-noI", "-noD", "-noF", "-noX"} <= set(argv)


def test_main_reports_errors_in_one_line(tmp_path, capsys):
    (tmp_path / "config.json").write_text(
        '{"root": {"path": "missing"}, "process": {"args": ["true"]}}')
    assert vmrun.main([str(tmp_path)]) == vmrun.FAILED
    err = capsys.readouterr().err
    assert err.startswith("pcocc: error: vm runtime: rootfs") and "Traceback" not in err
    assert vmrun.main([]) == 2
