"""A job whose networks need root setup on its nodes asks the pcocc Slurm plugin for it
(--pcocc-setup); without Slurm it is refused before anything starts."""

from __future__ import annotations

import pytest

from pcocc.batch import slurm
from pcocc.batch.base import JobSpec
from pcocc.batch.local import LocalManager
from pcocc.errors import ConfigError


def test_setup_option_only_when_the_job_needs_it():
    assert slurm.SETUP_OPTION not in slurm.sbatch_argv(JobSpec(ntasks=2))
    assert slurm.SETUP_OPTION not in slurm.salloc_argv(JobSpec(ntasks=2), ["sh"])
    argv = slurm.salloc_argv(JobSpec(ntasks=2, node_setup=True), ["sh", slurm.SETUP_OPTION])
    # an option of salloc, not of the command after '--'
    assert argv.index(slurm.SETUP_OPTION) < argv.index("--")
    assert slurm.SETUP_OPTION in slurm.sbatch_argv(JobSpec(ntasks=2, node_setup=True))


@pytest.mark.parametrize("call", [
    lambda m, spec: m.allocate(spec, ["true"]),
    lambda m, spec: m.submit(spec, "true"),
])
def test_local_batch_refuses_node_setup_before_starting(tmp_path, call):
    manager = LocalManager(tmp_path / "jobs")
    with pytest.raises(ConfigError, match="Slurm plugin"):
        call(manager, JobSpec(ntasks=1, node_setup=True))
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").iterdir())
