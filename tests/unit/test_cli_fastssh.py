"""The quick path of ``pcocc ssh vmN`` in a cluster's job (pcocc.cli.fastssh): it uses the
ssh files the launcher prepared, only when they are there, ours and private, and names the
VM; anything else goes the usual way."""

import base64
import os

import pytest

from pcocc import proc
from pcocc.cli import fastssh
from pcocc.cli.main import run_cli
from pcocc.cluster.sshkeys import prepare_ssh_files
from pcocc.cluster.vmstate import VmRecord

KEY = "ssh-ed25519 " + base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + b"k" * 32).decode()


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    """Cluster 7 with vm0 running, its files prepared as the launcher does; ssh recorded."""
    root = tmp_path / "run"
    root.mkdir(mode=0o700)
    (root / "7").mkdir(mode=0o700)
    monkeypatch.setenv("PCOCC_RUN_DIR", str(root))
    monkeypatch.setenv("PCOCC_JOB_ID", "7")
    monkeypatch.setenv("HOME", str(tmp_path))
    vms = {0: VmRecord(rank=0, host="n1", status="running", node_pid=1, ssh_port=4022,
                       address="127.0.0.1", host_key=KEY)}
    prepare_ssh_files(root / "7", "7", vms)
    execs = []

    def replace(argv):
        execs.append(list(argv))
        raise SystemExit(0)

    monkeypatch.setattr(proc, "replace_process", replace)
    return root / "7", execs


def test_ssh_in_the_cluster_job_runs_ssh_on_the_prepared_files(prepared):
    directory, execs = prepared
    with pytest.raises(SystemExit):
        run_cli(["ssh", "root@vm0", "ls", "-l"])
    assert execs == [["ssh", "-F", str(directory / "ssh_config"), "root@vm0", "ls", "-l"]]
    assert "Host vm0\n" in (directory / "ssh_config").read_text()


@pytest.mark.parametrize("argv", [
    ["ssh", "-p", "8080", "vm0"],       # options: the usual path
    ["ssh", "vm0", "--", "true"],
    ["ssh", "vm1", "true"],             # no such VM in the prepared files
    ["ssh", "-j", "7", "vm0"],
    ["ssh", "vm0;x", "true"],
    ["ssh"],
])
def test_anything_else_goes_the_usual_way(prepared, argv):
    assert fastssh.fast_ssh(argv) is None
    assert prepared[1] == []


def test_without_the_job_id_it_goes_the_usual_way(prepared, monkeypatch):
    monkeypatch.delenv("PCOCC_JOB_ID")
    assert fastssh.fast_ssh(["ssh", "vm0"]) is None
    monkeypatch.setenv("PCOCC_JOB_ID", "../7")
    assert fastssh.fast_ssh(["ssh", "vm0"]) is None


def test_files_others_may_write_or_links_are_not_used(prepared, tmp_path):
    directory, execs = prepared
    config = directory / "ssh_config"
    config.chmod(0o620)
    assert fastssh.fast_ssh(["ssh", "vm0"]) is None
    config.chmod(0o600)
    os.rename(config, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", config)
    assert fastssh.fast_ssh(["ssh", "vm0"]) is None
    assert execs == []


def test_a_cluster_dir_open_to_others_is_not_used(prepared):
    directory, execs = prepared
    directory.chmod(0o755)
    assert fastssh.fast_ssh(["ssh", "vm0"]) is None
    assert execs == []


def test_without_prepared_files_it_goes_the_usual_way(prepared):
    directory, _ = prepared
    (directory / "known_hosts").unlink()
    assert fastssh.fast_ssh(["ssh", "vm0"]) is None


def test_records_unfit_for_an_ssh_config_prepare_nothing(tmp_path):
    bad = {0: VmRecord(rank=0, host="n1", status="running", node_pid=1, ssh_port=4022,
                       address="127.0.0.1\n    ProxyCommand x", host_key=KEY)}
    prepare_ssh_files(tmp_path, "7", bad)  # no exception: pcocc ssh reports it
    assert not (tmp_path / "ssh_config").exists()
