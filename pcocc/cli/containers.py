"""``pcocc run`` and ``pcocc pod``: parse, call pcocc.ctr, print."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from pcocc.cli.app import LazyGroup
from pcocc.cli.commands import POD_SUBCOMMANDS
from pcocc.cli.context import Session, exit_with, pass_session
from pcocc.cli.fastrun import build_request, may_be_remote, skip_exit_collection
from pcocc.cli.output import local_time, print_table

if TYPE_CHECKING:
    from pcocc.ctr.pod import RunRequest
    from pcocc.ctr.pods import PodRecord


class _RunCommand(click.Command):
    """``pcocc run``, where a bare ``--private-net`` never takes the image as its MODE."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = {
            opt
            for p in self.params
            if isinstance(p, click.Option) and not p.is_flag and not p.count
            for opt in p.opts
        }
        return super().parse_args(ctx, bare_flag_value(args, "--private-net", takes_value))


def bare_flag_value(args: list[str], flag: str, takes_value: set[str]) -> list[str]:
    """``args`` with a bare ``flag`` among the options (before the first operand or ``--``)
    spelled ``flag=`` (empty value), so that click does not take the next word as its value."""
    out = list(args)
    i = 0
    while i < len(out):
        tok = out[i]
        if tok == "--" or not tok.startswith("-") or tok == "-":
            break
        if tok == flag:
            out[i] = f"{flag}="
        elif tok in takes_value:
            i += 1  # skip the option's value
        i += 1
    return out


@click.command(
    "run",
    cls=_RunCommand,
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("-N", "--nodes", type=click.IntRange(min=1), help="Number of nodes (Slurm).")
@click.option("-n", "--tasks", type=click.IntRange(min=1), help="Number of tasks (Slurm).")
@click.option("--runtime", metavar="NAME", help="auto, crun, runc, unshare or vm.")
@click.option("--set-env", multiple=True, metavar="NAME=VALUE", help="Set a variable.")
@click.option(
    "--set-env-file", multiple=True, metavar="FILE", help="Set the NAME=VALUE lines of FILE."
)
@click.option("--inherit-env", is_flag=True, help="Pass the host environment to the apps.")
@click.option(
    "--volume",
    multiple=True,
    metavar="NAME,kind=host,source=PATH[,readOnly=true]",
    help="Declare a volume (kind=host or kind=empty).",
)
@click.option(
    "--mount",
    multiple=True,
    metavar="volume=NAME,target=PATH",
    help="Mount a declared volume in the apps.",
)
@click.option(
    "-M",
    "--module",
    multiple=True,
    metavar="NAME",
    help="Add a module of containers.yaml (mounts and env).",
)
@click.option(
    "--private-net",
    "private_net",
    metavar="[=MODE]",
    help="Own network namespace: MODE auto (default: slirp4netns if installed, else "
    "loopback only), slirp or loopback.",
)
@click.option(
    "--allow-host-loopback",
    is_flag=True,
    help="With --private-net: let the pod reach the host's loopback at 10.0.2.2.",
)
@click.option(
    "-p",
    "--port",
    "ports",
    multiple=True,
    metavar="[HOSTADDR:]HOSTPORT:PODPORT[/udp]",
    help="With --private-net: forward a host port to the pod (through slirp4netns).",
)
@click.option(
    "--insecure-options",
    multiple=True,
    metavar="capabilities,paths,seccomp",
    help="Relax these protections.",
)
@click.option("-i", "--interactive", is_flag=True, help="Attach the terminal to the app.")
@click.option(
    "-d",
    "--detach",
    is_flag=True,
    help="Run the pod in the background: print its UUID once its apps run, and return.",
)
@click.option("--hostname", help="Host name of the pod [default: pcocc-<uuid>].")
@click.option("--root", "as_root", is_flag=True, help="Run as root of the container.")
@click.option("--register-mds", type=click.BOOL, default=True, show_default=True,
              metavar="BOOL", help="Serve the pod's metadata at /dev/pcocc/mds/api.sock.")
@click.option("--annotation", "annotations", multiple=True, metavar="KEY=VALUE",
              help="Annotate the pod (read from the metadata service).")
@click.argument(
    "cmdline", nargs=-1, type=click.UNPROCESSED, required=True, metavar="IMAGE [-- ARGS]..."
)
@pass_session
@click.pass_context
def run(
    ctx: click.Context,
    session: Session,
    nodes: int | None,
    tasks: int | None,
    runtime: str | None,
    set_env: tuple[str, ...],
    set_env_file: tuple[str, ...],
    inherit_env: bool,
    volume: tuple[str, ...],
    mount: tuple[str, ...],
    module: tuple[str, ...],
    private_net: str | None,
    allow_host_loopback: bool,
    ports: tuple[str, ...],
    insecure_options: tuple[str, ...],
    interactive: bool,
    detach: bool,
    hostname: str | None,
    as_root: bool,
    register_mds: bool,
    annotations: tuple[str, ...],
    cmdline: tuple[str, ...],
) -> None:
    """Run IMAGE [-- ARGS] [--- IMAGE2 [-- ARGS]] as a pod; exit with the app's status."""
    skip_exit_collection()
    # the run-side values of the global --insecure-options count too
    request = build_request(ctx.params, run_side=session.security.run_side)
    from pcocc.ctr.pod import RunRequest

    request = RunRequest(_fetched(session, request.apps), request.options)
    if detach:
        _run_detached(session, request, nodes=nodes, tasks=tasks)
        return
    if nodes is not None or tasks is not None:
        from pcocc.ctr.multinode import run_tasks

        exit_with(run_tasks(request, session.config, nodes=nodes, tasks=tasks,
                            rerun_argv=_rerun_argv(), notify=session.say,
                            log_args=session.log_args))
        return
    from pcocc.ctr.pod import run_request

    exit_with(run_request(request, session.config, session.notify))


def _fetched(session: Session, apps: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """``apps`` with each URL or discoverable name replaced by the local image it was
    fetched as (fetching it now if it never was); local images are left as they are."""
    if not any(may_be_remote(image) for image, _ in apps):
        return apps  # the usual case: nothing more is imported
    from pcocc.trust.prefix import fetchable

    if not any(fetchable(image) for image, _ in apps):
        return apps
    from pathlib import Path

    from pcocc.repo.reposet import RepoSet
    from pcocc.trust.fetch import fetch_missing, trust_store

    repos = RepoSet(session.config.repos)
    store = trust_store(session.security, Path(session.system_dir))
    return [(fetch_missing(repos, image, session.security, store, session.notify).ref
             if fetchable(image) else image, args) for image, args in apps]


def _run_detached(
    session: Session, request: RunRequest, *, nodes: int | None, tasks: int | None
) -> None:
    from pcocc.errors import UsageError

    if request.options.interactive:
        raise UsageError("--detach and --interactive cannot go together: a detached pod "
                         "has no terminal")
    if nodes is not None or tasks is not None:
        from pcocc.ctr.podgroup import allocation

        allocation(session.config)  # fails at once outside an allocation
    from pcocc.ctr.detach import run_detached

    click.echo(run_detached(request, session.notify, session.log_args, nodes=nodes,
                            tasks=tasks))


def _rerun_argv() -> list[str]:
    """This very command line, to run again inside a new allocation."""
    from pcocc.selfcmd import pcocc_argv

    return [*pcocc_argv(), *sys.argv[1:]]


# -- pod ----------------------------------------------------------------------------------
@click.group("pod", cls=LazyGroup, lazy=POD_SUBCOMMANDS)
def pod() -> None:
    """List, inspect, enter and collect container pods."""


@pod.command("list")
@click.option("--full", is_flag=True, help="Full UUIDs and image names.")
@click.option("--no-legend", is_flag=True, help="No header line.")
@click.option("--json", "as_json", is_flag=True, help="JSON records.")
def list_(full: bool, no_legend: bool, as_json: bool) -> None:
    """List your pods."""
    from pcocc.ctr.pods import PodStore

    recs = list(PodStore().list())
    if as_json:
        click.echo(json.dumps([r.to_json() for r in recs], indent=1))
        return
    rows = []
    groups = {r.uuid for r in recs if r.nodes}
    for r in recs:
        if r.group in groups:
            continue  # shown as its multi-node pod
        for i, app in enumerate(r.apps or [None]):
            first = i == 0
            rows.append(
                (
                    (r.uuid if full else r.short_id) if first else "",
                    app.name if app else "-",
                    app.image if app else "-",
                    r.state if first else "",
                    (",".join(dict.fromkeys(r.nodes)) or r.node) if first else "",
                    local_time(r.created) if first else "",
                )
            )
    header = ("UUID", "APP", "IMAGE", "STATE", "NODE", "CREATED")
    print_table(None if no_legend else header, rows)


@pod.command("status")
@click.option("--wait", is_flag=True, help="Wait for the pod to exit first.")
@click.argument("uuid")
def status(wait: bool, uuid: str) -> None:
    """Show the state of a pod and the exit status of its apps."""
    from pcocc.ctr.pods import PodStore

    store = PodStore()
    rec = store.resolve(uuid)
    if wait:
        rec = store.wait(rec)
    running = rec.state == "running"
    click.echo(f"uuid={rec.uuid}")
    click.echo(f"state={rec.state}")
    click.echo(f"pid={rec.pid if running and rec.pid else -1}")
    click.echo(f"exited={'false' if running or rec.state == 'prepared' else 'true'}")
    click.echo(f"node={','.join(dict.fromkeys(rec.nodes)) or rec.node}")
    for node, member in zip(rec.nodes, rec.members):
        click.echo(f"member={node}:{member}")
    for app in rec.apps:
        if app.exit_status is not None:
            click.echo(f"{app.name}={app.exit_status}")


@pod.command(
    "enter", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option("--app", "app_name", metavar="NAME", help="The app to enter.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a terminal.")
@click.argument("uuid")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def enter(
    ctx: click.Context, app_name: str | None, tty: bool, uuid: str, command: tuple[str, ...]
) -> None:
    """Run COMMAND (default /bin/sh) inside an app of a running pod."""
    from pcocc.ctr.attach import enter_pod
    from pcocc.ctr.pods import PodStore

    store = PodStore()
    rec = store.resolve(uuid)
    _one_node(rec, "enter")
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        click.echo('pcocc: no command given, assuming "/bin/sh"', err=True)
    exit_with(enter_pod(store, rec, app_name, argv, tty=tty))


@pod.command("logs")
@click.option("--app", "app_name", metavar="NAME", help="Only this app.")
@click.option(
    "-f", "--follow", is_flag=True, help="Print the output as the apps write it, until the pod ends."
)
@click.argument("uuid")
def logs(app_name: str | None, follow: bool, uuid: str) -> None:
    """Print the output of a pod's apps."""
    from pcocc.ctr.attach import pick_app, read_logs
    from pcocc.ctr.pods import PodStore

    store = PodStore()
    rec = store.resolve(uuid)
    if rec.nodes:
        from pcocc.ctr.podgroup import group_logs, member_logs

        if follow:
            from pcocc.ctr.podctl import follow_files

            follow_files(store, rec.uuid, member_logs(store, rec, app_name), _LogWriter(True))
            return
        sys.stdout.buffer.write(group_logs(store, rec, app_name))
        sys.stdout.flush()
        return
    if follow:
        from pcocc.ctr.podctl import follow_logs

        names = [pick_app(rec, app_name).name] if app_name else [a.name for a in rec.apps]
        follow_logs(store, rec, names, _LogWriter(several=len(names) > 1))
        return
    entries = read_logs(store, rec, app_name)
    for name, data in entries:
        if len(entries) > 1:
            click.echo(f"==> {name} <==")
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


def _one_node(rec: PodRecord, what: str) -> None:
    """:raise UsageError: ``rec`` is a multi-node pod, which ``pod WHAT`` cannot take"""
    if rec.nodes:
        from pcocc.errors import UsageError

        raise UsageError(f"pod {rec.short_id} runs on {len(rec.nodes)} nodes: 'pod {what}' "
                         "takes one of its members",
                         hint=f"see the members in 'pcocc pod status {rec.short_id}'")


class _LogWriter:
    """Write log data to stdout, with a ``==> app <==`` line when the app changes (several)."""

    def __init__(self, several: bool):
        self.several = several
        self.last: str | None = None

    def __call__(self, name: str, data: bytes) -> None:
        if self.several and name != self.last:
            click.echo(f"==> {name} <==")
            self.last = name
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


@pod.command("stop")
@click.option("--force", is_flag=True, help="SIGKILL at once, with no grace period.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    metavar="S",
    help="Seconds the apps get after SIGTERM before SIGKILL.",
)
@click.argument("uuids", nargs=-1, required=True)
@pass_session
def stop(session: Session, force: bool, timeout_s: float, uuids: tuple[str, ...]) -> None:
    """Stop running pods (on every node of a multi-node pod): SIGTERM to every app, then
    SIGKILL after the timeout."""
    from pcocc.ctr.podctl import check_stoppable, stop_pod
    from pcocc.ctr.podgroup import stop_group
    from pcocc.ctr.pods import PodStore

    store = PodStore()
    recs = store.resolve_all(list(uuids))
    for rec in recs:  # every pod checked before any is stopped
        check_stoppable(rec)
    for rec in recs:
        if rec.nodes:
            stop_group(store, rec, session.config, timeout_s=timeout_s, force=force)
        else:
            stop_pod(store, rec, timeout_s=timeout_s, force=force)
        click.echo(f'Stopped pod "{rec.uuid}"')


@pod.command("gc")
@click.option(
    "--grace-period",
    default="30m",
    show_default=True,
    metavar="DURATION",
    help="How long exited pods stay, then how long garbage stays (e.g. 30m, 0s).",
)
def gc(grace_period: str) -> None:
    """Move exited pods to the garbage, and remove old garbage."""
    from pcocc.ctr.pods import PodStore, parse_duration

    for action, uuid in PodStore().gc(parse_duration(grace_period)):
        if action == "garbage":
            click.echo(f'Moving pod "{uuid}" to garbage')
        else:
            click.echo(f'Garbage collecting pod "{uuid}"')


@pod.command("rm")
@click.argument("uuids", nargs=-1, required=True)
def rm(uuids: tuple[str, ...]) -> None:
    """Remove exited pods (a multi-node pod with the pods of its nodes)."""
    from pcocc.ctr.podgroup import remove_pod
    from pcocc.ctr.pods import PodStore

    store = PodStore()
    for u in uuids:
        rec = store.resolve(u)
        remove_pod(store, rec)
        click.echo(f'Removed pod "{rec.uuid}"')


from pcocc.cli.mds import verify_identity  # noqa: E402

pod.add_command(verify_identity)
