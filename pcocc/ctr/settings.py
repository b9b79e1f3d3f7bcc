"""The ``containers.yaml`` settings, as the configuration loader validated and merged them
(schema ``pcocc/config/schemas/containers.json``)::

    runtime: auto            # or crun, runc, unshare, vm
    env: {NAME: VALUE}
    mounts: [{source: PATH, target: PATH, readonly: BOOL, optional: BOOL}]
    modules: {NAME: {description: TEXT, mounts: [...], env: {...}}}
    default-modules: [NAME]
    allow-user-override: false   # system file: what users may redefine

The user file may add env, mounts and modules; it may replace the runtime or a module of
the admin only when ``allow-user-override`` allows it (enforced by the loader).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pcocc.errors import ConfigError

KEYS = ("runtime", "env", "mounts", "modules", "default-modules", "allow-user-override")


@dataclass
class ContainerSettings:
    runtime: str = "auto"
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Mapping[str, Any]] = field(default_factory=list)
    modules: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    default_modules: list[str] = field(default_factory=list)
    #: the files read, for error messages
    sources: list[str] = field(default_factory=list)


def merge(settings: ContainerSettings, data: Mapping[str, Any], where: str, *, admin: bool) -> None:
    from pcocc.ctr.env import env_mapping

    settings.sources.append(where)
    if "runtime" in data:
        settings.runtime = str(data["runtime"])
    settings.env.update(env_mapping(data.get("env"), f"{where}: env"))
    mounts = data.get("mounts") or []
    if not isinstance(mounts, list):
        raise ConfigError(f"{where}: mounts: expected a list")
    settings.mounts.extend(mounts)
    modules = data.get("modules") or {}
    if not isinstance(modules, Mapping):
        raise ConfigError(f"{where}: modules: expected a mapping of name -> {{mounts, env}}")
    for name, mod in modules.items():
        if not isinstance(mod, Mapping):
            raise ConfigError(f"{where}: modules.{name}: expected a mapping")
        if name in settings.modules and not admin:
            raise ConfigError(f"{where}: modules.{name}: already defined by the administrator")
        settings.modules[str(name)] = mod
    defaults = data.get("default-modules") or []
    if not isinstance(defaults, list):
        raise ConfigError(f"{where}: default-modules: expected a list of module names")
    settings.default_modules.extend(str(d) for d in defaults)


def from_config(containers: Mapping[str, Any], where: str = "containers.yaml") -> ContainerSettings:
    """Settings from ``Config.containers``: the loader has validated both files against
    ``schemas/containers.json`` and merged them (admin rules on overrides applied)."""
    settings = ContainerSettings()
    merge(settings, containers, where, admin=True)
    return settings


def load_settings(
    system_dir: str | os.PathLike,
    user_dir: str | os.PathLike,
    preloaded: Mapping[str, Any] | None = None,
) -> ContainerSettings:
    """Settings from ``preloaded`` (a session's ``config.containers``), else loaded through
    the configuration loader from both directories."""
    if preloaded is None:
        from pcocc.config import load_config

        preloaded = load_config(system_dir, user_dir).containers
    return from_config(preloaded)
