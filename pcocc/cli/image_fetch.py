"""``pcocc image fetch``: download, verify and import an image (see pcocc.trust.fetch).

The same command without click, for a fast second fetch: :mod:`pcocc.cli.fastfetch`."""

from __future__ import annotations

from pathlib import Path

import click

from pcocc.cli.context import Session, pass_session
from pcocc.cli.fastfetch import run_fetch


@click.command("fetch")
@click.option("--signature", type=click.Path(dir_okay=False, path_type=Path),
              help="Local detached signature of the image (instead of URL.asc).")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="Discovery label (version, os, arch, ext); repeatable.")
@click.option("--no-store", is_flag=True, help="Download again even if fetched before.")
@click.option("--store-only", is_flag=True,
              help="Use only what was fetched before; never touch the network.")
@click.option("--full", is_flag=True, help="Print the full image ID.")
@click.option("--dest", metavar="[REPO:]NAME",
              help="Local image to create [default: the last component of the name].")
@click.argument("ref", metavar="NAME[:VERSION]|https://...|file://...|docker://...")
@pass_session
def fetch(session: Session, ref: str, signature: Path | None, labels: tuple[str, ...],
          no_store: bool, store_only: bool, full: bool, dest: str | None) -> None:
    """Fetch an image into the user repository, checking its signature.

    A name is found by meta discovery (https://NAME?ac-discovery=1); the signature is
    URL.asc (or --signature) and must be by a key trusted for the name ('pcocc trust').
    A second fetch downloads again only when the server says the image changed.
    """
    run_fetch(session, ref, signature, labels, no_store, store_only, full, dest)
