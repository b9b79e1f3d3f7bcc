"""The glue of alloc/batch: job script, definition transport, CLI errors before allocation."""

import pytest

from pcocc.cli.main import run_cli
from pcocc.cluster.batchadapter import batch_manager
from pcocc.cluster.vmbuild import hosts_file, vm_shares
from pcocc.cluster.definition import build_definition
from pcocc.config import BatchConfig, EtcdConfig
from pcocc.cluster.jobs import DEFINITION_VAR, boot_timeout_s, decode_definition, encode_definition
from pcocc.errors import UsageError
from pcocc.kv.connect import configured_endpoints, kv_endpoint_sets


def test_definition_transport_round_trip(tmp_path):
    d = build_definition("t:2", {"t": {"kernel": "/k"}}, user_data_file=None)
    assert decode_definition(encode_definition(d)) == d
    with pytest.raises(UsageError):
        decode_definition("not base64 !")


def test_boot_timeout_from_env():
    assert boot_timeout_s({}) == 600.0
    assert boot_timeout_s({"PCOCC_BOOT_TIMEOUT": "30"}) == 30.0
    for bad in ("0", "x", "-3"):
        with pytest.raises(UsageError):
            boot_timeout_s({"PCOCC_BOOT_TIMEOUT": bad})


def test_hosts_and_vm_shares(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    d = build_definition("t:2", {"t": {"kernel": "/k"}},
                         mounts=[f"{tmp_path}/a:/data", f"{tmp_path}/b:/scratch"])
    assert hosts_file(d).splitlines() == [f"{d.vms[0].address} vm0", f"{d.vms[1].address} vm1"]
    settings = {"mount-points": {"home": {"path": "/home"},
                                 "apps": {"path": "/opt", "readonly": True}}}
    shares, table = vm_shares(d, settings)
    assert table == (("pcocc0", "/data"), ("pcocc1", "/scratch"))
    assert [(s.tag, s.source, s.readonly) for s in shares] == [
        ("pcocc0", str(tmp_path / "a"), False),
        ("pcocc1", str(tmp_path / "b"), False),
        ("apps", "/opt", True),
        ("home", "/home", False),
    ]
    assert vm_shares(build_definition("t:1", {"t": {"kernel": "/k"}}), {}) == ((), ())


def test_internal_commands_are_hidden_and_need_their_context(pcocc_env, capsys, monkeypatch):
    monkeypatch.delenv(DEFINITION_VAR, raising=False)
    assert run_cli(["internal", "launcher"]) == 2
    err = capsys.readouterr().err
    assert "no cluster definition" in err and "hint:" in err
    monkeypatch.delenv("PCOCC_JOB_ID", raising=False)
    assert run_cli(["internal", "run", "--rank", "0"]) == 2
    assert "no cluster id" in capsys.readouterr().err


def test_ssh_without_any_cluster_is_clear(pcocc_env, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("PCOCC_ETCD_ENDPOINTS", raising=False)
    monkeypatch.setenv("PCOCC_RUN_DIR", str(tmp_path / "run"))
    for var in ("PCOCC_JOB_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    assert run_cli(["ssh", "vm0", "hostname"]) == 1
    err = capsys.readouterr().err
    assert "pcocc: error: you have no running cluster" in err
    assert run_cli(["ps", "--json"]) == 0
    assert capsys.readouterr().out.strip() == "[]"


def test_batch_yaml_reaches_the_manager_through_its_section():
    from pcocc.batch.slurm import SlurmManager

    class Cfg:
        batch = BatchConfig.from_data({
            "type": "slurm",
            "etcd": {"endpoints": ["h:1"]},
            "slurm": {"partition": "p1", "alloc-args": ["-t", "5"], "srun-args": ["--mpi=none"]},
        })  # fmt: skip

    manager = batch_manager(Cfg()).manager
    assert isinstance(manager, SlurmManager)
    assert manager.salloc_options == ["--partition", "p1", "-t", "5"]
    assert manager.sbatch_options == ["--partition", "p1", "-t", "5"]
    assert manager.srun_options == ["--mpi=none"]


def test_etcd_endpoints_env_then_config(tmp_path):
    etcd = EtcdConfig.from_data({"endpoints": ["10.0.0.1:2379", "10.0.0.2:2379"]})
    assert configured_endpoints(etcd, {"PCOCC_ETCD_ENDPOINTS": "http://x:1"}) == "http://x:1"
    assert configured_endpoints(etcd, {}) == "http://10.0.0.1:2379,http://10.0.0.2:2379"
    assert configured_endpoints(lambda: etcd, {}) == "http://10.0.0.1:2379,http://10.0.0.2:2379"
    etcd = EtcdConfig()
    assert configured_endpoints(etcd, {}) is None
    # user commands then look for the private etcd of each local cluster
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / "etcd-endpoints").write_text("http://127.0.0.1:999\n")
    assert kv_endpoint_sets({}, tmp_path, etcd) == [("http://127.0.0.1:999", None)]
    # with the job's login next to it (private to the user)
    login = tmp_path / "5" / "etcd-login"
    login.write_text("pcocc-job:s3cret\n")
    login.chmod(0o600)
    [(endpoints, found)] = kv_endpoint_sets({}, tmp_path, etcd)
    assert (found.user, found.password, found.private) == ("pcocc-job", "s3cret", True)
    # a login file others may read is refused, and that cluster skipped
    login.chmod(0o644)
    assert kv_endpoint_sets({}, tmp_path, etcd) == []



def test_the_switch_logs_in_with_batch_yaml_etcd_settings(tmp_path, monkeypatch):
    """The switch of a private network talks to the same etcd as the node processes: with an
    external TLS etcd it needs batch.yaml's CA and login, not the built-in defaults."""
    from pcocc.cluster import jobs
    from pcocc.config import Config
    from pcocc.kv import connect

    etcd = EtcdConfig.from_data({"endpoints": ["https://10.0.0.1:2379"], "ca-cert": "ca.pem"})
    config = Config(system_dir=tmp_path, user_dir=tmp_path,
                    batch=BatchConfig.from_data({"type": "local", "etcd": {
                        "endpoints": ["https://10.0.0.1:2379"], "ca-cert": "ca.pem"}}))
    assert config.batch.etcd == etcd
    seen = []

    class Stop(Exception):
        pass

    def fake_open_kv(endpoints, etcd=EtcdConfig(), *, label=None):
        seen.append(etcd)
        raise Stop

    monkeypatch.setattr(connect, "open_kv", fake_open_kv)
    monkeypatch.setattr("pcocc.net.private.node_address", lambda env: "127.0.0.1")
    with pytest.raises(Stop):
        jobs.run_vswitch(config, "1", "net0")
    assert seen == [etcd]
