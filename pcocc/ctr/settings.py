"""The ``containers.yaml`` settings (system file, then user file)::

    runtime: auto            # or crun, runc, unshare, vm
    env: {NAME: VALUE}       # or a list of NAME=VALUE
    mounts: [{source: PATH, target: PATH, readonly: BOOL, optional: BOOL}]
    modules: {NAME: {mounts: [...], env: {...}}}
    default-modules: [NAME]

The user file may add env, mounts and modules and choose the runtime; it cannot replace a
module the admin defined.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcocc.errors import ConfigError

KEYS = ("runtime", "env", "mounts", "modules", "default-modules")


@dataclass
class ContainerSettings:
    runtime: str = "auto"
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Mapping[str, Any]] = field(default_factory=list)
    modules: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    default_modules: list[str] = field(default_factory=list)
    #: the files read, for error messages
    sources: list[str] = field(default_factory=list)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    for key in data:
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key '{key}'", hint=f"known keys: {', '.join(KEYS)}")
    return data


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


def load_settings(
    system_dir: str | os.PathLike,
    user_dir: str | os.PathLike,
    preloaded: Mapping[str, Any] | None = None,
) -> ContainerSettings:
    """Settings from ``preloaded`` (the config loader's ``containers``) or from the files."""
    settings = ContainerSettings()
    if preloaded:
        merge(settings, preloaded, "containers.yaml", admin=True)
        return settings
    for d, admin in ((Path(system_dir), True), (Path(user_dir), False)):
        path = d / "containers.yaml"
        data = _read(path)
        if data:
            merge(settings, data, str(path), admin=admin)
    return settings
