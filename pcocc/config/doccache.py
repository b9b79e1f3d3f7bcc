"""Remember configuration files already parsed and found valid, so that commands skip yaml.

Every command reads the configuration; importing yaml and parsing six files costs more than
the rest of a quick command. After a file has been parsed and has passed its schema, its
data and key positions are saved in ``~/.cache/pcocc/config-docs/`` (a private directory,
see :mod:`pcocc.paths`) together with the exact text of the file and of the schema. A
later load reads the file again and uses the saved copy only when both texts are still the
same, byte for byte: an edited file (or a new pcocc with another schema) is parsed and
checked again. The copy is taken before placeholders are
expanded, so the values that depend on the user or the environment are always computed.

Data that ``marshal`` cannot hold (YAML dates) is simply not cached. Any problem with the
cache (missing, unreadable, from another Python) means parsing the file as if it was absent.
"""

from __future__ import annotations

import contextlib
import functools
import marshal
import os
import sys
from pathlib import Path

from pcocc import __version__, paths
from pcocc.config.yamldoc import YamlDoc
from pcocc.errors import PcoccError


@functools.cache
def _format() -> str:
    """Changes whenever the saved data may: tuple layout, Python (marshal), pcocc, or the
    code that builds a document (parser, positions, the clean-up done before caching)."""
    here = os.path.dirname(os.path.abspath(__file__))
    stamps = []
    for module in ("yamldoc.py", "loader.py", "legacy.py", "doccache.py"):
        try:
            stamps.append(str(os.stat(os.path.join(here, module)).st_mtime_ns))
        except OSError:
            stamps.append("-")
    return f"pcocc-config-doc-1 {__version__} {sys.version} {' '.join(stamps)}"


def _cache_dir() -> str:
    return os.path.join(paths.cache_dir(), "config-docs")


def _entry(path: Path) -> str:
    name = os.path.abspath(path).replace("%", "%25").replace("/", "%2F")
    return os.path.join(_cache_dir(), name)


def cached_doc(path: Path, schema_text: str) -> YamlDoc | None:
    """The saved document of ``path`` if its text and schema are unchanged, else None."""
    try:
        with open(_entry(path), "rb") as f:
            saved = marshal.load(f)
        fmt, where, text, schema, data, values, keys = saved
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if fmt != _format() or where != os.path.abspath(path) or schema != schema_text:
        return None
    try:
        current = path.read_text()
    except OSError:
        return None  # the parser reports it
    if current != text or not isinstance(data, dict):
        return None
    return YamlDoc(path, data, values, keys, text)


def remember_doc(doc: YamlDoc, schema_text: str) -> None:
    """Save ``doc`` (parsed and valid, placeholders not expanded) for :func:`cached_doc`."""
    try:
        blob = marshal.dumps(
            (
                _format(),
                os.path.abspath(doc.path),
                doc.text,
                schema_text,
                doc.data,
                doc.values,
                doc.keys,
            )
        )
    except ValueError:
        return  # data marshal cannot hold: parse this file every time
    entry = _entry(doc.path)
    tmp = f"{entry}.{os.getpid()}.tmp"
    try:
        paths.private_dir(paths.cache_dir() / "config-docs", what="cache directory")
        # No fsync: after a crash a torn entry only fails to load, and the file is parsed.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, entry)
    except (OSError, PcoccError):
        # Only an optimisation: a read-only home just means parsing every time.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
