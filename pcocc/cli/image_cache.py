"""``pcocc image cache``: list, delete and clean the container cache. Parse, call, print."""

from __future__ import annotations

import json

import click

from pcocc.cli.context import Session, pass_session
from pcocc.cli.output import human_size, local_time, print_table
from pcocc.errors import NotFound


def _cache(session: Session):
    from pcocc.repo.cache import ContainerCache

    return ContainerCache.from_config(session.config.cache)


@click.group("cache")
def cache() -> None:
    """List and clean the cache of unpacked container images.

    Never clean the cache while containers that use it are running.
    """


@cache.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_session
def list_(session: Session, as_json: bool) -> None:
    """List cached images, least recently used first, with the images they hold."""
    from pcocc.repo.cachekeys import container_refs_by_digest

    entries = _cache(session).list()
    refs = container_refs_by_digest(session.config) if entries else {}
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "digest": e.digest,
                        "mode": e.mode,
                        "size_bytes": e.size_bytes,
                        "last_used": e.last_used,
                        "path": str(e.payload),
                        "images": refs.get(e.digest, []),
                    }
                    for e in entries
                ],
                indent=1,
            )
        )
        return
    print_table(("IMAGE DIGEST", "MODE", "SIZE", "LAST USED", "IMAGES"),
                [(e.digest[:19], e.mode, human_size(e.size_bytes), local_time(e.last_used),
                  ", ".join(refs.get(e.digest, [])) or "(deleted)")
                 for e in entries])


@cache.command("delete")
@click.argument("image")
@pass_session
def delete(session: Session, image: str) -> None:
    """Delete every cached copy of IMAGE ([REPO:]NAME[@REV], or a digest prefix)."""
    from pcocc.repo.cache import resolve_prefix

    c = _cache(session)
    digest = None
    if image.startswith("sha256:") or _is_hex(image):
        try:
            digest = resolve_prefix(c, image)
        except NotFound:
            digest = None
    if digest is None:
        from pcocc.repo.cachekeys import resolve_container_digest

        digest = resolve_container_digest(session.config, image)
    for e in c.delete(digest):
        click.echo(f"deleted {e.digest[:19]} ({e.mode}, {human_size(e.size_bytes)})", err=True)


def _is_hex(text: str) -> bool:
    return len(text) >= 4 and all(ch in "0123456789abcdef" for ch in text)


@cache.command("gc")
@pass_session
def gc(session: Session) -> None:
    """Remove dangling data, entries of deleted images, and what exceeds the size limit."""
    from pcocc.repo.cachekeys import live_container_digests

    report = _cache(session).gc(live_digests=live_container_digests(session.config))
    click.echo(
        f"removed {len(report.removed_entries)} cached images ({human_size(report.freed_bytes)}) "
        f"and {len(report.removed_tmp)} leftovers",
        err=True,
    )
