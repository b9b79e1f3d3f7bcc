"""Image names and trust prefixes (``example.com/app``), their on-disk escaping, and the
longest-prefix match that decides which keys may sign an image.

A name is lowercase ASCII: components of ``[a-z0-9]`` joined by one of ``-._~``, separated
by ``/``; the first component (a host name) may end with ``:PORT``. So no name is empty,
absolute, ``.`` or ``..``, and none holds a NUL or a newline.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from urllib.parse import quote, unquote

from pcocc.errors import UsageError

_WORD = r"[a-z0-9]+(?:[-._~][a-z0-9]+)*"
NAME_RE = re.compile(rf"^{_WORD}(?::[0-9]{{1,5}})?(?:/{_WORD})*$")
_HINT = ("a name is lowercase words of letters and digits joined by '-', '.', '_' or '~', "
         "separated by '/', e.g. example.com/tools/app (the host may end with :PORT)")


def check_name(name: str, *, what: str = "image name") -> str:
    """Return ``name`` if it is a valid image name or prefix, else a UsageError."""
    if not isinstance(name, str) or len(name) > 512 or not NAME_RE.match(name):
        raise UsageError(f"invalid {what} {name!r}", hint=_HINT)
    return name


def split_version(ref: str) -> tuple[str, str | None]:
    """``example.com/app:v1`` -> (``example.com/app``, ``v1``); a ``:PORT`` of the host is
    part of the name, not a version."""
    head, sep, tail = ref.rpartition(":")
    host_port = tail.isdigit() and "/" not in head and ("." in head or head == "localhost")
    if sep and "/" not in tail and not host_port:
        return check_name(head), _check_version(tail, ref)
    return check_name(ref), None


def _check_version(version: str, ref: str) -> str:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}$", version):
        raise UsageError(f"invalid version in {ref!r}",
                         hint="a version is letters, digits and . _ + ~ -")
    return version


def escape(prefix: str) -> str:
    """One directory name for a prefix (``example.com%2Fapp``): the reverse of
    :func:`unescape`, and never ``.``, ``..`` nor a path with a ``/``."""
    return quote(check_name(prefix, what="prefix"), safe="")


def unescape(dirname: str) -> str | None:
    """The prefix a directory name stands for, or None when it is not one we wrote."""
    prefix = unquote(dirname)
    if not NAME_RE.match(prefix) or quote(prefix, safe="") != dirname:
        return None
    return prefix


def covers(prefix: str, name: str) -> bool:
    """True when ``prefix`` is ``name`` or one of its parents by whole components
    (``example.com/app`` covers ``example.com/app/x``, not ``example.com/apple``)."""
    return name == prefix or name.startswith(prefix + "/")


def longest_match(prefixes: Iterable[str], name: str) -> str | None:
    """The longest of ``prefixes`` that covers ``name``, or None."""
    best = None
    for p in prefixes:
        if covers(p, name) and (best is None or len(p) > len(best)):
            best = p
    return best


def fetchable(ref: str) -> bool:
    """Whether ``ref``, when no repository holds it, is something ``pcocc image fetch``
    can get: an https://, http:// or file:// URL, or a valid image name whose first
    component is a host (``example.org/app[:VERSION]``, ``localhost:8443/app``). Cheap and
    offline: ``pcocc run`` asks it of every image."""
    if ref.startswith(("https://", "http://", "file://")):
        return True
    host = ref.split("/", 1)[0].split(":", 1)[0]
    if "/" not in ref or not ("." in host or host == "localhost") or os.path.lexists(ref):
        return False
    try:
        split_version(ref)
    except UsageError:
        return False
    return True
