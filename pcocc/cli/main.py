"""Entry point of the ``pcocc`` command.

Command groups live in their own modules and are imported only when used (the table is
:mod:`pcocc.cli.commands`), so that ``pcocc --help`` stays fast; the click group itself lives
in :mod:`pcocc.cli.app`, imported by :func:`run_cli` only, so that ``pcocc --version``, a
warm ``pcocc run`` (:mod:`pcocc.cli.fastrun`), ``pcocc image fetch`` and ``image import``
(:mod:`pcocc.cli.fastfetch`, :mod:`pcocc.cli.fastimport`) do not even import click. This is
the only place that turns errors into messages and exit statuses (0 ok, 1 operation failed,
2 usage or configuration error, 130 interrupted).
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
    if "run" in argv and os.environ.get("PCOCC_RUN_PLANS") != "0":
        # a plan exists only for a command line that fast_run ran
        status = run_planned(argv)
        if status is not None:
            os._exit(status)  # nothing buffered: the plan's run writes with os.write
    finish(run_cli(argv))


def run_planned(argv: list[str]) -> int | None:
    """A warm ``pcocc run`` from its saved plan (:mod:`pcocc.ctr.runplan`), before anything
    else is imported: its exit status, or None when ``argv`` has no valid plan."""
    from pcocc.ctr.runplan import load

    try:
        plan = load(argv)
        if plan is None:
            return None
        from pcocc.ctr.planexec import execute

        return execute(plan)
    except BaseException as err:  # noqa: BLE001 - reported as run_cli reports it
        return report(err, _debug_requested(argv))


def finish(status: int) -> None:
    """Exit with ``status``. After a ``pcocc run`` or a click-free ``image import``
    (:func:`pcocc.cli.fastrun.skip_exit_collection`), flush the standard streams, run the
    atexit handlers and ``os._exit``: the interpreter's teardown of every module and object
    (~10-30 ms) is spared. Every file of the pod is closed and its record written before,
    the runtime has ended; an import has committed and removed its staging directory."""
    fastrun = sys.modules.get("pcocc.cli.fastrun")
    threading = sys.modules.get("threading")
    if (fastrun is None or not fastrun.exit_collection_skipped()
            or (threading is not None and threading.active_count() > 1)):
        sys.exit(status)  # another thread still runs: the interpreter waits for it
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(status)


def run_cli(argv: list[str]) -> int:
    """Run ``argv``, the warm ``pcocc run`` without click (:mod:`pcocc.cli.fastrun`), and
    turn every error into a message and pcocc's exit status."""
    try:
        from pcocc.cli.fastrun import fast_run

        status = fast_run(argv)
        if status is None and "internal" in argv[:4]:
            from pcocc.cli.fastinternal import fast_internal

            status = fast_internal(argv)
        if status is None and argv[:1] == ["ssh"]:
            from pcocc.cli.fastssh import fast_ssh

            status = fast_ssh(argv)
        if status is None and "fetch" in argv:
            from pcocc.cli.fastfetch import fast_fetch

            status = fast_fetch(argv)
        if status is None and "import" in argv:
            from pcocc.cli.fastimport import fast_import

            status = fast_import(argv)
        if status is None and "save" in argv:
            from pcocc.cli.fastsave import fast_save

            status = fast_save(argv)
        return _run_click(argv) if status is None else status
    except BaseException as e:  # noqa: BLE001 - SystemExit goes on in report()
        return report(e, _debug_requested(argv))


def report(e: BaseException, debug: bool) -> int:
    """Say what ``e`` means to the user; the exit status (pcocc's convention). Exceptions
    that are not errors (SystemExit) go on."""
    from pcocc.errors import PcoccError

    try:
        raise e
    except PcoccError as e:
        if debug:
            import traceback

            traceback.print_exc()
        _err(f"pcocc: error: {e}")
        if e.hint:
            _err(f"hint: {e.hint}")
        return e.exit_status
    except KeyboardInterrupt:
        _err("pcocc: interrupted")
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
        _err(f"pcocc: internal error: {type(e).__name__}: {e}")
        _err("hint: run again with --debug for the traceback and report it")
        return 1


def _run_click(argv: list[str]) -> int:
    """The click group on ``argv``; click's own errors in pcocc's format."""
    import click

    from pcocc.cli.app import cli

    try:
        # Without standalone mode, click returns ctx.exit(N)'s status instead of raising.
        status = cli.main(args=argv, prog_name="pcocc", standalone_mode=False)
        return status if isinstance(status, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        _err("pcocc: interrupted")
        return 130
    except click.ClickException as e:
        # one line, and where to read the usage
        _err(f"pcocc: error: {e.format_message()}")
        if isinstance(e, click.UsageError):
            where = e.ctx.command_path if e.ctx is not None else "pcocc"
            _err(f"hint: see '{where} --help'")
            return 2
        return e.exit_code


def _err(line: str) -> None:
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    main()
