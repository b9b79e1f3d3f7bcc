"""Image URIs: ``[REPO:]IMAGE[@REVISION]``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pcocc.errors import UsageError

_URI_RE = re.compile(
    r"^(?:(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*):)?"
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,127})"
    r"(?:@(?P<rev>[0-9]+))?$"
)
_HINT = "write [REPO:]IMAGE[@REVISION], e.g. 'user:centos@2' or 'centos'"


@dataclass(frozen=True)
class ImageUri:
    name: str
    repo: str | None = None
    revision: int | None = None

    @classmethod
    def parse(cls, text: str) -> ImageUri:
        """Parse ``[REPO:]IMAGE[@REVISION]``; a malformed URI is a UsageError (exit 2)."""
        m = _URI_RE.match(text or "")
        if not m:
            raise UsageError(f"invalid image URI {text!r}", hint=_HINT)
        rev = m.group("rev")
        if rev is not None and (len(rev) > 9 or (len(rev) > 1 and rev.startswith("0"))):
            raise UsageError(f"invalid revision in image URI {text!r}", hint=_HINT)
        return cls(m.group("name"), m.group("repo"), int(rev) if rev is not None else None)

    def __str__(self) -> str:
        s = f"{self.repo}:{self.name}" if self.repo else self.name
        return s if self.revision is None else f"{s}@{self.revision}"
