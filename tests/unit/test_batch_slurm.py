"""Slurm command lines and output parsing, without Slurm (golden argv lists)."""

from __future__ import annotations

import pytest

from pcocc.batch import slurm
from pcocc.batch.base import JobSpec
from pcocc.errors import ToolError

AWKWARD = '/tmp/a dir/it\'s "quoted"; $(x) \\ back'


def test_salloc_argv_passes_options_and_protects_the_command():
    spec = JobSpec(ntasks=4, cpus_per_task=2, options=["-p", "debug", "-t", "10", "-A", "proj"])
    argv = slurm.salloc_argv(spec, ["-weird-cmd", AWKWARD], defaults=["--qos=normal"])
    assert argv == [
        "salloc", "--job-name=pcocc", "--ntasks=4", "--cpus-per-task=2",
        "--qos=normal", "-p", "debug", "-t", "10", "-A", "proj",
        "--", "-weird-cmd", AWKWARD,
    ]  # fmt: skip


def test_sbatch_argv_with_awkward_paths():
    spec = JobSpec(
        ntasks=2,
        nodes=2,
        job_name="my job",
        output=f"{AWKWARD}/%j.out",
        workdir=AWKWARD,
        options=["-t", "5"],
    )
    assert slurm.sbatch_argv(spec) == [
        "sbatch", "--parsable", "--job-name=my job", "--ntasks=2", "--cpus-per-task=1",
        "--nodes=2", f"--output={AWKWARD}/%j.out", f"--chdir={AWKWARD}", "-t", "5",
    ]  # fmt: skip


def test_srun_argv():
    assert slurm.srun_argv("42", 3, [AWKWARD, "--flag"], ["--mpi=none"]) == [
        "srun", "--jobid=42", "--ntasks=3", "--nodes=1-3", "--kill-on-bad-exit=1",
        "--mpi=none", "--", AWKWARD, "--flag",
    ]  # fmt: skip


def test_srun_argv_runs_on_as_many_nodes_as_asked():
    # -N given: exactly that many; else 1 to ntasks nodes, so one task in a 4-node job runs
    # without srun's "can't run 1 processes on 4 nodes" warning
    assert "--nodes=2" in slurm.srun_argv("42", 4, ["run"], nodes=2)
    assert "--nodes=1-1" in slurm.srun_argv("42", 1, ["run"])


def test_scontrol_and_scancel_argv():
    assert slurm.scancel_argv("7") == ["scancel", "7"]
    assert slurm.scontrol_show_job_argv("7") == ["scontrol", "--oneliner", "show", "job", "7"]
    assert slurm.hostnames_argv("n[1-4]") == ["scontrol", "show", "hostnames", "n[1-4]"]


@pytest.mark.parametrize(
    ("text", "job_id"),
    [
        ("123\n", "123"),
        ("456;cluster\n", "456"),
        ("Submitted batch job 789\n", "789"),
        ("salloc: Granted job allocation 12\n", "12"),
        ("salloc: Pending job allocation 13\nsalloc: job 13 queued", "13"),
    ],
)
def test_parse_job_id(text, job_id):
    assert slurm.parse_job_id(text) == job_id


def test_parse_job_id_names_the_raw_text():
    with pytest.raises(ToolError, match="sbatch: error: Batch job submission failed"):
        slurm.parse_job_id("sbatch: error: Batch job submission failed")


SHOW_JOB = (
    "JobId=2 JobName=sbatch UserId=root(0) JobState=COMPLETED Reason=None "
    "AllocNode:Sid=localhost:11579 NodeList=n[1-2] BatchHost=n1 CPUs/Task=1 "
    "ReqB:S:C:T=0:0:*:* WorkDir=/tmp/a b StdErr=/tmp/o 2.txt StdIn=/dev/null "
    "StdOut=/tmp/o 2.txt Power= \n"
)


def test_parse_job_info_keeps_values_with_spaces():
    info = slurm.parse_job_info(SHOW_JOB)
    assert info["NodeList"] == "n[1-2]"
    assert info["WorkDir"] == "/tmp/a b"
    assert info["StdOut"] == "/tmp/o 2.txt"
    assert info["CPUs/Task"] == "1"
    assert info["Power"] == ""


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("COMPLETED", "COMPLETED"),
        ("CANCELLED by 0", "CANCELLED"),
        ("RUNNING", "RUNNING"),
        ("FAILED+", "FAILED"),
    ],
)
def test_parse_job_state(state, expected):
    assert slurm.parse_job_state(f"JobId=3 JobState={state} Reason=None") == expected


def test_parse_job_state_without_state_is_a_tool_error():
    with pytest.raises(ToolError, match="no JobState"):
        slurm.parse_job_state("slurm_load_jobs error: Invalid job id specified")


SHOW_CONFIG = """\
Configuration data as of 2026-11-25T18:00:00
AccountingStorageType   = (null)
SlurmctldAddr           = (null)
SlurmctldHost[0]        = head1(10.1.0.1)
SlurmctldHost[1]        = head2
SlurmctldPort           = 6817
"""


def test_controller_hosts_from_show_config():
    assert slurm.show_config_argv() == ["scontrol", "show", "config"]
    assert slurm.parse_controller_hosts(SHOW_CONFIG) == ["10.1.0.1", "head2"]
    assert slurm.parse_controller_hosts("nothing here\n") == []


def test_one_per_node_allocates_whole_nodes_exclusively():
    spec = JobSpec(ntasks=3, one_per_node=True, options=["-p", "big"])
    assert slurm.salloc_argv(spec, ["cmd"]) == [
        "salloc", "--job-name=pcocc", "--ntasks=3", "--cpus-per-task=1",
        "--ntasks-per-node=1", "--exclusive", "-p", "big", "--", "cmd",
    ]  # fmt: skip
    assert slurm.sbatch_argv(spec)[2:] == [
        "--job-name=pcocc", "--ntasks=3", "--cpus-per-task=1", "--ntasks-per-node=1",
        "--exclusive", "-p", "big",
    ]  # fmt: skip
    assert "--exclusive" not in slurm.salloc_argv(JobSpec(ntasks=3), ["cmd"])


def test_srun_one_per_node_gives_each_task_its_whole_node():
    assert slurm.srun_argv("7", 2, ["run"], one_per_node=True) == [
        "srun", "--jobid=7", "--ntasks=2", "--ntasks-per-node=1", "--whole", "--nodes=1-2",
        "--kill-on-bad-exit=1", "--", "run",
    ]  # fmt: skip
    assert "--whole" not in slurm.srun_argv("7", 2, ["run"])
