"""``pcocc pod verify-identity`` and ``pcocc internal mds-serve``: the metadata service."""

from __future__ import annotations

import click

from pcocc.cli.context import exit_with


@click.command("verify-identity")
@click.argument("token")
def verify_identity(token: str) -> None:
    """Check an identity TOKEN that one of your pods got from its metadata service."""
    from pcocc.ctr.mds import verify_identity as verify

    claims = verify(token)
    click.echo(f"uuid={claims['uuid']}")
    click.echo(f"app={claims['app']}")


@click.command("mds-serve", hidden=True)
@click.option("--adopt-fd", type=int, metavar="FD",
              help="Read the sockets to serve first (sent by pcocc run) on FD.")
def mds_serve(adopt_fd: int | None) -> None:
    """Run your metadata service (started on demand by 'pcocc run')."""
    from pcocc.ctr.mds_server import serve

    exit_with(serve(adopt_fd))
