"""Entry point of the ``pcocc`` command.

Command groups live in their own modules and are imported only when used (the table is
:mod:`pcocc.cli.commands`), so that ``pcocc --help`` stays fast; the click group itself lives
in :mod:`pcocc.cli.app`, imported by :func:`run_cli` only, so that ``pcocc --version`` does
not even import click. This is the only place that turns errors into messages and exit
statuses (0 ok, 1 operation failed, 2 usage or configuration error, 130 interrupted).
"""

from __future__ import annotations

import os
import sys

from pcocc import __version__


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("PCOCC_DEBUG") == "1"


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with pcocc's exit status convention."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:
        # click's version option prints the same line; this answers without importing click.
        sys.stdout.write(f"pcocc, version {__version__}\n")
        sys.exit(0)
    sys.exit(run_cli(argv))


def run_cli(argv: list[str]) -> int:
    import click

    from pcocc.cli.app import cli
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
        # click's own errors in pcocc's format: one line, and where to read the usage
        click.echo(f"pcocc: error: {e.format_message()}", err=True)
        if isinstance(e, click.UsageError):
            where = e.ctx.command_path if e.ctx is not None else "pcocc"
            click.echo(f"hint: see '{where} --help'", err=True)
            return 2
        return e.exit_code
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
