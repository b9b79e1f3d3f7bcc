"""Batch scripts and alloc checks of pcocc.cluster.jobs that run a shell or the CLI."""

from __future__ import annotations

import os
import subprocess

from pcocc.cli.main import run_cli
from pcocc.cluster.definition import build_definition
from pcocc.cluster.jobs import DEFINITION_VAR, batch_script, decode_definition


class FakeConfig:
    system_dir = "/etc/pcocc"
    user_dir = "/home/u/.pcocc"


def _alloc_with_mount(pcocc_env, monkeypatch, tmp_path, mount):
    (pcocc_env["system"] / "templates.yaml").write_text("templates:\n  t: {kernel: /k}\n")
    import pcocc.cluster.jobs as jobs

    def no_alloc(*args, **kwargs):
        raise AssertionError("allocated despite a bad --mount")

    monkeypatch.setattr(jobs, "alloc", no_alloc)
    return run_cli(["alloc", "--mount", mount, "-E", "true", "t:1"])


def test_batch_script_runs_launcher_with_quoted_command(tmp_path):
    d = build_definition("t:2", {"t": {"kernel": "/k"}})
    cmd = "echo 'it''s' $HOME; touch \"x y\"\nexit 4"
    script = batch_script(d, cmd, FakeConfig())
    assert script.startswith("#!/bin/sh\n")
    # run the script with the launcher replaced by a printer of its arguments
    lines = script.splitlines()
    exec_line = next(ln for ln in script.split("\nexec ")[1:])
    env_lines = [ln for ln in lines if ln.startswith("export ")]
    probe = (
        "\n".join(env_lines)
        + "\nprintf '%s\\n' \"$"
        + DEFINITION_VAR
        + '"\n'
        + "set -- "
        + exec_line
        + "\nshift 3\nprintf '<%s>' \"$@\"\n"
    )
    out = subprocess.run(["sh", "-c", probe], capture_output=True, text=True, check=True).stdout
    encoded, args = out.split("\n", 1)
    assert decode_definition(encoded) == d
    # --hold: a batch job, whose output file states how the command ended
    assert args == "<internal><launcher><-E><" + cmd + "><--hold>"
    assert "PCOCC_USER_CONF_DIR=/home/u/.pcocc" in script
    assert batch_script(d, None, FakeConfig()).rstrip().endswith("internal launcher --hold")


def test_alloc_refuses_bad_mounts_before_allocating(pcocc_env, capsys, monkeypatch, tmp_path):
    assert _alloc_with_mount(pcocc_env, monkeypatch, tmp_path, f"{tmp_path}/nope:/x") == 2
    err = capsys.readouterr().err
    assert f"pcocc: error: --mount '{tmp_path}/nope:/x': the source" in err
    assert "does not exist" in err


def test_alloc_without_virtiofsd_names_the_package(pcocc_env, capsys, monkeypatch, tmp_path):
    from pcocc.vm import virtiofs

    monkeypatch.setattr(virtiofs, "VIRTIOFSD_PATHS", ("/nonexistent/virtiofsd",))
    path = os.environ["PATH"].split(os.pathsep)
    monkeypatch.setenv("PATH", os.pathsep.join(
        d for d in path if not os.path.exists(os.path.join(d, "virtiofsd"))))
    assert _alloc_with_mount(pcocc_env, monkeypatch, tmp_path, f"{tmp_path}:/x") == 1
    err = capsys.readouterr().err
    assert "'virtiofsd' is not installed" in err
    assert "hint: install the Debian package 'qemu-system-common'" in err
