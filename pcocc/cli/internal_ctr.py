"""``pcocc internal ctr-task FILE``: run one task's pod of a multi-node ``pcocc run``;
``pcocc internal cache-send``: send a cache entry's layers to another node of the run.

The lead attaches these commands to the hidden ``internal`` group.
"""

from __future__ import annotations

import click

from pcocc.cli.context import Session, exit_with, pass_session


@click.command("ctr-task", hidden=True)
@click.argument("request")
@pass_session
def ctr_task(session: Session, request: str) -> None:
    """Run the pod described by the run request REQUEST on this node."""
    from pcocc.ctr.multinode import run_task

    exit_with(run_task(request, session.config, session.notify))


@click.command("ctr-detached", hidden=True)
@click.option("--report-fd", type=int, required=True, help="Pipe to report the start on.")
@click.argument("request")
@pass_session
def ctr_detached(session: Session, report_fd: int, request: str) -> None:
    """Supervise the pod of ``pcocc run --detach`` (see pcocc/ctr/detach.py)."""
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
