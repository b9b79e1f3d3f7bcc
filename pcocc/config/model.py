"""The configuration records that ``load_config`` returns (see :mod:`pcocc.config`).

A module of their own so that the loader, which builds them, does not import the package
that imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})


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


#: ``cache.max-size`` when absent
DEFAULT_CACHE_MAX_SIZE = 20 * 2**30


@dataclass(frozen=True)
class CacheConfig:
    path: Path
    max_size_bytes: int | None = DEFAULT_CACHE_MAX_SIZE  # None: no limit
    mode: str = "dir"  # "dir" (unpacked rootfs) or "squashfs"
    shared: bool = False  # on a file system every node sees (no copies between nodes)


@dataclass(frozen=True)
class EtcdConfig:
    """``etcd:`` of batch.yaml. Paths are kept as written (``~`` and relative paths are
    resolved by pcocc.kv against ``base_dir``, the directory of the file that set them)."""

    mode: str = "private"  # "private" or "external"
    data_dir: str = "%{clusterdir}/etcd"  # private mode only
    endpoints: tuple[str, ...] = ()  # external mode: "host:port" of each member
    ca_cert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password_file: str | None = None
    base_dir: Path | None = None

    @classmethod
    def from_data(cls, data: Mapping[str, Any], base_dir: Path | None = None) -> EtcdConfig:
        """From the schema-checked ``etcd`` mapping (an external one may omit ``mode``)."""
        mode = data.get("mode", "external")
        return cls(
            mode=mode,
            data_dir=data.get("data-dir", cls.data_dir),
            endpoints=tuple(data.get("endpoints", ())),
            ca_cert=data.get("ca-cert"),
            cert=data.get("cert"),
            key=data.get("key"),
            user=data.get("user"),
            password_file=data.get("password-file"),
            base_dir=base_dir,
        )


@dataclass(frozen=True)
class SlurmSettings:
    """``slurm:`` of batch.yaml."""

    partition: str | None = None
    alloc_args: tuple[str, ...] = ()
    srun_args: tuple[str, ...] = ()
    bin_dir: str | None = None


@dataclass(frozen=True)
class LocalSettings:
    """``local:`` of batch.yaml."""

    state_dir: str | None = None


@dataclass(frozen=True)
class BatchConfig:
    """batch.yaml, defaults filled in."""

    type: str = "local"
    etcd: EtcdConfig = EtcdConfig()
    slurm: SlurmSettings = SlurmSettings()
    local: LocalSettings = LocalSettings()

    @classmethod
    def from_data(cls, data: Mapping[str, Any], etcd_base: Path | None = None) -> BatchConfig:
        """From a batch.yaml mapping that passed ``schemas/batch.json``."""
        slurm = data.get("slurm") or {}
        local = data.get("local") or {}
        return cls(
            type=data.get("type", "local"),
            etcd=EtcdConfig.from_data(data.get("etcd") or {"mode": "private"}, etcd_base),
            slurm=SlurmSettings(
                partition=slurm.get("partition"),
                alloc_args=tuple(slurm.get("alloc-args", ())),
                srun_args=tuple(slurm.get("srun-args", ())),
                bin_dir=slurm.get("bin-dir"),
            ),
            local=LocalSettings(state_dir=local.get("state-dir")),
        )


@dataclass(frozen=True)
class MountConfig:
    """One entry of ``mounts`` in containers.yaml (a module's or the global list)."""

    source: str
    target: str
    readonly: bool = False
    optional: bool = False

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> MountConfig:
        return cls(
            data["source"], data["target"], data.get("readonly", False),
            data.get("optional", False),
        )  # fmt: skip


@dataclass(frozen=True)
class ContainerModule:
    """A named set of mounts and environment variables that a run may ask for."""

    description: str = ""
    mounts: tuple[MountConfig, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class ContainerSettings:
    """containers.yaml, merged over both levels (the loader applied the override rules)."""

    runtime: str = "auto"
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    mounts: tuple[MountConfig, ...] = ()
    modules: Mapping[str, ContainerModule] = field(default_factory=lambda: _EMPTY)
    default_modules: tuple[str, ...] = ()
    #: the file named in error messages about these settings
    source: str = "containers.yaml"

    @classmethod
    def from_data(cls, data: Mapping[str, Any], source: str = "containers.yaml") -> ContainerSettings:
        """From a containers.yaml mapping that passed ``schemas/containers.json``."""
        modules = {
            name: ContainerModule(
                mod.get("description", ""),
                tuple(MountConfig.from_data(m) for m in mod.get("mounts") or ()),
                MappingProxyType(dict(mod.get("env") or {})),
            )
            for name, mod in (data.get("modules") or {}).items()
        }
        return cls(
            runtime=data.get("runtime", "auto"),
            env=MappingProxyType(dict(data.get("env") or {})),
            mounts=tuple(MountConfig.from_data(m) for m in data.get("mounts") or ()),
            modules=MappingProxyType(modules),
            default_modules=tuple(data.get("default-modules") or ()),
            source=source,
        )


@dataclass
class Config:
    system_dir: Path
    user_dir: Path
    repos: list[RepoConfig] = field(default_factory=list)
    cache: CacheConfig | None = None
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch: BatchConfig = BatchConfig()
    networks: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    containers: ContainerSettings = ContainerSettings()
    #: ("templates", "compute") -> Origin of that template; ("templates", "compute", "image")
    #: -> Origin of that key; ("batch", "type") -> Origin of that setting; and so on.
    origins: dict[tuple[Any, ...], Origin] = field(default_factory=dict)

    def origin(self, *path: Any) -> Origin:
        """Origin of an entry or setting; built-in default when no file set it."""
        return self.origins.get(tuple(path), Origin("default"))
