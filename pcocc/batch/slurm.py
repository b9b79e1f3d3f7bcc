"""Slurm: salloc for interactive clusters, sbatch for batch ones, srun for tasks.

Building command lines and reading Slurm's answers are pure functions (unit-tested with
golden argv lists); ``SlurmManager`` only runs them through ``pcocc.proc``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pcocc import proc
from pcocc import fields
from pcocc.batch.base import BatchManager, JobInfo, JobSpec, register
from pcocc.errors import ConfigError, NotFound, ToolError

if TYPE_CHECKING:
    from pcocc.config.model import BatchConfig

log = logging.getLogger(__name__)

#: variables of an enclosing job that would leak into a new sbatch/salloc
_INHERITED_PREFIXES = ("SBATCH_", "SALLOC_")


#: the option of the pcocc_setup SPANK plugin (slurm-plugin/): root setup on the job's nodes
SETUP_OPTION = "--pcocc-setup"


def _common_args(spec: JobSpec) -> list[str]:
    args = [
        f"--job-name={spec.job_name}",
        f"--ntasks={spec.ntasks}",
        f"--cpus-per-task={spec.cpus_per_task}",
    ]
    if spec.nodes is not None:
        args.append(f"--nodes={spec.nodes}")
    if spec.one_per_node:
        args += ["--ntasks-per-node=1", "--exclusive"]
    if spec.comment is not None:
        args.append(f"--comment={spec.comment}")
    if spec.node_setup:
        args.append(SETUP_OPTION)
    return args


def salloc_argv(spec: JobSpec, command: Sequence[str], defaults: Sequence[str] = ()) -> list[str]:
    """``salloc`` running ``command`` in a new allocation.

    ``defaults`` (batch.yaml) come before the user's ``spec.options`` so that the user's
    win; ``--`` ends the options so a command may start with ``-``.
    """
    return ["salloc", *_common_args(spec), *defaults, *spec.options, "--", *command]


def sbatch_argv(spec: JobSpec, defaults: Sequence[str] = ()) -> list[str]:
    """``sbatch`` reading the job script on its standard input; prints ``id[;cluster]``."""
    args = ["sbatch", "--parsable", *_common_args(spec)]
    if spec.output is not None:
        args.append(f"--output={spec.output}")
    if spec.workdir is not None:
        args.append(f"--chdir={spec.workdir}")
    return [*args, *defaults, *spec.options]


def srun_argv(
    job_id: str,
    ntasks: int,
    argv: Sequence[str],
    options: Sequence[str] = (),
    *,
    one_per_node: bool = False,
    nodes: int | None = None,
) -> list[str]:
    """``srun`` starting ``ntasks`` tasks of ``argv`` in job ``job_id``.

    ``--kill-on-bad-exit`` ends every task when one fails, like a dead VM ends the cluster.
    ``one_per_node``: one task per node, given every CPU of the job on it (``--whole``).
    ``nodes``: on exactly that many nodes; None: on 1 to ``ntasks`` of them, so that fewer
    tasks than the job has nodes run without srun's warning that it lowers the node count.
    """
    placement = ["--ntasks-per-node=1", "--whole"] if one_per_node else []
    placement.append(f"--nodes={nodes}" if nodes is not None else f"--nodes=1-{ntasks}")
    return [
        "srun",
        f"--jobid={job_id}",
        f"--ntasks={ntasks}",
        *placement,
        "--kill-on-bad-exit=1",
        *options,
        "--",
        *argv,
    ]


def srun_one_argv(job_id: str, node: str, argv: Sequence[str]) -> list[str]:
    """``srun`` starting one task of ``argv`` on ``node``, from inside a running step of job
    ``job_id`` (``--overlap``: it shares the resources that step holds); srun's standard
    input reaches the task."""
    return srun_on_nodes_argv(job_id, [node], argv)


def srun_on_nodes_argv(
    job_id: str, nodes: Sequence[str], argv: Sequence[str], options: Sequence[str] = ()
) -> list[str]:
    """``srun`` running ``argv`` once on each of ``nodes``, sharing the CPUs that other
    steps of the job hold (``--overlap``)."""
    return [
        "srun", f"--jobid={job_id}", "--overlap", f"--nodelist={','.join(nodes)}",
        f"--nodes={len(nodes)}", f"--ntasks={len(nodes)}", "--ntasks-per-node=1",
        *options, "--", *argv,
    ]


#: squeue's columns for :func:`parse_squeue`: the fixed ones first, the comment and the
#: name (free text, which may hold the separator) last
_SQUEUE_FORMAT = "%i|%u|%T|%D|%M|%l|%P|%k|%j"


def squeue_argv(user: str | None) -> list[str]:
    """``squeue`` listing the jobs of ``user`` (None: every user's it shows)."""
    argv = ["squeue", "--noheader", f"--format={_SQUEUE_FORMAT}"]
    return argv + (["--user", user] if user is not None else [])


def parse_squeue(text: str, comment: str) -> list[JobInfo]:
    """The jobs whose comment is exactly ``comment`` in the output of :func:`squeue_argv`.

    Lines that do not parse are skipped with a warning (squeue prints what users chose:
    names and comments)."""
    jobs = []
    for line in text.splitlines():
        parts = line.split("|", 7)
        if len(parts) != 8:
            if line.strip():
                log.warning("ignoring a line of squeue: %r", line[:200])
            continue
        job_id, user, state, nodes, elapsed, limit, partition, rest = parts
        if not rest.startswith(comment + "|"):
            continue
        name = rest[len(comment) + 1 :]
        try:
            jobs.append(JobInfo(
                job_id=fields.text(job_id, "job id", 64, empty=False),
                user=fields.name(user, "user"),
                name=fields.text(name, "name", 200),
                state=fields.text(state, "state", 32),
                nodes=fields.text(nodes, "nodes", 16),
                elapsed=fields.text(elapsed, "time", 32),
                partition=fields.text(partition, "partition", 200),
                time_limit=fields.text(limit, "time limit", 32),
            ))  # fmt: skip
        except fields.BadField as err:
            log.warning("ignoring a line of squeue: %s", err)
    return jobs


def scancel_argv(job_id: str) -> list[str]:
    return ["scancel", str(job_id)]


def scontrol_show_job_argv(job_id: str) -> list[str]:
    return ["scontrol", "--oneliner", "show", "job", str(job_id)]


def hostnames_argv(nodelist: str) -> list[str]:
    return ["scontrol", "show", "hostnames", nodelist]


def show_config_argv() -> list[str]:
    return ["scontrol", "show", "config"]


_CTLD_HOST = re.compile(r"^\s*SlurmctldHost\[\d+\]\s*=\s*([^\s(]+)(?:\(([^)]*)\))?")


def parse_controller_hosts(text: str) -> list[str]:
    """The controllers in ``scontrol show config`` output: the address of each
    ``SlurmctldHost[i] = name(address)`` line, or its name when it gives no address."""
    found = []
    for line in text.splitlines():
        match = _CTLD_HOST.match(line)
        if match:
            found.append(match.group(2) or match.group(1))
    return found


_JOB_ID_PATTERNS = (
    re.compile(r"^\s*(\d+)(?:;\S+)?\s*$"),  # sbatch --parsable: "123" or "123;cluster"
    re.compile(r"Submitted batch job (\d+)"),
    re.compile(r"Granted job allocation (\d+)"),
    re.compile(r"Pending job allocation (\d+)"),
)


def parse_job_id(text: str) -> str:
    """The job id in sbatch's or salloc's output.

    :raise ToolError: no job id in ``text`` (the message quotes it)
    """
    for pattern in _JOB_ID_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    raise ToolError(f"no Slurm job id in the output {text.strip()[:200]!r}", tool="sbatch")


_FIELD = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_job_info(text: str) -> dict[str, str]:
    """``scontrol --oneliner show job`` -> {field: value}; values may contain spaces."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    matches = list(_FIELD.finditer(line))
    fields = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        fields[match.group(1)] = line[match.end() : end].strip()
    return fields


def parse_job_state(text: str) -> str:
    """The JobState of ``scontrol show job`` output, without its reason suffix."""
    state = parse_job_info(text).get("JobState")
    if not state:
        raise ToolError(f"no JobState in scontrol output {text.strip()[:200]!r}", tool="scontrol")
    return state.split()[0].rstrip("+")


def _clean_env(env: Mapping[str, str] | None) -> dict[str, str]:
    base = dict(os.environ if env is None else env)
    return {k: v for k, v in base.items() if not k.startswith(_INHERITED_PREFIXES)}


@register("slurm")
class SlurmManager(BatchManager):
    """Run virtual clusters in Slurm jobs.

    batch.yaml settings, section ``slurm:``: ``partition`` (default ``-p``), ``alloc-args``
    (added to every salloc and sbatch), ``srun-args`` (added to every srun), ``bin-dir``
    (where the Slurm commands are; default: PATH). They come before the user's options, so
    the user's win.
    """

    def __init__(
        self,
        *,
        salloc_options: Sequence[str] = (),
        sbatch_options: Sequence[str] = (),
        srun_options: Sequence[str] = (),
    ):
        self.salloc_options = list(salloc_options)
        self.sbatch_options = list(sbatch_options)
        self.srun_options = list(srun_options)

    @classmethod
    def from_settings(cls, batch: BatchConfig) -> SlurmManager:
        settings = batch.slurm
        alloc = list(settings.alloc_args)
        if settings.partition:
            alloc = ["--partition", settings.partition, *alloc]
        bin_dir = settings.bin_dir
        if bin_dir:
            os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        return cls(
            salloc_options=alloc,
            sbatch_options=alloc,
            srun_options=list(settings.srun_args),
        )

    def _check_node_setup(self, spec: JobSpec) -> None:
        """Before allocating: a job that needs root setup on its nodes needs the plugin.

        :raise ConfigError: sbatch does not know SETUP_OPTION (plugin not in plugstack.conf)
        """
        if not spec.node_setup:
            return
        env = _clean_env(None)
        env.update(spec.env)
        res = proc.run(["sbatch", "--help"], env=env, check=False, timeout_s=30,
                       what="ask sbatch for its options")
        if SETUP_OPTION not in res.stdout:
            raise ConfigError(
                "this job's networks need root setup on the nodes by the pcocc Slurm plugin, "
                f"and Slurm does not load it (sbatch has no {SETUP_OPTION} option)",
                hint="ask your administrator to install it (admin guide: 'Installing the "
                     "Slurm plugin'), or use networks that do not need it",
            )

    def allocate(self, spec: JobSpec, command: Sequence[str]) -> int:
        self._check_node_setup(spec)
        argv = salloc_argv(spec, command, self.salloc_options)
        env = _clean_env(None)
        env.update(spec.env)
        # salloc keeps our terminal and process group: Ctrl-C reaches it and its command
        child = proc.spawn(argv, env=env, stdin=None, stdout=None, stderr=None, new_session=False)
        try:
            return child.wait()
        except BaseException:
            proc.stop(child)
            raise

    def submit(self, spec: JobSpec, script: str) -> str:
        self._check_node_setup(spec)
        if not script.startswith("#!"):
            script = "#!/bin/sh\n" + script
        env = _clean_env(None)
        env.update(spec.env)
        res = proc.run(
            sbatch_argv(spec, self.sbatch_options),
            input=script,
            env=env,
            cwd=spec.workdir,
            what="submit the batch job (sbatch)",
            timeout_s=120,
        )
        return parse_job_id(res.stdout)

    def launch_tasks(
        self,
        job_id: str,
        ntasks: int,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        one_per_node: bool = False,
        nodes: int | None = None,
    ) -> proc.Popen:
        return proc.spawn(
            srun_argv(job_id, ntasks, argv, self.srun_options, one_per_node=one_per_node,
                      nodes=nodes),
            env=env,
            stdout=None,
            stderr=None,
        )

    def run_on_nodes(
        self, job_id: str, nodes: Sequence[str], argv: Sequence[str],
        env: Mapping[str, str] | None = None,
    ) -> proc.Popen:
        return proc.spawn(srun_on_nodes_argv(job_id, nodes, argv, self.srun_options), env=env,
                          stdout=None, stderr=None)

    def job_id_from_env(self, env: Mapping[str, str] | None = None) -> str | None:
        env = os.environ if env is None else env
        return env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or None

    def job_name_from_env(self, env: Mapping[str, str] | None = None) -> str:
        env = os.environ if env is None else env
        return env.get("SLURM_JOB_NAME", "")

    def cancel(self, job_id: str) -> None:
        proc.run(scancel_argv(job_id), what=f"cancel job {job_id} (scancel)", timeout_s=60)

    def _job_info(self, job_id: str) -> str:
        res = proc.run(scontrol_show_job_argv(job_id), check=False, timeout_s=60)
        if res.returncode != 0:
            if "Invalid job id" in res.stderr:
                raise NotFound(
                    f"Slurm job {job_id} not found (unknown or finished long ago)",
                    hint="list your jobs with 'squeue --me'",
                )
            raise ToolError(
                f"cannot read job {job_id} (scontrol)",
                argv=res.argv,
                returncode=res.returncode,
                stderr=res.stderr,
            )
        return res.stdout

    def state(self, job_id: str) -> str:
        return parse_job_state(self._job_info(job_id))

    def list_jobs(self, user: str | None, comment: str) -> list[JobInfo]:
        res = proc.run(squeue_argv(user), what="list the jobs (squeue)", timeout_s=60)
        return parse_squeue(res.stdout, comment)

    def controller_hosts(self) -> list[str]:
        res = proc.run(show_config_argv(), check=False, timeout_s=60)
        if res.returncode != 0:
            log.warning("cannot read the Slurm configuration (scontrol show config): %s",
                        res.stderr.strip()[-200:])
            return []
        return parse_controller_hosts(res.stdout)

    def nodes(self, job_id: str) -> list[str]:
        nodelist = parse_job_info(self._job_info(job_id)).get("NodeList", "")
        if not nodelist or nodelist == "(null)":
            return []
        out = proc.run(hostnames_argv(nodelist), what="expand the node list", timeout_s=60)
        return out.stdout.split()
