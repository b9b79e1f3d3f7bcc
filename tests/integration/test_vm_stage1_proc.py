"""The stage-1 scripts and initramfs of container VMs, run by sh and read by cpio."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from pcocc.vm import stage1
from tests.unit.test_vm_stage1 import _app


def test_stage2_script_runs_the_app_with_exactly_its_env_and_cwd(tmp_path):
    """Run the generated script with a real sh: awkward values must arrive intact."""
    sh = shutil.which("busybox") or shutil.which("sh")
    workdir = tmp_path / "dir with 'quote' and $x"
    workdir.mkdir()
    tricky = "sp ace 'single' \"double\" $HOME `cmd` \\ end"
    app = stage1.guest_app({
        "args": ["/bin/sh", "-c", 'printf "%s\\n" "$1" "$(pwd)"; env', "arg0", tricky],
        "env": ["PATH=/usr/bin:/bin", f"TRICKY={tricky}", "NEWLINE=a\nb"],
        "cwd": str(workdir),
    })
    script = stage1.stage2_script(app)
    argv = [sh, "sh", "-c", script] if sh.endswith("busybox") else [sh, "-c", script]
    res = subprocess.run(argv, capture_output=True, text=True, env={"LEAK": "1"}, check=False)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    assert lines[0] == tricky
    assert lines[1] == str(workdir)
    assert f"TRICKY={tricky}" in res.stdout and "NEWLINE=a\nb" in res.stdout
    names = {ln.split("=", 1)[0] for ln in lines[2:] if "=" in ln}
    assert "SHLVL" not in names and "OLDPWD" not in names


def test_stage2_exit_status_of_a_missing_cwd(tmp_path):
    app = _app(cwd=str(tmp_path / "missing"))
    res = subprocess.run(["sh", "-c", stage1.stage2_script(app)], capture_output=True,
                         check=False)
    assert res.returncode == 126


def test_init_script_is_valid_sh(tmp_path):
    script = tmp_path / "init"
    script.write_text(stage1.init_script())
    res = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_initramfs_writes_a_cpio_archive(tmp_path):
    if not shutil.which("cpio"):
        pytest.skip("cpio is not installed")
    cpio = stage1.initramfs_contents(_app(), busybox=b"BB", applets=["sh"], modules={})
    cpio.write(tmp_path / "initrd.img")
    with open(tmp_path / "initrd.img", "rb") as archive:
        res = subprocess.run(["cpio", "-it", "--quiet"], stdin=archive, capture_output=True,
                             text=True, check=True)
    names = res.stdout.split()
    assert {"init", "bin/busybox", "bin/sh", "etc/pcocc/stage2"} <= set(names)


def test_stage2_says_which_command_is_missing():
    app = _app(args=["no-such-command-xyz", "arg"], env=["PATH=/nonexistent"])
    res = subprocess.run(["sh", "-c", stage1.stage2_script(app)], capture_output=True,
                         text=True, check=False)
    assert res.returncode == 127
    assert "pcocc: no-such-command-xyz: command not found in the container" in res.stderr
