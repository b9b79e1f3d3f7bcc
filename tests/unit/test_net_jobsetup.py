"""The pure parts of the per-job node setup: names, the state file parser (hostile input
included), the state directory checks, and the root-only refusal."""

from __future__ import annotations

import json
import os

import pytest

from pcocc.cli.main import run_cli
from pcocc.errors import Corrupt, PcoccError, UsageError
from pcocc.net import jobsetup
from pcocc.net.jobsetup import JobState


RESOURCES = [{"kind": "ports", "ports": [20000]}, {"kind": "info"},
             {"kind": "bridge", "name": "pb2a0"}, {"kind": "vxlan", "name": "pv2a0"},
             {"kind": "tap", "name": "pt2a00"}, {"kind": "tap", "name": "pt2a0999"},
             {"kind": "dnsmasq", "net": 0}, {"kind": "nftables", "family": "inet",
                                              "name": "pcocc_job_42"}]


def _state(**over) -> str:
    data = {"version": 2, "job": 42, "node": "n1", "user": "alice", "uid": 1000,
            "resources": RESOURCES}
    data.update(over)
    return json.dumps(data)


@pytest.mark.parametrize("text", ["", "0", "-1", "12a", "1 ", "+5", "0x10", "99999999999",
                                  str(jobsetup.MAX_JOB_ID + 1), "٣", "../1"])
def test_job_ids_other_than_plain_numbers_are_refused(text):
    with pytest.raises(UsageError, match="--job"):
        jobsetup.parse_job_id(text)


def test_job_id():
    assert jobsetup.parse_job_id("42") == 42


def test_state_round_trip():
    state = JobState(42, "n1", "alice", 1000, RESOURCES)
    assert JobState.parse(state.to_json(), 42, "n1", "f") == state
    assert state.ports == {20000}


@pytest.mark.parametrize("text, why", [
    ("{", "not JSON"),
    ("[]", "not a JSON object"),
    (_state(version=1), "state version 1"),
    (_state(version="2"), "state version"),
    (_state(node="n2"), "records node 'n2'"),
    (_state(job=43), "records job 43"),
    (_state(job=True), "records job"),
    (_state(job="42"), "records job"),
    (_state(uid=-1), "bad user or uid"),
    (_state(user=None), "bad user or uid"),
    (_state(resources={"kind": "bridge"}), "not a list"),
    (_state(resources=["pcbr42"]), "unknown resource"),
    (_state(resources=[{"kind": "file", "name": "/etc/passwd"}]), "unknown resource"),
    # a tampered record must not make cleanup delete another device
    (_state(resources=[{"kind": "bridge", "name": "eth0"}]), "not one of the job's"),
    (_state(resources=[{"kind": "bridge", "name": "pb2b0"}]), "not one of the job's"),
    (_state(resources=[{"kind": "bridge"}]), "not one of the job's"),
    (_state(resources=[{"kind": "vxlan", "name": "eth0"}]), "not one of the job's"),
    (_state(resources=[{"kind": "tap", "name": "pt2a0x"}]), "not one of the job's"),
    (_state(resources=[{"kind": "tap", "name": "pt2a01000"}]), "not one of the job's"),
    (_state(resources=[{"kind": "tap", "name": "pt2b00"}]), "not one of the job's"),
    (_state(resources=[{"kind": "nftables", "family": "inet", "name": "filter"}]),
     "not the job's"),
    (_state(resources=[{"kind": "nftables", "family": "ip6",
                        "name": "pcocc_job_42"}]), "not the job's"),
    (_state(resources=[{"kind": "dnsmasq", "net": "0; rm"}]), "dnsmasq of network"),
    (_state(resources=[{"kind": "ports", "ports": [22]}]), "bad ports"),
])
def test_hostile_state_files_are_refused_with_the_file_named(text, why):
    with pytest.raises(Corrupt, match=why) as err:
        JobState.parse(text, 42, "n1", "/run/pcocc/jobs/n1/42/state.json")
    assert str(err.value).startswith("/run/pcocc/jobs/n1/42/state.json: ")


def test_read_state_absent_is_none(tmp_path):
    root = tmp_path / "jobs"
    assert jobsetup.read_state(42, "n1", root) is None
    root.mkdir(mode=0o700)
    assert jobsetup.read_state(42, "n1", root) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="the state directories are owned by root")
def test_read_state_refuses_a_symlinked_state_file(tmp_path):
    root = tmp_path / "jobs"
    (root / "n1" / "42").mkdir(mode=0o700, parents=True)
    root.chmod(0o700)
    (root / "n1").chmod(0o700)
    target = tmp_path / "elsewhere.json"
    target.write_text(_state())
    (root / "n1" / "42" / jobsetup.STATE_FILE).symlink_to(target)
    with pytest.raises(PcoccError):
        jobsetup.read_state(42, "n1", root)


@pytest.mark.skipif(os.geteuid() != 0, reason="the state directories are owned by root")
@pytest.mark.parametrize("mode", [0o755, 0o707])
def test_state_dirs_open_to_others_are_refused(tmp_path, mode):
    root = tmp_path / "jobs"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(PcoccError, match="not a directory private to root"):
        jobsetup.read_state(42, "n1", root)


@pytest.mark.skipif(os.geteuid() != 0, reason="the state directories are owned by root")
def test_state_root_that_is_a_symlink_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "jobs").symlink_to(real)
    with pytest.raises(PcoccError, match="not a directory private to root"):
        jobsetup.read_state(42, "n1", tmp_path / "jobs")


@pytest.mark.parametrize("action", ["init", "cleanup"])
def test_setup_refuses_non_root_with_exit_2(monkeypatch, capsys, action):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert run_cli(["internal", "setup", action, "--job", "42", "--user", "root"]) == 2
    assert "must run as root" in capsys.readouterr().err


def test_setup_refuses_a_bad_job_id_with_exit_2(capsys):
    assert run_cli(["internal", "setup", "cleanup", "--job", "42;rm", "--user", "root"]) == 2
    assert "--job" in capsys.readouterr().err


def test_node_names_cannot_leave_the_state_root():
    for bad in ("..", "../etc", "a/b", ""):
        with pytest.raises(UsageError):
            jobsetup.job_dir(42, bad)


def _forwards_file(root, text, mode=0o644):
    (root / "n1").mkdir(parents=True)
    path = root / "n1" / "42.json"
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.skipif(os.geteuid() != 0, reason="the forwards file is root's")
def test_vm_finds_its_reverse_nat_port_in_roots_file(tmp_path):
    _forwards_file(tmp_path, json.dumps({"version": 1, "job": 42,
                                         "forwards": {"fast": {"0": 20000, "1": 20001}}}))
    nets = [{"name": "fast", "type": "ethernet", "reverse-nat": {"host-ports": "20000-20009"}},
            {"name": "nat", "type": "user"}]
    env = {"SLURMD_NODENAME": "n1"}
    assert jobsetup.vm_forwards(nets, "42", 1, env, tmp_path) == {22: 20001}
    assert jobsetup.vm_forwards(nets, "43", 1, env, tmp_path) == {}  # no file: none
    assert jobsetup.vm_forwards(nets[1:], "42", 1, env, tmp_path) == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="the forwards file is root's")
@pytest.mark.parametrize("text, mode", [
    ('{"version": 1, "job": 43, "forwards": {}}', 0o644),
    ('{"version": 1, "job": 42, "forwards": {"f": {"0": "x"}}}', 0o644),
    ('{"version": 1, "job": 42, "forwards": []}', 0o644),
    ('{"version": 1, "job": 42, "forwards": {}}', 0o666),  # writable by others
])
def test_forwards_files_not_written_by_root_for_this_job_are_refused(tmp_path, text, mode):
    _forwards_file(tmp_path, text, mode)
    with pytest.raises(Corrupt):
        jobsetup.read_forwards(42, "n1", tmp_path)
