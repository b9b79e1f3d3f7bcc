"""``pcocc internal``: commands pcocc runs on the nodes (hidden).

Minimal group for the container tasks; the cluster runtime adds its own commands here.
"""

from __future__ import annotations

import click

from pcocc.cli.internal_ctr import ctr_task


@click.group("internal", hidden=True)
def internal() -> None:
    """Commands run by pcocc itself on the nodes."""


internal.add_command(ctr_task)
