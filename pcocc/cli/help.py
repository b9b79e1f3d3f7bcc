"""``pcocc help [COMMAND [SUBCOMMAND...]]``: the manual page of a command.

The page is rendered from the running code (:mod:`pcocc.cli.manpages`), so it always
matches it, and shown with ``man`` when it is installed (its pager, MANPAGER/PAGER
respected); without ``man``, the command's own help text is printed instead.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click


@click.command("help")
@click.argument("words", metavar="[COMMAND [SUBCOMMAND]...]", nargs=-1)
def help_(words: tuple[str, ...]) -> None:
    """Show the manual page of pcocc or of one of its commands.

    \b
    Examples:
      pcocc help
      pcocc help alloc
      pcocc help image import
    """
    from pcocc.cli import manpages

    page = manpages.find_page(words)
    if shutil.which("man") is None:
        click.echo(page.command.get_help(page.ctx))
        return
    _show_with_man(page.name, manpages.render(page))


def _show_with_man(name: str, roff: str) -> None:
    from pcocc import proc
    from pcocc.errors import ToolError

    with tempfile.TemporaryDirectory(prefix="pcocc-help-") as d:
        path = Path(d) / f"{name}.1"
        path.write_text(roff)
        # In our session, on our terminal: the pager reads the keyboard.
        child = proc.spawn(["man", "-l", path], stdin=None, stdout=None, stderr=None,
                           new_session=False)
        try:
            status = child.wait()
        except BaseException:
            proc.stop(child, timeout_s=1)
            raise
    if status not in (0, -13):  # -13: the reader closed the pipe (SIGPIPE)
        raise ToolError(f"man {proc.ended(status)} while showing {name}(1)",
                        argv=["man", "-l", str(path)], returncode=status, stderr="")
