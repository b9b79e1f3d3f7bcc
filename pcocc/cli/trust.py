"""``pcocc trust``: trust a key for an image-name prefix (or root), list and forget keys."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from pcocc.cli.context import Session, pass_session


class _TrustGroup(click.Group):
    """``pcocc trust [OPTIONS] [KEY...]`` adds keys; ``list`` and ``rm`` are subcommands.
    Anything that is not a subcommand name goes to the hidden ``add`` command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["add", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_TrustGroup)
def trust() -> None:
    """Trust OpenPGP keys to sign images of a name prefix (or every image with --root).

    \b
    pcocc trust --prefix example.org/app [KEY-FILE|URL ...]
    pcocc trust --root KEY-FILE|URL ...
    pcocc trust list
    pcocc trust rm FINGERPRINT

    Without a key, the keys of the prefix are found by meta discovery
    (https://PREFIX?ac-discovery=1). The fingerprint is shown and must be confirmed, unless
    --skip-fingerprint-review, or the key came over verified HTTPS with the global option
    --trust-keys-from-https.
    """


@trust.command("add", hidden=True)
@click.option("--prefix", metavar="PREFIX", help="Image-name prefix the keys may sign.")
@click.option("--root", is_flag=True, help="Trust the keys for every image name.")
@click.option("--skip-fingerprint-review", is_flag=True,
              help="Store the keys without asking to confirm their fingerprints.")
@click.argument("keys", nargs=-1, metavar="[KEY-FILE|URL ...]")
@pass_session
def add(session: Session, prefix: str | None, root: bool, skip_fingerprint_review: bool,
        keys: tuple[str, ...]) -> None:
    from pcocc.errors import UsageError
    from pcocc.trust import keys as trust_keys
    from pcocc.trust.prefix import check_name

    if root == (prefix is not None):
        raise UsageError("give either --prefix PREFIX or --root",
                         hint="see 'pcocc trust --help'")
    if prefix is not None:
        check_name(prefix, what="prefix")
    store = _store(session)
    security = session.security
    review = None if skip_fingerprint_review else _ask
    with trust_keys.open_sources(list(keys), prefix, security, session.notify) as sources:
        for source in sources:
            stored = trust_keys.trust_keys(store, source, prefix, security, review)
            where = f'prefix "{prefix}"' if prefix else "every image (root)"
            for path in stored:
                click.echo(f'Added key {path.name} for {where} at "{path}"')
            if not stored:
                click.echo(f'Not trusting "{source.origin}".')


def _ask(source: Any, key: Any) -> bool:
    from pcocc.errors import UsageError

    click.echo(f'Key: "{source.origin}"')
    click.echo(f"GPG key fingerprint is: {key.spaced}")
    for uid in key.uids:
        click.echo(f"  {uid}")
    if not sys.stdin.isatty():
        raise UsageError("the fingerprint needs a review but stdin is not a terminal",
                         hint="check the fingerprint and use --skip-fingerprint-review")
    answer = click.prompt("Are you sure you want to trust this key (yes/no)?",
                          default="no", show_default=False)
    return answer.strip().lower() in ("yes", "y")


@trust.command("list")
@pass_session
def list_(session: Session) -> None:
    """List trusted keys: scope (system or user), prefix (or root) and fingerprint."""
    from pcocc.cli.output import print_table

    rows = [(e.scope, e.prefix or "(root)", e.fingerprint, e.path)
            for e in _store(session).entries()]
    print_table(("SCOPE", "PREFIX", "FINGERPRINT", "FILE"), rows)


@trust.command("rm")
@click.argument("fingerprint")
@pass_session
def rm(session: Session, fingerprint: str) -> None:
    """Stop trusting the key FINGERPRINT (from the user trust directory)."""
    for e in _store(session).remove(fingerprint):
        click.echo(f'Removed key {e.fingerprint} for {e.prefix or "(root)"} ("{e.path}")')


def _store(session: Session):  # noqa: ANN202
    from pcocc.trust.store import TrustStore

    return TrustStore(session.security.trust_dir,
                      Path(session.system_dir) / "trustedkeys")
