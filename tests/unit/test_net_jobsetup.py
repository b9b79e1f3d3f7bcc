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


def _state(**over) -> str:
    data = {"version": 1, "job": 42, "user": "alice", "uid": 1000,
            "resources": [{"kind": "bridge", "name": "pcbr42"}]}
    data.update(over)
    return json.dumps(data)


@pytest.mark.parametrize("text", ["", "0", "-1", "12a", "1 ", "+5", "0x10", "99999999999",
                                  str(jobsetup.MAX_JOB_ID + 1), "٣", "../1"])
def test_job_ids_other_than_plain_numbers_are_refused(text):
    with pytest.raises(UsageError, match="--job"):
        jobsetup.parse_job_id(text)


def test_job_id_and_bridge_name():
    assert jobsetup.parse_job_id("42") == 42
    assert jobsetup.bridge_name(42) == "pcbr42"
    # the longest job id still fits in an interface name (IFNAMSIZ 16 with the NUL)
    assert len(jobsetup.bridge_name(jobsetup.MAX_JOB_ID)) <= 15


def test_state_round_trip():
    state = JobState(42, "alice", 1000, [{"kind": "bridge", "name": "pcbr42"}])
    assert JobState.parse(state.to_json(), 42, "f") == state


@pytest.mark.parametrize("text, why", [
    ("{", "not JSON"),
    ("[]", "not a JSON object"),
    (_state(version=2), "state version 2"),
    (_state(version="1"), "state version"),
    (_state(job=43), "records job 43"),
    (_state(job=True), "records job"),
    (_state(job="42"), "records job"),
    (_state(uid=-1), "bad user or uid"),
    (_state(user=None), "bad user or uid"),
    (_state(resources={"kind": "bridge"}), "not a list"),
    (_state(resources=["pcbr42"]), "unknown resource"),
    (_state(resources=[{"kind": "file", "name": "/etc/passwd"}]), "unknown resource"),
    # a tampered record must not make cleanup delete another device
    (_state(resources=[{"kind": "bridge", "name": "eth0"}]), "not the job's"),
    (_state(resources=[{"kind": "bridge", "name": "pcbr4"}]), "not the job's"),
    (_state(resources=[{"kind": "bridge"}]), "not the job's"),
])
def test_hostile_state_files_are_refused_with_the_file_named(text, why):
    with pytest.raises(Corrupt, match=why) as err:
        JobState.parse(text, 42, "/run/pcocc/jobs/42/state.json")
    assert str(err.value).startswith("/run/pcocc/jobs/42/state.json: ")


def test_read_state_absent_is_none(tmp_path):
    root = tmp_path / "jobs"
    assert jobsetup.read_state(42, root) is None
    root.mkdir(mode=0o700)
    assert jobsetup.read_state(42, root) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="the state directories are owned by root")
def test_read_state_refuses_a_symlinked_state_file(tmp_path):
    root = tmp_path / "jobs"
    (root / "42").mkdir(mode=0o700, parents=True)
    root.chmod(0o700)
    target = tmp_path / "elsewhere.json"
    target.write_text(_state())
    (root / "42" / jobsetup.STATE_FILE).symlink_to(target)
    with pytest.raises(PcoccError):
        jobsetup.read_state(42, root)


@pytest.mark.skipif(os.geteuid() != 0, reason="the state directories are owned by root")
@pytest.mark.parametrize("mode", [0o755, 0o707])
def test_state_dirs_open_to_others_are_refused(tmp_path, mode):
    root = tmp_path / "jobs"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(PcoccError, match="not a directory private to root"):
        jobsetup.read_state(42, root)


@pytest.mark.skipif(os.geteuid() != 0, reason="the state directories are owned by root")
def test_state_root_that_is_a_symlink_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "jobs").symlink_to(real)
    with pytest.raises(PcoccError, match="not a directory private to root"):
        jobsetup.read_state(42, tmp_path / "jobs")


@pytest.mark.parametrize("action", ["init", "cleanup"])
def test_setup_refuses_non_root_with_exit_2(monkeypatch, capsys, action):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert run_cli(["internal", "setup", action, "--job", "42", "--user", "root"]) == 2
    assert "must run as root" in capsys.readouterr().err


def test_setup_refuses_a_bad_job_id_with_exit_2(capsys):
    assert run_cli(["internal", "setup", "cleanup", "--job", "42;rm", "--user", "root"]) == 2
    assert "--job" in capsys.readouterr().err
