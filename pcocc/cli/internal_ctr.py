"""``pcocc internal ctr-task FILE``: run one task's pod of a multi-node ``pcocc run``;
``pcocc internal cache-send``: send a cache entry's layers to another node of the run.

The lead attaches these commands to the hidden ``internal`` group.
"""

from __future__ import annotations

import click

from pcocc.cli.context import Session, exit_with, pass_session


@click.command("ctr-task", hidden=True)
@click.option("--group", metavar="UUID", help="As a member of this detached multi-node pod.")
@click.argument("request")
@pass_session
def ctr_task(session: Session, group: str | None, request: str) -> None:
    """Run the pod described by the run request REQUEST on this node."""
    if group:
        from pcocc.ctr.podgroup import run_member

        exit_with(run_member(request, group, session.config))
        return
    from pcocc.ctr.multinode import run_task

    exit_with(run_task(request, session.config, session.notify))


@click.command("ctr-detached", hidden=True)
@click.option("--report-fd", type=int, required=True, help="Pipe to report the start on.")
@click.option("--nodes", type=int, help="One pod per task of the allocation (-N).")
@click.option("--tasks", type=int, help="One pod per task of the allocation (-n).")
@click.argument("request")
@pass_session
def ctr_detached(
    session: Session, report_fd: int, nodes: int | None, tasks: int | None, request: str
) -> None:
    """Supervise the pod of ``pcocc run --detach`` (see pcocc/ctr/detach.py)."""
    if nodes or tasks:
        from pcocc.ctr.podgroup import supervise_group

        exit_with(supervise_group(request, report_fd, session.config, nodes=nodes, tasks=tasks))
        return
    from pcocc.ctr.detach import supervise

    exit_with(supervise(request, report_fd, session.config))


@click.command("cache-send", hidden=True)
@click.argument("mode")
@click.argument("manifest")
@click.argument("layers", nargs=-1)
@pass_session
def cache_send(session: Session, mode: str, manifest: str, layers: tuple[str, ...]) -> None:
    """Write the kept LAYERS of this node's cache entry of MANIFEST to stdout (see
    pcocc/ctr/fanout.py); waits until the entry is complete."""
    from pcocc.ctr.fanout import serve
    from pcocc.repo.cache import ContainerCache

    serve(ContainerCache.from_config(session.config.cache), mode, manifest, list(layers))


@click.command("ctr-group-stop", hidden=True)
@click.option("--timeout", "timeout_s", type=float, default=10.0)
@click.option("--force", is_flag=True)
@click.argument("group")
def ctr_group_stop(timeout_s: float, force: bool, group: str) -> None:
    """Stop this node's pods of the multi-node pod GROUP (see pcocc/ctr/podgroup.py)."""
    from pcocc.ctr.multinode import task_hostname
    from pcocc.ctr.podgroup import stop_members
    from pcocc.ctr.pods import PodStore

    stop_members(PodStore(), group, task_hostname(), timeout_s=timeout_s, force=force)
