"""click glue of the per-invocation :class:`~pcocc.cli.session.Session`."""

from __future__ import annotations

import click

from pcocc.cli.session import Session

pass_session = click.make_pass_decorator(Session)


def exit_with(status: int) -> None:
    """End the current command with ``status`` (the exit status of something it ran).

    0 returns normally; ``pcocc.cli.main.run_cli`` passes any other status on as pcocc's.
    """
    if status:
        click.get_current_context().exit(status)
