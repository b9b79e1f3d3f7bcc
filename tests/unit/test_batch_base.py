"""Batch manager selection by batch.yaml, and job specs."""

from __future__ import annotations

import pytest

from pcocc.batch import JobSpec, get_manager, known_types, task_rank
from pcocc.batch.local import LocalManager
from pcocc.batch.local import main as local_main
from pcocc.batch.slurm import SlurmManager
from pcocc.config import BatchConfig, LocalSettings, SlurmSettings, load_config
from pcocc.errors import ConfigError, UsageError


def test_both_managers_are_registered():
    assert known_types() == ["local", "slurm"]


def test_default_is_local(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    manager = get_manager()
    assert isinstance(get_manager(BatchConfig()), LocalManager)
    assert isinstance(manager, LocalManager)
    assert manager.state_dir == tmp_path / ".pcocc" / "local-jobs"


def test_settings_reach_the_manager(tmp_path):
    manager = get_manager(BatchConfig("slurm", slurm=SlurmSettings(partition="vms")))
    assert isinstance(manager, SlurmManager) and manager.salloc_options == ["--partition", "vms"]
    local = get_manager(BatchConfig("local", local=LocalSettings(str(tmp_path))))
    assert local.state_dir == tmp_path


def test_unknown_type_is_a_config_error_with_a_suggestion():
    with pytest.raises(ConfigError, match="unknown batch manager 'slurn'") as info:
        get_manager(BatchConfig("slurn"))
    assert "slurm" in info.value.hint


def test_unknown_setting_is_a_config_error(pcocc_env):
    # the schema of batch.yaml refuses it when the file is loaded, before any manager
    (pcocc_env["system"] / "batch.yaml").write_text("type: slurm\nslurm: {alloc-arg: []}\n")
    with pytest.raises(ConfigError, match="slurm.alloc-arg: unknown key 'alloc-arg', did you mean 'alloc-args'"):
        load_config(pcocc_env["system"], pcocc_env["user"])


@pytest.mark.parametrize(
    "bad",
    [
        {"ntasks": 0},
        {"ntasks": 1, "cpus_per_task": -1},
        {"ntasks": True},
        {"ntasks": 1, "nodes": 0},
    ],
)
def test_job_spec_refuses_bad_counts(bad):
    with pytest.raises(UsageError):
        JobSpec(**bad)


def test_job_spec_refuses_options_as_one_string():
    with pytest.raises(TypeError):
        JobSpec(ntasks=1, options="-p debug")


def test_task_rank_from_either_manager():
    assert task_rank({"SLURM_PROCID": "3"}) == 3
    assert task_rank({"PCOCC_TASK_RANK": "0"}) == 0
    assert task_rank({}) is None


def test_job_id_from_env():
    assert SlurmManager().job_id_from_env({"SLURM_JOB_ID": "12"}) == "12"
    assert SlurmManager().job_id_from_env({}) is None
    assert LocalManager("/nonexistent").job_id_from_env({"PCOCC_JOB_ID": "4"}) == "4"


def test_local_runner_usage():
    assert local_main(["--tasks", "x", "--", "true"]) == 2
