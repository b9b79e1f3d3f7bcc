"""``%{...}`` placeholders in configuration values.

Known at load time: ``%{env:VAR}``, ``%{user}``, ``%{homedir}``. Known only when a cluster runs:
``%{clusterdir}`` (the per-cluster work directory) and ``%{vm_rank}``; loading keeps them as
written and :func:`expand_runtime` fills them in. ``%%{`` writes a literal ``%{``.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Callable, Mapping
from typing import Any

from pcocc.errors import ConfigError

_PLACEHOLDER = re.compile(r"%%\{|%\{([^}]*)\}")
LOAD_TIME = ("user", "homedir", "env:VAR")
RUN_TIME = ("clusterdir", "vm_rank")
KNOWN = (*LOAD_TIME, *RUN_TIME)


class PlaceholderError(ValueError):
    """A placeholder that cannot be expanded; the loader adds file and key path."""


def user_name() -> str:
    """The account running pcocc (from the password database, not from $USER)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry, as in some containers
        return os.environ.get("USER") or str(os.getuid())


def home_dir() -> str:
    return os.environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir


def _substitute(value: str, lookup: Callable[[str], str | None]) -> str:
    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "%%{":
            return "%%{"  # kept; unescaped by the last expansion pass
        found = lookup(m.group(1))
        return m.group(0) if found is None else found

    return _PLACEHOLDER.sub(repl, value)


def _load_lookup(env: Mapping[str, str]) -> Callable[[str], str | None]:
    def lookup(name: str) -> str | None:
        if name == "user":
            return user_name()
        if name == "homedir":
            return home_dir()
        if name.startswith("env:"):
            var = name[4:]
            if var not in env:
                raise PlaceholderError(f"environment variable {var} in '%{{{name}}}' is not set")
            return env[var]
        if name in RUN_TIME:
            return None
        import difflib  # only for the hint of an error

        near = difflib.get_close_matches(name, [k for k in KNOWN if k != "env:VAR"], n=1)
        msg = f"unknown placeholder '%{{{name}}}'"
        if near:
            msg += f", did you mean '%{{{near[0]}}}'?"
        else:
            msg += " (known: " + ", ".join(f"%{{{k}}}" for k in KNOWN) + ")"
        raise PlaceholderError(msg)

    return lookup


def expand_load(value: str, env: Mapping[str, str] | None = None) -> str:
    """Expand the load-time placeholders of one string; keep the run-time ones.

    :raise PlaceholderError: unknown placeholder, or unset environment variable
    """
    return _substitute(value, _load_lookup(os.environ if env is None else env))


def expand_runtime(value: Any, *, clusterdir: str, vm_rank: int | None = None) -> Any:
    """Expand ``%{clusterdir}`` and ``%{vm_rank}`` in a string, or in every string of a
    list/dict (returned as a copy), and turn ``%%{`` into ``%{``.

    :raise ConfigError: ``%{vm_rank}`` used where no VM rank applies
    """
    if isinstance(value, dict):
        return {
            k: expand_runtime(v, clusterdir=clusterdir, vm_rank=vm_rank) for k, v in value.items()
        }
    if isinstance(value, list):
        return [expand_runtime(v, clusterdir=clusterdir, vm_rank=vm_rank) for v in value]
    if not isinstance(value, str):
        return value

    def lookup(name: str) -> str | None:
        if name == "clusterdir":
            return clusterdir
        if name == "vm_rank":
            if vm_rank is None:
                raise ConfigError(f"'%{{vm_rank}}' in '{value}' is only valid in per-VM settings")
            return str(vm_rank)
        return None

    return _substitute(value, lookup).replace("%%{", "%{")


def expand_tree(
    data: Any,
    on_error: Callable[[tuple[Any, ...], str], Exception],
    env: Mapping[str, str] | None = None,
    path: tuple[Any, ...] = (),
) -> Any:
    """Expand load-time placeholders in every string value (not keys) of ``data``, in place
    for containers. ``on_error(path, message)`` builds the exception to raise."""
    if isinstance(data, dict):
        for k in data:
            data[k] = expand_tree(data[k], on_error, env, (*path, k))
        return data
    if isinstance(data, list):
        for i, v in enumerate(data):
            data[i] = expand_tree(v, on_error, env, (*path, i))
        return data
    if isinstance(data, str) and "%" in data:
        try:
            return expand_load(data, env)
        except PlaceholderError as err:
            raise on_error(path, str(err)) from None
    return data
