"""``pcocc internal ctr-task FILE``: run one task's pod of a multi-node ``pcocc run``.

The lead attaches ``ctr_task`` to the hidden ``internal`` group.
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
