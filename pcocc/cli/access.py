"""``pcocc ssh``, ``scp``, ``nc``, ``console``, ``reset``, ``monitor-cmd``: use a running VM."""

from __future__ import annotations

import click

from pcocc.cli.context import Session, exit_with, pass_session

_job_option = click.option(
    "-j",
    "--jobid",
    "job_id",
    metavar="JOBID",
    help="Cluster to use [default: $PCOCC_JOB_ID, $SLURM_JOB_ID, or your only cluster].",
)


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@_job_option
@click.argument("target", metavar="[USER@]vmN")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_session
def ssh(session: Session, job_id: str | None, target: str, command: tuple[str, ...]) -> None:
    """Connect to a VM with ssh (host keys are checked), or run COMMAND there."""
    from pcocc.cluster.access import find_cluster, run_interactive, ssh_argv

    view = find_cluster(job_id, etcd=lambda: session.config.batch.etcd)
    exit_with(run_interactive(ssh_argv(view, target, command)))


@click.command(context_settings={"ignore_unknown_options": True})
@_job_option
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_session
def scp(session: Session, job_id: str | None, args: tuple[str, ...]) -> None:
    """Copy files to and from VMs: pcocc scp [SCP_OPTIONS] SRC... DST, with vmN:PATH."""
    from pcocc.cluster.access import find_cluster, run_interactive, scp_argv

    view = find_cluster(job_id, etcd=lambda: session.config.batch.etcd)
    exit_with(run_interactive(scp_argv(view, args)))


@click.command()
@_job_option
@click.argument("target", metavar="[USER@]vmN")
@click.argument("port", type=click.IntRange(1, 65535))
@pass_session
def nc(session: Session, job_id: str | None, target: str, port: int) -> None:
    """Connect stdin and stdout to TCP PORT of a VM.

    PORT must be forwarded: 22, or a port in the `forwards` or `public-forwards` of a user
    network of the VM's resource set (networks.yaml). A private forward (`forwards`) is
    reached through the VM's ssh server, logged in as USER (default: as `pcocc ssh`).
    """
    from pcocc.cluster.access import find_cluster
    from pcocc.cluster.access import nc as relay

    exit_with(relay(find_cluster(job_id, etcd=lambda: session.config.batch.etcd), target, port))


@click.command()
@_job_option
@click.option("--log", "show_log", is_flag=True, help="Print the console log and exit.")
@click.argument("vm", metavar="vmN")
@pass_session
def console(session: Session, job_id: str | None, show_log: bool, vm: str) -> None:
    """Attach to the serial console of a VM (Ctrl-] to quit)."""
    from pcocc.cluster.access import attach_console, console_log, find_cluster
    from pcocc.errors import NotFound

    try:
        view = find_cluster(job_id, etcd=lambda: session.config.batch.etcd)
    except NotFound:
        if not (show_log and job_id):
            raise
        from pcocc.cluster.keptlogs import read_kept

        # the cluster ended: the log a failed VM's node process kept
        click.echo(read_kept(job_id, vm), nl=False)
        return
    if show_log:
        click.echo(console_log(view, vm), nl=False)
    else:
        attach_console(view, vm)


@click.command()
@_job_option
@click.argument("vm", metavar="vmN")
@pass_session
def reset(session: Session, job_id: str | None, vm: str) -> None:
    """Reset a VM (like pressing its reset button)."""
    from pcocc.cluster.access import find_cluster
    from pcocc.cluster.access import reset as do_reset

    do_reset(find_cluster(job_id, etcd=lambda: session.config.batch.etcd), vm)


@click.command("monitor-cmd")
@_job_option
@click.argument("vm", metavar="vmN")
@click.argument("words", nargs=-1, required=True, metavar="CMD")
@pass_session
def monitor_cmd(session: Session, job_id: str | None, vm: str, words: tuple[str, ...]) -> None:
    """Send a monitor command to a VM: HMP ('info status'), QMP name or QMP JSON."""
    from pcocc.cluster.access import find_cluster, monitor_command

    view = find_cluster(job_id, etcd=lambda: session.config.batch.etcd)
    click.echo(monitor_command(view, vm, words))
