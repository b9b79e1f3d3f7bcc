"""Configuration: system dir then user dir, one jsonschema per file, placeholders.

Public surface (others import only this)::

    load_config(system_dir, user_dir) -> Config
    Config.repos       list[RepoConfig]   in priority order (system first)
    Config.cache       CacheConfig
    Config.templates   dict[str, dict]    raw template entries (see pcocc.templates)
    Config.batch       dict               batch.yaml content
    Config.networks, Config.resources, Config.containers   dicts

This first version reads repos.yaml without validation; the schema-checked loader replaces
it behind the same interface.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pcocc.errors import ConfigError


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


def _home() -> str:
    return os.environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir


def _expand(value: str) -> str:
    user = pwd.getpwuid(os.getuid()).pw_name
    return value.replace("%{homedir}", _home()).replace("%{user}", user)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(system_dir: str | os.PathLike, user_dir: str | os.PathLike) -> Config:
    sysd, userd = Path(system_dir), Path(user_dir)
    cfg = Config(system_dir=sysd, user_dir=userd)
    for origin, d in (("system", sysd), ("user", userd)):
        data = _read(d / "repos.yaml")
        for r in data.get("repos", []) or []:
            cfg.repos.append(
                RepoConfig(r["name"], Path(_expand(r["path"])), r.get("description", ""), origin)
            )
        if "cache" in data:
            cfg.cache = CacheConfig(Path(_expand(data["cache"]["path"])))
    if not cfg.repos:
        cfg.repos.append(
            RepoConfig("user", Path(_home()) / ".pcocc" / "repo", "your images", "default")
        )
    if cfg.cache is None:
        cfg.cache = CacheConfig(Path(_home()) / ".cache" / "pcocc")
    return cfg
