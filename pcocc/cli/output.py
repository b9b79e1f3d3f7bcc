"""How the CLI prints: tables, sizes and dates (the one place that formats them)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import click


def format_table(
    header: Sequence[str] | None, rows: Sequence[Sequence[object]], *, rule: bool = False
) -> str:
    """Left-aligned columns separated by two spaces, without trailing blanks.

    :param header: the first line, or None for none (``--no-legend``)
    :param rule: underline the header with dashes
    :return: the lines joined, "" when there is neither a header nor a row
    """
    lines = [[str(c) for c in r] for r in ([header] if header is not None else []) + list(rows)]
    if not lines:
        return ""
    if header is not None and rule:
        lines.insert(1, ["-" * len(h) for h in header])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in lines)


def print_table(
    header: Sequence[str] | None, rows: Sequence[Sequence[object]], *, rule: bool = False
) -> None:
    """Print :func:`format_table` in one write; nothing at all for an empty table."""
    text = format_table(header, rows, rule=rule)
    if text:
        click.echo(text)


def human_size(n: int) -> str:
    """``1536`` -> ``1.5 KiB`` (bytes stay whole: ``12 B``)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def local_time(ts: float | None) -> str:
    """A timestamp as local ``YYYY-MM-DD HH:MM:SS``; ``-`` when there is none."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"
