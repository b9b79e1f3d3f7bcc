"""``pcocc image cache``: list, delete and clean the container cache. Parse, call, print."""

from __future__ import annotations

import datetime
import importlib
import json
from collections.abc import Callable
from typing import Any

import click

from pcocc.cli.context import Session, pass_session
from pcocc.errors import NotFound

#: Where the store offers, lazily imported: "module:function".
#: resolve(config, image_uri) -> manifest digest of a container image in a repository.
RESOLVER = "pcocc.repo.store:resolve_container_digest"
#: live(config) -> set of the manifest digests of every container image in every repository.
LIVE_DIGESTS = "pcocc.repo.store:live_container_digests"


def _hook(spec: str) -> Callable[..., Any] | None:
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def _cache(session: Session):
    from pcocc.repo.cache import ContainerCache

    return ContainerCache.from_config(session.config.cache)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@click.group("cache")
def cache() -> None:
    """List and clean the cache of unpacked container images.

    Never clean the cache while containers that use it are running.
    """


@cache.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_session
def list_(session: Session, as_json: bool) -> None:
    """List cached images, least recently used first."""
    entries = _cache(session).list()
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
                    }
                    for e in entries
                ],
                indent=1,
            )
        )
        return
    rows = [("IMAGE DIGEST", "MODE", "SIZE", "LAST USED")]
    rows += [(e.digest[:19], e.mode, _human(e.size_bytes), _when(e.last_used)) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


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
        resolver = _hook(RESOLVER)
        if resolver is None:
            raise NotFound(
                f"no cached image matches '{image}'",
                hint="give a digest shown by 'pcocc image cache list'",
            )
        digest = resolver(session.config, image)
    for e in c.delete(digest):
        click.echo(f"deleted {e.digest[:19]} ({e.mode}, {_human(e.size_bytes)})", err=True)


def _is_hex(text: str) -> bool:
    return len(text) >= 4 and all(ch in "0123456789abcdef" for ch in text)


@cache.command("gc")
@pass_session
def gc(session: Session) -> None:
    """Remove dangling data, entries of deleted images, and what exceeds the size limit."""
    live_fn = _hook(LIVE_DIGESTS)
    live = live_fn(session.config) if live_fn is not None else None
    report = _cache(session).gc(live_digests=live)
    click.echo(
        f"removed {len(report.removed_entries)} cached images ({_human(report.freed_bytes)}) "
        f"and {len(report.removed_tmp)} leftovers",
        err=True,
    )
