"""Node processes started while the launcher starts the job's private etcd: when they may
be, how they find etcd (only through files the launcher writes once etcd is up), and that
they are stopped when the launcher fails before its teardown."""

from __future__ import annotations

import dataclasses
import os
import threading
import time

import pytest

from pcocc.cluster import earlynodes
from pcocc.cluster.definition import build_definition
from pcocc.config.model import EtcdConfig
from pcocc.errors import ConfigError, ServiceUnavailable
from pcocc.fsutil import write_atomic
from pcocc.kv import connect
from pcocc.kv.credentials import JOB_LOGIN_VAR
from pcocc.kv.endpoints import ENDPOINTS_VAR

TEMPLATES = {"tpl": {"kernel": "/k", "accel": "tcg"}}


def _write_etcd_files(run_dir, login_mode=0o600):
    write_atomic(run_dir / connect.LOGIN_FILE, "pcocc-job:s3cret\n", mode=login_mode)
    write_atomic(run_dir / connect.ENDPOINTS_FILE, "http://127.0.0.1:4001\n", mode=0o600)


def test_node_waits_for_the_files_the_launcher_writes_once_etcd_is_up(tmp_path):
    writer = threading.Timer(0.2, _write_etcd_files, (tmp_path,))
    writer.start()
    started = time.monotonic()
    found = connect.await_private_etcd(tmp_path, timeout_s=10)
    assert time.monotonic() - started >= 0.15  # it waited for them
    assert found == {ENDPOINTS_VAR: "http://127.0.0.1:4001", JOB_LOGIN_VAR: "pcocc-job:s3cret"}


def test_no_etcd_in_time_is_one_clear_error(tmp_path):
    with pytest.raises(ServiceUnavailable, match="did not start within 0.1 s") as err:
        connect.await_private_etcd(tmp_path, timeout_s=0.1)
    assert str(tmp_path / connect.ENDPOINTS_FILE) in err.value.message


def test_a_login_file_open_to_others_is_refused(tmp_path):
    _write_etcd_files(tmp_path, login_mode=0o644)
    with pytest.raises(ConfigError, match="job etcd login file"):
        connect.await_private_etcd(tmp_path, timeout_s=1)


class _Batch:
    def __init__(self, name):
        self.name = name
        self.launched = []
        self.tasks = _Tasks()

    def launch_tasks(self, job_id, ntasks, argv, env, **placement):
        self.launched.append((job_id, ntasks, list(argv), dict(env)))
        return self.tasks


class _Tasks:
    stopped = False

    def poll(self):
        return 0 if self.stopped else None

    def stop(self, timeout_s=10.0):
        self.stopped = True


def _definition(networks=None):
    definition = build_definition("tpl:2", TEMPLATES, owner="alice")
    return dataclasses.replace(definition, networks=networks or {})


@pytest.mark.parametrize(
    "batch, etcd, env, networks, early",
    [
        ("local", EtcdConfig(), {}, None, True),
        # Slurm nodes do not share the launcher's run dir, where the private etcd is told
        ("slurm", EtcdConfig(), {}, None, False),
        # a configured etcd is up already: any node may use it at once
        ("slurm", EtcdConfig(), {ENDPOINTS_VAR: "http://10.0.0.1:2379"}, None, True),
        ("slurm", EtcdConfig(mode="external", endpoints=("10.0.0.1:2379",)), {}, None, True),
        ("local", EtcdConfig(mode="external", endpoints=("10.0.0.1:2379",)), {}, None, True),
        # private networks: their switches start before the VMs
        ("local", EtcdConfig(), {}, {"pn": {"type": "private"}}, False),
        ("slurm", EtcdConfig(), {ENDPOINTS_VAR: "http://10.0.0.1:2379"},
         {"pn": {"type": "private"}}, False),
    ],
)
def test_which_node_processes_start_early(batch, etcd, env, networks, early):
    definition = _definition(networks)
    assert earlynodes.can_start_early(_Batch(batch), definition, etcd, env) is early


def test_early_nodes_are_told_to_wait_and_stale_files_go(tmp_path):
    _write_etcd_files(tmp_path)  # left by a launcher that died
    batch = _Batch("local")
    with earlynodes.early_tasks(batch, _definition(), "7", ["pcocc", "run"], {"A": "1"},
                                tmp_path) as tasks:
        assert not (tmp_path / connect.ENDPOINTS_FILE).exists()
        assert not (tmp_path / connect.LOGIN_FILE).exists()
    [(job, n, argv, env)] = batch.launched
    assert (job, n, argv) == ("7", 2, ["pcocc", "run"])
    assert env == {"A": "1", "PCOCC_JOB_ID": "7", earlynodes.EARLY_VAR: "1"}
    assert tasks.stopped  # still running at the end of the block: stopped


def test_early_nodes_are_stopped_when_the_etcd_start_fails(tmp_path):
    batch = _Batch("local")
    with pytest.raises(ServiceUnavailable):
        with earlynodes.early_tasks(batch, _definition(), "7", ["pcocc"], {}, tmp_path):
            raise ServiceUnavailable("etcd did not become healthy")
    assert batch.tasks.stopped


@pytest.mark.parametrize("early", [True, False])
def test_a_node_with_a_configured_etcd_uses_it_at_once(tmp_path, monkeypatch, early):
    monkeypatch.setenv("PCOCC_RUN_DIR", str(tmp_path))
    monkeypatch.setenv(ENDPOINTS_VAR, "http://10.0.0.1:2379")
    monkeypatch.delenv(earlynodes.EARLY_VAR, raising=False)
    if early:
        monkeypatch.setenv(earlynodes.EARLY_VAR, "1")
    assert earlynodes.node_endpoints(EtcdConfig(), "7") == ("http://10.0.0.1:2379", early)


def test_an_early_node_of_a_private_etcd_takes_its_login_from_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PCOCC_RUN_DIR", str(tmp_path))
    monkeypatch.delenv(ENDPOINTS_VAR, raising=False)
    monkeypatch.delenv(JOB_LOGIN_VAR, raising=False)
    monkeypatch.setenv(earlynodes.EARLY_VAR, "1")
    (tmp_path / "7").mkdir(mode=0o700)
    _write_etcd_files(tmp_path / "7")
    assert earlynodes.node_endpoints(EtcdConfig(), "7") == ("http://127.0.0.1:4001", True)
    assert os.environ[JOB_LOGIN_VAR] == "pcocc-job:s3cret"
