"""``pcocc internal launcher`` and ``internal run`` without click.

They are the launcher and the node processes of a virtual cluster: each is a Python start
on the way from ``pcocc alloc`` to the first VM, and click with pcocc's command table costs
it a few tens of milliseconds (issue 18). Their command lines are pcocc's own
(:func:`pcocc.cluster.jobs.launcher_argv`, the launcher's ``node_argv``): the log options,
then the command's few options. Any other word leaves the command line to click
(:func:`fast_internal` returns None), which parses it as before.
"""

from __future__ import annotations

#: the global options pcocc passes on to its own processes (Session.log_args)
_LOG = ("--debug", "-q", "-v")
#: per command: the options that take a value (-> parameter) and the flags
_VALUES = {
    "run": {"--rank": "rank", "--job": "job_id", "--restore": "restore"},
    "launcher": {"-E": "command", "--command": "command"},
}
_FLAGS = {"run": (), "launcher": ("--hold",)}


def parse(argv: list[str]) -> tuple[tuple[bool, int, bool], str, dict[str, object]] | None:
    """``((debug, verbose, quiet), command, params)`` of ``[LOG...] internal run|launcher
    [OPTS]``, or None when click must parse ``argv``."""
    i, debug, verbose, quiet = 0, False, 0, False
    while i < len(argv) and argv[i] in _LOG:
        debug = debug or argv[i] == "--debug"
        quiet = quiet or argv[i] == "-q"
        verbose += argv[i] == "-v"
        i += 1
    if argv[i:i + 1] != ["internal"] or len(argv) < i + 2 or argv[i + 1] not in _VALUES:
        return None
    command, params, j = argv[i + 1], {}, i + 2
    while j < len(argv):
        word = argv[j]
        if word in _FLAGS[command]:
            params[word.lstrip("-")] = True
            j += 1
            continue
        name = _VALUES[command].get(word)
        if name is None or j + 1 >= len(argv) or name in params:
            return None
        params[name] = argv[j + 1]
        j += 2
    rank = params.get("rank")
    if rank is not None:
        if not str(rank).isdigit():
            return None  # click says what is wrong with it
        params["rank"] = int(str(rank))
    return (debug, verbose, quiet), command, params


def fast_internal(argv: list[str]) -> int | None:
    """Run ``argv`` if :func:`parse` reads it; its exit status, else None."""
    parsed = parse(argv)
    if parsed is None:
        return None
    (debug, verbose, quiet), command, params = parsed
    from pcocc.cli.session import Session, config_dirs, setup_logging

    setup_logging(debug, verbose, quiet)
    system_dir, user_dir = config_dirs(None, None)
    session = Session(system_dir=system_dir, user_dir=user_dir, debug=debug, quiet=quiet,
                      verbose=verbose)
    if command == "run":
        from pcocc.cluster.noderun import run_node

        return run_node(session.config, params.get("rank"), params.get("job_id"),
                        params.get("restore"))
    from pcocc.cluster.jobs import run_launcher

    return run_launcher(session.config, params.get("command"), report=session.notify,
                        log_args=session.log_args, hold=bool(params.get("hold")))
