"""Configuration: system dir then user dir, one jsonschema per file, placeholders.

Public surface (others import only this)::

    load_config(system_dir, user_dir) -> Config
    Config.repos       list[RepoConfig]   in priority order (system first)
    Config.cache       CacheConfig
    Config.templates   dict[str, dict]    raw template entries by name (see pcocc.templates)
    Config.batch       BatchConfig        batch.yaml: type, etcd (EtcdConfig), slurm, local
    Config.resources   dict[str, dict]    resource sets by name
    Config.networks    dict[str, dict]    networks by name
    Config.containers  ContainerSettings  containers.yaml: runtime, env, mounts, modules, ...
    Config.origins     dict[tuple, Origin] where each entry or setting was defined
    expand_runtime(value, clusterdir=..., vm_rank=...)   fill %{clusterdir} and %{vm_rank}
    parse_size("20G") -> bytes

Loading reads ``<file>.yaml`` then ``<file>.d/*.yaml`` of the system directory, then the same
in the user directory; see docs/admin-guide.md for the merge and override rules. This module
imports neither yaml nor jsonschema: the loader does, on first use.
"""

from __future__ import annotations

import os
from pathlib import Path

from pcocc.config.model import (
    BatchConfig,
    CacheConfig,
    Config,
    ContainerModule,
    ContainerSettings,
    EtcdConfig,
    LocalSettings,
    MountConfig,
    Origin,
    RepoConfig,
    SlurmSettings,
)
from pcocc.config.placeholders import expand_runtime
from pcocc.config.sizes import format_size, parse_size

__all__ = [
    "BatchConfig",
    "CacheConfig",
    "Config",
    "ContainerModule",
    "ContainerSettings",
    "EtcdConfig",
    "LocalSettings",
    "MountConfig",
    "Origin",
    "RepoConfig",
    "SlurmSettings",
    "expand_runtime",
    "format_size",
    "load_config",
    "parse_size",
]


def load_config(system_dir: str | os.PathLike[str], user_dir: str | os.PathLike[str]) -> Config:
    """Load, validate and merge the six configuration files of both directories.

    :raise ConfigError: a file is invalid (message: ``file:line:col: key.path: what``)
    """
    from pcocc.config.loader import load

    return load(Path(system_dir), Path(user_dir))
