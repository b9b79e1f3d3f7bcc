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
@click.option("--adopt", multiple=True, metavar="UUID:APP:FD",
              help="A listening socket that pcocc run bound for an app.")
def mds_serve(adopt: tuple[str, ...]) -> None:
    """Run your metadata service (started on demand by 'pcocc run')."""
    from pcocc.ctr.mds import parse_adopt
    from pcocc.ctr.mds_server import serve
    from pcocc.errors import UsageError

    sockets = []
    for word in adopt:
        name, _, fd = word.rpartition(":")
        try:
            [(uuid, app)] = parse_adopt(name)
            sockets.append((uuid, app, int(fd)))
        except ValueError:
            raise UsageError(f"--adopt '{word}': expected UUID:APP:FD") from None
    exit_with(serve(sockets))
