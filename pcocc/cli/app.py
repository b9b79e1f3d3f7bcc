"""The click command group of ``pcocc``: options, logging set-up, and the lazy group that
imports the commands of :mod:`pcocc.cli.commands` on first use.

Kept apart from :mod:`pcocc.cli.main` so that ``pcocc --version`` answers without importing
click at all.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Collection, Mapping
from typing import Any

import click

from pcocc import __version__
from pcocc.cli.commands import COMMANDS, HIDDEN
from pcocc.cli.session import Session, setup_logging


class LazyGroup(click.Group):
    """A click group whose commands of ``lazy`` (``name -> (module:attribute, help)``) are
    imported on first use; commands added the usual way come first in ``--help``.

    A module of the table that cannot be imported is a broken installation: the import
    error propagates (pcocc reports an internal error) instead of hiding the command.
    """

    def __init__(self, *args: Any, lazy: Mapping[str, tuple[str, str]],
                 hidden: Collection[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy
        self.hidden = hidden

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in self.lazy if n not in self.hidden)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.commands or name not in self.lazy:
            return super().get_command(ctx, name)
        module, _, attr = self.lazy[name][0].partition(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The help of lazy commands comes from their table: --help imports none of them.
        rows = [(n, self.commands[n].get_short_help_str(60)) for n in self.commands
                if not self.commands[n].hidden]
        rows += [(n, help_) for n, (_, help_) in self.lazy.items() if n not in self.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    hidden=HIDDEN,
    context_settings={"help_option_names": ["-h", "--help"]},
)
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
@click.option("--insecure-options", metavar="LIST", envvar="PCOCC_INSECURE_OPTIONS",
              multiple=True, help="Security checks to disable (comma-separated): none, http, "
              "image, tls, pubkey, capabilities, paths, seccomp, all-fetch, all-run, all "
              "(env PCOCC_INSECURE_OPTIONS; see 'pcocc help trust').")
@click.option("--insecure-skip-verify", is_flag=True,
              help="Same as --insecure-options=image.")
@click.option("--trust-keys-from-https", is_flag=True, envvar="PCOCC_TRUST_KEYS_FROM_HTTPS",
              help="Trust keys downloaded over verified HTTPS without review.")
@click.option("--dir", "data_dir", metavar="DIR", envvar="PCOCC_DIR", default=None,
              help="Where the user trust store and fetch records live "
                   "[default: the user configuration directory] (env PCOCC_DIR).")
@click.pass_context
def cli(
    ctx: click.Context,
    debug: bool,
    verbose: int,
    quiet: bool,
    system_config: str,
    user_config: str | None,
    insecure_options: tuple[str, ...],
    insecure_skip_verify: bool,
    trust_keys_from_https: bool,
    data_dir: str | None,
) -> None:
    """pcocc: virtual clusters of VMs and containers inside Slurm jobs."""
    setup_logging(debug, verbose, quiet)
    user_dir = user_config or os.path.join(os.path.expanduser("~"), ".pcocc")
    ctx.obj = Session(
        system_dir=system_config,
        user_dir=user_dir,
        debug=debug,
        quiet=quiet,
        verbose=verbose,
        security_args=(
            (*insecure_options, *(("image",) if insecure_skip_verify else ())),
            trust_keys_from_https,
            data_dir or "",
        ),
    )
