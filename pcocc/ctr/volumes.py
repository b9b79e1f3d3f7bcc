"""Volumes and mounts: rkt-style ``--volume``/``--mount`` and the mounts of containers.yaml.

``--volume NAME,kind=host,source=PATH[,readOnly=true]`` or ``--volume NAME,kind=empty``
declares a volume; ``--mount volume=NAME,target=PATH`` puts it in the containers. An ``empty``
volume is a directory of the pod, shared by its apps. containers.yaml adds ``mounts`` (always
applied) and ``modules``: named sets of mounts and env that ``--module NAME`` selects::

    mounts:
      - {source: /scratch, target: /scratch, readonly: false, optional: true}
    modules:
      mpi:
        mounts: [{source: /opt/mpi, target: /opt/mpi, readonly: true}]
        env: {MPI_HOME: /opt/mpi}
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pcocc.errors import ConfigError, UsageError

if TYPE_CHECKING:
    from pcocc.config.model import ContainerModule, MountConfig

KINDS = ("host", "empty")
_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


@dataclass(frozen=True)
class Volume:
    name: str
    kind: str  # "host" or "empty"
    source: str | None = None
    readonly: bool = False


@dataclass(frozen=True)
class Mount:
    """A host path bound at ``target`` in the container."""

    source: str
    target: str
    readonly: bool = False


def _fields(text: str, option: str) -> tuple[list[str], dict[str, str]]:
    bare: list[str] = []
    keyed: dict[str, str] = {}
    for part in text.split(","):
        if "=" in part:
            k, _, v = part.partition("=")
            keyed[k.strip()] = v.strip()
        elif part.strip():
            bare.append(part.strip())
    return bare, keyed


def _bool(value: str, option: str, text: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise UsageError(f"{option} '{text}': readOnly must be true or false, not '{value}'")


def parse_volume(text: str) -> Volume:
    """Parse ``NAME,kind=host,source=PATH[,readOnly=true]`` or ``NAME,kind=empty``."""
    option = "--volume"
    bare, keyed = _fields(text, option)
    name = keyed.pop("name", None) or (bare.pop(0) if bare else None)
    if not name or bare:
        raise UsageError(
            f"{option} '{text}': expected NAME,kind=host,source=PATH[,readOnly=true]",
        )
    kind = keyed.pop("kind", "host")
    if kind not in KINDS:
        raise UsageError(f"{option} '{text}': kind must be one of {', '.join(KINDS)}")
    source = keyed.pop("source", None)
    readonly = _bool(keyed.pop("readOnly", keyed.pop("readonly", "false")), option, text)
    if keyed:
        raise UsageError(
            f"{option} '{text}': unknown key '{next(iter(keyed))}'",
            hint="keys are kind, source and readOnly",
        )
    if kind == "host" and not source:
        raise UsageError(f"{option} '{text}': a host volume needs source=PATH")
    if kind == "empty" and source:
        raise UsageError(f"{option} '{text}': an empty volume takes no source")
    if source and not os.path.isabs(source):
        source = os.path.abspath(source)
    return Volume(name, kind, source, readonly)


def parse_mount(text: str) -> tuple[str, str]:
    """Parse ``volume=NAME,target=PATH`` -> (volume name, target)."""
    bare, keyed = _fields(text, "--mount")
    name, target = keyed.pop("volume", None), keyed.pop("target", None)
    if bare or keyed or not name or not target:
        raise UsageError(f"--mount '{text}': expected volume=NAME,target=PATH")
    if not target.startswith("/"):
        raise UsageError(f"--mount '{text}': target must be an absolute path")
    return name, target


def resolve_mounts(
    volumes: Sequence[Volume],
    mounts: Sequence[tuple[str, str]],
    *,
    empty_dir: Path,
    config_mounts: Sequence[MountConfig] = (),
    config_name: str = "containers.yaml",
) -> list[Mount]:
    """The host binds of a pod: containers.yaml mounts first, then ``--mount`` of volumes.

    :param empty_dir: where ``kind=empty`` volumes get their directory (created here)
    :raise UsageError: unknown or unmounted volume, missing host source
    :raise ConfigError: a containers.yaml mount whose source is missing (unless optional)
    """
    out = [m for m in (config_mount(e, config_name) for e in config_mounts) if m is not None]
    by_name: dict[str, Volume] = {}
    for v in volumes:
        if v.name in by_name:
            raise UsageError(f"--volume: volume '{v.name}' is declared twice")
        by_name[v.name] = v
    used: set[str] = set()
    for name, target in mounts:
        vol = by_name.get(name)
        if vol is None:
            raise UsageError(
                f"--mount: no volume named '{name}'",
                hint=f"declare it: --volume {name},kind=host,source=PATH",
            )
        used.add(name)
        if vol.kind == "empty":
            src = empty_dir / name
            src.mkdir(parents=True, exist_ok=True)
            out.append(Mount(str(src), target, vol.readonly))
        else:
            assert vol.source is not None
            if not os.path.exists(vol.source):
                raise UsageError(
                    f"--volume {name}: source '{vol.source}' does not exist",
                    hint="create it or fix source=",
                )
            out.append(Mount(vol.source, target, vol.readonly))
    unused = [n for n in by_name if n not in used]
    if unused:
        raise UsageError(
            f"--volume {unused[0]}: declared but not mounted",
            hint=f"add --mount volume={unused[0]},target=PATH",
        )
    return out


def config_mount(entry: MountConfig, where: str) -> Mount | None:
    """A containers.yaml mount entry; None when optional and its source is missing."""
    source, target = entry.source, entry.target
    if not os.path.exists(source):
        if entry.optional:
            return None
        raise ConfigError(
            f"{where}: mount source '{source}' does not exist",
            hint="create it, fix the path or mark the mount 'optional: true'",
        )
    return Mount(source, target, entry.readonly)


def select_modules(
    modules: Mapping[str, ContainerModule], names: Sequence[str]
) -> tuple[list[MountConfig], dict[str, str]]:
    """The mounts and env of the modules ``names``, in order."""
    mounts: list[MountConfig] = []
    env: dict[str, str] = {}
    for name in names:
        mod = modules.get(name)
        if mod is None:
            known = ", ".join(sorted(modules)) or "none defined"
            raise UsageError(f"--module: unknown module '{name}'", hint=f"known: {known}")
        mounts.extend(mod.mounts)
        env.update(mod.env)
    return mounts, env
