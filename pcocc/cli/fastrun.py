"""``pcocc run`` without click: the hot path of a container start.

A warm ``pcocc run IMAGE -- CMD`` (image in the cache, configuration cache valid) should cost
little more than the runtime itself, and importing click and the command table costs more
than the rest of the run. :func:`fast_run` recognises ``run`` with the common options before
click is imported and runs it directly; anything else it does not know for sure (another
command, ``--help``, ``-N``, ``--private-net``, a new option) returns None and goes through
click as usual. tests/unit/test_fastrun.py checks that both parsers give the same request.
Also home of the helpers of ``pcocc run`` that both paths share.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pcocc.ctr.pod import RunRequest
    from pcocc.ctr.pods import PodRecord, PodStore

APP_SEPARATOR = "---"


def split_apps(tokens: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``IMAGE [--] ARGS [--- IMAGE2 [--] ARGS]`` -> [(image, args), ...]."""
    from pcocc.errors import UsageError

    groups: list[list[str]] = [[]]
    for tok in tokens:
        if tok == APP_SEPARATOR:
            groups.append([])
        else:
            groups[-1].append(tok)
    apps = []
    for g in groups:
        if not g or g[0] == "--":
            raise UsageError(
                "an image is missing before '--' or around '---'",
                hint="pcocc run IMAGE [-- ARGS] [--- IMAGE2 [-- ARGS]]",
            )
        image, rest = g[0], g[1:]
        if rest and rest[0] == "--":
            rest = rest[1:]
        apps.append((image, rest))
    return apps


_exit_hook: list[bool] = []


def skip_exit_collection() -> None:
    """Spare ``pcocc run`` the interpreter's final garbage collection (~25 ms of its
    ~200 ms: every object of click and pcocc is traversed just before the process ends).

    At exit, the objects alive are frozen (:func:`gc.freeze`), so the last collection skips
    them; nothing else changes (the standard streams are still flushed, refcounts still free
    what they free). The pod's files and records are closed and written before.
    """
    if not _exit_hook:
        import atexit
        import gc

        atexit.register(gc.freeze)
        _exit_hook.append(True)


def exit_collection_skipped() -> bool:
    """Whether this process is a ``pcocc run`` that asked to skip the exit's work
    (:func:`pcocc.cli.main.finish` then ends it with ``os._exit``)."""
    return bool(_exit_hook)


#: global options of ``pcocc`` known here: option -> (parameter, takes a value)
_GLOBAL = {
    "--debug": ("debug", False),
    "-v": ("verbose", False),
    "--verbose": ("verbose", False),
    "-q": ("quiet", False),
    "--quiet": ("quiet", False),
    "--system-config": ("system_config", True),
    "--user-config": ("user_config", True),
}
#: options of ``pcocc run`` known here: option -> (parameter, takes a value, repeatable)
_RUN = {
    "--runtime": ("runtime", True, False),
    "--set-env": ("set_env", True, True),
    "--set-env-file": ("set_env_file", True, True),
    "--inherit-env": ("inherit_env", False, False),
    "--volume": ("volume", True, True),
    "--mount": ("mount", True, True),
    "-M": ("module", True, True),
    "--module": ("module", True, True),
    "--allow-host-loopback": ("allow_host_loopback", False, False),
    "-p": ("ports", True, True),
    "--port": ("ports", True, True),
    "--insecure-options": ("insecure_options", True, True),
    "-i": ("interactive", False, False),
    "--interactive": ("interactive", False, False),
    "--hostname": ("hostname", True, False),
    "--root": ("as_root", False, False),
    "--register-mds": ("register_mds", True, False),
    "--annotation": ("annotations", True, True),
}
#: values of click.BOOL (case and spaces aside); any other value is click's to refuse
_BOOL = {"1": True, "true": True, "t": True, "yes": True, "y": True, "on": True,
         "0": False, "false": False, "f": False, "no": False, "n": False, "off": False}


def _options(
    argv: list[str], i: int, known: dict[str, tuple[Any, ...]], params: dict[str, Any]
) -> int | None:
    """Read the options of ``known`` from ``argv[i:]`` into ``params``; the index of the
    first operand, or None at an option not known here."""
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("-") or tok == "-":
            return i
        name, eq, value = tok.partition("=")
        spec = known.get(name)
        if spec is None:
            return None  # --, --help, a short cluster (-iq), an option click must parse
        param, takes_value, *rest = spec
        if takes_value:
            if not eq:
                i += 1
                if i >= len(argv):
                    return None  # click says what is missing
                value = argv[i]
            if param == "register_mds":
                flag = _BOOL.get(value.strip().lower())
                if flag is None:
                    return None
                params[param] = flag
            elif rest and rest[0]:
                params[param] = (*params.get(param, ()), value)
            else:
                params[param] = value
        elif eq:
            return None
        elif param == "verbose":
            params[param] = params.get(param, 0) + 1
        else:
            params[param] = True
        i += 1
    return i


def parse(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(global options, run options)`` of a ``pcocc [GLOBAL] run [OPTS] IMAGE ...`` command
    line, with the names of the click parameters; None when click must parse it."""
    glob: dict[str, Any] = {}
    i = _options(argv, 0, _GLOBAL, glob)
    if i is None or i >= len(argv) or argv[i] != "run":
        return None
    run: dict[str, Any] = {}
    j = _options(argv, i + 1, _RUN, run)
    if j is None or j >= len(argv):
        return None
    run["cmdline"] = tuple(argv[j:])
    return glob, run


def build_request(run: dict[str, Any], run_side: tuple[str, ...] = ()) -> RunRequest:
    """The request of the ``pcocc run`` parameters ``run`` (click's names; -N/-n and
    --detach are the caller's), with ``run_side``, the run-side values of the global
    ``--insecure-options`` (:attr:`pcocc.trust.settings.Security.run_side`)."""
    from pcocc.ctr.launch import RunOptions
    from pcocc.ctr.pod import RunRequest

    private_net = run.get("private_net")
    opts = RunOptions(
        runtime=run.get("runtime"),
        set_env=run.get("set_env", ()),
        env_files=run.get("set_env_file", ()),
        inherit_env=run.get("inherit_env", False),
        volumes=run.get("volume", ()),
        mounts=run.get("mount", ()),
        modules=run.get("module", ()),
        private_net=private_net is not None,
        net_mode=private_net or "auto",
        allow_host_loopback=run.get("allow_host_loopback", False),
        ports=run.get("ports", ()),
        insecure=(*run_side, *run.get("insecure_options", ())),
        interactive=run.get("interactive", False),
        hostname=run.get("hostname"),
        as_root=run.get("as_root", False),
        register_mds=run.get("register_mds", True),
        annotations=run.get("annotations", ()),
    )
    return RunRequest(split_apps(run["cmdline"]), opts)


def may_be_remote(image: str) -> bool:
    """Whether ``image`` may name an image to fetch (a URL, host/app[:VERSION]), told
    without imports; :func:`pcocc.trust.prefix.fetchable` decides. Such a run goes
    through click (pcocc.cli.containers), which fetches."""
    return "/" in image and image[0] not in "/.~"


def fast_run(argv: list[str]) -> int | None:
    """Run ``argv`` if it is a one-node ``pcocc run`` this module parses; its exit status,
    or None to let click handle the command line."""
    parsed = parse(argv)
    if parsed is None:
        return None
    glob, run = parsed
    from pcocc import timing

    timing.mark("run: interpreter started, command line parsed")
    from pcocc.cli.session import click_free_session
    from pcocc.ctr.pod import run_request

    timing.mark("run: imported")

    session = click_free_session(glob)
    request = build_request(run, run_side=session.security.run_side)
    if any(may_be_remote(image) for image, _ in request.apps):
        return None
    config = session.config
    timing.mark("run: configuration loaded")
    skip_exit_collection()

    def save_plan(store: PodStore, rec: PodRecord) -> None:
        """The next identical run replays this one (:mod:`pcocc.ctr.runplan`)."""
        from pcocc.ctr.planwrite import save

        save(argv, request, config, store, rec)

    return run_request(request, config, session.notify, on_done=save_plan)
