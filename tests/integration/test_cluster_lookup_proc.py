"""The user's ssh key and ssh configuration, checked with ssh-keygen and ssh itself."""

from __future__ import annotations

import stat
import subprocess

import pytest

from pcocc.cluster.lookup import clusters_of
from pcocc.cluster.sshkeys import ensure_user_key, write_ssh_files
from pcocc.errors import NotFound
from tests.fixtures.memkv import MemoryKv
from tests.unit.test_cluster_lookup import USER, add_cluster, fake_key


def test_user_key_generated_once(tmp_path):
    path = tmp_path / "ssh" / "id_ed25519"
    pub = ensure_user_key(path)
    assert pub.startswith("ssh-ed25519 ")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_user_key(path) == pub


def test_ssh_files_pin_host_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    kv = MemoryKv()
    add_cluster(kv, "7")
    view = clusters_of(kv, USER)[0]
    config = write_ssh_files(tmp_path, "7", view.vms)
    text = config.read_text()
    assert "Host vm1\n    HostName n2\n    Port 2201\n    HostKeyAlias pcocc-7-vm1" in text
    assert "StrictHostKeyChecking yes" in text
    assert (tmp_path / "known_hosts").read_text().splitlines() == [
        f"pcocc-7-vm0 {fake_key(0)}",
        f"pcocc-7-vm1 {fake_key(1)}",
    ]
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    # ssh itself accepts the file and resolves vm1 through it
    out = subprocess.run(
        ["ssh", "-G", "-F", str(config), "vm1"], capture_output=True, text=True, check=True
    ).stdout
    assert "port 2201" in out and "stricthostkeychecking true" in out
    assert "hostkeyalias pcocc-7-vm1" in out


def test_scp_checks_vm_names(tmp_path, monkeypatch):
    from pcocc.cluster.access import scp_argv

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PCOCC_RUN_DIR", str(tmp_path / "run"))
    kv = MemoryKv()
    add_cluster(kv, "7")
    view = clusters_of(kv, USER)[0]
    argv = scp_argv(view, ["-r", "./dir", "root@vm1:/tmp/x"])
    assert argv[:2] == ["scp", "-F"] and argv[3:] == ["-r", "./dir", "root@vm1:/tmp/x"]
    assert "Host vm1" in open(argv[2]).read()
    with pytest.raises(NotFound, match="vm0 to vm1"):
        scp_argv(view, ["f", "vm4:/tmp"])
