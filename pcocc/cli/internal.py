"""``pcocc internal``: commands that pcocc runs itself inside allocations (hidden)."""

from __future__ import annotations

import click

from pcocc.cli.context import Session, exit_with, pass_session


@click.group(hidden=True)
def internal() -> None:
    """Commands run by pcocc itself on the nodes."""


@internal.command()
@click.option("-E", "--command", metavar="CMD", help="Run CMD instead of the user's shell.")
@click.option("--hold", is_flag=True,
              help="A batch job: without CMD, keep the cluster until a signal; with CMD, "
                   "state its exit status at the end.")
@pass_session
def launcher(session: Session, command: str | None, hold: bool) -> None:
    """Start the VMs of the job's cluster, run CMD or a shell, then tear down."""
    from pcocc.cluster.jobs import run_launcher

    exit_with(run_launcher(session.config, command, report=session.notify,
                           log_args=session.log_args, hold=hold))


@internal.command()
@click.option("--rank", type=int, default=None, help="VM rank [default: the task's rank].")
@click.option("--job", "job_id", default=None, help="Cluster id [default: $PCOCC_JOB_ID].")
@click.option("--restore", metavar="DIR", default=None, help="Restore the VM from checkpoint DIR.")
@pass_session
def run(session: Session, rank: int | None, job_id: str | None, restore: str | None) -> None:
    """Run the VM of one rank until the cluster ends."""
    from pcocc.cluster.noderun import run_node

    exit_with(run_node(session.config, rank, job_id, restore))


@internal.command()
@click.option("--job", "job_id", required=True, help="Cluster id.")
@click.option("--network", "net", required=True, help="Name of the private network.")
@pass_session
def vswitch(session: Session, job_id: str, net: str) -> None:
    """Switch the frames of one private network of a cluster until it ends."""
    from pcocc.cluster.jobs import run_vswitch

    exit_with(run_vswitch(session.config, job_id, net))


@internal.command()
@click.argument("action", type=click.Choice(["init", "cleanup"]))
@click.option("--job", "job_id", required=True, help="Slurm job id (from the plugin).")
@click.option("--user", "user", required=True, help="The job's user, by name or uid.")
@pass_session
def setup(session: Session, action: str, job_id: str, user: str) -> None:
    """As root, from the Slurm plugin: create or remove the job's state on this node.

    Networks come from the system configuration only (never root's or the user's)."""
    import os

    from pcocc.config import load_config
    from pcocc.net import jobsetup

    job = jobsetup.parse_job_id(job_id)
    if action == "cleanup":  # the node's devices go first, whatever the files say
        jobsetup.cleanup(job, os.environ)
    config = load_config(session.system_dir, "/nonexistent/pcocc-no-user-config")
    kv = jobsetup.site_kv_for(config.networks, config.batch.etcd)
    try:
        if action == "init":
            jobsetup.init(job, user, config.networks, os.environ, kv=kv)
        elif kv is not None:  # then what the job holds in the site etcd
            jobsetup.cleanup(job, os.environ, kv=kv)
    finally:
        if kv is not None:
            kv.close()


# One task of a multi-node `pcocc run` (see pcocc/cli/internal_ctr.py).
from pcocc.cli.internal_ctr import cache_send, ctr_detached, ctr_group_stop, ctr_task  # noqa: E402

internal.add_command(ctr_task)
internal.add_command(ctr_detached)
internal.add_command(ctr_group_stop)
internal.add_command(cache_send)

from pcocc.cli.mds import mds_serve  # noqa: E402

internal.add_command(mds_serve)
