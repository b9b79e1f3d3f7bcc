"""Configuration: system dir then user dir, one jsonschema per file, placeholders.

Public surface (others import only this)::

    load_config(system_dir, user_dir) -> Config
    Config.repos       list[RepoConfig]   in priority order (system first)
    Config.cache       CacheConfig
    Config.templates   dict[str, dict]    raw template entries by name (see pcocc.templates)
    Config.batch       dict               batch.yaml: type, etcd, slurm (defaults filled in)
    Config.resources   dict[str, dict]    resource sets by name
    Config.networks    dict[str, dict]    networks by name
    Config.containers  dict               containers.yaml: runtime, env, mounts, modules, ...
    Config.origins     dict[tuple, Origin] where each entry or setting was defined
    expand_runtime(value, clusterdir=..., vm_rank=...)   fill %{clusterdir} and %{vm_rank}
    parse_size("20G") -> bytes

Loading reads ``<file>.yaml`` then ``<file>.d/*.yaml`` of the system directory, then the same
in the user directory; see docs/admin-guide.md for the merge and override rules. This module
imports neither yaml nor jsonschema: the loader does, on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcocc.config.placeholders import expand_runtime
from pcocc.config.sizes import format_size, parse_size

__all__ = [
    "CacheConfig",
    "Config",
    "Origin",
    "RepoConfig",
    "expand_runtime",
    "format_size",
    "load_config",
    "parse_size",
]


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


def load_config(system_dir: str | os.PathLike[str], user_dir: str | os.PathLike[str]) -> Config:
    """Load, validate and merge the six configuration files of both directories.

    :raise ConfigError: a file is invalid (message: ``file:line:col: key.path: what``)
    """
    from pcocc.config.loader import load

    return load(Path(system_dir), Path(user_dir))
