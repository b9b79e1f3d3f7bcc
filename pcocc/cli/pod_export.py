"""``pcocc pod export``: save what an app of a stopped pod changed as a new image."""

from __future__ import annotations

import click

from pcocc.cli.context import Session, pass_session


@click.command("export")
@click.option("--app", "app_name", metavar="NAME", help="The app to export (pods of several apps).")
@click.option("--description", default="", help="Description of the new image.")
@click.argument("uuid")
@click.argument("dest", metavar="[REPO:]NAME")
@pass_session
def export(session: Session, app_name: str | None, description: str, uuid: str, dest: str) -> None:
    """Save the file system changes of a stopped pod's app as the new image [REPO:]NAME: its
    image plus one layer. Prints the new image's reference."""
    from pcocc.ctr.podexport import export_pod
    from pcocc.ctr.pods import PodStore
    from pcocc.repo.reposet import RepoSet

    meta = export_pod(
        PodStore(),
        RepoSet(session.config.repos),
        uuid,
        dest,
        app_name=app_name,
        description=description,
    )
    click.echo(f"{meta.ref} {meta.short_id}")
