"""Entry point of the ``pcocc`` command.

Command groups live in their own modules and are imported only when used, so that
``pcocc --help`` stays fast. This is the only place that turns errors into messages and exit
statuses (0 ok, 1 operation failed, 2 usage or configuration error, 130 interrupted).
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from pcocc import __version__
from pcocc.cli.context import Session

#: name -> (module:attribute, one-line help). Order is the order of ``pcocc --help``.
COMMANDS: dict[str, tuple[str, str]] = {
    "alloc": ("pcocc.cli.cluster:alloc", "Run a virtual cluster interactively"),
    "batch": ("pcocc.cli.cluster:batch", "Run a virtual cluster in a batch job"),
    "ps": ("pcocc.cli.cluster:ps", "List your running virtual clusters"),
    "ssh": ("pcocc.cli.access:ssh", "Connect to a VM with ssh"),
    "scp": ("pcocc.cli.access:scp", "Copy files to and from VMs with scp"),
    "nc": ("pcocc.cli.access:nc", "Connect to a TCP port of a VM"),
    "console": ("pcocc.cli.access:console", "Attach to the serial console of a VM"),
    "reset": ("pcocc.cli.access:reset", "Reset a VM"),
    "monitor-cmd": ("pcocc.cli.access:monitor_cmd", "Send a QMP or HMP command to a VM"),
    "run": ("pcocc.cli.containers:run", "Run container images on the nodes of an allocation"),
    "pod": ("pcocc.cli.containers:pod", "List, inspect, enter and collect container pods"),
    "image": ("pcocc.cli.image:image", "List and manage VM and container images"),
    "template": ("pcocc.cli.template:template", "List and show VM templates"),
    "internal": ("pcocc.cli.internal:internal", "Commands run by pcocc itself on the nodes"),
}
HIDDEN = {"internal"}

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


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("PCOCC_DEBUG") == "1"


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with pcocc's exit status convention."""
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.exit(run_cli(argv))


def run_cli(argv: list[str]) -> int:
    from pcocc.errors import PcoccError

    debug = _debug_requested(argv)
    try:
        # Without standalone mode, click returns ctx.exit(N)'s status instead of raising.
        status = cli.main(args=argv, prog_name="pcocc", standalone_mode=False)
        return status if isinstance(status, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("pcocc: interrupted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return 2 if isinstance(e, click.UsageError) else e.exit_code
    except PcoccError as e:
        if debug:
            import traceback

            traceback.print_exc()
        click.echo(f"pcocc: error: {e}", err=True)
        if e.hint:
            click.echo(f"hint: {e.hint}", err=True)
        return e.exit_status
    except KeyboardInterrupt:
        click.echo("pcocc: interrupted", err=True)
        return 130
    except BrokenPipeError:
        # Output piped into head & co: not an error worth a message.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        return 1
    except Exception as e:  # a bug: say so plainly, trace only on request
        if debug:
            raise
        click.echo(f"pcocc: internal error: {type(e).__name__}: {e}", err=True)
        click.echo("hint: run again with --debug for the traceback and report it", err=True)
        return 1


if __name__ == "__main__":
    main()
