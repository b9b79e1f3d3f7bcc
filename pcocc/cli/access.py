"""``pcocc ssh``, ``scp``, ``nc``, ``console``, ``reset``, ``monitor-cmd``: use a running VM.

Each selects its cluster with ``-j JOBID``, ``-J NAME`` or ``--user`` (:mod:`pcocc.cli.selection`);
ssh and scp pass every option that is not pcocc's to the tool, as argv words.
"""

from __future__ import annotations

import click

from pcocc.cli.context import Session, exit_with, pass_session
from pcocc.cli.passthrough import tool_command
from pcocc.cli.selection import cluster_selection
from pcocc.cluster.lookup import ClusterSelection
from pcocc.cluster.ssh_options import SCP_OPTIONS, SSH_OPTIONS


@tool_command(SSH_OPTIONS, "ssh_args", interspersed=False, after_double_dash="positional",
              options_metavar="[OPTIONS] [SSH_OPTIONS]")
@cluster_selection
@click.option(
    "-p",
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port of the VM's ssh server (it must be forwarded) [default: 22].",
)
@click.argument("target", metavar="[USER@]vmN")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_session
def ssh(session: Session, selection: ClusterSelection, port: int | None, target: str,
        command: tuple[str, ...], ssh_args: tuple[str, ...]) -> None:
    """Connect to a VM with ssh (host keys are checked), or run COMMAND there.

    Options that are not pcocc's go to ssh (e.g. -L 8888:localhost:8888, -X, -o OPT);
    ssh's own -J and -p are pcocc's here: use -o ProxyJump=... if needed.
    """
    from pcocc.cluster.access import find_cluster, run_interactive, ssh_argv

    view = find_cluster(selection, etcd=lambda: session.config.batch.etcd)
    exit_with(run_interactive(ssh_argv(view, target, command, ssh_args, port=port)))


@tool_command(SCP_OPTIONS, "scp_args", interspersed=False, after_double_dash="positional",
              options_metavar="[OPTIONS] [SCP_OPTIONS]")
@cluster_selection
@click.argument("paths", nargs=-1, required=True, metavar="SRC... DST")
@pass_session
def scp(session: Session, selection: ClusterSelection, paths: tuple[str, ...],
        scp_args: tuple[str, ...]) -> None:
    """Copy files to and from VMs: pcocc scp [SCP_OPTIONS] SRC... DST, with [USER@]vmN:PATH.

    Options that are not pcocc's go to scp (e.g. -r, -p, -o OPT).
    """
    from pcocc.cluster.access import find_cluster, run_interactive, scp_argv

    view = find_cluster(selection, etcd=lambda: session.config.batch.etcd)
    exit_with(run_interactive(scp_argv(view, paths, scp_args)))


@click.command()
@cluster_selection
@click.option("-w", "timeout_s", type=click.FloatRange(min=0, min_open=True), metavar="SECS",
              help="nc's -w: give up connecting, or end an idle connection, after SECS.")
@click.option("-z", "scan", is_flag=True, help="nc's -z: connect, send nothing, close.")
@click.option("-v", "verbose", is_flag=True, help="nc's -v: say when the connection is made.")
@click.argument("target", metavar="[USER@]vmN")
@click.argument("port", type=click.IntRange(1, 65535))
@pass_session
def nc(session: Session, selection: ClusterSelection, timeout_s: float | None, scan: bool,
       verbose: bool, target: str, port: int) -> None:
    """Connect stdin and stdout to TCP PORT of a VM.

    PORT must be forwarded: 22, or a port in the `forwards` or `public-forwards` of a user
    network of the VM's resource set (networks.yaml). A private forward (`forwards`) is
    reached through the VM's ssh server, logged in as USER (default: as `pcocc ssh`).
    pcocc relays the connection itself: of nc's options it takes -w, -z and -v.
    """
    from pcocc.cluster.access import find_cluster
    from pcocc.cluster.access import nc as relay

    view = find_cluster(selection, etcd=lambda: session.config.batch.etcd)
    exit_with(relay(view, target, port, timeout_s=timeout_s, scan=scan, verbose=verbose))


@click.command()
@cluster_selection
@click.option("--log", "show_log", is_flag=True, help="Print the console log and exit.")
@click.argument("vm", metavar="vmN")
@pass_session
def console(session: Session, selection: ClusterSelection, show_log: bool, vm: str) -> None:
    """Attach to the serial console of a VM (Ctrl-] to quit)."""
    from pcocc.cluster.access import attach_console, console_log, find_cluster
    from pcocc.errors import NotFound

    try:
        view = find_cluster(selection, etcd=lambda: session.config.batch.etcd)
    except NotFound:
        if not (show_log and selection.job_id):
            raise
        from pcocc.cluster.keptlogs import read_kept

        # the cluster ended: the log a failed VM's node process kept
        click.echo(read_kept(selection.job_id, vm), nl=False)
        return
    if show_log:
        click.echo(console_log(view, vm), nl=False)
    else:
        attach_console(view, vm)


@click.command()
@cluster_selection
@click.argument("vm", metavar="vmN")
@pass_session
def reset(session: Session, selection: ClusterSelection, vm: str) -> None:
    """Reset a VM (like pressing its reset button)."""
    from pcocc.cluster.access import find_cluster
    from pcocc.cluster.access import reset as do_reset

    do_reset(find_cluster(selection, etcd=lambda: session.config.batch.etcd), vm)


@click.command("monitor-cmd")
@cluster_selection
@click.argument("vm", metavar="vmN")
@click.argument("words", nargs=-1, required=True, metavar="CMD")
@pass_session
def monitor_cmd(session: Session, selection: ClusterSelection, vm: str,
                words: tuple[str, ...]) -> None:
    """Send a monitor command to a VM: HMP ('info status'), QMP name or QMP JSON."""
    from pcocc.cluster.access import find_cluster, monitor_command

    view = find_cluster(selection, etcd=lambda: session.config.batch.etcd)
    click.echo(monitor_command(view, vm, words))
