"""The click command group of ``pcocc``: options, logging set-up and the lazy command table.

Kept apart from :mod:`pcocc.cli.main` so that ``pcocc --version`` answers without importing
click at all.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from pcocc import __version__
from pcocc.cli.context import Session
from pcocc.cli.main import COMMANDS, HIDDEN


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n in COMMANDS if n not in HIDDEN]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = COMMANDS.get(name)
        if entry is None:
            return None
        module, _, attr = entry[0].partition(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name == module:
                return _not_yet(name, entry[1])
            raise
        return getattr(mod, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Use the table above so that --help imports nothing.
        rows = [(n, COMMANDS[n][1]) for n in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _not_yet(name: str, help_: str) -> click.Command:
    @click.command(name, help=help_, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cmd(args: tuple[str, ...]) -> None:
        from pcocc.errors import PcoccError

        raise PcoccError(f"'pcocc {name}' is not available in this version")

    return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="pcocc")
@click.option("--debug", is_flag=True, help="Show debug logs and tracebacks.")
@click.option("-v", "--verbose", count=True, help="More messages (repeat for more).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.option(
    "--system-config",
    metavar="DIR",
    envvar="PCOCC_SYSTEM_CONF_DIR",
    default="/etc/pcocc",
    show_default=True,
    help="System configuration directory (env PCOCC_SYSTEM_CONF_DIR).",
)
@click.option(
    "--user-config",
    metavar="DIR",
    envvar="PCOCC_USER_CONF_DIR",
    default=None,
    help="User configuration directory [default: ~/.pcocc] (env PCOCC_USER_CONF_DIR).",
)
@click.pass_context
def cli(
    ctx: click.Context,
    debug: bool,
    verbose: int,
    quiet: bool,
    system_config: str,
    user_config: str | None,
) -> None:
    """pcocc: virtual clusters of VMs and containers inside Slurm jobs."""
    _setup_logging(debug, verbose, quiet)
    ctx.obj = Session(
        system_dir=system_config,
        user_dir=user_config or os.path.join(os.path.expanduser("~"), ".pcocc"),
        debug=debug,
        quiet=quiet,
    )


def _setup_logging(debug: bool, verbose: int, quiet: bool) -> None:
    # Imported here: --help and --version never get this far and need no logging.
    import logging

    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif debug or verbose >= 2:
        level = logging.DEBUG
    elif verbose:
        level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pcocc: %(levelname)s: %(message)s"))
    root = logging.getLogger("pcocc")
    root.handlers[:] = [handler]
    root.setLevel(level)
