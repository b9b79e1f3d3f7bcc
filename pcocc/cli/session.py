"""The per-invocation session: global options, and the configuration loaded on first use.

Free of click, so that the hot path of ``pcocc run`` (:mod:`pcocc.cli.fastrun`) uses it too.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pcocc.config import Config
    from pcocc.trust.settings import Security


def _err_line(text: str) -> None:
    sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


@dataclass
class Session:
    system_dir: str
    user_dir: str
    debug: bool = False
    quiet: bool = False
    verbose: int = 0
    #: the global security options as given: (insecure values, trust-keys-from-https, dir);
    #: trust.yaml of the configuration directories fills what they leave out
    security_args: tuple[tuple[str, ...], bool, str] = ((), False, "")
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @functools.cached_property
    def config(self) -> Config:
        from pcocc.config import load_config

        return load_config(self.system_dir, self.user_dir)

    @functools.cached_property
    def security(self) -> Security:
        """The global --insecure-options & co, checked on first use (a bad value is a
        usage error of the command that needs them, not of every command)."""
        from pathlib import Path

        from pcocc.trust.settings import resolve

        values, from_https, data_dir = self.security_args
        return resolve(Path(self.system_dir), Path(self.user_dir), values, from_https,
                       data_dir or None)

    def notify(self, message: str) -> None:
        """Tell the user, in one line on stderr, what a long operation is doing (not with
        --quiet): the ``notify`` callback that library functions take."""
        if not self.quiet:
            _err_line(f"pcocc: {message}")

    def say(self, message: str) -> None:
        """One line on stderr that matters even with --quiet (how a run ended)."""
        _err_line(f"pcocc: {message}")

    @property
    def log_args(self) -> list[str]:
        """The global options that set logging, to pass them on to pcocc's own children
        (the tasks of a multi-node run, the node processes of a cluster)."""
        if self.debug:
            return ["--debug"]
        if self.quiet:
            return ["-q"]
        return ["-v"] * self.verbose

    @property
    def show_progress(self) -> bool:
        """Progress bars only on a terminal, never with --quiet."""
        return not self.quiet and sys.stderr.isatty()


def config_dirs(system: str | None, user: str | None) -> tuple[str, str]:
    """The system and user configuration directories of the click-free paths: the
    options, else the environment, else the defaults (as the click group's options)."""
    import os

    return (system or os.environ.get("PCOCC_SYSTEM_CONF_DIR") or "/etc/pcocc",
            user or os.environ.get("PCOCC_USER_CONF_DIR")
            or os.path.join(os.path.expanduser("~"), ".pcocc"))


def setup_logging(debug: bool, verbose: int, quiet: bool) -> None:
    """Send pcocc's log records to stderr at the level of the global options."""
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


def click_free_session(glob: dict[str, Any], security_args: tuple[tuple[str, ...], bool, str]
                       = ((), False, "")) -> Session:
    """The session of the global options ``glob`` as a click-free path parsed them (the
    click parameters' names: debug, verbose, quiet, system_config, user_config), with
    logging set up as the click group does."""
    debug, verbose, quiet = (glob.get("debug", False), glob.get("verbose", 0),
                             glob.get("quiet", False))
    setup_logging(debug, verbose, quiet)
    system_dir, user_dir = config_dirs(glob.get("system_config"), glob.get("user_config"))
    return Session(system_dir=system_dir, user_dir=user_dir, debug=debug, quiet=quiet,
                   verbose=verbose, security_args=security_args)
