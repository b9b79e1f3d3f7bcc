"""The per-invocation session: global options, and the configuration loaded on first use."""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from pcocc.config import Config
    from pcocc.trust.settings import Security


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
            click.echo(f"pcocc: {message}", err=True)

    def say(self, message: str) -> None:
        """One line on stderr that matters even with --quiet (how a run ended)."""
        click.echo(f"pcocc: {message}", err=True)

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


pass_session = click.make_pass_decorator(Session)


def exit_with(status: int) -> None:
    """End the current command with ``status`` (the exit status of something it ran).

    0 returns normally; ``pcocc.cli.main.run_cli`` passes any other status on as pcocc's.
    """
    if status:
        click.get_current_context().exit(status)
