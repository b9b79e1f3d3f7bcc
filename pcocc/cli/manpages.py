"""Manual pages in roff, written from the click definitions of the ``pcocc`` commands.

One page per command and per group: ``pcocc(1)``, ``pcocc-alloc(1)``, ``pcocc-image(1)``,
``pcocc-image-import(1)``... Hidden commands and options get none. The pages are never
written by hand, so they cannot drift from the code:

- ``pcocc help [COMMAND...]`` renders the page of the running code on demand;
- the package build (``setup.py``) runs :func:`write_pages` so that ``man pcocc-alloc``
  works once the package is installed (``share/man/man1``);
- ``python -m pcocc.cli.manpages DIR`` writes them all into ``DIR``.

A command added to the command table (:mod:`pcocc.cli.commands`) gets its page with no
extra work. This module needs click and the command modules only (the build imports it).
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from pcocc import __version__

#: the manual section of every page
SECTION = "1"


@dataclass(frozen=True)
class Page:
    """A command and where it sits: ``path`` is ``("pcocc", "image", "import")``."""

    path: tuple[str, ...]
    command: click.Command
    ctx: click.Context

    @property
    def name(self) -> str:
        """The page name: ``pcocc-image-import``."""
        return "-".join(self.path)

    @property
    def subcommands(self) -> list[str]:
        if not isinstance(self.command, click.Group):
            return []
        return [n for n in self.command.list_commands(self.ctx)
                if not _is_hidden(self.command.get_command(self.ctx, n))]


def _is_hidden(cmd: click.Command | None) -> bool:
    return cmd is None or cmd.hidden


def _root() -> click.Command:
    from pcocc.cli.app import cli

    return cli


def find_page(words: Sequence[str], root: click.Command | None = None) -> Page:
    """The page of ``pcocc WORDS...`` (``["image", "import"]``); a ``click.UsageError``
    naming the first unknown word otherwise."""
    cmd = root or _root()
    ctx = click.Context(cmd, info_name="pcocc", **cmd.context_settings)
    path = ["pcocc"]
    for word in words:
        sub = cmd.get_command(ctx, word) if isinstance(cmd, click.Group) else None
        if _is_hidden(sub):
            where = " ".join(path)
            if not isinstance(cmd, click.Group):
                raise click.UsageError(f"'{where}' has no subcommands (got '{word}')")
            raise click.UsageError(f"'{where}' has no command '{word}'")
        assert sub is not None
        cmd = sub
        ctx = click.Context(cmd, info_name=word, parent=ctx, **cmd.context_settings)
        path.append(word)
    return Page(tuple(path), cmd, ctx)


def all_pages(root: click.Command | None = None) -> Iterator[Page]:
    """Every visible command and group, depth first, ``pcocc`` itself first."""
    stack = [find_page([], root)]
    while stack:
        page = stack.pop()
        yield page
        subs = [find_page([*page.path[1:], n], root) for n in page.subcommands]
        stack.extend(reversed(subs))


# --- roff ---------------------------------------------------------------------------------


def escape(text: str) -> str:
    """Text safe inside a roff line: backslashes and hyphens escaped, and a leading ``.``
    or ``'`` (a request) neutralised."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _paragraphs(help_text: str) -> list[tuple[bool, str]]:
    """Click help text as ``(verbatim, text)`` paragraphs: a paragraph whose first line is
    ``\\b`` keeps its line breaks (click's convention); text after ``\\f`` is not help."""
    text = inspect.cleandoc(help_text.split("\f", 1)[0])
    out = []
    for para in text.split("\n\n"):
        if not para.strip():
            continue
        if para.startswith("\b\n"):
            out.append((True, para[2:]))
        else:
            out.append((False, " ".join(line.strip() for line in para.splitlines())))
    return out


def _block(lines: list[str], help_text: str) -> None:
    for verbatim, para in _paragraphs(help_text):
        if verbatim:
            lines += [".PP", ".nf", *(escape(line) for line in para.splitlines()), ".fi"]
        else:
            lines += [".PP", escape(para)]


def _date() -> str:
    """The page date: from SOURCE_DATE_EPOCH (reproducible builds), else none."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    return time.strftime("%Y-%m-%d", time.gmtime(int(epoch))) if epoch.isdigit() else ""


def render(page: Page) -> str:
    """The roff source of one page."""
    cmd, ctx = page.command, page.ctx
    title = page.name.upper()
    lines = [
        f'.TH "{escape(title)}" "{SECTION}" "{_date()}" "pcocc {escape(__version__)}" '
        '"pcocc manual"',
        ".SH NAME",
        f"{escape(page.name)} \\- {escape(cmd.get_short_help_str(200) or page.name)}",
        ".SH SYNOPSIS",
        ".B " + escape(" ".join(page.path)),
    ]
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    if usage:
        lines.append(escape(usage))
    if cmd.help:
        lines.append(".SH DESCRIPTION")
        _block(lines, cmd.help)
    options = [rec for p in cmd.get_params(ctx)
               if isinstance(p, click.Option) and (rec := p.get_help_record(ctx))]
    if options:
        lines.append(".SH OPTIONS")
        for opts, help_text in options:
            lines += [".TP", ".B " + escape(opts)]
            lines.append(escape(" ".join(help_text.split())) if help_text else "")
    subs = page.subcommands
    if subs:
        lines.append(".SH COMMANDS")
        assert isinstance(cmd, click.Group)
        for name in subs:
            sub = cmd.get_command(ctx, name)
            assert sub is not None
            lines += [".TP", ".B " + escape(name),
                      escape(sub.get_short_help_str(200)) + f" See \\fB{escape(page.name)}"
                      f"\\-{escape(name)}\\fR({SECTION})."]
    lines.append(".SH SEE ALSO")
    see = [f"{'-'.join(page.path[:i])}({SECTION})" for i in range(1, len(page.path))]
    see += [f"{page.name}-{name}({SECTION})" for name in subs]
    lines.append(", ".join(f"\\fB{escape(s[:-3])}\\fR{s[-3:]}" for s in see)
                 or "The pcocc documentation (docs/ in its sources).")
    if page.path == ("pcocc",):
        lines += [".PP", "Run \\fBpcocc help\\fR \\fICOMMAND\\fR for the page of a command."]
    return "\n".join(lines) + "\n"


def write_pages(out_dir: Path, root: click.Command | None = None) -> list[Path]:
    """Write every page as ``out_dir/NAME.1``; return the files written (sorted)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for page in all_pages(root):
        path = out_dir / f"{page.name}.{SECTION}"
        path.write_text(render(page))
        written.append(path)
    return sorted(written)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m pcocc.cli.manpages OUTPUT_DIR", file=sys.stderr)
        return 2
    for path in write_pages(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
