"""``pcocc ssh``, ``scp``, ``nc``, ``console``, ``reset``, ``monitor-cmd``, ``exec``: use
running VMs.

Each selects its cluster with ``-j JOBID``, ``-J NAME`` or ``--user`` (:mod:`pcocc.cli.selection`);
ssh and scp pass every option that is not pcocc's to the tool, as argv words. reset,
monitor-cmd and exec take VM sets (:mod:`pcocc.cluster.vmset`).
"""

from __future__ import annotations

import click

from pcocc.cli.context import Session, exit_with, pass_session
from pcocc.cli.passthrough import tool_command
from pcocc.cli.selection import cluster_selection
from pcocc.cluster.lookup import ClusterSelection
from pcocc.cluster.ssh_options import SCP_OPTIONS, SSH_OPTIONS
from pcocc.errors import UsageError

_index_option = click.option(
    "-i",
    "--index",
    metavar="RANGE",
    help="VMs to use, as 0-3,7 or vm[0-3,7].",
)


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
@_index_option
@click.argument("vms", required=False, metavar="[VMSET]")
@pass_session
def reset(session: Session, selection: ClusterSelection, index: str | None,
          vms: str | None) -> None:
    """Reset VMs (like pressing their reset button): VMSET is vm3 or vm[0-3,7] [default:
    vm0]."""
    from pcocc.cluster.access import find_cluster
    from pcocc.cluster.vmcontrol import reset_vms, select_vms
    from pcocc.cluster.vmset import parse_vm_set, split_vm_set

    chosen, rest = split_vm_set(index, [vms] if vms else [])
    if rest:
        parse_vm_set(rest[0])  # says what is wrong with it
    view = find_cluster(selection, etcd=lambda: session.config.batch.etcd)
    reset_vms(view, select_vms(view, chosen, default=(0,)))


@click.command("monitor-cmd", context_settings={"ignore_unknown_options": True})
@cluster_selection
@_index_option
@click.argument("words", nargs=-1, required=True, metavar="[VMSET] CMD...")
@pass_session
def monitor_cmd(
    session: Session, selection: ClusterSelection, index: str | None, words: tuple[str, ...]
) -> None:
    """Send a monitor command to VMs: HMP ('info status'), QMP name or QMP JSON.

    VMSET is vm3 or vm[0-3,7] [default: vm0]; with several VMs, each line of an answer is
    prefixed by the VM's name.
    """
    from pcocc.cluster.access import find_cluster
    from pcocc.cluster.vmcontrol import monitor_commands, select_vms
    from pcocc.cluster.vmset import split_vm_set

    chosen, rest = split_vm_set(index, words)
    view = find_cluster(selection, etcd=lambda: session.config.batch.etcd)
    answers = monitor_commands(view, select_vms(view, chosen, default=(0,)), rest)
    for rank, text in answers:
        if len(answers) == 1:
            click.echo(text)
        else:
            click.echo("".join(f"vm{rank}: {line}\n" for line in text.splitlines()), nl=False)


@click.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@cluster_selection(user_option=False)
@click.option("-i", "--index", metavar="RANGE",
              help="VMs to run in, as 0-3,7 or vm[0-3,7] [default: all].")
@click.option("-u", "--user", metavar="USER",
              help="Run as this guest user [default: the agent's, root].")
@click.option("--env", "env", multiple=True, metavar="K=V",
              help="Set variable K to V for the command; repeatable.")
@click.option("-s", "--stdin", "use_stdin", is_flag=True,
              help="Pass the standard input to the command (read to its end first).")
@click.option("--script", metavar="FILE",
              help="Run the script FILE of this host ('-': standard input) instead of CMD.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="CMD...")
@pass_session
def exec_(
    session: Session,
    selection: ClusterSelection,
    index: str | None,
    user: str | None,
    env: tuple[str, ...],
    use_stdin: bool,
    script: str | None,
    command: tuple[str, ...],
) -> None:
    """Run CMD in VMs through their guest agents, in parallel, output as it comes.

    CMD is shell text, as with ssh. With several VMs each output line is prefixed by the
    VM's name. The exit status is the worst of the VMs'.
    """
    import sys

    from pcocc.cluster.access import find_cluster
    from pcocc.cluster.vmcontrol import exec_in_vms, select_vms
    from pcocc.cluster.guestexec import ExecRequest, PrefixedOutput, script_request
    from pcocc.cluster.vmset import split_vm_set

    if script is not None:
        if command or use_stdin:
            raise UsageError("give either --script FILE or CMD (and -s), not both")
        request = script_request(_read_script(script), user=user, env=env)
    else:
        stdin = sys.stdin.buffer.read() if use_stdin else None
        request = ExecRequest.build(command, user=user, env=env, stdin=stdin)
    chosen, _ = split_vm_set(index, ())
    view = find_cluster(selection, etcd=lambda: session.config.batch.etcd)
    ranks = select_vms(view, chosen, default=None)
    output = PrefixedOutput(sys.stdout.buffer, sys.stderr.buffer, prefix=len(ranks) > 1)

    def on_error(_rank: int, message: str, hint: str | None) -> None:
        click.echo(f"pcocc: error: {message}" + (f" ({hint})" if hint else ""), err=True)

    exit_with(exec_in_vms(view, ranks, request, output, on_error))


def _read_script(path: str) -> bytes:
    import sys

    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise UsageError(f"--script '{path}': cannot read it: {err.strerror}") from err
