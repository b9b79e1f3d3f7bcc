"""``pcocc save``: write a running VM's disk into an image repository."""

from __future__ import annotations

import click

from pcocc.cli.context import Session, pass_session
from pcocc.cli.selection import cluster_selection
from pcocc.cluster.lookup import ClusterSelection


@click.command()
@cluster_selection
@click.option("-d", "--dest", metavar="[REPO:]NAME",
              help="Save into this new image instead of a new revision of the VM's image.")
@click.option("--full", is_flag=True,
              help="Save the whole flattened disk, not a layer over the booted revision.")
@click.option("-s", "--no-freeze", "skip_freeze", is_flag=True,
              help="Do not freeze the guest's file systems (for a guest without an agent).")
@click.argument("vm", metavar="[vmN]", default="vm0")
@pass_session
def save(session: Session, selection: ClusterSelection, dest: str | None, full: bool,
         skip_freeze: bool, vm: str) -> None:
    """Save the disk of a running VM (default vm0) as a new image revision.

    The VM keeps running; its file systems are frozen through its guest agent for the
    instant the copy starts. Prints the saved revision.
    """
    from pcocc.cli.fastsave import run_save

    run_save(session, selection, dest, full, skip_freeze, vm)
