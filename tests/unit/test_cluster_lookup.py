import base64

import pytest

from pcocc.cluster.definition import build_definition
from pcocc.cli.cluster import ps_table
from pcocc.cluster.lookup import clusters_of, format_age, select_cluster
from pcocc.cluster.record import ClusterRecord
from pcocc.cluster.sshkeys import ssh_config_text
from pcocc.cluster.state import ClusterState
from pcocc.cluster.vmstate import VmRecord
from pcocc.errors import NotFound, UsageError
from pcocc.kv import keys

from tests.fixtures.memkv import MemoryKv

USER = "bob"
TEMPLATES = {"tpl": {"kernel": "/k"}}


def fake_key(seed: int, comment: str = "") -> str:
    """An OpenSSH ed25519 public key line (well formed; no private key behind it)."""
    blob = b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + bytes([seed]) * 32
    return f"ssh-ed25519 {base64.b64encode(blob).decode()}" + (f" {comment}" if comment else "")


def add_cluster(kv, batchid, n=2, running=2, other_user=False):
    user = "mallory" if other_user else USER
    d = build_definition(f"tpl:{n}", TEMPLATES, owner=user)
    rec = ClusterRecord(batchid, d, ClusterState.RUNNING, "n1", 123, batch="slurm")
    kv.put(keys.cluster_definition(user, batchid), rec.to_json())
    for rank in range(running):
        vm = VmRecord(
            rank=rank,
            host=f"n{rank + 1}",
            status="running",
            node_pid=10 + rank,
            ssh_port=2200 + rank,
            host_key=fake_key(rank),
        )
        kv.put(keys.vm_state(user, batchid, rank), vm.to_json())
        kv.put(keys.rnat(user, batchid, rank, 22), f"n{rank + 1}:{2200 + rank}")


def test_clusters_of_reads_only_the_users_prefix():
    kv = MemoryKv()
    add_cluster(kv, "7")
    add_cluster(kv, "12", n=3, running=1)
    add_cluster(kv, "9", other_user=True)
    views = clusters_of(kv, USER)
    assert [v.batchid for v in views] == ["7", "12"]
    assert views[1].size == 3 and views[1].running_count() == 1
    assert views[0].rnat == {(0, 22): ("n1", 2200), (1, 22): ("n2", 2201)}
    assert views[0].hosts == ["n1", "n2"]
    data = views[1].to_json()
    assert (data["id"], data["state"], data["vms"], data["running"]) == ("12", "running", 3, 1)
    table = ps_table(views).splitlines()
    assert table[0].split() == ["ID", "NAME", "STATE", "VMS", "NODES", "AGE"]
    assert table[2].split()[:5] == ["12", "-", "running", "1/3", "n1"]


def test_vm_lookup_errors():
    kv = MemoryKv()
    add_cluster(kv, "7", n=3, running=1)
    view = clusters_of(kv, USER)[0]
    assert view.vm("vm0").ssh_port == 2200 and view.vm("0").rank == 0
    with pytest.raises(NotFound, match="vm2 of cluster 7 is not running"):
        view.vm("vm2")
    with pytest.raises(NotFound, match="vm0 to vm2"):
        view.vm("vm5")
    with pytest.raises(UsageError, match="not a VM name"):
        view.vm("node1")


def test_select_cluster_rules():
    kv = MemoryKv()
    add_cluster(kv, "7")
    one = clusters_of(kv, USER)
    assert select_cluster(one, None, {}).batchid == "7"
    add_cluster(kv, "8")
    two = clusters_of(kv, USER)
    with pytest.raises(UsageError, match=r"several running clusters \(7, 8\)") as exc:
        select_cluster(two, None, {})
    assert "-j" in exc.value.hint
    assert select_cluster(two, "8", {}).batchid == "8"
    assert select_cluster(two, None, {"PCOCC_JOB_ID": "7"}).batchid == "7"
    assert select_cluster(two, None, {"SLURM_JOB_ID": "8"}).batchid == "8"
    # -j wins over the environment
    assert select_cluster(two, "8", {"PCOCC_JOB_ID": "7"}).batchid == "8"
    with pytest.raises(NotFound, match="no running cluster with id 99") as exc:
        select_cluster(two, "99", {})
    assert "7, 8" in exc.value.hint
    with pytest.raises(NotFound, match="you have no running cluster"):
        select_cluster([], None, {})
    # a Slurm job without a cluster falls back to the only cluster
    assert select_cluster(one, None, {"SLURM_JOB_ID": "55"}).batchid == "7"


def test_corrupt_definition_is_skipped():
    kv = MemoryKv()
    add_cluster(kv, "7")
    kv.put(keys.cluster_definition(USER, "8"), "{broken")
    assert [v.batchid for v in clusters_of(kv, USER)] == ["7"]


def test_format_age():
    assert [format_age(s) for s in (5, 65, 3700, 90000)] == ["5s", "1m05s", "1h01m", "1d01h"]


def test_ssh_connects_to_the_published_address_with_the_alias_key():
    vms = {
        0: VmRecord(rank=0, host="n1", status="running", node_pid=1, ssh_port=4022,
                    address="10.1.0.2", host_key=fake_key(0)),
    }
    text = ssh_config_text("7", vms, "/k", "/i")
    assert "Host vm0\n    HostName 10.1.0.2\n    Port 4022\n    HostKeyAlias pcocc-7-vm0" in text
    assert "StrictHostKeyChecking yes" in text


def test_booting_vms_get_no_host_entry():
    vms = {0: VmRecord(rank=0, host="n1", status="booting", node_pid=1)}
    assert "Host vm0" not in ssh_config_text("7", vms, "/k", "/i")


def test_ssh_to_a_vm_without_ssh_forward_says_why(tmp_path, monkeypatch):
    from pcocc.cluster.access import ssh_argv

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PCOCC_RUN_DIR", str(tmp_path / "run"))
    kv = MemoryKv()
    add_cluster(kv, "7", running=0)
    for rank, status in ((0, "running"), (1, "booting")):
        rec = VmRecord(rank=rank, host="n1", status=status, node_pid=1, address="10.0.0.1")
        kv.put(keys.vm_state(USER, "7", rank), rec.to_json())
    view = clusters_of(kv, USER)[0]
    with pytest.raises(NotFound, match="vm0 of cluster 7 forwards no ssh port") as info:
        ssh_argv(view, "vm0", ["true"])
    assert "ssh-forward: true" in info.value.hint
    with pytest.raises(NotFound, match="vm1 of cluster 7 has no ssh port yet"):
        ssh_argv(view, "vm1", ["true"])
