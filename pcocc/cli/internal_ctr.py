"""``pcocc internal ctr-task FILE``: run one task's pod of a multi-node ``pcocc run``.

The lead attaches ``ctr_task`` to the hidden ``internal`` group.
"""

from __future__ import annotations

import dataclasses

import click

from pcocc.cli.context import Session, exit_with, pass_session


@click.command("ctr-task", hidden=True)
@click.argument("request")
@pass_session
def ctr_task(session: Session, request: str) -> None:
    """Run the pod described by the run request REQUEST on this node."""
    from pcocc.cli.containers import run_local
    from pcocc.ctr.multinode import read_request, task_hostname

    apps, opts = read_request(request)
    if opts.hostname is None:
        opts = dataclasses.replace(opts, hostname=task_hostname())
    exit_with(run_local(session, apps, opts))
