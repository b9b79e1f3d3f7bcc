"""The configuration records that ``load_config`` returns (see :mod:`pcocc.config`).

A module of their own so that the loader, which builds them, does not import the package
that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Origin:
    """Where a setting comes from: a file position, or the built-in defaults."""

    level: str  # "system", "user" or "default"
    file: Path | None = None
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.file is None:
            return "built-in default"
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class RepoConfig:
    name: str
    path: Path
    description: str = ""
    origin: str = "user"  # "system" or "user" or "default"


@dataclass(frozen=True)
class CacheConfig:
    path: Path
    max_size_bytes: int | None = None
    mode: str = "dir"  # "dir" (unpacked rootfs) or "squashfs"


@dataclass
class Config:
    system_dir: Path
    user_dir: Path
    repos: list[RepoConfig] = field(default_factory=list)
    cache: CacheConfig | None = None
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch: dict[str, Any] = field(default_factory=dict)
    networks: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    containers: dict[str, Any] = field(default_factory=dict)
    #: ("templates", "compute") -> Origin of that template; ("templates", "compute", "image")
    #: -> Origin of that key; ("batch", "type") -> Origin of that setting; and so on.
    origins: dict[tuple[Any, ...], Origin] = field(default_factory=dict)

    def origin(self, *path: Any) -> Origin:
        """Origin of an entry or setting; built-in default when no file set it."""
        return self.origins.get(tuple(path), Origin("default"))
